"""``kvmppc serve`` inside real POWER guests (tests/powerguest): the daemon on a real PowerPC
KVM, asked through its socket by tests/powerguest/guest/daemon_answers.py in the same boot as
the rest of the battery.  Its answers must be the guest's own probe and, for checks, what the
policy says about that probe here on the host."""

from __future__ import annotations

from typing import Any

import pytest

from kvmppc.model import ProbeResult
from kvmppc.policy import CheckRequest, check
from kvmppc.render import check_json
from tests.helpers import cant
from tests.powerguest.harness import GuestRun
from tests.test_powerguest import comparable, ok

pytestmark = pytest.mark.powerguest


def answers(run: GuestRun) -> dict[str, Any]:
    data: dict[str, Any] = ok(run, "daemon").json()
    return data


def test_daemon_notifies_serves_reloads_and_stops_in_the_guest(any_guest: GuestRun) -> None:
    """READY=1 after the first probe, RELOADING=1/READY=1 around SIGHUP, STOPPING=1, exit 0."""
    out = answers(any_guest)
    firsts = [message[0] for message in out["notifications"]]
    ready = firsts.index("READY=1")
    assert firsts[ready:] == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], firsts
    assert out["exit"] == 0, out["log"]
    assert out["health"]["status"] == "ok", out["health"]  # a PowerPC KVM: nothing degraded
    assert out["health"]["probe_failures"] == 0


def test_daemon_host_answer_is_the_guest_probe(any_guest: GuestRun) -> None:
    out = answers(any_guest)
    direct = ok(any_guest, "probe-json").json()
    assert comparable(out["host"]["probe"]) == comparable(direct)
    assert out["host"]["cache"]["stale"] is False and out["host"]["cache"]["source"] == "live"


# What QEMU 7.2 answers for the default guest (pseries-7.2, the host's CPU) on each guest's
# KVM, first error, as the same QEMU printed it under -accel kvm in these guests
# (tests/powerguest/kvm_oracle.py).  KVM-HV (nested): PAGE_SIZES_REAL, so a cap above the
# host's page size fails spapr_check_pagesize.  KVM-PR: pseries-7.2 turns FWNMI on, which
# KVM-PR lacks (spapr_caps.c cap_fwnmi_apply), before any page-size check.
NO_FWNMI = "Firmware Assisted Non-Maskable Interrupts(FWNMI) not supported by KVM."
FIRST_ERRORS = {
    ("hv", "64k"): {"check_64k": None, "check_16m": cant(16384, 64)},
    ("hv", "4k"): {"check_64k": cant(64, 4), "check_16m": cant(16384, 4)},
    ("pr", "64k"): {"check_64k": NO_FWNMI, "check_16m": NO_FWNMI},
    ("pr", "4k"): {"check_64k": NO_FWNMI, "check_16m": NO_FWNMI},
}


def test_daemon_checks_are_the_policy_on_its_probe(any_guest: GuestRun) -> None:
    """The daemon's cached checks: QEMU's first error on this KVM (above), and, for the
    transport, equal to the policy run here on the probe the daemon served."""
    out = answers(any_guest)
    probe = ProbeResult.from_dict(out["host"]["probe"])
    expected = FIRST_ERRORS[(any_guest.config.kind, any_guest.config.pages)]
    for key, size in (("check_64k", "64k"), ("check_16m", "16M")):
        answer = dict(out[key])
        answer.pop("cache")
        assert answer["accel"] == "kvm"
        assert (answer["errors"][0] if answer["errors"] else None) == expected[key], key
        assert answer == check_json(check(probe, CheckRequest(max_page_size=size))), key


def test_daemon_metrics_in_an_hv_guest(hv_guest: GuestRun) -> None:
    """Nested KVM-HV: guest pages need host-contiguous backing, so without hugepages the
    fleet answer is the guest kernel's page size, and a 16M cap cannot start."""
    out = answers(hv_guest)
    metrics = out["metrics"]
    page = 4096 if hv_guest.config.pages == "4k" else 65536
    assert "kvmppc_kvm_powerpc 1.0" in metrics
    assert 'kvmppc_vm_type_needs_host_contiguous_pages{vm_type="hv"} 1.0' in metrics
    assert (f'kvmppc_hpt_max_page_size_bytes{{backing="anonymous",kvm_type="default"}}'
            f' {float(page)}' in metrics)
    assert out["check_64k"]["ok"] is (page == 65536)
    assert out["check_16m"]["ok"] is False
    assert out["check_16m"]["errors"][0] == cant(16384, page // 1024)


def test_daemon_metrics_in_a_pr_guest(pr_guest: GuestRun) -> None:
    """KVM-PR: no host-contiguous backing needed (PAGE_SIZES_REAL unset)."""
    metrics = answers(pr_guest)["metrics"]
    assert "kvmppc_kvm_powerpc 1.0" in metrics
    assert 'kvmppc_vm_type_needs_host_contiguous_pages{vm_type="pr"} 0.0' in metrics

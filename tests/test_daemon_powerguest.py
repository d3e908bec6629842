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


# What QEMU 7.2 answers for the default guest (pseries-7.2, power9_v2.0) on each guest's
# KVM, written by hand from its rules.  KVM-HV (nested): PAGE_SIZES_REAL on 64 KiB pages, so a
# 16M cap fails spapr_check_pagesize.  KVM-PR: no host-contiguity, but its table has no 16M
# page in the 4K segment (book3s_pr.c kvm_vm_ioctl_get_smmu_info_pr; no MPSS), which the
# POWER9 table filtered at 16M has, so kvm_check_mmu fails on 24/12.  64K passes both.
EXPECTED_CHECKS = {
    "hv": {"check_64k": [], "check_16m": [
        "Can't support 16384 kiB guest pages with 64 kiB host pages with this KVM"
        " implementation"]},
    "pr": {"check_64k": [], "check_16m": ["KVM doesn't support page shift 24/12"]},
}


def test_daemon_checks_are_the_policy_on_its_probe(any_guest: GuestRun) -> None:
    """The daemon's cached checks: QEMU's answer on this KVM (written out above), and, for
    the transport, equal to the policy run here on the probe the daemon served."""
    out = answers(any_guest)
    probe = ProbeResult.from_dict(out["host"]["probe"])
    for key, size in (("check_64k", "64k"), ("check_16m", "16M")):
        answer = dict(out[key])
        answer.pop("cache")
        assert answer["accel"] == "kvm"
        assert answer["errors"] == EXPECTED_CHECKS[any_guest.config.kind][key], key
        assert answer == check_json(check(probe, CheckRequest(max_page_size=size))), key


def test_daemon_metrics_in_an_hv_guest(hv_guest: GuestRun) -> None:
    """Nested KVM-HV: guest pages need host-contiguous backing, so on the guest's 64 KiB
    pages without hugepages a 16M cap cannot start and the fleet answer is 64 KiB."""
    out = answers(hv_guest)
    metrics = out["metrics"]
    assert "kvmppc_kvm_powerpc 1.0" in metrics
    assert 'kvmppc_vm_type_needs_host_contiguous_pages{vm_type="hv"} 1.0' in metrics
    assert ('kvmppc_hpt_max_page_size_bytes{backing="anonymous",kvm_type="default"} 65536.0'
            in metrics)
    assert out["check_64k"]["ok"] is True
    assert out["check_16m"]["ok"] is False
    assert out["check_16m"]["errors"][0] == (
        "Can't support 16384 kiB guest pages with 64 kiB host pages with this KVM"
        " implementation")


def test_daemon_metrics_in_a_pr_guest(pr_guest: GuestRun) -> None:
    """KVM-PR: no host-contiguous backing needed (PAGE_SIZES_REAL unset)."""
    metrics = answers(pr_guest)["metrics"]
    assert "kvmppc_kvm_powerpc 1.0" in metrics
    assert 'kvmppc_vm_type_needs_host_contiguous_pages{vm_type="pr"} 0.0' in metrics

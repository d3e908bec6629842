"""``kvmppc check`` inside POWER guests, on the real kernels' own answers (tests/powerguest).

The guests' battery (tests/powerguest/battery.py) runs ``kvmppc check --max-page-size 16M``
and the policy over one live probe for a handful of requests; the expected outcomes are
those the reference fixes (kvm-ppc-facts.md §3.5, §3.7, §5.1, §5.3, §7): nested KVM-HV on
Debian's 64 KiB kernel (radix, PAGE_SIZES_REAL, no HASH_V3) and KVM-PR on a hash POWER8.
Boots are shared with tests/test_powerguest.py (one per configuration and session).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import cant
from tests.powerguest.harness import GuestRun

pytestmark = pytest.mark.powerguest


def checks(run: GuestRun) -> dict[str, Any]:
    result = run.result("policy-checks")
    assert result.rc == 0, result.output
    data: dict[str, Any] = result.json()
    return data


# QEMU 7.2's words under -accel kvm in these same guests (tests/powerguest/kvm_oracle.py,
# whose cases include each of these requests' command lines): KVM-HV runs only the host's
# CPU; KVM-PR has no FWNMI, which pseries-5.0 and later turn on; on 4 KiB pages KVM-HV's
# guest pages need 4 KiB backing and KVM-PR's VRMA is a quarter of what 64 KiB allows.
HV_CPU_HOST = ("Register sync failed... If you're using kvm-hv.ko, only \"-cpu host\" is"
               " possible")
NO_FWNMI = "Firmware Assisted Non-Maskable Interrupts(FWNMI) not supported by KVM."
PR_4K_VRMA = "Unable to create 512MiB RMA (VRMA only allows 128MiB"


def host_kib(run: GuestRun) -> int:
    return 4 if run.config.pages == "4k" else 64


def test_hv_check_cli_16m(hv_guest: GuestRun) -> None:
    """§7.4: 16M without hugepages on a KVM-HV host; exit 1, QEMU's message."""
    result = hv_guest.result("check-16m")
    assert result.rc == 1, result.output
    data = result.json()
    assert data["accel"] == "kvm" and data["kvm"]["implementation"] == "HV"
    assert data["errors"][0] == cant(16384, host_kib(hv_guest))
    assert data["needs_host_contiguous_pages"] is True


def test_hv_answers(hv_guest: GuestRun) -> None:
    """Nested KVM-HV: on 64 KiB pages the 64K default starts, on 4 KiB only a 4K cap; 16M
    and 16G fail the backing check (16G also kvm_check_mmu); an explicit POWER8 or 970 is
    not the host's CPU."""
    data = checks(hv_guest)
    kib = host_kib(hv_guest)
    if kib == 64:
        assert data["default"]["ok"], data["default"]["errors"]
        assert data["default"]["guest"]["cells"] == [12, 0, 1, 12, 0, 16, 0x110, 1, 16, 1]
    else:
        assert data["default"]["errors"][0] == cant(64, 4)
    assert data["4k"]["ok"], data["4k"]["errors"]
    assert "Many guests require at least 64kiB hpt-max-page-size" in data["4k"]["warnings"]
    assert data["16m"]["errors"][0] == cant(16384, kib)
    assert data["16g"]["errors"][0] == cant(16 * 1024 * 1024, kib)
    if kib == 64:
        assert data["16g"]["errors"] == [cant(16 * 1024 * 1024, 64),
                                         "KVM doesn't support for base page shift 34"]
    for model in ("power8", "970"):
        assert data[model]["errors"][0] == HV_CPU_HOST, data[model]
        assert data[model]["qemu_output"][1:] == [
            "kvm_init_vcpu: kvm_arch_init_vcpu failed (0): Invalid argument"]


def test_pr_check_cli_16m(pr_guest: GuestRun) -> None:
    """§5.3: KVM-PR has no host-contiguity requirement; pseries-7.2's FWNMI stops QEMU first,
    and behind it there is no 16M-in-4K encoding (64 KiB) or too small a VRMA (4 KiB)."""
    result = pr_guest.result("check-16m")
    assert result.rc == 1, result.output
    data = result.json()
    assert data["kvm"]["implementation"] == "PR"
    assert data["errors"][0] == NO_FWNMI
    behind = ("KVM doesn't support page shift 24/12" if host_kib(pr_guest) == 64
              else PR_4K_VRMA)
    assert behind in data["errors"]
    assert data["needs_host_contiguous_pages"] is False


def test_pr_answers(pr_guest: GuestRun) -> None:
    """KVM-PR: FWNMI off, POWER8/POWER9 vCPUs start at 4K and 64K on 64 KiB pages and 16M
    stops at 24/12; on 4 KiB pages the VRMA is too small for 512 MiB whatever the cap."""
    data = checks(pr_guest)
    assert data["default"]["errors"][0] == NO_FWNMI
    if host_kib(pr_guest) == 64:
        for ok in ("default-nofwnmi", "4k-nofwnmi", "power8-nofwnmi"):
            assert data[ok]["ok"], (ok, data[ok]["errors"])
        assert data["16m-nofwnmi"]["errors"] == ["KVM doesn't support page shift 24/12"]
        assert data["16g-nofwnmi"]["errors"] == ["KVM doesn't support page shift 24/12"]
    else:
        for refused in ("default-nofwnmi", "4k-nofwnmi", "16m-nofwnmi", "power8-nofwnmi"):
            assert data[refused]["errors"][0] == PR_4K_VRMA, (refused, data[refused])

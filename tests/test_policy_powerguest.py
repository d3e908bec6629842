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


def test_hv_check_cli_16m(hv_guest: GuestRun) -> None:
    """§7.4: 16M without hugepages on a 64 KiB KVM-HV host; exit 1, QEMU's message."""
    result = hv_guest.result("check-16m")
    assert result.rc == 1, result.output
    data = result.json()
    assert data["accel"] == "kvm" and data["kvm"]["implementation"] == "HV"
    assert data["errors"][0] == cant(16384, 64)
    assert data["needs_host_contiguous_pages"] is True


def test_hv_answers(hv_guest: GuestRun) -> None:
    """Nested KVM-HV: 64K default starts; 16M and 16G fail the backing check (16G also
    kvm_check_mmu); a POWER8 model must be hash, which this KVM refuses; the 970's 64-entry
    SLB does not fit."""
    data = checks(hv_guest)
    assert data["default"]["ok"], data["default"]["errors"]
    assert data["default"]["guest"]["cells"] == [12, 0, 1, 12, 0, 16, 0x110, 1, 16, 1]
    assert data["4k"]["ok"]
    assert "Many guests require at least 64kiB hpt-max-page-size" in data["4k"]["warnings"]
    assert data["16m"]["errors"] == [cant(16384, 64)]
    assert data["16g"]["errors"] == [cant(16 * 1024 * 1024, 64),
                                     "KVM doesn't support for base page shift 34"]
    assert data["power8"]["errors"] == ["Guest requested unavailable MMU mode (hash)."]
    assert data["970"]["errors"] == ["KVM only supports 32 SLB entries, but guest needs 64",
                                     "Guest requested unavailable MMU mode (hash)."]


def test_pr_check_cli_16m(pr_guest: GuestRun) -> None:
    """§5.3: KVM-PR has no 16M-in-4K encoding; no host-contiguity requirement."""
    result = pr_guest.result("check-16m")
    assert result.rc == 1, result.output
    data = result.json()
    assert data["kvm"]["implementation"] == "PR"
    assert data["errors"] == ["KVM doesn't support page shift 24/12"]
    assert data["needs_host_contiguous_pages"] is False


def test_pr_answers(pr_guest: GuestRun) -> None:
    """KVM-PR with a POWER8/POWER9 vCPU: 4K and 64K start; 16M and 16G stop at 24/12."""
    data = checks(pr_guest)
    assert data["default"]["ok"], data["default"]["errors"]
    assert data["4k"]["ok"] and data["power8"]["ok"]
    assert data["16m"]["errors"] == ["KVM doesn't support page shift 24/12"]
    assert data["16g"]["errors"] == ["KVM doesn't support page shift 24/12"]

"""kvmppc against real QEMU 7.2 with -accel kvm inside POWER guests (powerguest/kvm_oracle.py).

Each config boots once per session with Debian's ppc64el qemu-system-ppc64 in the guest and
runs its cases of tests/powerguest/kvm_cases.toml: CI's slice by default, the whole matrix
with KVMPPC_KVM_MATRIX=full.  A case passes when kvmppc's answer in the guest, on the guest's
own probe, is QEMU's: start or not, every line QEMU prints, the guest's segment page sizes and
the cap's value.  The expected values are QEMU's runs; nothing here comes from kvmppc.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import skip_or_fail
from tests.powerguest import harness, kvm_oracle
from tests.powerguest.kvm_oracle import ORACLE_CONFIGS, Case

pytestmark = pytest.mark.powerguest

FULL = kvm_oracle.FULL_MATRIX


def _cases() -> list[tuple[str, Case]]:
    return [(name, case) for name in ORACLE_CONFIGS
            for case in kvm_oracle.cases_for(harness.CONFIGS[name], FULL)]


@pytest.mark.parametrize(("config", "case"), _cases(),
                         ids=[f"{name}:{case.id}" for name, case in _cases()])
def test_kvmppc_answers_as_qemu_under_kvm(config: str, case: Case,
                                         request: pytest.FixtureRequest) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        outcome = kvm_oracle.session(config)
    if isinstance(outcome, harness.HarnessError):
        skip_or_fail(config, outcome)
        raise AssertionError("unreachable")
    found = outcome.disagreements(case)
    assert not found, (
        f"{config} (kernel {outcome.kernel_release}): {case.command_line}\n"
        f"QEMU exit {outcome.qemu[case.id]['rc']}:\n  "
        + "\n  ".join(kvm_oracle.qemu_lines(outcome.qemu[case.id]["stderr"]))
        + "\n" + "\n".join(f"- {item}" for item in found))


def test_the_slice_has_every_cause_twice_on_every_kernel() -> None:
    """CI's slice takes at least two cases of every group on every config that runs it."""
    cases = kvm_oracle.load_cases()
    for name in ORACLE_CONFIGS:
        kind = harness.CONFIGS[name].kind
        groups = {case.group for case in cases if kind in case.kinds}
        sliced = Counter(case.group for case in kvm_oracle.cases_for(harness.CONFIGS[name],
                                                                      full=False))
        thin = sorted(group for group in groups if sliced[group] < 2)
        assert not thin, f"{name}: fewer than two slice cases in {thin}"


def test_matrix_is_large_and_distinct() -> None:
    cases = kvm_oracle.load_cases()
    assert len({case.argv for case in cases}) == len(cases)
    for kind in ("hv", "pr"):
        assert sum(kind in case.kinds for case in cases) >= 100, kind

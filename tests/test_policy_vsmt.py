"""The VSMT mode QEMU asks KVM for (hw/ppc/spapr.c spapr_set_vsmt_mode).

Expected texts: what QEMU 7.2 printed under -accel kvm inside the KVM-PR and nested KVM-HV
guests (tests/powerguest/kvm_oracle.py, cases machines-* of kvm_cases.toml): on KVM-PR,
pseries-2.12 and pseries-3.0 print "warning: Failed to set KVM's VSMT mode to 8 (errno -22)"
and start; pseries-5.2 and later do not ask; nested KVM-HV takes mode 8 silently.
"""

from __future__ import annotations

import pytest

from kvmppc.policy import CheckRequest, check
from kvmppc.profiles import load_profile

WARNING = "warning: Failed to set KVM's VSMT mode to 8 (errno -22)"


@pytest.mark.parametrize("machine", ["pseries-3.0", "pseries-3.1", "pseries-4.1"])
def test_pr_warns_for_machines_that_ask_for_vsmt_8(machine: str) -> None:
    result = check(load_profile("power8-hash-pr"),
                   CheckRequest(machine=machine, accel="kvm", max_page_size="64k",
                                qemu_version="7.2"))
    assert result.qemu_output[:1] == (WARNING,)


@pytest.mark.parametrize("machine", ["pseries-4.2", "pseries-5.2", "pseries-7.2"])
def test_pr_newer_machines_ask_for_their_threads(machine: str) -> None:
    result = check(load_profile("power8-hash-pr"),
                   CheckRequest(machine=machine, accel="kvm", max_page_size="64k",
                                qemu_version="7.2"))
    assert WARNING not in result.qemu_output


@pytest.mark.parametrize("profile", ["power9-radix-hv", "power10-radix-hv"])
def test_hv_takes_vsmt_8(profile: str) -> None:
    result = check(load_profile(profile), CheckRequest(machine="pseries-3.0", accel="kvm",
                                                  qemu_version="7.2"))
    assert WARNING not in result.qemu_output


def test_tcg_does_not_ask() -> None:
    result = check(load_profile("power8-hash-pr"),
                   CheckRequest(machine="pseries-3.0", accel="tcg", cpu="power8",
                                qemu_version="7.2"))
    assert WARNING not in result.qemu_output


# Not VSMT, but the same start-up phase's CPU choice under KVM (target/ppc/kvm.c
# kvm_ppc_register_host_cpu_type): the host family's alias means the host's CPU.  From the
# Debian 13 guest's real QEMU 10.0 run (power9-hv-debian13, cpu-models): -cpu POWER9, whose
# 10.0 model is power9_v2.2, started on the POWER9 v2.0 KVM-HV host and then met the 4 KiB
# pages; -cpu POWER10 did not.
def test_the_host_familys_alias_is_the_host_cpu_under_kvm() -> None:
    probe = load_profile("power9-radix-hv-4k")
    result = check(probe, CheckRequest(cpu="POWER9", accel="kvm", qemu_version="10.0",
                                  machine="pseries-7.2", caps=("cap-fwnmi=off",)))
    assert result.cpu is not None and result.cpu.pvr == probe.host.pvr
    assert result.qemu_output == (
        "Can't support 64 kiB guest pages with 4 kiB host pages with this KVM implementation",)
    other = check(probe, CheckRequest(cpu="POWER10", accel="kvm", qemu_version="10.0",
                                 machine="pseries-7.2", caps=("cap-fwnmi=off",)))
    assert other.qemu_output[0].startswith("Register sync failed...")

"""kvmppc on real POWER kernels: a ppc64le guest under qemu-system-ppc64 (tests/powerguest).

Each guest configuration boots once per session and runs the whole battery
(tests/powerguest/battery.py); the tests below assert on what each command printed there.
Nested KVM-HV runs on Debian's own ppc64el kernel with POWER9 and POWER10; KVM-PR needs the
kernel tests/powerguest/build-pr-kernel.sh builds (opt-in: about 7 min) and skips without it.
Expected answers: ../shared/reference/kvm-ppc-facts.md §5 and what these kernels answered.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.powerguest import harness
from tests.powerguest.harness import CONFIGS, GuestResult, GuestRun

pytestmark = pytest.mark.powerguest

PROFILES = Path(harness.REPO, "kvmppc", "profiles")

# Request numbers as powerpc's _IOC encodes them (arch/powerpc/include/uapi/asm/ioctl.h):
# direction NONE/READ/WRITE = 1/2/4 in bits 29-31, 13 size bits.
POWERPC_REQUEST_NUMBERS = {
    "KVM_GET_API_VERSION": 0x2000AE00,
    "KVM_CREATE_VM": 0x2000AE01,
    "KVM_CHECK_EXTENSION": 0x2000AE03,
    "KVM_PPC_GET_SMMU_INFO": 0x4250AEA6,
    "KVM_PPC_GET_RMMU_INFO": 0x8060AEB0,
    "KVM_PPC_GET_CPU_CHAR": 0x4020AEB1,
}

# kvm_vm_ioctl_get_smmu_info_hv (book3s_hv.c), nested: NO_HASH added (kvmhv_on_pseries()).
NESTED_HV_SMMU = {
    "flags": 0x7,  # PAGE_SIZES_REAL | 1T_SEGMENTS | NO_HASH
    "slb_size": 32,
    "data_keys": 32,
    "instr_keys": 32,
    "segments": [
        {"page_shift": 12, "slb_enc": 0x0, "enc": [[12, 0x0], [24, 0x38]]},
        {"page_shift": 16, "slb_enc": 0x110, "enc": [[16, 0x1], [24, 0x8]]},
        {"page_shift": 24, "slb_enc": 0x100, "enc": [[24, 0x0]]},
    ],
}
# kvmhv_get_rmmu_info (book3s_64_mmu_radix.c): 4K and 64K geometries; AP for 4K/64K/2M/1G.
RADIX_RMMU = {
    "geometries": [[12, [9, 9, 9, 13]], [16, [5, 9, 9, 13]]],
    "ap_encodings": [0xC, 0xA0000010, 0x20000015, 0x4000001E],
}
# kvm_vm_ioctl_get_smmu_info_pr (book3s_pr.c) for a VM with no vCPU yet: no 64K row, no 1T.
PR_SMMU = {
    "flags": 0x0,
    "slb_size": 64,
    "data_keys": 0,
    "instr_keys": 0,
    "segments": [
        {"page_shift": 12, "slb_enc": 0x0, "enc": [[12, 0x0]]},
        {"page_shift": 24, "slb_enc": 0x100, "enc": [[24, 0x0]]},
    ],
}

def ok(run: GuestRun, name: str) -> GuestResult:
    """The result of command ``name``, which must have exited 0."""
    try:
        result = run.result(name)
    except harness.HarnessError as exc:
        pytest.fail(str(exc))
    assert result.rc == 0, f"{run.config.name}: {name} exited {result.rc}:\n{result.output}"
    return result


def raw(run: GuestRun) -> dict[str, Any]:
    data: dict[str, Any] = ok(run, "raw-ioctls").json()
    return data


def probe_smmu_as_raw(smmu: dict[str, Any]) -> dict[str, Any]:
    """The probe's SMMU JSON in raw_ioctls.py's shape, to compare the two directly."""
    return {
        "flags": smmu["flags"],
        "slb_size": smmu["slb_size"],
        "data_keys": smmu["data_keys"],
        "instr_keys": smmu["instr_keys"],
        "segments": [
            {"page_shift": seg["page_shift"], "slb_enc": seg["slb_enc"],
             "enc": [[page["page_shift"], page["pte_enc"]] for page in seg["pages"]]}
            for seg in smmu["segments"]
        ],
    }


# Fields of a probe that change from one probe to the next on the same kernel: when and how
# long, which kvmppc took it, and the hugepage counts that guests come and go with. The kernel
# release is where the profile came from (Debian's ABI number moves on with point releases),
# so it is reported, not compared.
def comparable(probe: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(probe)
    for volatile in ("probed_at", "duration_s", "kvmppc_version", "source"):
        data.pop(volatile, None)
    data["host"].pop("kernel_release", None)
    data["host"].pop("qemu_version", None)  # the userland's QEMU, not the kernel's answer
    data["host"].pop("memory", None)  # this boot's RAM and commit charge (profiles keep none)
    for pool in data["hugepages"]["pools"]:
        for count in ("free", "reserved", "surplus"):
            pool.pop(count, None)
    return data


# --------------------------------------------------------------------------------------------
# every guest


def test_kvm_modules_load_and_dev_kvm_appears(any_guest: GuestRun) -> None:
    """insmod of kvm and kvm-hv/kvm-pr succeeds in the guest and /dev/kvm exists."""
    init = ok(any_guest, "_init")
    for module in any_guest.config.modules:
        assert f"{module}: loaded" in init.output, init.output
    assert "/dev/kvm" in init.output


def test_compiled_request_numbers_are_powerpc_encodings(any_guest: GuestRun) -> None:
    """The cross-compiled extension holds powerpc's request numbers, not x86's."""
    report = raw(any_guest)
    assert report["machine"] == "ppc64le"
    numbers = {name: report["numbers"][name] for name in POWERPC_REQUEST_NUMBERS}
    assert {k: hex(v) for k, v in numbers.items()} == {
        k: hex(v) for k, v in POWERPC_REQUEST_NUMBERS.items()}


def test_smmu_info_struct_is_592_bytes_on_ppc64le(any_guest: GuestRun) -> None:
    sizes = raw(any_guest)["sizes"]
    assert sizes["struct kvm_ppc_smmu_info"] == 592
    assert sizes["struct kvm_ppc_rmmu_info"] == 96
    assert sizes["struct kvm_ppc_cpu_char"] == 32


def test_ioctl_table_equals_the_powerpc_compiler(any_guest: GuestRun) -> None:
    """kvmppc.ioctls' powerpc numbers and sizes equal what the powerpc compiler encoded."""
    check = ok(any_guest, "ioctl-table").json()
    assert check["compiled"] == check["table"]
    assert check["compiled"]["KVM_PPC_GET_SMMU_INFO"] == 0x4250AEA6
    assert check["sizes"]["struct kvm_ppc_smmu_info"] == 592


def test_no_fd_leak_over_many_probes(any_guest: GuestRun) -> None:
    """Every /dev/kvm and VM fd a probe opens is closed again."""
    leak = ok(any_guest, "fd-leak").json()
    assert leak["probes"] >= 50
    assert leak["fds_after"] == leak["fds_before"]


def test_probe_equals_the_shipped_profile(any_guest: GuestRun) -> None:
    """kvmppc/profiles/<cpu>-<mmu>-<kind>.json is what this kernel answers now."""
    probe = ok(any_guest, "probe-json").json()
    name = harness.profile_name(any_guest.config, probe)
    path = PROFILES / f"{name}.json"
    assert path.exists(), (
        f"no shipped profile {path.name} for {any_guest.config.name}: run"
        " 'python3 -m tests.powerguest.harness capture-profiles'")
    shipped = json.loads(path.read_text())
    assert comparable(probe) == comparable(shipped), (
        f"{path.name} (from kernel {shipped['host'].get('kernel_release')}) differs from what"
        f" kernel {any_guest.kernel_release} answers now; if the kernel is right, recapture"
        " with 'python3 -m tests.powerguest.harness capture-profiles'")


def test_every_shipped_profile_has_a_guest_that_reproduces_it() -> None:
    """Each captured profile is a real kernel's answer: a guest config of the harness
    produces it.  A derived one (no such host here) says so and names the captured profile
    it is derived from."""
    for path in sorted(PROFILES.glob("*.json")):
        profile = json.loads(path.read_text())
        provenance = profile.get("provenance") or {}
        if provenance.get("kind") == "derived":
            assert profile["source"] == "derived", path.name
            assert (PROFILES / f"{provenance['derived_from']}.json").exists(), path.name
            continue
        producers = [c for c in CONFIGS.values() if harness.profile_name(c, profile) == path.stem]
        assert producers, f"{path.name}: no guest config captures it (see CONFIGS in harness.py)"


# --------------------------------------------------------------------------------------------
# nested KVM-HV (POWER9, POWER10)


def test_hv_smmu_info_is_the_nested_hv_answer(hv_guest: GuestRun) -> None:
    """KVM_PPC_GET_SMMU_INFO on HV and default VMs: REAL|1T|NO_HASH, 32 SLB, 4K/64K/16M+MPSS."""
    vm_types = raw(hv_guest)["vm_types"]
    for vm_type in ("0", "1"):
        assert vm_types[vm_type]["create"] == "ok"
        assert vm_types[vm_type]["smmu"] == NESTED_HV_SMMU, f"VM type {vm_type}"


def test_hv_rmmu_info_is_the_radix_answer(hv_guest: GuestRun) -> None:
    assert raw(hv_guest)["vm_types"]["1"]["rmmu"] == RADIX_RMMU


def test_hv_kernel_refuses_a_pr_vm(hv_guest: GuestRun) -> None:
    """With only kvm-hv loaded, KVM_CREATE_VM(KVM_VM_PPC_PR) fails with EINVAL."""
    assert raw(hv_guest)["vm_types"]["2"]["create"] == {"errno": "EINVAL"}


def test_hv_probe_reports_what_the_kernel_answered(hv_guest: GuestRun) -> None:
    """kvmppc probe --json: the HV VM type lands on HV with the raw SMMU and RMMU answers."""
    probe = ok(hv_guest, "probe-json").json()
    kvm = probe["kvm"]
    assert kvm["powerpc"] is True
    assert kvm["api_version"] == 12
    assert kvm["caps"]["PPC_NESTED_HV"] == 1
    hv_vm = kvm["vm_types"]["hv"]
    assert hv_vm["available"] is True and hv_vm["is_pr"] is False
    assert probe_smmu_as_raw(hv_vm["smmu"]) == NESTED_HV_SMMU
    rmmu = hv_vm["rmmu"]
    assert [[g["page_shift"], g["level_bits"]] for g in rmmu["geometries"]] == \
        RADIX_RMMU["geometries"]
    assert rmmu["ap_encodings"] == RADIX_RMMU["ap_encodings"]
    assert kvm["vm_types"]["pr"]["available"] is False
    assert probe["host"]["mmu"] == "radix"


# --------------------------------------------------------------------------------------------
# KVM-PR (POWER8, the kernel from build-pr-kernel.sh)


def test_pr_smmu_info_is_the_pr_answer(pr_guest: GuestRun) -> None:
    """KVM_PPC_GET_SMMU_INFO on a PR VM without vCPUs: no REAL flag, 64 SLB, 4K and 16M."""
    vm_types = raw(pr_guest)["vm_types"]
    for vm_type in ("0", "2"):
        assert vm_types[vm_type]["create"] == "ok"
        assert vm_types[vm_type]["smmu"] == PR_SMMU, f"VM type {vm_type}"


def test_pr_kernel_refuses_an_hv_vm_and_rmmu_info(pr_guest: GuestRun) -> None:
    vm_types = raw(pr_guest)["vm_types"]
    assert vm_types["1"]["create"] == {"errno": "EINVAL"}
    assert vm_types["2"]["rmmu"] == {"errno": "EINVAL"}  # not radix: kvmhv_get_rmmu_info


def test_pr_probe_reports_what_the_kernel_answered(pr_guest: GuestRun) -> None:
    probe = ok(pr_guest, "probe-json").json()
    pr_vm = probe["kvm"]["vm_types"]["pr"]
    assert pr_vm["available"] is True and pr_vm["is_pr"] is True
    assert probe_smmu_as_raw(pr_vm["smmu"]) == PR_SMMU
    assert probe["kvm"]["vm_types"]["hv"]["available"] is False
    assert probe["host"]["mmu"] == "hash"

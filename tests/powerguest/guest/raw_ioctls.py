"""Run in the POWER guest: ask the kernel directly through kvmppc's compiled cffi module.

This deliberately bypasses kvmppc's own door (kvmppc._kvm) so that the host test compares
the package's answers with the raw kernel answer. Prints one JSON object: the compiled
request numbers and struct sizes, the system fd's answers, and per KVM_CREATE_VM type the
SMMU, RMMU and CPU_CHAR answers or the errno each ioctl failed with.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from kvmppc._kvmppc_cffi import ffi, lib  # type: ignore[import-not-found]  # cffi-built

NUMBERS = (
    "KVM_GET_API_VERSION",
    "KVM_CREATE_VM",
    "KVM_CHECK_EXTENSION",
    "KVM_PPC_GET_PVINFO",
    "KVM_PPC_GET_SMMU_INFO",
    "KVM_PPC_GET_RMMU_INFO",
    "KVM_PPC_GET_CPU_CHAR",
)
STRUCTS = (
    "struct kvm_ppc_smmu_info",
    "struct kvm_ppc_rmmu_info",
    "struct kvm_ppc_cpu_char",
    "struct kvm_ppc_pvinfo",
)
# KVM_CAP_* numbers, include/uapi/linux/kvm.h (ABI-stable).
CAPS = {"PPC_GET_SMMU_INFO": 78, "PPC_HTAB_FD": 84, "PPC_MMU_RADIX": 134,
        "PPC_MMU_HASH_V3": 135, "PPC_GET_CPU_CHAR": 151, "PPC_NESTED_HV": 160}


def failed(ret: int) -> dict[str, Any] | None:
    if ret >= 0:
        return None
    number = ffi.errno
    return {"errno": errno.errorcode.get(number, str(number))}


def smmu(vm_fd: int) -> dict[str, Any]:
    info = ffi.new("struct kvm_ppc_smmu_info *")
    error = failed(lib.ioctl_KVM_PPC_GET_SMMU_INFO(vm_fd, info))
    if error:
        return error
    segments = [
        {
            "page_shift": sps.page_shift,
            "slb_enc": sps.slb_enc,
            "enc": [[e.page_shift, e.pte_enc] for e in sps.enc if e.page_shift],
        }
        for sps in info.sps
        if sps.page_shift
    ]
    return {"flags": info.flags, "slb_size": info.slb_size, "data_keys": info.data_keys,
            "instr_keys": info.instr_keys, "segments": segments}


def rmmu(vm_fd: int) -> dict[str, Any]:
    info = ffi.new("struct kvm_ppc_rmmu_info *")
    error = failed(lib.ioctl_KVM_PPC_GET_RMMU_INFO(vm_fd, info))
    if error:
        return error
    return {
        "geometries": [[g.page_shift, list(g.level_bits)] for g in info.geometries
                       if g.page_shift],
        "ap_encodings": [ap for ap in info.ap_encodings if ap],
    }


def cpu_char(vm_fd: int) -> dict[str, Any]:
    info = ffi.new("struct kvm_ppc_cpu_char *")
    error = failed(lib.ioctl_KVM_PPC_GET_CPU_CHAR(vm_fd, info))
    if error:
        return error
    return {"character": info.character, "behaviour": info.behaviour,
            "character_mask": info.character_mask, "behaviour_mask": info.behaviour_mask}


def main() -> None:
    report: dict[str, Any] = {
        "machine": os.uname().machine,
        "numbers": {name: int(getattr(lib, name)) for name in NUMBERS},
        "sizes": {name: ffi.sizeof(name) for name in STRUCTS},
    }
    sys_fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        report["api_version"] = lib.ioctl_KVM_GET_API_VERSION(sys_fd)
        report["caps"] = {name: lib.ioctl_KVM_CHECK_EXTENSION(sys_fd, cap)
                          for name, cap in CAPS.items()}
        vm_types: dict[str, Any] = {}
        for vm_type in (0, 1, 2):
            vm_fd = lib.ioctl_KVM_CREATE_VM(sys_fd, vm_type)
            error = failed(vm_fd)
            if error:
                vm_types[str(vm_type)] = {"create": error}
                continue
            try:
                vm_types[str(vm_type)] = {"create": "ok", "smmu": smmu(vm_fd),
                                          "rmmu": rmmu(vm_fd), "cpu_char": cpu_char(vm_fd)}
            finally:
                os.close(vm_fd)
        report["vm_types"] = vm_types
    finally:
        os.close(sys_fd)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Types of the module cffi compiles from kvmppc/_ioctl_build.py (API mode).

Written by hand from that file's CDEF, which is the single source of what ``lib`` holds:
each ``#define NAME ...`` is an int the compiler computed, each wrapper returns what
ioctl(2) / statfs(2) return.  Keep the two in step (``tests/test_packaging.py`` checks that
every name in the CDEF is declared here).
"""

from typing import Any

from _cffi_backend import CType
from cffi import FFI

class _FFI(FFI):
    # The structs' fields are the CDATA's attributes, which no stub can list for every
    # cdecl string: new() answers Any, the rest of FFI keeps its types (types-cffi).
    def new(self, cdecl: str | CType, init: Any = None) -> Any: ...

ffi: _FFI

class _Lib:
    # The wrappers are named after the kernel's macros (N802 waived).
    KVM_API_VERSION: int
    KVM_PPC_PAGE_SIZES_MAX_SZ: int
    KVM_PPC_PAGE_SIZES_REAL: int
    KVM_PPC_1T_SEGMENTS: int
    KVM_PPC_NO_HASH: int
    KVM_VM_PPC_HV: int
    KVM_VM_PPC_PR: int
    KVM_CAP_SYNC_MMU: int
    KVM_CAP_PPC_GET_PVINFO: int
    KVM_CAP_PPC_GET_SMMU_INFO: int
    KVM_CAP_PPC_ALLOC_HTAB: int
    KVM_CAP_PPC_HTAB_FD: int
    KVM_CAP_PPC_RTAS: int
    KVM_CAP_CHECK_EXTENSION_VM: int
    KVM_CAP_PPC_HTM: int
    KVM_CAP_SPAPR_RESIZE_HPT: int
    KVM_CAP_PPC_MMU_RADIX: int
    KVM_CAP_PPC_MMU_HASH_V3: int
    KVM_CAP_PPC_FWNMI: int
    KVM_CAP_PPC_SMT: int
    KVM_CAP_PPC_SMT_POSSIBLE: int
    KVM_CAP_PPC_GET_CPU_CHAR: int
    KVM_CAP_PPC_NESTED_HV: int
    KVM_CAP_PPC_SECURE_GUEST: int
    KVM_CAP_PPC_DAWR1: int
    KVM_CAP_PPC_AIL_MODE_3: int
    KVM_GET_API_VERSION: int
    KVM_CREATE_VM: int
    KVM_CHECK_EXTENSION: int
    KVM_PPC_GET_PVINFO: int
    KVM_PPC_GET_SMMU_INFO: int
    KVM_PPC_GET_RMMU_INFO: int
    KVM_PPC_GET_CPU_CHAR: int
    HUGETLBFS_MAGIC: int

    def ioctl_KVM_GET_API_VERSION(self, sys_fd: int, /) -> int: ...  # noqa: N802
    def ioctl_KVM_CHECK_EXTENSION(self, fd: int, cap: int, /) -> int: ...  # noqa: N802
    def ioctl_KVM_CREATE_VM(self, sys_fd: int, type: int, /) -> int: ...  # noqa: N802
    def ioctl_KVM_PPC_GET_SMMU_INFO(self, vm_fd: int, info: FFI.CData, /) -> int: ...  # noqa: N802
    def ioctl_KVM_PPC_GET_RMMU_INFO(self, vm_fd: int, info: FFI.CData, /) -> int: ...  # noqa: N802
    def ioctl_KVM_PPC_GET_CPU_CHAR(self, vm_fd: int, cpu_char: FFI.CData, /) -> int: ...  # noqa: N802
    def ioctl_KVM_PPC_GET_PVINFO(self, vm_fd: int, pvinfo: FFI.CData, /) -> int: ...  # noqa: N802
    def kvmppc_statfs(
        self, path: bytes, f_type: FFI.CData, f_bsize: FFI.CData, /
    ) -> int: ...

lib: _Lib

"""The one door to the kernel: owns KVM file descriptors, issues the ioctls, checks every
return value, and hands back frozen dataclasses and ints.

Nothing else in kvmppc imports the compiled cffi module.  Errors are translated only where
the errno means something specific (see ``kvmppc.errors``); everything else is raised as a
``KvmOSError`` carrying errno, operation and path.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kvmppc._kvmppc_cffi import ffi, lib  # built by cffi; types in _kvmppc_cffi.pyi
from kvmppc.errors import (
    KvmNotLoadedError,
    KvmOSError,
    KvmPermissionError,
    NotPowerPCKvmError,
    VmTypeUnavailableError,
)
from kvmppc.ioctls import IOCTLS, Cap, VmType
from kvmppc.model import (
    CpuChar,
    PageSize,
    PvInfo,
    RadixGeometry,
    RmmuInfo,
    SegmentPageSizes,
    SmmuInfo,
)

DEFAULT_DEVICE = "/dev/kvm"

# errnos with which a PowerPC-only ioctl says "not here": ENOTTY from the generic KVM ioctl
# dispatch on other architectures, EINVAL from old powerpc kernels lacking the request.
_NOT_PPC_ERRNOS = (errno.ENOTTY, errno.EINVAL)


def compiled_ioctl_numbers() -> dict[str, int]:
    """Request numbers as this build's compiler encoded them, by kernel macro name."""
    return {ioctl.name: int(getattr(lib, ioctl.name)) for ioctl in IOCTLS}


def compiled_struct_sizes() -> dict[str, int]:
    """``sizeof`` of each ioctl argument struct in this build."""
    return {
        ioctl.argument: int(ffi.sizeof(ioctl.argument))
        for ioctl in IOCTLS
        if ioctl.argument is not None
    }


def compiled_caps() -> dict[str, int]:
    """``KVM_CAP_*`` values from the compiled header, for the caps in :class:`Cap`."""
    return {cap.name: int(getattr(lib, f"KVM_CAP_{cap.name}")) for cap in Cap}


def _smmu_from_cdata(info: Any) -> SmmuInfo:
    segments = []
    for sps in info.sps:
        if sps.page_shift == 0:  # api.rst: an unused row has page_shift 0; rows are in order
            break
        pages = tuple(
            PageSize(int(enc.page_shift), int(enc.pte_enc))
            for enc in sps.enc
            if enc.page_shift != 0
        )
        segments.append(SegmentPageSizes(int(sps.page_shift), int(sps.slb_enc), pages))
    return SmmuInfo(
        flags=int(info.flags),
        slb_size=int(info.slb_size),
        data_keys=int(info.data_keys),
        instr_keys=int(info.instr_keys),
        segments=tuple(segments),
    )


def decode_smmu_info(raw: bytes) -> SmmuInfo:
    """Decode a native-endian ``struct kvm_ppc_smmu_info`` as the kernel copies it out."""
    size = ffi.sizeof("struct kvm_ppc_smmu_info")
    if len(raw) != size:
        raise ValueError(f"struct kvm_ppc_smmu_info is {size} bytes, got {len(raw)}")
    info = ffi.new("struct kvm_ppc_smmu_info *")
    ffi.memmove(info, raw, size)
    return _smmu_from_cdata(info)


def decode_rmmu_info(raw: bytes) -> RmmuInfo:
    """Decode a native-endian ``struct kvm_ppc_rmmu_info``."""
    size = ffi.sizeof("struct kvm_ppc_rmmu_info")
    if len(raw) != size:
        raise ValueError(f"struct kvm_ppc_rmmu_info is {size} bytes, got {len(raw)}")
    info = ffi.new("struct kvm_ppc_rmmu_info *")
    ffi.memmove(info, raw, size)
    return _rmmu_from_cdata(info)


def _rmmu_from_cdata(info: Any) -> RmmuInfo:
    geometries = tuple(
        RadixGeometry(int(geom.page_shift), tuple(int(bits) for bits in geom.level_bits))
        for geom in info.geometries
        if geom.page_shift != 0
    )
    return RmmuInfo(geometries, tuple(int(ap) for ap in info.ap_encodings if ap != 0))


class _Fd:
    """An owned file descriptor with the path it stands for (for error messages)."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise KvmOSError(errno.EBADF, "use", self.path, "the descriptor is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _check(self, ret: int, operation: str) -> int:
        if ret < 0:
            raise KvmOSError(ffi.errno, operation, self.path)
        return ret

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if absent, else a cap-specific positive value."""
        return self._check(lib.ioctl_KVM_CHECK_EXTENSION(self.fd, int(cap)), "KVM_CHECK_EXTENSION")


class KvmDevice(_Fd):
    """The system fd: ``/dev/kvm`` opened read-write, close-on-exec."""

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        try:
            # os.open makes the fd non-inheritable (O_CLOEXEC), PEP 446.
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmNotLoadedError(path) from None
        except PermissionError as exc:
            raise KvmPermissionError(exc.errno or errno.EACCES, path) from None
        except OSError as exc:
            raise KvmOSError(exc.errno or errno.EIO, "open", path) from None
        super().__init__(fd, path)

    def __enter__(self) -> KvmDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        return self._check(lib.ioctl_KVM_GET_API_VERSION(self.fd), "KVM_GET_API_VERSION")

    def create_vm(self, vm_type: int = VmType.DEFAULT) -> Vm:
        """KVM_CREATE_VM.  On powerpc EINVAL means that implementation is not available."""
        ret = lib.ioctl_KVM_CREATE_VM(self.fd, int(vm_type))
        if ret < 0:
            err = ffi.errno
            operation = f"KVM_CREATE_VM({int(vm_type)})"
            if err == errno.EINVAL:
                raise VmTypeUnavailableError(
                    err,
                    operation,
                    self.path,
                    "this KVM has no such VM type: load kvm_hv for HV, kvm_pr for PR",
                )
            raise KvmOSError(err, operation, self.path)
        return Vm(ret, f"{self.path} (VM type {int(vm_type)})")


class Vm(_Fd):
    """A VM fd.  PowerPC-only ioctls that fail with ENOTTY/EINVAL raise NotPowerPCKvmError."""

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ppc_call(self, operation: str, ret: int, not_ppc: bool = True) -> None:
        if ret < 0:
            err = ffi.errno
            if not_ppc and err in _NOT_PPC_ERRNOS:
                raise NotPowerPCKvmError(err, operation, self.path)
            raise KvmOSError(err, operation, self.path)

    def get_smmu_info(self) -> SmmuInfo:
        info = ffi.new("struct kvm_ppc_smmu_info *")
        self._ppc_call("KVM_PPC_GET_SMMU_INFO", lib.ioctl_KVM_PPC_GET_SMMU_INFO(self.fd, info))
        return _smmu_from_cdata(info)

    def get_rmmu_info(self) -> RmmuInfo:
        """Radix MMU info.  On powerpc, EINVAL means the host is not radix (book3s_64_mmu_radix.c
        kvmhv_get_rmmu_info) or the VM is PR, so it is not reported as "not PowerPC"."""
        info = ffi.new("struct kvm_ppc_rmmu_info *")
        ret = lib.ioctl_KVM_PPC_GET_RMMU_INFO(self.fd, info)
        if ret < 0 and ffi.errno == errno.EINVAL:
            raise KvmOSError(
                errno.EINVAL,
                "KVM_PPC_GET_RMMU_INFO",
                self.path,
                "no radix MMU information: the host runs hash, or this is a PR VM",
            )
        self._ppc_call("KVM_PPC_GET_RMMU_INFO", ret)
        return _rmmu_from_cdata(info)

    def get_cpu_char(self) -> CpuChar:
        cpu_char = ffi.new("struct kvm_ppc_cpu_char *")
        self._ppc_call("KVM_PPC_GET_CPU_CHAR", lib.ioctl_KVM_PPC_GET_CPU_CHAR(self.fd, cpu_char))
        return CpuChar(
            int(cpu_char.character),
            int(cpu_char.behaviour),
            int(cpu_char.character_mask),
            int(cpu_char.behaviour_mask),
        )

    def get_pvinfo(self) -> PvInfo:
        pvinfo = ffi.new("struct kvm_ppc_pvinfo *")
        self._ppc_call("KVM_PPC_GET_PVINFO", lib.ioctl_KVM_PPC_GET_PVINFO(self.fd, pvinfo))
        return PvInfo(int(pvinfo.flags), tuple(int(word) for word in pvinfo.hcall))


@contextmanager
def open_kvm(path: str = DEFAULT_DEVICE) -> Iterator[KvmDevice]:
    """Open the KVM device for the duration of a ``with`` block."""
    device = KvmDevice(path)
    try:
        yield device
    finally:
        device.close()


def raw_ioctl_check_extension(fd: int, cap: int) -> int:
    """KVM_CHECK_EXTENSION on a caller-owned fd; for tests of error paths (EBADF, ENOTTY)."""
    ret = lib.ioctl_KVM_CHECK_EXTENSION(fd, int(cap))
    if ret < 0:
        raise KvmOSError(ffi.errno, "KVM_CHECK_EXTENSION", f"fd {fd}")
    return int(ret)


HUGETLBFS_MAGIC = int(lib.HUGETLBFS_MAGIC)


def statfs_type_and_block_size(path: str) -> tuple[int, int]:
    """``statfs(path)``'s ``f_type`` and ``f_bsize``: what QEMU's qemu_mempath_getpagesize
    reads (a hugetlbfs mount reports its huge page size as ``f_bsize``)."""
    f_type = ffi.new("uint64_t *")
    f_bsize = ffi.new("uint64_t *")
    if lib.kvmppc_statfs(os.fsencode(path), f_type, f_bsize) < 0:
        raise KvmOSError(ffi.errno, "statfs", path)
    return int(f_type[0]), int(f_bsize[0])

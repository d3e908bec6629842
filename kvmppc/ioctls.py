"""The KVM ioctls and capabilities kvmppc uses, computed in Python for both encodings.

The request numbers the binding actually issues come from the compiler (``kvmppc._kvm``);
this table exists so the numbers can be explained and checked: the generic ``_IOC`` layout
is computed with python-ioctl-opt, powerpc's with its own layout, which ioctl-opt does not
know (arch/powerpc/include/uapi/asm/ioctl.h: 13 size bits, 3 direction bits,
``_IOC_NONE``/``_IOC_READ``/``_IOC_WRITE`` = 1/2/4).  ``tests/test_ioctl_table.py`` checks
the table against the compiled values here and the powerpc ones under a POWER guest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import ioctl_opt

KVMIO = 0xAE


class Direction(enum.Enum):
    """The ``_IO``/``_IOR``/``_IOW``/``_IOWR`` macro a request is declared with."""

    NONE = "_IO"
    READ = "_IOR"
    WRITE = "_IOW"
    READ_WRITE = "_IOWR"


# Direction bits per encoding: include/uapi/asm-generic/ioctl.h and powerpc's asm/ioctl.h.
_GENERIC_DIR = {
    Direction.NONE: ioctl_opt.IOC_NONE,
    Direction.READ: ioctl_opt.IOC_READ,
    Direction.WRITE: ioctl_opt.IOC_WRITE,
    Direction.READ_WRITE: ioctl_opt.IOC_READ | ioctl_opt.IOC_WRITE,
}
_POWERPC_DIR = {
    Direction.NONE: 1,
    Direction.READ: 2,
    Direction.WRITE: 4,
    Direction.READ_WRITE: 2 | 4,
}
_POWERPC_SIZEBITS = 13
_POWERPC_DIRSHIFT = 16 + _POWERPC_SIZEBITS


def generic_ioc(direction: Direction, type_: int, nr: int, size: int) -> int:
    """The request number with the asm-generic layout (x86, arm64, s390, ...)."""
    return int(ioctl_opt.IOC(_GENERIC_DIR[direction], type_, nr, size))


def powerpc_ioc(direction: Direction, type_: int, nr: int, size: int) -> int:
    """The request number with powerpc's layout."""
    if not 0 <= size < 1 << _POWERPC_SIZEBITS:
        raise ValueError(f"size {size} does not fit powerpc's {_POWERPC_SIZEBITS} size bits")
    if not (0 <= type_ <= 0xFF and 0 <= nr <= 0xFF):
        raise ValueError(f"type {type_:#x} and nr {nr:#x} must each fit in 8 bits")
    return (_POWERPC_DIR[direction] << _POWERPC_DIRSHIFT) | (size << 16) | (type_ << 8) | nr


@dataclass(frozen=True)
class Ioctl:
    """One request as the kernel header declares it."""

    name: str
    direction: Direction
    nr: int
    argument: str | None  # C type of the argument the size is taken from, None for _IO
    size: int  # sizeof(argument), from the kernel's layout; 0 for _IO

    @property
    def generic(self) -> int:
        return generic_ioc(self.direction, KVMIO, self.nr, self.size)

    @property
    def powerpc(self) -> int:
        return powerpc_ioc(self.direction, KVMIO, self.nr, self.size)

    def for_arch(self, machine: str) -> int:
        """The number for ``os.uname().machine`` (``ppc64``, ``ppc64le``, ``x86_64``, ...)."""
        return self.powerpc if machine.startswith(("ppc", "powerpc")) else self.generic


# The ioctls the binding wraps (include/uapi/linux/kvm.h). GET_PVINFO and GET_RMMU_INFO are
# declared _IOW although the kernel writes the struct; the numbers follow the declaration.
IOCTLS: tuple[Ioctl, ...] = (
    Ioctl("KVM_GET_API_VERSION", Direction.NONE, 0x00, None, 0),
    Ioctl("KVM_CREATE_VM", Direction.NONE, 0x01, None, 0),
    Ioctl("KVM_CHECK_EXTENSION", Direction.NONE, 0x03, None, 0),
    Ioctl("KVM_PPC_GET_PVINFO", Direction.WRITE, 0xA1, "struct kvm_ppc_pvinfo", 128),
    Ioctl("KVM_PPC_GET_SMMU_INFO", Direction.READ, 0xA6, "struct kvm_ppc_smmu_info", 592),
    Ioctl("KVM_PPC_GET_RMMU_INFO", Direction.WRITE, 0xB0, "struct kvm_ppc_rmmu_info", 96),
    Ioctl("KVM_PPC_GET_CPU_CHAR", Direction.READ, 0xB1, "struct kvm_ppc_cpu_char", 32),
)

IOCTLS_BY_NAME: dict[str, Ioctl] = {ioctl.name: ioctl for ioctl in IOCTLS}


class Cap(enum.IntEnum):
    """``KVM_CAP_*`` numbers kvmppc reports (ABI-stable, include/uapi/linux/kvm.h)."""

    SYNC_MMU = 16
    PPC_GET_PVINFO = 57
    PPC_GET_SMMU_INFO = 78
    PPC_ALLOC_HTAB = 80
    PPC_HTAB_FD = 84
    PPC_RTAS = 91
    CHECK_EXTENSION_VM = 105
    PPC_HTM = 132  # cap-htm=on under KVM needs it (hw/ppc/spapr_caps.c cap_htm_apply)
    SPAPR_RESIZE_HPT = 133
    PPC_MMU_RADIX = 134
    PPC_MMU_HASH_V3 = 135
    PPC_FWNMI = 146
    PPC_SMT_POSSIBLE = 147
    PPC_GET_CPU_CHAR = 151
    PPC_NESTED_HV = 160
    PPC_SECURE_GUEST = 181
    PPC_DAWR1 = 194
    PPC_AIL_MODE_3 = 210


class VmType(enum.IntEnum):
    """``KVM_CREATE_VM`` argument on powerpc (arch/powerpc/kvm/powerpc.c kvm_arch_init_vm)."""

    DEFAULT = 0  # HV if kvm_hv is loaded, else PR
    HV = 1  # KVM_VM_PPC_HV
    PR = 2  # KVM_VM_PPC_PR

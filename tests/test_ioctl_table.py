"""The Python ioctl table (python-ioctl-opt + powerpc's layout) against the compiler."""

from __future__ import annotations

import os

import pytest

from kvmppc import _kvm
from kvmppc.ioctls import IOCTLS, IOCTLS_BY_NAME, Cap, Direction, generic_ioc, powerpc_ioc

# Reference values, kvm-ppc-facts.md §2.2; the powerpc column was also compiled by
# powerpc64le-linux-gnu-gcc in the POWER guest prototype.
REFERENCE = {
    "KVM_GET_API_VERSION": (0x0000AE00, 0x2000AE00),
    "KVM_CREATE_VM": (0x0000AE01, 0x2000AE01),
    "KVM_CHECK_EXTENSION": (0x0000AE03, 0x2000AE03),
    "KVM_PPC_GET_PVINFO": (0x4080AEA1, 0x8080AEA1),
    "KVM_PPC_GET_SMMU_INFO": (0x8250AEA6, 0x4250AEA6),
    "KVM_PPC_GET_RMMU_INFO": (0x4060AEB0, 0x8060AEB0),
    "KVM_PPC_GET_CPU_CHAR": (0x8020AEB1, 0x4020AEB1),
}


def test_table_covers_every_wrapped_ioctl() -> None:
    assert set(IOCTLS_BY_NAME) == set(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_table_matches_reference_on_both_encodings(name: str) -> None:
    generic, powerpc = REFERENCE[name]
    assert IOCTLS_BY_NAME[name].generic == generic
    assert IOCTLS_BY_NAME[name].powerpc == powerpc


def test_table_matches_this_hosts_compiled_numbers() -> None:
    """The compiler is the authority: the table for this arch equals what cffi compiled."""
    machine = os.uname().machine
    compiled = _kvm.compiled_ioctl_numbers()
    assert compiled == {ioctl.name: ioctl.for_arch(machine) for ioctl in IOCTLS}


def test_struct_sizes_match_the_kernel_layout() -> None:
    assert _kvm.compiled_struct_sizes() == {
        ioctl.argument: ioctl.size for ioctl in IOCTLS if ioctl.argument is not None
    }
    assert _kvm.compiled_struct_sizes()["struct kvm_ppc_smmu_info"] == 592


def test_capability_numbers_match_the_header() -> None:
    assert _kvm.compiled_caps() == {cap.name: int(cap) for cap in Cap}


def test_powerpc_direction_bits_differ_from_generic() -> None:
    # _IO sets 0x20000000 on powerpc and nothing generically; READ and WRITE swap places.
    assert powerpc_ioc(Direction.NONE, 0xAE, 0, 0) == 0x2000AE00
    assert generic_ioc(Direction.READ, 0xAE, 1, 8) == 0x8008AE01
    assert powerpc_ioc(Direction.READ, 0xAE, 1, 8) == 0x4008AE01
    assert generic_ioc(Direction.WRITE, 0xAE, 1, 8) == 0x4008AE01
    assert powerpc_ioc(Direction.WRITE, 0xAE, 1, 8) == 0x8008AE01
    assert powerpc_ioc(Direction.READ_WRITE, 0xAE, 0xA7, 4) == 0xC004AEA7


def test_powerpc_size_field_has_13_bits() -> None:
    assert powerpc_ioc(Direction.READ, 0xAE, 0, (1 << 13) - 1) == 0x5FFFAE00
    with pytest.raises(ValueError, match="13 size bits"):
        powerpc_ioc(Direction.READ, 0xAE, 0, 1 << 13)

"""The shape of one QEMU version's facts (plain data: no policy code imported here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuRow:
    """A CPU model with an sPAPR core (hw/ppc/spapr_cpu_core.c ``spapr_cpu_core_type_infos``).

    ``isa`` is the level ``ppc_type_check_compat()`` tests (201, 203, 206, 207, 300, 310) and
    ``hash64`` which ``PPCHash64Options`` the class points at ("basic" for 970 and POWER5+,
    "POWER7" for every later model; target/ppc/mmu-hash64.c).
    """

    name: str
    pvr: int
    family: str
    isa: int
    hash64: str


@dataclass(frozen=True)
class MachineRow:
    """One ``pseries-X.Y`` machine type: its default CPU model and whether QEMU deprecates it."""

    name: str
    version: tuple[int, int]
    default_cpu: str
    deprecated: bool = False


@dataclass(frozen=True)
class Messages:
    """Messages that differ between versions, word for word (``{name}``: the value given)."""

    unsupported_machine: str  # hw/core/machine.c / system/vl.c select_machine()
    deprecated_machine: str | None  # warn_report in system/vl.c, None: nothing deprecated
    # accel/kvm/kvm-all.c kvm_init when KVM_CREATE_VM fails (10.0 reports it through the
    # accelerator's Error, so with the option's location and without the errno's number)
    kvm_create_vm_failed: str = "ioctl(KVM_CREATE_VM) failed: 22 Invalid argument"


@dataclass(frozen=True)
class QemuTable:
    """Everything version-specific kvmppc needs about one QEMU release."""

    version: tuple[int, int]
    checked_with: str  # the package the facts were read from
    machines: Mapping[str, MachineRow]  # by name, without the "pseries" alias
    default_machine: str  # what "pseries" is an alias of
    cpus: Mapping[str, CpuRow]  # by name: the models a pseries machine accepts
    cpu_aliases: Mapping[str, str]  # target/ppc/cpu-models.c ppc_cpu_aliases -> pseries models
    # aliases ``-cpu help`` lists that ``-cpu`` refuses ("unable to find CPU model"): their
    # target is itself an alias, and ppc_cpu_class_by_name() resolves one level only
    cpu_aliases_listed_only: frozenset[str]
    host_family_by_pvr_version: Mapping[int, str]  # -cpu host: PVR >> 16 -> a model name
    messages: Messages
    # util/cutils.c do_strtosz: "7.2" (hex with a suffix warns, an exponent rejects the
    # fraction, no empty integral part) or "8.1" (Eric Blake's 2023 rewrite: hex with a
    # suffix is an error, "e" ends the fraction, ".5k" is accepted, underflow kept)
    strtosz: str
    # hw/ppc/spapr_caps.c capability_table: the cap names (without "cap-") in index order,
    # which is the order spapr_caps_apply() checks them at machine reset
    caps: tuple[str, ...] = ()
    # target/ppc/compat.c compat_table: the max-cpu-compat names, oldest first
    compat_modes: tuple[str, ...] = ()
    # the CPU families whose class accepts the "power7+" (ISA 2.06+) compat level, which
    # default_caps_with_cpu() asks before defaulting cap-sbbc to workaround (read from each
    # binary with qom-get: 7.2 POWER7 to POWER10, 10.0 POWER7 only)
    compat_2_06_plus: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def machine(self, name: str) -> MachineRow | None:
        """``-M NAME`` (exact, case included), the alias resolved."""
        if name == "pseries":
            return self.machines[self.default_machine]
        return self.machines.get(name)

"""The pseries machine types and CPU models, and how QEMU looks them up.

Which machines and models exist is each QEMU release's data (:mod:`kvmppc.qemu_versions`,
checked against the binaries); what is made of them here is the same for every release.
Machine versions come from hw/ppc/spapr.c (``DEFINE_SPAPR_MACHINE``); the CPU models a
pseries machine accepts are those with an sPAPR core type (hw/ppc/spapr_cpu_core.c), reached
by name, by alias (target/ppc/cpu-models.c ``ppc_cpu_aliases``) or by PVR
(target/ppc/cpu_init.c ``ppc_cpu_class_by_name``).  The models without an sPAPR core are the
same in 7.2 and 10.0 (tests/test_qemu_versions.py checks both).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from kvmppc.policy._qemu72_cpus import NON_SPAPR_NAMES, NON_SPAPR_PVRS
from kvmppc.policy.problems import ProblemKind, QemuRefusalError
from kvmppc.policy.sizes import _strtoull
from kvmppc.qemu_versions import MODELLED, NEWEST, CpuRow, MachineRow, QemuTable, parse_version

GiB = 1 << 30


class Isa(enum.IntEnum):
    """The architecture level QEMU's ``ppc_type_check_compat()`` tests a model against."""

    V2_01 = 201  # PPC970: no compatibility modes at all
    V2_03 = 203  # POWER5+
    V2_06 = 206  # POWER7, POWER7+
    V2_07 = 207  # POWER8, POWER8E, POWER8NVL
    V3_00 = 300  # POWER9: the first with a radix MMU
    V3_10 = 310  # POWER10, POWER11


class Hash64Table(enum.Enum):
    """Which ``PPCHash64Options`` table a model points at (target/ppc/mmu-hash64.c)."""

    BASIC = "basic"  # ppc_hash64_opts_basic: 970, POWER5+
    POWER7 = "POWER7"  # ppc_hash64_opts_POWER7: POWER7 and every later model


@dataclass(frozen=True)
class CpuModel:
    """A CPU model a pseries machine accepts: QEMU's class name without its type suffix."""

    name: str
    pvr: int
    family: str
    isa: Isa
    hash64: Hash64Table

    @property
    def radix_capable(self) -> bool:
        """ISA 3.00 and later can run a radix guest (the guest picks at CAS)."""
        return self.isa >= Isa.V3_00


@dataclass(frozen=True)
class MachineType:
    """One ``pseries-X.Y`` machine and the class options that matter here."""

    name: str
    version: tuple[int, int]
    default_cpu: str
    # SPAPR_CAP_HPT_MAXPAGESIZE in default_caps: 16 (64 KiB) since pseries-3.0; None for
    # pseries-2.12 and older, where default_caps_with_cpu() decides at machine init.
    default_hpt_max_page_shift: int | None
    htm_default: bool  # pseries-2.11 and older turn cap-htm on (POWER8 and later models)
    dr_lmb_enabled: bool  # pseries-2.5 and later: RAM must be a multiple of 256 MiB
    rma_limit: int | None  # pseries-4.2 and older clamp the RMA to 16 GiB
    deprecated: bool = False  # QEMU warns at machine init (hw/core/machine.c)
    # pseries-4.2 and later take the VSMT mode from -smp threads; older ones ask KVM for 8
    # (hw/ppc/spapr.c spapr_set_vsmt_mode, smc->smp_threads_vsmt).
    smp_threads_vsmt: bool = True

    @property
    def legacy_default_cap(self) -> bool:
        return self.default_hpt_max_page_shift is None


def _machine(row: MachineRow) -> MachineType:
    """The class options of ``row``'s machine: set by the compat chain of
    spapr_machine_X_Y_class_options, the same in every QEMU release that has the machine."""
    version = row.version
    return MachineType(
        name=row.name,
        version=version,
        default_cpu=row.default_cpu,
        default_hpt_max_page_shift=16 if version >= (3, 0) else None,
        htm_default=version <= (2, 11),
        dr_lmb_enabled=version >= (2, 5),
        rma_limit=16 * GiB if version <= (4, 2) else None,
        deprecated=row.deprecated,
        smp_threads_vsmt=version >= (4, 2),
    )


def _cpu(row: CpuRow) -> CpuModel:
    return CpuModel(row.name, row.pvr, row.family, Isa(row.isa), Hash64Table(row.hash64))


@dataclass(frozen=True)
class QemuModels:
    """One QEMU release's machine types and CPU models, made from its table
    (:mod:`kvmppc.qemu_versions`)."""

    table: QemuTable
    machine_types: Mapping[str, MachineType]  # "pseries" included
    cpu_models: Mapping[str, CpuModel]

    @property
    def version(self) -> str:
        return self.table.name

    @property
    def cpu_aliases(self) -> Mapping[str, str]:
        return self.table.cpu_aliases

    def machine_list(self) -> str:
        """The machine types, as a note: "pseries, pseries-3.0 ... pseries-10.0"."""
        names = sorted(self.table.machines.values(), key=lambda m: (m.version, m.name))
        plain = [m.name for m in names if m.name == f"pseries-{m.version[0]}.{m.version[1]}"]
        extra = [m.name for m in names if m.name not in plain]
        return ", ".join(["pseries", f"{plain[0]} ... {plain[-1]}", *extra])


@functools.cache
def _models(version: tuple[int, int]) -> QemuModels:
    table = MODELLED[version]
    machines = {name: _machine(row) for name, row in table.machines.items()}
    machines["pseries"] = machines[table.default_machine]
    return QemuModels(table, machines, {name: _cpu(row) for name, row in table.cpus.items()})


def qemu_models(qemu: QemuTable | str | None = None) -> QemuModels:
    """The models of a QEMU release: a table, a version ("7.2", "10.0"), or None for the newest
    modelled (the default when nothing says which QEMU runs)."""
    if qemu is None:
        return _models(NEWEST.version)
    if isinstance(qemu, str):
        return _models(parse_version(qemu))
    return _models(qemu.version)


def lookup_machine(name: str, qemu: QemuModels | None = None) -> MachineType:
    """``-machine NAME`` (machine names are compared exactly, case included)."""
    qemu = qemu or qemu_models()
    machine = qemu.machine_types.get(name)
    if machine is None:
        # system/vl.c select_machine: the error, then its hint.
        raise QemuRefusalError(
            ProblemKind.MACHINE, qemu.table.messages.unsupported_machine.format(name=name),
            more=("Use -machine help to list supported machines",))
    return machine


def deprecation_warning(machine: MachineType, qemu: QemuModels | None = None) -> str | None:
    """What QEMU prints for a deprecated machine type at machine init, or None."""
    qemu = qemu or qemu_models()
    template = qemu.table.messages.deprecated_machine
    if not machine.deprecated or template is None:
        return None
    return template.format(name=machine.name)


def host_cpu_model(host_pvr: int | None, qemu: QemuModels | None = None) -> CpuModel | None:
    """The model family ``-cpu host`` stands for on a host with this PVR, if kvmppc knows it."""
    qemu = qemu or qemu_models()
    if host_pvr is None:
        return None
    name = qemu.table.host_family_by_pvr_version.get(host_pvr >> 16)
    if name is None:
        return None
    family = qemu.cpu_models[name]
    return CpuModel("host", host_pvr, family.family, family.isa, family.hash64)


def lookup_cpu(
    name: str, machine: MachineType, *, kvm: bool = False, host_pvr: int | None = None,
    qemu: QemuModels | None = None,
) -> CpuModel:
    """``-cpu NAME`` on a pseries machine: ppc_cpu_class_by_name(), then the sPAPR core check.

    QEMU's order: an 8-hex-digit value (after ``strtoul`` base 16, so white space and ``0x``
    count towards the length, except a lower-case ``0x`` before exactly 8 digits) is a PVR and
    nothing else; ``max`` (exact) is the machine's default model (under KVM ``host``: see
    below); otherwise the name is
    lower-cased, an alias replaced by its model, and the class looked up.  A model that exists
    but has no sPAPR core gets a different message from one that does not exist.
    """
    qemu = qemu or qemu_models()
    if name == "":
        raise QemuRefusalError(ProblemKind.CPU, "-cpu option cannot be empty")
    value, end, errno = _strtoull(name, 16)
    if end > 0 and errno is None:
        length = end - 2 if end == 10 and name[1:2] == "x" else end
        if length == 8 and end == len(name):
            pvr = value & 0xFFFFFFFF  # ppc_cpu_class_by_pvr() takes a uint32_t
            for candidate in qemu.cpu_models.values():
                if candidate.pvr == pvr:
                    return candidate
            if pvr in NON_SPAPR_PVRS:
                raise QemuRefusalError(ProblemKind.CPU, "Unable to find sPAPR CPU Core definition")
            raise QemuRefusalError(ProblemKind.CPU, f"unable to find CPU model '{name}'")
    if name == "max":
        if kvm:
            # target/ppc/kvm.c kvm_ppc_register_host_cpu_type(), run by kvm_arch_init():
            # "override TCG default cpu type with 'host' cpu model" for every pseries machine
            # (pseries_machine_class_fixup), so under KVM no -cpu (or "max") is the host's.
            return lookup_cpu("host", machine, kvm=True, host_pvr=host_pvr, qemu=qemu)
        return qemu.cpu_models[machine.default_cpu]
    lowered = name.encode("utf-8").lower().decode("utf-8")  # g_ascii_strdown: ASCII only
    if kvm and lowered in qemu.cpu_aliases:
        # target/ppc/kvm.c kvm_ppc_register_host_cpu_type() also points the host family's
        # alias (strcasecmp with the family's description: "POWER9" on a POWER9 host) at the
        # host CPU type, so under KVM -cpu POWER9 there is -cpu host (QEMU 10.0, whose
        # "power9" is v2.2, started it on a POWER9 v2.0 KVM-HV host).
        host_model = host_cpu_model(host_pvr, qemu)
        if host_model is not None and lowered == host_model.family.lower():
            return host_model
    lowered = qemu.cpu_aliases.get(lowered, lowered)
    model = qemu.cpu_models.get(lowered)
    if model is not None:
        return model
    if lowered == "host" and kvm:
        host_model = host_cpu_model(host_pvr, qemu)
        if host_model is None:
            raise QemuRefusalError(
                ProblemKind.CPU,
                "kvmppc cannot tell which CPU family -cpu host means here"
                + (f" (host PVR {host_pvr:#010x})" if host_pvr is not None else " (no PVR)")
            )
        return host_model
    if lowered in NON_SPAPR_NAMES:
        raise QemuRefusalError(ProblemKind.CPU, "Unable to find sPAPR CPU Core definition")
    raise QemuRefusalError(ProblemKind.CPU, f"unable to find CPU model '{name}'")


def machine_default_cpu(machine: MachineType, qemu: QemuModels | None = None) -> CpuModel:
    return (qemu or qemu_models()).cpu_models[machine.default_cpu]

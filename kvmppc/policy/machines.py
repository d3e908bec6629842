"""The pseries machine types and CPU models of QEMU 7.2, and how QEMU looks them up.

Machine versions come from hw/ppc/spapr.c (``DEFINE_SPAPR_MACHINE``); the CPU models a
pseries machine accepts are those with an sPAPR core type (hw/ppc/spapr_cpu_core.c), reached
by name, by alias (target/ppc/cpu-models.c ``ppc_cpu_aliases``) or by PVR
(target/ppc/cpu_init.c ``ppc_cpu_class_by_name``).  Both lists were checked against
Debian's ``qemu-system-ppc64`` 7.2 (``-M help``, ``-cpu help``, and a boot of every model).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvmppc.policy._qemu72_cpus import NON_SPAPR_NAMES, NON_SPAPR_PVRS
from kvmppc.policy.problems import ProblemKind, QemuRefusalError
from kvmppc.policy.sizes import _strtoull

GiB = 1 << 30


class Isa(enum.IntEnum):
    """The architecture level QEMU's ``ppc_type_check_compat()`` tests a model against."""

    V2_01 = 201  # PPC970: no compatibility modes at all
    V2_03 = 203  # POWER5+
    V2_06 = 206  # POWER7, POWER7+
    V2_07 = 207  # POWER8, POWER8E, POWER8NVL
    V3_00 = 300  # POWER9: the first with a radix MMU
    V3_10 = 310  # POWER10


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


# hw/ppc/spapr_cpu_core.c spapr_cpu_core_type_infos (QEMU 7.2); PVRs from -cpu help.
SPAPR_CPU_MODELS: dict[str, CpuModel] = {
    model.name: model
    for model in (
        CpuModel("970_v2.2", 0x00390202, "970", Isa.V2_01, Hash64Table.BASIC),
        CpuModel("970mp_v1.0", 0x00440100, "970", Isa.V2_01, Hash64Table.BASIC),
        CpuModel("970mp_v1.1", 0x00440101, "970", Isa.V2_01, Hash64Table.BASIC),
        CpuModel("power5+_v2.1", 0x003B0201, "POWER5+", Isa.V2_03, Hash64Table.BASIC),
        CpuModel("power7_v2.3", 0x003F0203, "POWER7", Isa.V2_06, Hash64Table.POWER7),
        CpuModel("power7+_v2.1", 0x004A0201, "POWER7", Isa.V2_06, Hash64Table.POWER7),
        CpuModel("power8e_v2.1", 0x004B0201, "POWER8", Isa.V2_07, Hash64Table.POWER7),
        CpuModel("power8_v2.0", 0x004D0200, "POWER8", Isa.V2_07, Hash64Table.POWER7),
        CpuModel("power8nvl_v1.0", 0x004C0100, "POWER8", Isa.V2_07, Hash64Table.POWER7),
        CpuModel("power9_v1.0", 0x004E0100, "POWER9", Isa.V3_00, Hash64Table.POWER7),
        CpuModel("power9_v2.0", 0x004E1200, "POWER9", Isa.V3_00, Hash64Table.POWER7),
        CpuModel("power10_v1.0", 0x00800100, "POWER10", Isa.V3_10, Hash64Table.POWER7),
        CpuModel("power10_v2.0", 0x00800200, "POWER10", Isa.V3_10, Hash64Table.POWER7),
    )
}

# target/ppc/cpu-models.c ppc_cpu_aliases that lead to a pseries model.
SPAPR_CPU_ALIASES: dict[str, str] = {
    "970": "970_v2.2",
    "970mp": "970mp_v1.1",
    "power5+": "power5+_v2.1",
    "power5gs": "power5+_v2.1",
    "power7": "power7_v2.3",
    "power7+": "power7+_v2.1",
    "power8e": "power8e_v2.1",
    "power8": "power8_v2.0",
    "power8nvl": "power8nvl_v1.0",
    "power9": "power9_v2.0",
    "power10": "power10_v2.0",
}

# ``-cpu host`` (KVM only) takes the class matching the host PVR's version (pvr_match): its
# hash table and ISA are the family's.  PVR version (top 16 bits) -> a model of that family.
_HOST_FAMILY_BY_PVR_VERSION: dict[int, str] = {
    0x0039: "970_v2.2",
    0x003C: "970_v2.2",  # 970FX
    0x0044: "970mp_v1.1",
    0x003A: "power5+_v2.1",
    0x003B: "power5+_v2.1",
    0x003F: "power7_v2.3",
    0x004A: "power7+_v2.1",
    0x004B: "power8e_v2.1",
    0x004C: "power8nvl_v1.0",
    0x004D: "power8_v2.0",
    0x004E: "power9_v2.0",
    0x0080: "power10_v2.0",
}


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

    @property
    def legacy_default_cap(self) -> bool:
        return self.default_hpt_max_page_shift is None


LATEST_VERSION = (7, 2)


def _machine(version: tuple[int, int], suffix: str = "") -> MachineType:
    if version >= (4, 0):
        default_cpu = "power9_v2.0"
    elif version >= (2, 8):
        default_cpu = "power8_v2.0"
    else:
        default_cpu = "power7_v2.3"
    return MachineType(
        name=f"pseries-{version[0]}.{version[1]}{suffix}",
        version=version,
        default_cpu=default_cpu,
        default_hpt_max_page_shift=16 if version >= (3, 0) else None,
        htm_default=version <= (2, 11),
        dr_lmb_enabled=version >= (2, 5),
        rma_limit=16 * GiB if version <= (4, 2) else None,
    )


_VERSIONS = (
    [(2, minor) for minor in range(1, 13)]
    + [(3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2)]
    + [(6, 0), (6, 1), (6, 2), (7, 0), (7, 1), (7, 2)]
)
MACHINE_TYPES: dict[str, MachineType] = {
    machine.name: machine
    for machine in [_machine(version) for version in _VERSIONS] + [_machine((2, 12), "-sxxm")]
}
MACHINE_TYPES["pseries"] = MACHINE_TYPES[f"pseries-{LATEST_VERSION[0]}.{LATEST_VERSION[1]}"]


def lookup_machine(name: str) -> MachineType:
    """``-machine NAME`` (machine names are compared exactly, case included)."""
    machine = MACHINE_TYPES.get(name)
    if machine is None:
        raise QemuRefusalError(ProblemKind.MACHINE, "unsupported machine type")
    return machine


def host_cpu_model(host_pvr: int | None) -> CpuModel | None:
    """The model family ``-cpu host`` stands for on a host with this PVR, if kvmppc knows it."""
    if host_pvr is None:
        return None
    name = _HOST_FAMILY_BY_PVR_VERSION.get(host_pvr >> 16)
    if name is None:
        return None
    family = SPAPR_CPU_MODELS[name]
    return CpuModel("host", host_pvr, family.family, family.isa, family.hash64)


def lookup_cpu(
    name: str, machine: MachineType, *, kvm: bool = False, host_pvr: int | None = None
) -> CpuModel:
    """``-cpu NAME`` on a pseries machine: ppc_cpu_class_by_name(), then the sPAPR core check.

    QEMU's order: an 8-hex-digit value (after ``strtoul`` base 16, so white space and ``0x``
    count towards the length, except a lower-case ``0x`` before exactly 8 digits) is a PVR and
    nothing else; ``max`` (exact) is the machine's default model; otherwise the name is
    lower-cased, an alias replaced by its model, and the class looked up.  A model that exists
    but has no sPAPR core gets a different message from one that does not exist.
    """
    if name == "":
        raise QemuRefusalError(ProblemKind.CPU, "-cpu option cannot be empty")
    value, end, errno = _strtoull(name, 16)
    if end > 0 and errno is None:
        length = end - 2 if end == 10 and name[1:2] == "x" else end
        if length == 8 and end == len(name):
            pvr = value & 0xFFFFFFFF  # ppc_cpu_class_by_pvr() takes a uint32_t
            for candidate in SPAPR_CPU_MODELS.values():
                if candidate.pvr == pvr:
                    return candidate
            if pvr in NON_SPAPR_PVRS:
                raise QemuRefusalError(ProblemKind.CPU, "Unable to find sPAPR CPU Core definition")
            raise QemuRefusalError(ProblemKind.CPU, f"unable to find CPU model '{name}'")
    if name == "max":
        return SPAPR_CPU_MODELS[machine.default_cpu]
    lowered = name.encode("utf-8").lower().decode("utf-8")  # g_ascii_strdown: ASCII only
    lowered = SPAPR_CPU_ALIASES.get(lowered, lowered)
    model = SPAPR_CPU_MODELS.get(lowered)
    if model is not None:
        return model
    if lowered == "host" and kvm:
        host_model = host_cpu_model(host_pvr)
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


def machine_default_cpu(machine: MachineType) -> CpuModel:
    return SPAPR_CPU_MODELS[machine.default_cpu]

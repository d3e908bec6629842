"""QEMU 7.2 (Debian 12's qemu-system-ppc 1:7.2+dfsg-7+deb12u18).

Machine types: hw/ppc/spapr.c ``DEFINE_SPAPR_MACHINE`` 2.1 ... 7.2 and 2.12-sxxm, none
deprecated.  Default CPU: POWER7 up to pseries-2.7, POWER8 from 2.8, POWER9 (v2.0) from 4.0
(``smc->default_cpu_type`` / compat ``mc->default_cpu_type`` in spapr_machine_*_class_options).
"""

from __future__ import annotations

from kvmppc.qemu_versions.table import CpuRow, MachineRow, Messages, QemuTable


def _default_cpu(version: tuple[int, int]) -> str:
    if version >= (4, 0):
        return "power9_v2.0"
    if version >= (2, 8):
        return "power8_v2.0"
    return "power7_v2.3"


_VERSIONS = (
    [(2, minor) for minor in range(1, 13)]
    + [(3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2)]
    + [(6, 0), (6, 1), (6, 2), (7, 0), (7, 1), (7, 2)]
)
_MACHINES = [MachineRow(f"pseries-{v[0]}.{v[1]}", v, _default_cpu(v)) for v in _VERSIONS]
_MACHINES.append(MachineRow("pseries-2.12-sxxm", (2, 12), _default_cpu((2, 12))))

_CPUS = (
    CpuRow("970_v2.2", 0x00390202, "970", 201, "basic"),
    CpuRow("970mp_v1.0", 0x00440100, "970", 201, "basic"),
    CpuRow("970mp_v1.1", 0x00440101, "970", 201, "basic"),
    CpuRow("power5+_v2.1", 0x003B0201, "POWER5+", 203, "basic"),
    CpuRow("power7_v2.3", 0x003F0203, "POWER7", 206, "POWER7"),
    CpuRow("power7+_v2.1", 0x004A0201, "POWER7", 206, "POWER7"),
    CpuRow("power8e_v2.1", 0x004B0201, "POWER8", 207, "POWER7"),
    CpuRow("power8_v2.0", 0x004D0200, "POWER8", 207, "POWER7"),
    CpuRow("power8nvl_v1.0", 0x004C0100, "POWER8", 207, "POWER7"),
    CpuRow("power9_v1.0", 0x004E0100, "POWER9", 300, "POWER7"),
    CpuRow("power9_v2.0", 0x004E1200, "POWER9", 300, "POWER7"),
    CpuRow("power10_v1.0", 0x00800100, "POWER10", 310, "POWER7"),
    CpuRow("power10_v2.0", 0x00800200, "POWER10", 310, "POWER7"),
)

TABLE = QemuTable(
    version=(7, 2),
    checked_with="Debian 12 qemu-system-ppc 1:7.2+dfsg-7+deb12u18",
    machines={m.name: m for m in _MACHINES},
    default_machine="pseries-7.2",
    cpus={c.name: c for c in _CPUS},
    cpu_aliases={
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
    },
    cpu_aliases_listed_only=frozenset(),
    host_family_by_pvr_version={
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
    },
    messages=Messages(
        unsupported_machine="unsupported machine type",
        deprecated_machine=None,
    ),
    strtosz="7.2",
    caps=("htm", "vsx", "dfp", "cfpc", "sbbc", "ibs", "hpt-max-page-size", "nested-hv",
          "large-decr", "ccf-assist", "fwnmi", "rpt-invalidate"),
    compat_modes=("power6", "power7", "power7+", "power8", "power9", "power10"),
    compat_2_06_plus=frozenset({"POWER7", "POWER8", "POWER9", "POWER10"}),
)

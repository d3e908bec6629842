"""QEMU 10.0 (Debian 13's qemu-system-ppc 1:10.0.13+ds-0+deb13u1).

What changed since 7.2, as read from the binary (tests/test_qemu_versions.py checks it):

* machine types pseries-2.1 ... 2.12 and 2.12-sxxm are gone; 8.0 ... 10.0 are new and
  ``pseries`` is pseries-10.0; 3.0 ... 7.0 are deprecated ("machines more than 3 years old
  are subject to deletion after 6 years": include/hw/boards.h MACHINE_VER_DEPRECATION);
* default CPU: POWER8 for 3.0 and 3.1, POWER9 v2.2 from 4.0 to 8.2, POWER10 from 9.0;
* CPU models: power9_v1.0 and power10_v1.0 are gone; power9_v2.2 (PVR 0x004E1202, the
  target of ``power9``) and power11_v2.0 (``power11``) are new; power10_v2.0's PVR is now
  0x00801200; power5+_v2.1 and power7+_v2.1 are now aliases of power5p_v2.1 and
  power7p_v2.1 (same PVRs); ``power5gs`` still points at power5+_v2.1, now an alias itself,
  so ``-cpu help`` lists it but ``-cpu power5gs`` is refused;
* the models without an sPAPR core, and their PVRs, are the same as 7.2's;
* the size syntax is util/cutils.c's 2023 rewrite (QEMU 8.1);
* capabilities cap-ail-mode-3 (on), cap-nested-papr (off) and cap-dawr1 (on for POWER10
  and later) are new, max-cpu-compat=power11 is new, and cap-sbbc defaults to broken for
  every model but POWER7 (the POWER8 and later classes no longer take the power7+ level).
"""

from __future__ import annotations

from kvmppc.qemu_versions.table import CpuRow, MachineRow, Messages, QemuTable


def _default_cpu(version: tuple[int, int]) -> str:
    if version >= (9, 0):
        return "power10_v2.0"
    if version >= (4, 0):
        return "power9_v2.2"
    return "power8_v2.0"


_VERSIONS = [
    (3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2), (6, 0), (6, 1), (6, 2),
    (7, 0), (7, 1), (7, 2), (8, 0), (8, 1), (8, 2), (9, 0), (9, 1), (9, 2), (10, 0),
]
_MACHINES = [
    MachineRow(f"pseries-{v[0]}.{v[1]}", v, _default_cpu(v), deprecated=v <= (7, 0))
    for v in _VERSIONS
]

_CPUS = (
    CpuRow("970_v2.2", 0x00390202, "970", 201, "basic"),
    CpuRow("970mp_v1.0", 0x00440100, "970", 201, "basic"),
    CpuRow("970mp_v1.1", 0x00440101, "970", 201, "basic"),
    CpuRow("power5p_v2.1", 0x003B0201, "POWER5+", 203, "basic"),
    CpuRow("power7_v2.3", 0x003F0203, "POWER7", 206, "POWER7"),
    CpuRow("power7p_v2.1", 0x004A0201, "POWER7", 206, "POWER7"),
    CpuRow("power8e_v2.1", 0x004B0201, "POWER8", 207, "POWER7"),
    CpuRow("power8_v2.0", 0x004D0200, "POWER8", 207, "POWER7"),
    CpuRow("power8nvl_v1.0", 0x004C0100, "POWER8", 207, "POWER7"),
    CpuRow("power9_v2.0", 0x004E1200, "POWER9", 300, "POWER7"),
    CpuRow("power9_v2.2", 0x004E1202, "POWER9", 300, "POWER7"),
    CpuRow("power10_v2.0", 0x00801200, "POWER10", 310, "POWER7"),
    CpuRow("power11_v2.0", 0x00821200, "POWER11", 310, "POWER7"),
)

TABLE = QemuTable(
    version=(10, 0),
    checked_with="Debian 13 qemu-system-ppc 1:10.0.13+ds-0+deb13u1",
    machines={m.name: m for m in _MACHINES},
    default_machine="pseries-10.0",
    cpus={c.name: c for c in _CPUS},
    cpu_aliases={
        "970": "970_v2.2",
        "970mp": "970mp_v1.1",
        "power5+": "power5p_v2.1",
        "power5+_v2.1": "power5p_v2.1",
        "power7": "power7_v2.3",
        "power7+": "power7p_v2.1",
        "power7+_v2.1": "power7p_v2.1",
        "power8e": "power8e_v2.1",
        "power8": "power8_v2.0",
        "power8nvl": "power8nvl_v1.0",
        "power9": "power9_v2.2",
        "power10": "power10_v2.0",
        "power11": "power11_v2.0",
    },
    # { "power5gs", "power5+_v2.1" }, and power5+_v2.1 is now an alias itself
    cpu_aliases_listed_only=frozenset({"power5gs"}),
    host_family_by_pvr_version={
        0x0039: "970_v2.2",
        0x003C: "970_v2.2",  # 970FX
        0x0044: "970mp_v1.1",
        0x003A: "power5p_v2.1",
        0x003B: "power5p_v2.1",
        0x003F: "power7_v2.3",
        0x004A: "power7p_v2.1",
        0x004B: "power8e_v2.1",
        0x004C: "power8nvl_v1.0",
        0x004D: "power8_v2.0",
        0x004E: "power9_v2.2",
        0x0080: "power10_v2.0",
        0x0082: "power11_v2.0",
    },
    messages=Messages(
        unsupported_machine='unsupported machine type: "{name}"',
        deprecated_machine=(
            "Machine type '{name}' is deprecated: machines more than 3 years old are"
            " subject to deletion after 6 years"
        ),
        kvm_create_vm_failed="-accel kvm: ioctl(KVM_CREATE_VM) failed: Invalid argument",
    ),
    strtosz="8.1",
    caps=("htm", "vsx", "dfp", "cfpc", "sbbc", "ibs", "hpt-max-page-size", "nested-hv",
          "large-decr", "ccf-assist", "fwnmi", "rpt-invalidate", "ail-mode-3", "nested-papr",
          "dawr1"),
    compat_modes=("power6", "power7", "power7+", "power8", "power9", "power10", "power11"),
    compat_2_06_plus=frozenset({"POWER7"}),
)

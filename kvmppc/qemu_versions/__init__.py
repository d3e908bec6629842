"""The QEMU versions kvmppc models, as data: one table per version.

QEMU's pseries code decides the same way in 7.2 and 10.0 wherever kvmppc looks (the hash-MMU
tables, the cap's checks and messages: the differential tests show identical device trees for
every case both versions accept).  What differs between versions is data: which machine types
exist and their default CPU, which are deprecated, which CPU models and aliases exist and their
PVRs, and some messages.  Each version is a :class:`QemuTable`; the policy takes the table as a
parameter instead of a version switch in its code.

Every fact here was read from the real binaries (``-M help``, ``-cpu help``, QMP
``query-machines``, and runs of each machine and model); tests/test_qemu_versions.py compares
the tables with them.  Where a difference is code, not data (the size syntax changed in QEMU
8.1, util/cutils.c ``do_strtosz``), the table names the variant (:attr:`QemuTable.strtosz`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvmppc.qemu_versions import v7_2, v10_0
from kvmppc.qemu_versions.table import CpuRow, MachineRow, Messages, QemuTable

__all__ = [
    "MODELLED",
    "NEWEST",
    "CpuRow",
    "MachineRow",
    "Messages",
    "QemuTable",
    "VersionChoice",
    "choose",
    "parse_version",
    "parse_version_output",
]

MODELLED: Mapping[tuple[int, int], QemuTable] = {
    table.version: table for table in (v7_2.TABLE, v10_0.TABLE)
}
NEWEST: QemuTable = MODELLED[max(MODELLED)]

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?\s*$")
_VERSION_LINE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int]:
    """``"10.0"``, ``"10.0.13"`` or ``"7.2"`` -> (major, minor); ValueError otherwise."""
    match = _VERSION.match(text)
    if match is None:
        raise ValueError(f"not a QEMU version: {text!r} (expected MAJOR.MINOR, e.g. 10.0)")
    return int(match[1]), int(match[2])


def parse_version_output(output: str) -> str | None:
    """The version in ``qemu-system-ppc64 --version``'s output ("10.0.13"), or None.

    The first line reads ``QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)``
    (softmmu/vl.c ``version()``: "QEMU emulator version " QEMU_FULL_VERSION).
    """
    match = _VERSION_LINE.search(output)
    if match is None:
        return None
    return ".".join(g for g in match.groups() if g is not None)


@dataclass(frozen=True)
class VersionChoice:
    """Which table answers, and why: asked for, installed, or the newest modelled."""

    table: QemuTable
    requested: str | None  # the version asked for or found installed, as given
    source: str  # "request", "installed" or "default"
    notes: tuple[str, ...] = field(default=())

    @property
    def version(self) -> str:
        return self.table.name


def choose(requested: str | None = None, installed: str | None = None) -> VersionChoice:
    """The table for a request: an explicit version must be modelled (ValueError otherwise);
    else the installed QEMU's version, the nearest modelled one if it is not modelled (with a
    note saying so); else the newest modelled."""
    if requested is not None:
        version = parse_version(requested)
        table = MODELLED.get(version)
        if table is None:
            known = ", ".join(t.name for t in MODELLED.values())
            raise ValueError(f"QEMU {requested} is not modelled (modelled: {known})")
        return VersionChoice(table, requested, "request")
    if installed is not None:
        try:
            version = parse_version(installed)
        except ValueError:
            return VersionChoice(NEWEST, installed, "default", (
                f"installed QEMU version {installed!r} not understood;"
                f" answering for QEMU {NEWEST.name}, the newest modelled",))
        table = MODELLED.get(version)
        if table is not None:
            return VersionChoice(table, installed, "installed")
        nearest = nearest_table(version)
        return VersionChoice(nearest, installed, "installed", (
            f"installed QEMU {installed} is not modelled; answering for QEMU {nearest.name},"
            " the nearest modelled version",))
    return VersionChoice(NEWEST, None, "default", (
        f"no installed QEMU is known (none found by the probe, or none in the host profile):"
        f" answering for QEMU {NEWEST.name}, the newest modelled; --qemu-version says which",))


def nearest_table(version: tuple[int, int]) -> QemuTable:
    """The modelled version nearest ``version`` (QEMU numbers minors per year: major*100+minor
    orders and spaces releases well enough); on a tie, the older one, whose machine types the
    newer QEMU still carries."""
    def distance(candidate: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        return abs((candidate[0] * 100 + candidate[1]) - (version[0] * 100 + version[1])), candidate

    return MODELLED[min(MODELLED, key=distance)]

"""The page sizes a pseries hash guest sees: parse the cap, pick the default, filter the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.policy.hash64 import HASH64_TABLES, FilteredTable, filter_for_cap
from kvmppc.policy.hash64 import segment_page_sizes_cells as _cells
from kvmppc.policy.models import CpuModel, QemuLookupError, lookup_cpu, lookup_machine
from kvmppc.policy.sizes import qemu_strtosz

CAP_NAME = "hpt-max-page-size"
# spapr_caps.c, pseries-2.12 and older without host-contiguous pages: "allow everything up
# to 16GiB, i.e. everything".
LEGACY_MAX_SHIFT = 34

MSG_EXPECTS_SIZE = f"Parameter 'cap-{CAP_NAME}' expects size"
MSG_NOT_POWER_OF_2 = f"cap-{CAP_NAME} must be a power of 2"
MSG_BELOW_4K = "Require at least 4kiB hpt-max-page-size"
MSG_BELOW_64K = "Many guests require at least 64kiB hpt-max-page-size"


@dataclass(frozen=True)
class MaxPageSize:
    """A parsed ``cap-hpt-max-page-size`` value: what QEMU stores is the shift (ctz64)."""

    size: int
    shift: int
    warnings: tuple[str, ...] = ()


def parse_size(text: str) -> int:
    """The value of ``cap-hpt-max-page-size=TEXT`` in bytes, as ``visit_type_size`` reads it.

    Raises :class:`UsageError` with QEMU's "Parameter 'cap-hpt-max-page-size' expects size"
    when QEMU's size syntax rejects it (it says nothing more specific).
    """
    result = qemu_strtosz(text)
    if result.value is None:
        raise UsageError(MSG_EXPECTS_SIZE)
    return result.value


def parse_max_page_size(text: str) -> MaxPageSize:
    """``spapr_cap_set_pagesize``: a size, then a power of two, stored as its shift.

    Warnings printed while parsing (hex with a suffix) are kept, even though QEMU prints them
    before it fails.  Raises :class:`UsageError` with QEMU's message.
    """
    result = qemu_strtosz(text)
    if result.value is None:
        raise UsageError(MSG_EXPECTS_SIZE)
    size = result.value
    if size == 0 or size & (size - 1):
        raise UsageError(MSG_NOT_POWER_OF_2)
    return MaxPageSize(size, size.bit_length() - 1, result.warnings)


def parse_warnings(text: str) -> tuple[str, ...]:
    """What QEMU prints while parsing ``text``, whether or not it then accepts it."""
    return qemu_strtosz(text).warnings


def apply_warnings(shift: int) -> tuple[str, ...]:
    """``cap_hpt_maxpagesize_apply``'s warning (its error is :data:`MSG_BELOW_4K`)."""
    return (MSG_BELOW_64K,) if 12 <= shift < 16 else ()


def format_size(size: int) -> str:
    """A size as people write it for QEMU and read it back: 4K, 64K, 16M, 16G, 3000."""
    for suffix, shift in (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


def format_bytes(size: int) -> str:
    """Like :func:`format_size` with binary unit names: 4 KiB, 16 MiB."""
    text = format_size(size)
    if text[-1].isalpha():
        return f"{text[:-1]} {text[-1]}iB"
    return f"{text} B"


@dataclass(frozen=True)
class PageSizes:
    """The guest's hash page sizes: what ``ibm,segment-page-sizes`` will say."""

    cpu: CpuModel
    max_page_shift: int
    table: FilteredTable
    warnings: tuple[str, ...] = ()

    @property
    def cells(self) -> list[int]:
        return _cells(self.table.rows)

    @property
    def largest_page_shift(self) -> int | None:
        shifts = [page.page_shift for seg in self.table.segments for page in seg.pages]
        return max(shifts) if shifts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu.name,
            "cpu_family": self.cpu.family,
            "hash_table": self.cpu.hash64.value,
            "max_page_shift": self.max_page_shift,
            "max_page_size": 1 << self.max_page_shift,
            "segments": [
                {
                    "page_shift": seg.page_shift,
                    "slb_enc": seg.slb_enc,
                    "pages": [
                        {"page_shift": page.page_shift, "pte_enc": page.pte_enc}
                        for page in seg.pages
                    ],
                }
                for seg in self.table.segments
            ],
            "cells": self.cells,
            "ci_large_pages": self.table.ci_large_pages,
            "one_t_segments": self.table.one_t_segments,
            "slb_size": self.table.slb_size,
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        lines = [
            f"guest page sizes for {self.cpu.name} ({self.cpu.family}, {self.cpu.hash64.value}"
            f" hash table), cap-hpt-max-page-size {format_bytes(1 << self.max_page_shift)}:",
        ]
        for seg in self.table.segments:
            pages = ", ".join(
                f"{format_bytes(1 << p.page_shift)} (pte_enc {p.pte_enc:#x})" for p in seg.pages
            )
            lines.append(
                f"  {format_bytes(1 << seg.page_shift)} segment (slb_enc {seg.slb_enc:#x}): {pages}"
            )
        if not self.table.segments:
            lines.append("  (none)")
        lines.append(
            f"  1T segments: {'yes' if self.table.one_t_segments else 'no'};"
            f" 64 KiB cache-inhibited pages (pa-features byte 3 bit 0x20):"
            f" {'yes' if self.table.ci_large_pages else 'no'}; SLB {self.table.slb_size} entries"
        )
        lines.append("  ibm,segment-page-sizes = <" + " ".join(f"{c:#x}" for c in self.cells) + ">")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def guest_page_sizes(cpu: str | CpuModel, max_page_shift: int,
                     machine: str = "pseries") -> PageSizes:
    """The table a guest with this CPU model sees for ``cap-hpt-max-page-size = 2**shift``.

    ``cpu`` is a QEMU ``-cpu`` name (looked up as QEMU does, so aliases, upper case and PVRs
    work) or a resolved model.  Raises :class:`UsageError` with QEMU's message for an unknown
    model, and for a shift below 12, which QEMU refuses.
    """
    if isinstance(cpu, str):
        try:
            model = lookup_cpu(cpu, lookup_machine(machine))
        except QemuLookupError as exc:
            raise UsageError(str(exc)) from None
    else:
        model = cpu
    if max_page_shift < 12:
        raise UsageError(MSG_BELOW_4K)
    table = filter_for_cap(HASH64_TABLES[model.hash64], max_page_shift)
    return PageSizes(model, max_page_shift, table, apply_warnings(max_page_shift))


def pagesizes(cpu: str | None = None, machine: str = "pseries",
              max_page_size: str | None = None) -> PageSizes:
    """``kvmppc pagesizes``: the table for a -cpu / -machine / cap value, host aside.

    Without a cap value the machine's default applies; pseries-2.12 and older decide theirs
    from the host (the smallest RAM backing page size under KVM-HV), so the value shown for
    them is the one without host-contiguous pages, with a warning saying so.
    """
    try:
        machine_type = lookup_machine(machine)
    except QemuLookupError as exc:
        raise UsageError(str(exc)) from None
    warnings: list[str] = []
    if max_page_size is not None:
        parsed = parse_max_page_size(max_page_size)
        warnings += parsed.warnings
        shift = parsed.shift
    elif machine_type.default_hpt_max_page_shift is not None:
        shift = machine_type.default_hpt_max_page_shift
    else:
        shift = LEGACY_MAX_SHIFT
        warnings.append(
            f"{machine_type.name} picks its default cap-hpt-max-page-size on the host: under"
            " KVM-HV the smallest RAM backing page size, otherwise 16 GiB (shown here); run"
            " 'kvmppc check' for this host's value"
        )
    try:
        model = lookup_cpu(cpu if cpu is not None else "max", machine_type)
    except QemuLookupError as exc:
        raise UsageError(str(exc)) from None
    result = guest_page_sizes(model, shift)
    return PageSizes(model, shift, result.table, (*warnings, *result.warnings))

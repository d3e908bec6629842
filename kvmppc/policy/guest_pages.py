"""The page sizes a pseries hash guest sees: the cap's default and the filtered table.

hw/ppc/spapr_caps.c decides the cap (``default_caps_with_cpu``, ``cap_hpt_maxpagesize_apply``)
and hw/ppc/spapr.c filters the CPU model's hash table with it (``spapr_pagesize_cb``) into
the device tree's ``ibm,segment-page-sizes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmppc.policy.cmdline import parse_max_page_size
from kvmppc.policy.hash64 import HASH64_TABLES, FilteredTable, filter_for_cap
from kvmppc.policy.hash64 import segment_page_sizes_cells as _cells
from kvmppc.policy.machines import CpuModel, QemuModels, lookup_cpu, lookup_machine, qemu_models
from kvmppc.policy.problems import ProblemKind, QemuRefusalError

# spapr_caps.c, pseries-2.12 and older without host-contiguous pages: "allow everything up
# to 16GiB, i.e. everything".
LEGACY_MAX_SHIFT = 34

MSG_BELOW_4K = "Require at least 4kiB hpt-max-page-size"
MSG_BELOW_64K = "Many guests require at least 64kiB hpt-max-page-size"


def apply_warnings(shift: int) -> tuple[str, ...]:
    """``cap_hpt_maxpagesize_apply``'s warning (its error is :data:`MSG_BELOW_4K`)."""
    return (MSG_BELOW_64K,) if 12 <= shift < 16 else ()


@dataclass(frozen=True)
class PageSizes:
    """The guest's hash page sizes: what ``ibm,segment-page-sizes`` will say."""

    cpu: CpuModel
    max_page_shift: int
    table: FilteredTable
    warnings: tuple[str, ...] = ()
    qemu_version: str = ""  # the QEMU release whose machine and CPU tables were used

    @property
    def cells(self) -> list[int]:
        return _cells(self.table.rows)

    @property
    def largest_page_shift(self) -> int | None:
        shifts = [page.page_shift for seg in self.table.segments for page in seg.pages]
        return max(shifts) if shifts else None


def guest_page_sizes(cpu: str | CpuModel, max_page_shift: int,
                     machine: str = "pseries", qemu: QemuModels | None = None) -> PageSizes:
    """The table a guest with this CPU model sees for ``cap-hpt-max-page-size = 2**shift``.

    ``cpu`` is a QEMU ``-cpu`` name (looked up as QEMU does, so aliases, upper case and PVRs
    work) or a resolved model.  Raises :class:`QemuRefusalError` with QEMU's message for an
    unknown model, and for a shift below 12.
    """
    qemu = qemu or qemu_models()
    model = (lookup_cpu(cpu, lookup_machine(machine, qemu), qemu=qemu) if isinstance(cpu, str)
             else cpu)
    if max_page_shift < 12:
        raise QemuRefusalError(ProblemKind.BELOW_4K, MSG_BELOW_4K)
    table = filter_for_cap(HASH64_TABLES[model.hash64], max_page_shift)
    return PageSizes(model, max_page_shift, table, apply_warnings(max_page_shift), qemu.version)


def pagesizes(cpu: str | None = None, machine: str = "pseries",
              max_page_size: str | None = None, qemu: QemuModels | None = None) -> PageSizes:
    """``kvmppc pagesizes``: the table for a -cpu / -machine / cap value, host aside.

    Without a cap value the machine's default applies; pseries-2.12 and older decide theirs
    from the host (the smallest RAM backing page size under KVM-HV), so the value shown for
    them is the one without host-contiguous pages, with a warning saying so.  Raises
    :class:`QemuRefusalError` where QEMU refuses the values.  ``qemu``: the release's tables
    (default: the newest modelled).
    """
    qemu = qemu or qemu_models()
    machine_type = lookup_machine(machine, qemu)
    warnings: list[str] = []
    if max_page_size is not None:
        parsed = parse_max_page_size(max_page_size, qemu.table)
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
    model = lookup_cpu(cpu if cpu is not None else "max", machine_type, qemu=qemu)
    result = guest_page_sizes(model, shift, qemu=qemu)
    return PageSizes(model, shift, result.table, (*warnings, *result.warnings), qemu.version)

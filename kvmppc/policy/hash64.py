"""The hash-MMU page-size tables of QEMU's CPU models and the pseries filter over them.

Tables: target/ppc/mmu-hash64.c ``ppc_hash64_opts_basic`` and ``ppc_hash64_opts_POWER7``.
Filter: hw/ppc/spapr_caps.c ``spapr_pagesize_cb`` through ``ppc_hash64_filter_pagesizes``
(in mmu-hash64.c until QEMU 6.1), run at every CPU reset with the machine's
``cap-hpt-max-page-size`` shift.  Device-tree cells: hw/ppc/fdt.c
``ppc_create_page_sizes_prop``, which becomes the CPU node's ``ibm,segment-page-sizes``.

The filter is reproduced on QEMU's fixed 8 x 8 arrays, quirks included: entries kept within a
row are compacted to its front, but rows are not compacted — rows ``n..7`` are cleared, where
``n`` counts the rows that kept something, so a row emptied in the middle would leave the
wrong rows behind.  With QEMU's own tables and callback that never happens; the arrays are
kept anyway so synthetic tables behave as QEMU would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvmppc.model import PAGE_SIZES_MAX_SZ, PageSize, SegmentPageSizes
from kvmppc.policy.machines import Hash64Table

# target/ppc/mmu-hash64.h
SLB_VSID_4K = 0x000
SLB_VSID_64K = 0x110  # SLB_VSID_L | SLB_VSID_LP_01
SLB_VSID_16M = 0x100  # SLB_VSID_L
SLB_VSID_16G = 0x120  # SLB_VSID_L | SLB_VSID_LP_10


@dataclass(frozen=True)
class Hash64Options:
    """``PPCHash64Options``: flags, SLB size and the segment/page-size table."""

    name: str
    one_t_segments: bool  # PPC_HASH64_1TSEG
    ci_large_pages: bool  # PPC_HASH64_CI_LARGEPAGE
    slb_size: int
    segments: tuple[SegmentPageSizes, ...]


def _seg(page_shift: int, slb_enc: int, *pages: tuple[int, int]) -> SegmentPageSizes:
    return SegmentPageSizes(page_shift, slb_enc, tuple(PageSize(s, e) for s, e in pages))


HASH64_BASIC = Hash64Options(
    name="basic",
    one_t_segments=False,
    ci_large_pages=False,
    slb_size=64,
    segments=(
        _seg(12, SLB_VSID_4K, (12, 0x0)),
        _seg(24, SLB_VSID_16M, (24, 0x0)),
    ),
)

HASH64_POWER7 = Hash64Options(
    name="POWER7",
    one_t_segments=True,
    ci_large_pages=True,
    slb_size=32,
    segments=(
        _seg(12, SLB_VSID_4K, (12, 0x0), (16, 0x7), (24, 0x38)),
        _seg(16, SLB_VSID_64K, (16, 0x1), (24, 0x8)),
        _seg(24, SLB_VSID_16M, (24, 0x0)),
        _seg(34, SLB_VSID_16G, (34, 0x3)),
    ),
)

HASH64_TABLES: dict[Hash64Table, Hash64Options] = {
    Hash64Table.BASIC: HASH64_BASIC,
    Hash64Table.POWER7: HASH64_POWER7,
}

# One row of QEMU's array: (page_shift, slb_enc, 8 x (page_shift, pte_enc)), zeros unused.
Row = tuple[int, int, tuple[tuple[int, int], ...]]
Rows = tuple[Row, ...]
_EMPTY_ENC: tuple[tuple[int, int], ...] = ((0, 0),) * PAGE_SIZES_MAX_SZ
_EMPTY_ROW: Row = (0, 0, _EMPTY_ENC)


def to_rows(segments: Sequence[SegmentPageSizes]) -> Rows:
    """A compact table back into QEMU's (or the kernel's) fixed 8 x 8 zero-padded array."""
    if len(segments) > PAGE_SIZES_MAX_SZ:
        raise ValueError(f"{len(segments)} segment rows; the arrays hold {PAGE_SIZES_MAX_SZ}")
    rows: list[Row] = []
    for seg in segments:
        if len(seg.pages) > PAGE_SIZES_MAX_SZ:
            raise ValueError(f"segment {seg.page_shift} has {len(seg.pages)} page sizes")
        enc = [(p.page_shift, p.pte_enc) for p in seg.pages]
        rows.append((seg.page_shift, seg.slb_enc, tuple(enc) + _EMPTY_ENC[len(enc) :]))
    rows += [_EMPTY_ROW] * (PAGE_SIZES_MAX_SZ - len(rows))
    return tuple(rows)


def from_rows(rows: Rows) -> tuple[SegmentPageSizes, ...]:
    """What QEMU walks: rows until the first zero ``page_shift``, pages until the first zero."""
    segments = []
    for page_shift, slb_enc, enc in rows:
        if not page_shift:
            break
        pages = []
        for shift, pte_enc in enc:
            if not shift:
                break
            pages.append(PageSize(shift, pte_enc))
        segments.append(SegmentPageSizes(page_shift, slb_enc, tuple(pages)))
    return tuple(segments)


def spapr_pagesize_cb(max_shift: int, seg_pshift: int, pshift: int) -> bool:
    """hw/ppc/spapr_caps.c ``spapr_pagesize_cb``: keep this (segment, page) pair?

    Pages above the cap go; so does every page that differs from its segment's base size
    except 16 MiB, because "KVM doesn't allow multiple pagesizes within a segment, *except*
    for the case of 16M pages in a 4k or 64k segment" and TCG guests must see the same.
    """
    if pshift < seg_pshift:
        raise AssertionError(f"page shift {pshift} below its segment's {seg_pshift}")
    if pshift > max_shift:
        return False
    return pshift in (seg_pshift, 24)


@dataclass(frozen=True)
class FilteredTable:
    """A model's table after the filter: QEMU's arrays, what the guest sees, and the flags."""

    rows: Rows
    one_t_segments: bool
    ci_large_pages: bool
    slb_size: int

    @property
    def segments(self) -> tuple[SegmentPageSizes, ...]:
        return from_rows(self.rows)


def filter_pagesizes(
    options: Hash64Options, keep: Callable[[int, int], bool]
) -> FilteredTable:
    """``ppc_hash64_filter_pagesizes(cpu, cb, opaque)`` on a copy of the model's table."""
    table = to_rows(options.segments)
    rows = list(table)
    n = 0
    ci_largepage = False
    for i, (seg_shift, slb_enc, enc) in enumerate(table):
        if not seg_shift:
            break
        kept: list[tuple[int, int]] = []
        for page_shift, pte_enc in enc:
            if not page_shift:
                break
            if keep(seg_shift, page_shift):
                if page_shift >= 16:
                    ci_largepage = True
                kept.append((page_shift, pte_enc))  # sps->enc[m++] = *ps
        rows[i] = (seg_shift, slb_enc, tuple(kept) + _EMPTY_ENC[len(kept) :])
        if kept:
            n += 1
    for i in range(n, PAGE_SIZES_MAX_SZ):
        rows[i] = _EMPTY_ROW  # "Clear the rest of the table"
    return FilteredTable(
        rows=tuple(rows),
        one_t_segments=options.one_t_segments,
        # "If no kept page is >= 64K, clear PPC_HASH64_CI_LARGEPAGE"; never set it.
        ci_large_pages=options.ci_large_pages and ci_largepage,
        slb_size=options.slb_size,
    )


def filter_for_cap(options: Hash64Options, max_page_shift: int) -> FilteredTable:
    """The table a pseries guest gets with ``cap-hpt-max-page-size = 1 << max_page_shift``."""
    return filter_pagesizes(
        options, lambda seg_pshift, pshift: spapr_pagesize_cb(max_page_shift, seg_pshift, pshift)
    )


# spapr_dt_cpu(): uint32_t page_sizes_prop[64]
_PAGE_SIZES_PROP_CELLS = 64


def segment_page_sizes_cells(rows: Rows, max_cells: int = _PAGE_SIZES_PROP_CELLS) -> list[int]:
    """hw/ppc/fdt.c ``ppc_create_page_sizes_prop``: the u32 cells of ibm,segment-page-sizes.

    Per row until the first zero base shift: base shift, SLB encoding, count, then each
    (page shift, PTE encoding).  A row that would not fit in ``max_cells`` ends the list.
    """
    cells: list[int] = []
    for page_shift, slb_enc, enc in rows:
        if not page_shift:
            break
        count = next((k for k, (shift, _e) in enumerate(enc) if shift == 0), len(enc))
        if len(cells) >= max_cells - 3 - count * 2:
            break
        cells += [page_shift, slb_enc, count]
        for shift, pte_enc in enc[:count]:
            cells += [shift, pte_enc]
    return cells

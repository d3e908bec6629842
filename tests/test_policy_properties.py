"""Property tests (hypothesis) on size parsing, the page-size filter and the cells.

The expected values are computed independently of kvmppc's parser: with Python integers and
``fractions.Fraction``, from the grammar QEMU documents, not from do_strtosz's steps.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kvmppc.model import PageSize, SegmentPageSizes
from kvmppc.policy import QemuRefusalError, parse_max_page_size, parse_size
from kvmppc.policy.hash64 import (
    HASH64_BASIC,
    HASH64_POWER7,
    Hash64Options,
    filter_for_cap,
    filter_pagesizes,
    segment_page_sizes_cells,
    spapr_pagesize_cb,
)
from kvmppc.policy.sizes import ERANGE, qemu_strtosz

SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
LIMIT = 1 << 64
C_SPACE = " \t\n\v\f\r"

suffix = st.sampled_from(sorted(SUFFIXES)).flatmap(
    lambda s: st.sampled_from([s, s.upper()])
)


@given(st.integers(0, LIMIT * 2), suffix, st.text(alphabet=C_SPACE, max_size=3))
def test_decimal_with_suffix(value: int, sfx: str, space: str) -> None:
    """N[suffix] is N << shift, any case, after any C white space; 2**64 and up overflow."""
    expected = value << SUFFIXES[sfx.lower()]
    result = qemu_strtosz(f"{space}{value}{sfx}")
    if expected < LIMIT:
        assert result.value == expected
    else:
        assert result.value is None


@given(st.integers(0, LIMIT - 1), st.booleans())
def test_hex(value: int, upper: bool) -> None:
    """0x hex without a suffix: its value, no warning; b and e are digits, not suffixes."""
    text = f"{value:#x}" if not upper else f"{value:#X}"
    result = qemu_strtosz(text)
    assert result.value == value
    assert result.warnings == ()


@given(st.integers(1, 1 << 20), st.sampled_from("kKmMgGtTpP"))
def test_hex_with_suffix_warns(value: int, sfx: str) -> None:
    """0xN with a suffix (not b/e, which are hex digits) scales and warns as QEMU 7.2 does."""
    text = f"{value:#x}{sfx}"
    expected = value << SUFFIXES[sfx.lower()]
    result = qemu_strtosz(text)
    assert result.value == (expected if expected < LIMIT else None)
    assert result.warnings == (
        f"Using a multiplier suffix on hex numbers is deprecated: {text}",
    )


@given(st.integers(0, 1 << 30), st.text(alphabet="0123456789", min_size=1, max_size=12),
       st.sampled_from("kmgtpeKMGTPE"))
def test_fraction_close_to_exact(whole: int, digits: str, sfx: str) -> None:
    """W.D<suffix> is W.D times the unit, to within the double precision QEMU goes through;
    clearly past 2**64 it is refused with ERANGE (do_strtosz: "val > UINT64_MAX")."""
    unit = 1 << SUFFIXES[sfx.lower()]
    exact = Fraction(f"{whole}.{digits}") * unit
    # Within a unit of 2**64 the double's rounding decides which way it goes.
    assume(not LIMIT - unit <= exact < LIMIT + unit)
    result = qemu_strtosz(f"{whole}.{digits}{sfx}")
    if exact >= LIMIT:
        assert (result.value, result.error) == (None, ERANGE)
    else:
        assume(Fraction(f"0.{digits}") < Fraction(1) - Fraction(1, 1 << 50))  # the .999.. quirk
        assert result.value is not None
        assert abs(result.value - exact) <= unit * Fraction(1, 1 << 52) + 1


@given(st.integers(0, 1 << 40), st.text(alphabet="0123456789", min_size=1, max_size=8))
def test_fraction_needs_a_suffix(whole: int, digits: str) -> None:
    """A nonzero fraction in plain bytes is refused; a zero one is not."""
    result = qemu_strtosz(f"{whole}.{digits}")
    if int(digits) == 0:
        assert result.value == whole
    else:
        assert result.value is None


@given(st.text(max_size=24))
def test_never_crashes_and_stays_in_range(text: str) -> None:
    """Any text: a value below 2**64 or a rejection, never an exception."""
    result = qemu_strtosz(text)
    assert (result.value is None) != (result.error is None)
    if result.value is not None:
        assert 0 <= result.value < LIMIT


@given(st.integers(1, LIMIT - 1), st.text(alphabet=" x#,;", min_size=1, max_size=3))
def test_trailing_garbage_refused(value: int, tail: str) -> None:
    """Nothing may follow the number and its suffix."""
    assert qemu_strtosz(f"{value}{tail}").value is None


@given(st.integers(0, 63))
def test_powers_of_two_give_their_shift(shift: int) -> None:
    """Every power of two parses to its shift (what QEMU stores)."""
    assert parse_max_page_size(str(1 << shift)).shift == shift


@given(st.integers(0, LIMIT - 1))
def test_non_powers_of_two_refused(value: int) -> None:
    assume(value & (value - 1) or value == 0)
    with pytest.raises(QemuRefusalError, match="cap-hpt-max-page-size must be a power of 2"):
        parse_max_page_size(str(value))


def test_parse_size_message() -> None:
    """parse_size: bytes, or QEMU's own refusal."""
    assert parse_size("16M") == 16 << 20
    with pytest.raises(QemuRefusalError, match=r"^Parameter 'cap-hpt-max-page-size' expects size$"):
        parse_size("16 M")


# --- the filter ------------------------------------------------------------------------------


def _pairs(options: Hash64Options) -> list[tuple[int, int, int]]:
    return [(s.page_shift, p.page_shift, p.pte_enc) for s in options.segments for p in s.pages]


@given(st.sampled_from([HASH64_BASIC, HASH64_POWER7]), st.integers(0, 70))
def test_filter_keeps_exactly_the_allowed_pairs(options: Hash64Options, shift: int) -> None:
    """A pair survives iff page <= cap and (page == its segment's base or page == 16M), in
    the table's order, with its encodings; CI large pages iff a kept page is >= 64K."""
    table = filter_for_cap(options, shift)
    kept = [(s.page_shift, p.page_shift, p.pte_enc) for s in table.segments for p in s.pages]
    expected = [(b, p, e) for b, p, e in _pairs(options)
                if p <= shift and p in (b, 24)]
    assert kept == expected
    assert all(s.pages for s in table.segments)
    assert table.ci_large_pages == (options.ci_large_pages and any(p >= 16 for _, p, _ in kept))
    assert table.one_t_segments == options.one_t_segments
    assert table.slb_size == options.slb_size


@given(st.sampled_from([HASH64_BASIC, HASH64_POWER7]), st.integers(0, 70), st.integers(0, 70))
def test_filter_is_monotonic(options: Hash64Options, a: int, b: int) -> None:
    """A larger cap never removes a page size."""
    low, high = sorted((a, b))
    pairs = {(s.page_shift, p.page_shift) for s in filter_for_cap(options, low).segments
             for p in s.pages}
    more = {(s.page_shift, p.page_shift) for s in filter_for_cap(options, high).segments
            for p in s.pages}
    assert pairs <= more


@st.composite
def tables(draw: st.DrawFn) -> Hash64Options:
    bases = sorted(draw(st.sets(st.integers(12, 40), min_size=1, max_size=8)))
    segments = []
    for base in bases:
        shifts = sorted(draw(st.sets(st.integers(base, 40), min_size=1, max_size=8)) | {base})
        pages = tuple(PageSize(s, draw(st.integers(0, 0xFF))) for s in shifts[:8])
        segments.append(SegmentPageSizes(base, draw(st.integers(0, 0x1FF)), pages))
    return Hash64Options("synthetic", draw(st.booleans()), draw(st.booleans()), 32,
                         tuple(segments))


@given(tables(), st.integers(0, 45))
def test_cells_describe_the_filtered_table(options: Hash64Options, shift: int) -> None:
    """The cells decode back to the filtered table: base, SLB, count, then the pairs."""
    table = filter_for_cap(options, shift)
    cells = segment_page_sizes_cells(table.rows)
    decoded, i = [], 0
    while i < len(cells):
        base, slb, count = cells[i : i + 3]
        pairs = cells[i + 3 : i + 3 + 2 * count]
        decoded.append(SegmentPageSizes(
            base, slb, tuple(PageSize(pairs[j], pairs[j + 1]) for j in range(0, len(pairs), 2))
        ))
        i += 3 + 2 * count
    assert tuple(decoded) == table.segments


@given(tables())
def test_keep_everything_is_identity(options: Hash64Options) -> None:
    """A callback that keeps every pair leaves the table as it was."""
    assert filter_pagesizes(options, lambda b, p: True).segments == options.segments


def test_filter_row_quirk() -> None:
    """ppc_hash64_filter_pagesizes does not compact rows: emptying a middle row keeps it
    (with no pages) and clears the last kept row instead — QEMU's quirk, reproduced."""
    options = Hash64Options("synthetic", True, True, 32, (
        SegmentPageSizes(12, 0x0, (PageSize(12, 0),)),
        SegmentPageSizes(16, 0x110, (PageSize(16, 1),)),
        SegmentPageSizes(24, 0x100, (PageSize(24, 0),)),
    ))
    table = filter_pagesizes(options, lambda base, page: base != 16)
    assert table.segments == (
        SegmentPageSizes(12, 0x0, (PageSize(12, 0),)),
        SegmentPageSizes(16, 0x110, ()),
    )
    assert segment_page_sizes_cells(table.rows) == [12, 0, 1, 12, 0, 16, 0x110, 0]


def test_cells_cap_at_64() -> None:
    """ppc_create_page_sizes_prop stops before a row that would not fit its cells — and,
    since it tests ``>=``, before one that would fit exactly."""
    rows = filter_for_cap(HASH64_POWER7, 34).rows
    assert len(segment_page_sizes_cells(rows)) == 24
    first_two = [12, 0, 2, 12, 0, 24, 0x38, 16, 0x110, 2, 16, 1, 24, 8]
    assert segment_page_sizes_cells(rows, max_cells=15) == first_two
    assert segment_page_sizes_cells(rows, max_cells=14) == first_two[:7]


def test_cb_asserts_page_not_below_segment() -> None:
    with pytest.raises(AssertionError):
        spapr_pagesize_cb(34, 16, 12)

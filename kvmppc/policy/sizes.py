"""QEMU 7.2's size syntax (util/cutils.c ``do_strtosz``), re-derived step by step.

QEMU parses ``cap-hpt-max-page-size=V`` through ``visit_type_size``, which calls
``qemu_strtosz(V, NULL, &size)``: the whole string must be consumed.  The grammar is
glibc's ``strtoull``/``strtod`` plus QEMU's own rules, quirks included:

* leading C white space and one ``+`` are allowed (``strtoull``); a ``-`` anywhere in the
  integral part is rejected; trailing characters are not allowed;
* ``0x`` hex, whose digits include ``b`` and ``e`` — so ``0x10b`` is 267 bytes, not a suffix;
  a hex value followed by a suffix (``0x10k``) is accepted with a deprecation warning;
* a fraction (``0.5m``, ``1.k``, ``1.``) needs a suffix larger than bytes unless it is zero,
  and an exponent inside it is rejected; the result is rounded half up in 64.64 fixed point;
* suffixes ``b k m g t p e`` in either case, powers of 1024; results of 2**64 or more overflow.

Only the outcome matters to callers — a value, or QEMU's rejection — but each branch below
names the line of ``do_strtosz`` it stands for, so the quirks can be checked against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_C_SPACE = frozenset(" \t\n\v\f\r")  # isspace() in the C locale
_DEC = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_UINT64_LIMIT = 1 << 64
_DBL_MIN = 2.2250738585072014e-308  # float.h DBL_MIN: below it glibc's strtod reports ERANGE

# suffix_mul(): 'B' is 1, then powers of the unit (1024 for qemu_strtosz).
_SUFFIX_POWER = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

EINVAL = "EINVAL"
ERANGE = "ERANGE"


@dataclass(frozen=True)
class StrtoszResult:
    """What ``qemu_strtosz(text, NULL, &value)`` did: a value, or an errno, plus warnings.

    Warnings are printed by QEMU while parsing, so they appear even when the parse fails.
    """

    value: int | None
    error: str | None  # None, "EINVAL" or "ERANGE"
    warnings: tuple[str, ...] = ()


def _char(text: str, index: int) -> str:
    """``text[index]`` as C sees it: the NUL terminator past the end."""
    return text[index] if index < len(text) else "\0"


def _suffix_mul(char: str, unit: int) -> int:
    power = _SUFFIX_POWER.get(char.upper()) if char.isascii() else None
    return -1 if power is None else unit**power


def _strtoull(text: str, base: int) -> tuple[int, int, str | None]:
    """glibc ``strtoull(text, &end, base)`` for base 10 or 16: (value, end, errno).

    White space, then an optional sign, then (base 16) an optional ``0x``, then digits.  No
    digits: value 0 and end 0 ("no conversion").  Overflow: ULLONG_MAX and ERANGE, with end
    after all the digits.  A minus sign negates modulo 2**64, as C does.
    """
    digits = _HEX if base == 16 else _DEC
    i = 0
    while _char(text, i) in _C_SPACE and i < len(text):
        i += 1
    negative = False
    if _char(text, i) in "+-" and i < len(text):
        negative = _char(text, i) == "-"
        i += 1
    if (
        base == 16
        and _char(text, i) == "0"
        and _char(text, i + 1) in "xX"
        and _char(text, i + 2) in _HEX
    ):
        i += 2
    start = i
    while i < len(text) and text[i] in digits:
        i += 1
    if i == start:
        return 0, 0, None
    value = int(text[start:i], base)
    if value >= _UINT64_LIMIT:
        return _UINT64_LIMIT - 1, i, ERANGE
    if negative:
        value = (-value) % _UINT64_LIMIT
    return value, i, None


def _qemu_strtod_finite(text: str, start: int) -> tuple[float, int, str | None]:
    """``qemu_strtod_finite(text + start, &end, &value)`` where ``text[start]`` is ``.``.

    Returns (value, end, errno).  glibc needs a digit after the point; an exponent needs a
    digit after ``e``.  Infinity is EINVAL with end left at ``start`` (``qemu_strtod_finite``);
    a nonzero value below DBL_MIN is ERANGE with end after the number (glibc underflow).
    """
    i = start + 1
    while i < len(text) and text[i] in _DEC:
        i += 1
    if i == start + 1:
        return 0.0, start, EINVAL  # "." alone: no conversion
    mantissa_end = i
    if _char(text, i) in "eE":
        j = i + 1
        if _char(text, j) in "+-":
            j += 1
        exp_start = j
        while j < len(text) and text[j] in _DEC:
            j += 1
        if j > exp_start:
            i = j
    number = text[start:i]
    value = float("0" + number)  # Python's float() rounds correctly, as glibc's strtod does
    if value == float("inf"):
        return 0.0, start, EINVAL
    nonzero = any(ch not in "0" for ch in text[start + 1 : mantissa_end])
    if nonzero and value < _DBL_MIN:
        return value, i, ERANGE
    return value, i, None


def _fraction_to_fixed64(fraction: float) -> int:
    """``(uint64_t)(fraction * 0x1p64)``.

    ``fraction`` is in [0, 1]; it is 1.0 only when many nines round up (``.99999999999999999``).
    2**64 does not fit: the C cast is undefined there, and the x86-64 code gcc emits for it
    (subtract 2**63, cvttsd2si, flip the top bit) yields 0, which is what Debian's amd64
    QEMU computes — so ``1.99999999999999999999k`` is 1024.
    """
    scaled = int(fraction * 2.0**64)
    return 0 if scaled >= _UINT64_LIMIT else scaled


def do_strtosz(text: str, default_suffix: str = "B", unit: int = 1024) -> StrtoszResult:
    """util/cutils.c ``do_strtosz(text, NULL, default_suffix, unit, &result)`` (QEMU 7.2)."""
    warnings: list[str] = []

    def fail(error: str) -> StrtoszResult:
        return StrtoszResult(None, error, tuple(warnings))

    if "\0" in text:
        # A C string ends at NUL; no command line can carry one, so a NUL here (say, %00 in a
        # query string) is a malformed size, not a shorter one.
        return fail(EINVAL)
    # "Parse integral portion as decimal."
    val, end, errno = _strtoull(text, 10)
    if end == 0 and errno is None:
        return fail(EINVAL)  # check_strtox_error: no conversion
    if errno is not None:
        return fail(errno)  # ERANGE (end is past the digits, but the error stands)
    if "-" in text[:end]:
        return fail(EINVAL)
    hex_value = False
    valf = 0
    if val == 0 and _char(text, end) in "xX":
        # "Input looks like hex, reparse, and insist on no fraction."
        val, end, errno = _strtoull(text, 16)
        if errno is not None:
            return fail(errno)
        if _char(text, end) == ".":
            return fail(EINVAL)
        hex_value = True
    elif _char(text, end) == ".":
        # "Input looks like a fraction.  Make sure even 1.k works without fractional digits.
        # If we see an exponent, treat the entire input as invalid instead."
        fraction_start = end
        fraction, end, errno = _qemu_strtod_finite(text, fraction_start)
        if errno is not None:
            # The error is dropped and one more character skipped: after "1." that is the
            # point itself; after an underflowing ".5e-400" it is whatever follows.
            end += 1
        elif any(ch in "eE" for ch in text[fraction_start:end]):
            return fail(EINVAL)
        else:
            valf = _fraction_to_fixed64(fraction)
    if end > len(text):
        # QEMU would read the byte after the terminating NUL (undefined behaviour, reached
        # only by an underflowing fraction at the very end); there is no answer to mirror.
        return fail(EINVAL)
    mul = _suffix_mul(_char(text, end), unit)
    if mul > 0:
        if hex_value:
            warnings.append(f"Using a multiplier suffix on hex numbers is deprecated: {text}")
        end += 1
    else:
        mul = _suffix_mul(default_suffix, unit)
    if mul == 1:
        # "When a fraction is present, a scale is required."
        if valf != 0:
            return fail(EINVAL)
    else:
        # 64.64 x 64.0 fixed point, rounded half up, overflow past 64 bits reported.
        fixed = val * mul * _UINT64_LIMIT + valf * mul
        total = (fixed + (1 << 63)) >> 64
        if total >= _UINT64_LIMIT:
            return fail(ERANGE)
        val = total
    if end < len(text):
        return fail(EINVAL)  # qemu_strtosz with end == NULL: trailing characters
    return StrtoszResult(val, None, tuple(warnings))


def _parse_uint(text: str) -> tuple[int, int, str | None]:
    """util/cutils.c ``parse_uint(text, &end, 10, &value)`` (QEMU 8.1 and later):
    strtoull, then a leading ``-`` (after white space) is ERANGE with value 0."""
    val, end, errno = _strtoull(text, 10)
    if errno is not None:
        return val, end, errno
    if end == 0:
        return 0, 0, EINVAL
    if text.lstrip(_C_SPACE_STR)[:1] == "-":
        return 0, end, ERANGE
    return val, end, None


_C_SPACE_STR = "".join(sorted(_C_SPACE))


def _strtod_fraction_81(copy: str) -> tuple[float, int, str | None]:
    """``qemu_strtod_finite(copy, &tail, &fraction)`` on the copy QEMU 8.1's do_strtosz
    makes: no ``e``/``E`` in it (cut there), and no digit before its point (a leading digit
    went to parse_uint).  So strtod sees white space, a sign, then ``.DIGITS``, an infinity or
    a NaN, or nothing it can convert.  Returns (value, tail, errno)."""
    i = 0
    while i < len(copy) and copy[i] in _C_SPACE:
        i += 1
    sign = 1.0
    if _char(copy, i) in "+-" and i < len(copy):
        sign = -1.0 if copy[i] == "-" else 1.0
        i += 1
    if copy[i:i + 3].lower() in ("inf", "nan"):
        return 0.0, 0, EINVAL  # not finite: qemu_strtod_finite leaves tail at the start
    if _char(copy, i) != "." or _char(copy, i + 1) not in _DEC:
        return 0.0, 0, EINVAL  # no conversion
    j = i + 1
    while j < len(copy) and copy[j] in _DEC:
        j += 1
    value = float("0" + copy[i:j])
    nonzero = any(ch != "0" for ch in copy[i + 1:j])
    if nonzero and value < _DBL_MIN:
        return sign * value, j, ERANGE  # glibc: underflow (denormal or zero)
    return sign * value, j, None


def _do_strtosz_81(text: str, default_suffix: str, unit: int) -> StrtoszResult:
    """util/cutils.c ``do_strtosz(text, NULL, ...)`` as rewritten for QEMU 8.1 (Eric Blake,
    "cutils: Improve qemu_strtosz handling of fractions" and the series before it), which
    QEMU 10.0 runs: hex with a scaling suffix is refused (no warning any more); a negative
    integral part is ERANGE (parse_uint); ``e``/``E`` ends the fraction and is the exa suffix;
    an empty integral part (".5k") is allowed; a fraction that rounds to 1.0 carries into the
    integral part; an underflowing fraction counts as the smallest nonzero one.  Without an
    end pointer, trailing characters turn any result, ERANGE included, into EINVAL.
    """
    if "\0" in text:
        return StrtoszResult(None, EINVAL)  # see do_strtosz

    def out(error: str | None, end: int, value: int = 0) -> StrtoszResult:
        if end < len(text):
            error = EINVAL  # "else if (nptr && *endptr) retval = -EINVAL"
        return StrtoszResult(None, error) if error else StrtoszResult(value, None)

    val, end, errno = _parse_uint(text)
    if errno == ERANGE:
        return out(ERANGE, end)
    valf = 0
    if errno is None and val == 0 and _char(text, end) in "xX":
        # "Input looks like hex; reparse, and insist on no fraction or suffix."
        val, end, errno = _strtoull(text, 16)
        if errno is not None:
            return out(errno, end)
        if _char(text, end) == "." or _suffix_mul(_char(text, end), unit) > 0:
            return StrtoszResult(None, EINVAL)
    elif _char(text, end) == "." or (end == 0 and "." in text):
        # "Input looks like a fraction.  Make sure even 1.k works without fractional digits."
        fraction = 0.0
        if errno is None and _char(text, end) == "." and _char(text, end + 1) not in _DEC:
            end += 1
        else:
            copy = text[end:]
            for letter in "eE":
                copy = copy.split(letter, 1)[0]
            fraction, tail, errno = _strtod_fraction_81(copy)
            end += tail
            if errno != EINVAL and math.copysign(1.0, fraction) < 0:
                return out(ERANGE, end)  # signbit(fraction), -0.0 included
        if fraction == 1.0:
            if val == _UINT64_LIMIT - 1:
                return out(ERANGE, end)
            val += 1
        elif errno == ERANGE:
            valf, errno = 1, None  # "See comments above about underflow"
        else:
            valf = int(fraction * 2.0**64)
            if valf == 0 and fraction > 0.0:
                valf = 1
    if errno is not None:
        return out(errno, end)
    mul = _suffix_mul(_char(text, end), unit)
    if mul > 0:
        end += 1
    else:
        mul = _suffix_mul(default_suffix, unit)
    if mul == 1:
        if valf != 0:
            return StrtoszResult(None, EINVAL)  # "When a fraction is present, a scale is required."
    else:
        fixed = val * mul * _UINT64_LIMIT + valf * mul
        total = (fixed + (1 << 63)) >> 64
        if total >= _UINT64_LIMIT:
            return out(ERANGE, end)
        val = total
    return out(None, end, val)


# The do_strtosz variants by the QEMU release that introduced them (QemuTable.strtosz).
STRTOSZ_VARIANTS = ("7.2", "8.1")


def qemu_strtosz(text: str, variant: str = "7.2") -> StrtoszResult:
    """``qemu_strtosz``: bytes by default, binary suffixes, in QEMU ``variant``'s syntax."""
    if variant == "8.1":
        return _do_strtosz_81(text, "B", 1024)
    if variant != "7.2":
        raise ValueError(f"no do_strtosz variant {variant!r}; known: {STRTOSZ_VARIANTS}")
    return do_strtosz(text, "B", 1024)


def format_size(size: int) -> str:
    """A size as people write it for QEMU and :func:`qemu_strtosz` reads it back: 4K, 64K,
    16M, 16G, 3000."""
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

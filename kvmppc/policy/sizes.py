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


def qemu_strtosz(text: str) -> StrtoszResult:
    """``qemu_strtosz``: bytes by default, binary suffixes."""
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

"""QEMU's command line, as far as a pseries guest's page sizes depend on it.

The first phase of start-up: QEMU reads ``-m`` (softmmu/vl.c ``parse_memory_options``) and
the machine's properties, among them ``cap-hpt-max-page-size`` (hw/ppc/spapr_caps.c
``spapr_cap_set_pagesize``).  Each function takes the text as it would be written on the
command line and raises :class:`QemuRefusalError` with QEMU's words where QEMU refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmppc.policy.problems import ProblemKind, QemuRefusalError
from kvmppc.policy.sizes import ERANGE, StrtoszResult, qemu_strtosz
from kvmppc.qemu_versions import NEWEST, QemuTable

MiB = 1 << 20
DEFAULT_RAM_SIZE = 512 * MiB  # hw/ppc/spapr.c: mc->default_ram_size

CAP_NAME = "hpt-max-page-size"
MSG_EXPECTS_SIZE = f"Parameter 'cap-{CAP_NAME}' expects size"
# util/qemu-option.c parse_option_size's error_append_hint, as QEMU prints it (two lines).
SIZE_SUFFIX_HINT = ("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-",
                    "and exabytes, respectively.")
MSG_NOT_POWER_OF_2 = f"cap-{CAP_NAME} must be a power of 2"


def _strtosz(text: str, qemu: QemuTable | None) -> StrtoszResult:
    """qemu_strtosz in the size syntax of ``qemu``'s release (the newest modelled if None)."""
    return qemu_strtosz(text, (qemu or NEWEST).strtosz)


@dataclass(frozen=True)
class MaxPageSize:
    """A parsed ``cap-hpt-max-page-size`` value: what QEMU stores is the shift (ctz64)."""

    size: int
    shift: int
    warnings: tuple[str, ...] = ()


def parse_size(text: str, qemu: QemuTable | None = None) -> int:
    """The value of ``cap-hpt-max-page-size=TEXT`` in bytes, as ``visit_type_size`` reads it.

    QEMU says only "Parameter 'cap-hpt-max-page-size' expects size" when its size syntax
    rejects the text.
    """
    result = _strtosz(text, qemu)
    if result.value is None:
        raise QemuRefusalError(ProblemKind.MAX_PAGE_SIZE, MSG_EXPECTS_SIZE)
    return result.value


def parse_max_page_size(text: str, qemu: QemuTable | None = None) -> MaxPageSize:
    """``spapr_cap_set_pagesize``: a size, then a power of two, stored as its shift.

    Warnings printed while parsing (hex with a suffix) are kept, even though QEMU prints them
    before it fails.
    """
    result = _strtosz(text, qemu)
    if result.value is None:
        raise QemuRefusalError(ProblemKind.MAX_PAGE_SIZE, MSG_EXPECTS_SIZE)
    size = result.value
    if size == 0 or size & (size - 1):
        raise QemuRefusalError(ProblemKind.MAX_PAGE_SIZE, MSG_NOT_POWER_OF_2)
    return MaxPageSize(size, size.bit_length() - 1, result.warnings)


def parse_warnings(text: str, qemu: QemuTable | None = None) -> tuple[str, ...]:
    """What QEMU prints while parsing ``text``, whether or not it then accepts it."""
    return _strtosz(text, qemu).warnings


def parse_memory(
    text: str, qemu: QemuTable | None = None
) -> tuple[int, tuple[tuple[str | None, str], ...]]:
    """``-m TEXT`` as QEMU reads it (softmmu/vl.c ``parse_memory_options``; the same steps in
    7.2 and 10.0, with each release's size syntax).

    QemuOpts parses the size (bytes by default); zero means the default; a value ending in a
    digit is taken as MiB ("Fix up legacy suffix-less format") and parsed again as the
    machine's ``memory.size``; the result is rounded up to 8 KiB (``machine_set_mem``).
    Returns the size and the warnings, each with the location QEMU prints before it (the
    first parse happens while QEMU reads ``-m``, the second while it sets the machine up).
    """
    first = _strtosz(text, qemu)
    warnings: list[tuple[str | None, str]] = [(f"-m {text}", w) for w in first.warnings]
    if first.value is None:
        if first.error == ERANGE:
            raise QemuRefusalError(
                ProblemKind.MEMORY,
                f"-m {text}: Value '{text}' is out of range for parameter 'size'",
            )
        # util/qemu-option.c parse_option_size: the error and the hint on suffixes.
        raise QemuRefusalError(
            ProblemKind.MEMORY,
            f"-m {text}: Parameter 'size' expects a non-negative number below 2^64",
            more=SIZE_SUFFIX_HINT,
        )
    if first.value == 0:
        return DEFAULT_RAM_SIZE, tuple(warnings)
    second_text = text + "M" if text[-1:].isdigit() and text[-1:].isascii() else text
    second = _strtosz(second_text, qemu)
    warnings += [(None, w) for w in second.warnings]
    if second.value is None:
        raise QemuRefusalError(ProblemKind.MEMORY, "Parameter 'memory.size' expects size")
    return (second.value + 8191) // 8192 * 8192, tuple(warnings)

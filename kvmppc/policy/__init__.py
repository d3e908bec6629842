"""QEMU 7.2's pseries decisions about ``cap-hpt-max-page-size``, as pure functions.

No I/O here, and nothing that renders: everything is a function of a probe
(:class:`kvmppc.model.ProbeResult`), a request and QEMU's own tables, and every answer is typed
data (text and JSON are made by :mod:`kvmppc.render`).  The modules follow QEMU's sources and
the order it starts a guest in:

* :mod:`.sizes` — util/cutils.c size syntax;
* :mod:`.machines` — machine types and CPU models (hw/ppc/spapr*.c, target/ppc/cpu*.c);
* :mod:`.problems` — :class:`QemuRefusalError` (QEMU's words and their kind) and the problem log;
* :mod:`.request` — the guest asked about, as command-line text;
* :mod:`.cmdline` — ``-m`` and the cap's value, parsed as QEMU parses them;
* :mod:`.backing` — the RAM backing page size (``qemu_mempath_getpagesize``);
* :mod:`.hash64` — the hash-MMU tables and the pseries filter (mmu-hash64.c, spapr_caps.c);
* :mod:`.guest_pages` — the cap's default and the guest's table;
* :mod:`.mmu` — target/ppc/kvm.c's checks against KVM, the VRMA, KVM-PR's table;
* :mod:`.startup` — the start-up replay, one function per QEMU phase;
* :mod:`.result` — the typed answer; :mod:`.advice` — what to change;
* :mod:`.answer` — :func:`check`: the replay, then the advice.
"""

from kvmppc.policy.answer import check
from kvmppc.policy.backing import Backing, anonymous_backing, resolve_backing
from kvmppc.policy.cmdline import MaxPageSize, parse_max_page_size, parse_memory, parse_size
from kvmppc.policy.guest_pages import PageSizes, guest_page_sizes, pagesizes
from kvmppc.policy.problems import Problem, ProblemKind, QemuRefusalError, When
from kvmppc.policy.request import CheckRequest
from kvmppc.policy.result import (
    Advice,
    CapAdvice,
    CheckResult,
    HugepageOption,
    MmuModes,
    Suggestion,
)
from kvmppc.policy.sizes import format_bytes, format_size

__all__ = [
    "Advice",
    "Backing",
    "CapAdvice",
    "CheckRequest",
    "CheckResult",
    "HugepageOption",
    "MaxPageSize",
    "MmuModes",
    "PageSizes",
    "Problem",
    "ProblemKind",
    "QemuRefusalError",
    "Suggestion",
    "When",
    "anonymous_backing",
    "check",
    "format_bytes",
    "format_size",
    "guest_page_sizes",
    "pagesizes",
    "parse_max_page_size",
    "parse_memory",
    "parse_size",
    "resolve_backing",
]

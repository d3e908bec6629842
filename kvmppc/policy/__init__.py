"""QEMU 7.2's pseries decisions about ``cap-hpt-max-page-size``, as pure functions.

No I/O here: everything is a function of a probe (:mod:`kvmppc.probe`), a request and QEMU's
own tables.  The modules follow QEMU's sources:

* :mod:`.sizes` — util/cutils.c size syntax;
* :mod:`.models` — machine types and CPU models (hw/ppc/spapr*.c, target/ppc/cpu*.c);
* :mod:`.hash64` — the hash-MMU tables and the pseries filter (mmu-hash64.c, spapr_caps.c);
* :mod:`.pagesizes` — the cap's parsing and defaults, and the guest's table;
* :mod:`.mmu` — target/ppc/kvm.c's checks against KVM, the VRMA, KVM-PR's table;
* :mod:`.check` — the whole start-up, in QEMU's order, with advice.
"""

from kvmppc.policy.check import (
    Backing,
    CheckRequest,
    CheckResult,
    Problem,
    Suggestion,
    anonymous_backing,
    check,
    parse_memory,
    resolve_backing,
)
from kvmppc.policy.pagesizes import (
    MaxPageSize,
    PageSizes,
    format_size,
    guest_page_sizes,
    pagesizes,
    parse_max_page_size,
    parse_size,
)

__all__ = [
    "Backing",
    "CheckRequest",
    "CheckResult",
    "MaxPageSize",
    "PageSizes",
    "Problem",
    "Suggestion",
    "anonymous_backing",
    "check",
    "format_size",
    "guest_page_sizes",
    "pagesizes",
    "parse_max_page_size",
    "parse_memory",
    "parse_size",
    "resolve_backing",
]

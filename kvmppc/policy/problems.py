"""What QEMU refuses, and the log the start-up replay keeps of it.

QEMU reports a refusal through an ``Error **errp`` and stops (``error_setg`` then ``exit(1)``
in hw/ppc/spapr.c and friends); kvmppc raises :class:`QemuRefusalError` with QEMU's words and
what kind of refusal it is.  The replay (:mod:`kvmppc.policy.startup`) catches each one and
records it in a :class:`ProblemLog`, then carries on where the later checks can still be
judged.  Warnings (``warn_report``) are recorded the same way.  What comes after — the
advice, the rendering — tells problems apart by :class:`ProblemKind`, never by their text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvmppc.errors import KvmppcError


class ProblemKind(enum.Enum):
    """What a problem is about; the value is the ``kind`` in ``kvmppc check --json``."""

    MEMORY = "memory"  # -m (softmmu/vl.c), the RMA and the 256 MiB alignment (spapr.c)
    MACHINE = "machine"  # -machine TYPE
    MAX_PAGE_SIZE = "max-page-size"  # cap-hpt-max-page-size's value (spapr_caps.c)
    ACCEL = "accel"  # -accel kvm (accel/kvm/kvm-all.c kvm_init)
    CPU = "cpu"  # -cpu MODEL (target/ppc/cpu_init.c, spapr_cpu_core.c)
    SMMU = "smmu"  # KVM_PPC_GET_SMMU_INFO missing or failing (target/ppc/kvm.c)
    HTM = "htm"  # cap-htm (spapr_caps.c cap_htm_apply)
    BELOW_4K = "below-4k"  # cap_hpt_maxpagesize_apply: "Require at least 4kiB ..."
    STATFS = "statfs"  # qemu_mempath_getpagesize: "Couldn't statfs() memory path"
    BACKING = "backing"  # spapr_check_pagesize: guest pages larger than the backing
    VRMA = "vrma"  # spapr_setup_hpt: the RMA does not fit the VRMA
    KVM_MMU = "kvm-mmu"  # kvm_check_mmu: the guest's table against the kernel's
    CI_PAGES = "ci-pages"  # kvm_check_mmu: 64 KiB cache-inhibited pages on a 4 KiB host
    MMU_MODE = "mmu-mode"  # spapr_check_mmu_mode: hash or radix unavailable
    SYNC_MMU = "sync-mmu"  # qemu_ram_alloc_from_fd: file/memfd RAM without KVM_CAP_SYNC_MMU
    BACKEND_PAGE = "backend-page"  # a backend smaller than (or not a multiple of) its page
    HUGEPAGE_POOL = "hugepage-pool"  # mapping a hugetlbfs backend: the pool lacks pages
    HOTPLUG = "hotplug"  # -m slots/maxmem against spapr's memslot limit
    OVERCOMMIT = "overcommit"  # anonymous guest RAM beyond what the kernel lets QEMU commit
    VSMT = "vsmt"  # spapr_set_vsmt_mode: KVM's SMT mode for the machine's VSMT
    CAPABILITY = "capability"  # another cap-*: its value (spapr_caps.c) or its apply check
    COMPAT = "max-cpu-compat"  # max-cpu-compat's value or the model (target/ppc/compat.c)
    VCPU = "vcpu"  # KVM refused the vCPU (target/ppc/kvm.c kvm_arch_init_vcpu)
    HPT = "hpt"  # KVM refused the hash page table (hw/ppc/spapr.c spapr_reallocate_hpt)


class When(enum.Enum):
    """When QEMU would say it: at start-up, or only if the guest makes a choice at boot."""

    STARTUP = "startup"
    CAS = "cas"  # client-architecture-support: a POWER9 or later guest picks hash or radix


class QemuRefusalError(KvmppcError):
    """QEMU refuses this guest: ``message`` is QEMU's own words (without the program name).

    Raised by the pure functions that reimplement a QEMU check; the replay records it, and
    commands that take one value (``kvmppc pagesizes``) print it.  Bad input to kvmppc
    itself is a :class:`kvmppc.errors.UsageError`, never this.
    """

    def __init__(self, kind: ProblemKind, message: str, more: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.more = more  # the lines QEMU prints after it before it exits (see Problem.more)


@dataclass(frozen=True)
class Problem:
    """One error or warning: QEMU's text, and what kvmppc knows about it."""

    kind: ProblemKind
    message: str
    when: When = When.STARTUP
    order: int = 0  # position among all errors and warnings, in QEMU's order
    detail: str | None = None  # kvmppc's explanation, when the message alone is not enough
    qemu: bool = True  # the message is QEMU's own text (False: kvmppc's)
    location: str | None = None  # the option QEMU names before a warning ("-m 0x10k")
    # For an error: the lines QEMU prints after the message before it exits, word for word
    # (an error_append_hint, the caller's own report: "-accel kvm: failed to initialize kvm").
    more: tuple[str, ...] = ()

    @property
    def qemu_line(self) -> str:
        """The warning line as QEMU prints it, without the program name."""
        if self.location:
            return f"{self.location}: warning: {self.message}"
        return f"warning: {self.message}"


@dataclass
class ProblemLog:
    """Errors, warnings and notes in the order QEMU would meet them."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, kind: ProblemKind, message: str, when: When = When.STARTUP,
              detail: str | None = None, *, qemu: bool = True,
              more: tuple[str, ...] = ()) -> None:
        self.errors.append(Problem(kind, message, when, self._next(), detail, qemu, more=more))

    def refused(self, refusal: QemuRefusalError) -> None:
        self.error(refusal.kind, refusal.message, more=refusal.more)

    def warn(self, kind: ProblemKind, message: str, when: When = When.STARTUP,
             detail: str | None = None, *, qemu: bool = True,
             location: str | None = None) -> None:
        self.warnings.append(Problem(kind, message, when, self._next(), detail, qemu, location))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _next(self) -> int:
        return len(self.errors) + len(self.warnings)

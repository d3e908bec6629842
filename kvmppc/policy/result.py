"""The answer of ``kvmppc check``, as typed data: what QEMU would do, and what to change.

The start-up replay (:mod:`kvmppc.policy.startup`) fills a :class:`CheckResult`; the advice
(:mod:`kvmppc.policy.advice`) adds an :class:`Advice`.  Text, JSON, QEMU arguments and libvirt
XML are made from these by :mod:`kvmppc.render`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmppc.model import HugepagePool, SmmuInfo
from kvmppc.policy.backing import Backing
from kvmppc.policy.guest_pages import PageSizes
from kvmppc.policy.machines import CpuModel, MachineType
from kvmppc.policy.problems import Problem, ProblemKind, When
from kvmppc.policy.request import CheckRequest


@dataclass(frozen=True)
class MmuModes:
    """hw/ppc/spapr.c ``spapr_check_mmu_mode``: which MMU the guest may use.

    ``hash`` "available" or "refused"; ``radix`` also "n/a" for models before POWER9.
    """

    hash: str
    radix: str
    hpt_allocated_at_reset: bool
    radix_limited_by_cap: bool = False  # a radix guest's page sizes ignore the cap


@dataclass(frozen=True)
class CheckResult:
    """The answer.  ``errors[0]`` is the message QEMU would stop with."""

    request: CheckRequest
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    notes: tuple[str, ...]
    machine: MachineType | None
    cpu: CpuModel | None
    accel: str
    vm_type: str | None
    kvm_kind: str | None
    smmu: SmmuInfo | None
    max_page_shift: int | None
    max_page_size_source: str | None
    needs_host_contiguous_pages: bool
    backings: tuple[Backing, ...]
    ram_size: int | None
    guest: PageSizes | None
    mmu: MmuModes | None
    advice: Advice | None = None  # None: too little is known to advise (no machine or CPU)
    qemu_version: str = ""  # the QEMU release answered for ("7.2", "10.0")

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_kinds(self) -> frozenset[ProblemKind]:
        return frozenset(problem.kind for problem in self.errors)

    @property
    def backing_page_size(self) -> int | None:
        return min((b.page_size for b in self.backings), default=None)

    @property
    def hugepage_size(self) -> int | None:
        """The hugepage size backing guest RAM, if it is on hugetlbfs."""
        sizes = [b.page_size for b in self.backings if b.source in ("hugetlbfs", "statfs")]
        return min(sizes) if sizes and min(sizes) > 0 else None

    @property
    def qemu_output(self) -> tuple[str, ...]:
        """What QEMU prints before it stops (or starts): warnings up to the first error,
        then that error and the lines QEMU adds to it (:attr:`Problem.more`), each without
        the ``qemu-system-ppc64: `` prefix."""
        stop = self.errors[0].order if self.errors else None
        lines = [
            (p.order, p.qemu_line) for p in self.warnings
            if p.when == When.STARTUP and p.qemu and (stop is None or p.order < stop)
        ]
        if self.errors:
            lines.append((self.errors[0].order, self.errors[0].message))
        more = self.errors[0].more if self.errors else ()
        return tuple(line for _order, line in sorted(lines)) + more


@dataclass(frozen=True)
class CapAdvice:
    """A ``cap-hpt-max-page-size`` value kvmppc recommends, and why."""

    shift: int
    note: str | None

    @property
    def size(self) -> int:
        return 1 << self.shift


@dataclass(frozen=True)
class HugepageOption:
    """One hugepage size the host offers: could it back this guest, and what it takes."""

    page_size: int
    mounts: tuple[str, ...]
    pool: HugepagePool | None
    pages_needed: int
    enough_free_pages: bool
    backs_requested_max_page_size: bool
    largest_max_page_size: int | None  # the largest cap this backing allows, in bytes
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    """One change, and the same policy's answer for the changed guest (``result``)."""

    change: str
    request: CheckRequest
    backings: tuple[Backing, ...] | None  # None: the request's own mem-paths, resolved
    result: CheckResult  # the changed guest, checked again (without advice of its own)
    fixes: tuple[str, ...]  # the errors of the original answer this change removes
    steps: tuple[str, ...] = ()  # what to run first (mount hugetlbfs, grow a pool)
    hugepage_size: int | None = None  # the hugepages guest RAM is on, for libvirt's XML

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def remaining(self) -> tuple[str, ...]:
        return tuple(p.message for p in self.result.errors)


@dataclass(frozen=True)
class Advice:
    """What to change.  ``largest_max_page_size`` None: no cap works with this backing."""

    largest_max_page_size: CapAdvice | None
    recommended_max_page_size: CapAdvice | None
    hugepages: tuple[HugepageOption, ...]
    suggestions: tuple[Suggestion, ...]
    host_kernel: str | None = None  # when only a host kernel with 64 KiB pages helps
    machine_options: tuple[str, ...] = ()  # -machine options to add (cap-htm=off)

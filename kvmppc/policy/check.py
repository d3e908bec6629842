"""``kvmppc check``: would QEMU 7.2 start this pseries guest on this host — and if not, what
to change.

Every decision QEMU makes about ``cap-hpt-max-page-size`` is replayed here, as pure functions
of a probe (:mod:`kvmppc.probe`) and a request, in the order QEMU 7.2 makes them:

1. command-line parsing: ``-m``, the machine type, the cap's value (util/cutils.c);
2. the accelerator: KVM's VM type (accel/kvm/kvm-all.c), then the ``-cpu`` model;
3. machine init (hw/ppc/spapr.c ``spapr_machine_init``): the pseries-2.12-and-older default,
   the RMA for SLOF, RAM alignment;
4. machine reset: the capabilities in table order (``spapr_caps_apply``: cap-htm, then
   cap-hpt-max-page-size with its backing check), the HPT and its VRMA (``spapr_setup_hpt``),
   then each CPU's reset: the page-size filter and ``kvm_check_mmu``;
5. the device tree: the MMU-mode check for pre-POWER9 models.

QEMU stops at its first error.  kvmppc goes on wherever the later steps can still be judged,
so ``errors[0]`` is what QEMU prints and the rest are what it would print after each fix.
QEMU 7.2 makes the backing check (reset, ``spapr_caps_apply``) *before* the CPU checks (CPU
reset, ``kvm_check_mmu``); QEMU 3.x called the CPU reset from core realize, before machine
reset, so its users saw "KVM can't supply 64kiB CI pages" first where 7.2 users see "Can't
support 64 kiB guest pages with 4 kiB host pages".
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.model import SmmuInfo, SmmuSource, smmu_flag_names
from kvmppc.policy.hash64 import HASH64_TABLES, filter_for_cap
from kvmppc.policy.mmu import (
    MiB,
    kvm_check_mmu,
    needs_host_contiguous_pages,
    pr_smmu_with_vcpu,
    rma_size,
    vrma_error,
)
from kvmppc.policy.models import (
    CpuModel,
    Isa,
    MachineType,
    QemuLookupError,
    host_cpu_model,
    lookup_cpu,
    lookup_machine,
)
from kvmppc.policy.pagesizes import (
    LEGACY_MAX_SHIFT,
    MSG_BELOW_4K,
    MSG_BELOW_64K,
    PageSizes,
    format_bytes,
    format_size,
    parse_max_page_size,
    parse_warnings,
)
from kvmppc.policy.sizes import ERANGE, qemu_strtosz
from kvmppc.probe import HugepagePool, ProbeResult, VmTypeInfo

DEFAULT_RAM_SIZE = 512 * MiB  # hw/ppc/spapr.c: mc->default_ram_size
SPAPR_MEMORY_BLOCK_SIZE = 256 * MiB
MIN_RMA_SLOF = 128 * MiB

QUERY_KEYS = ("max_page_size", "cpu", "machine", "mem_path", "memory", "accel", "kvm_type")
_VM_TYPE_BY_KVM_TYPE = {None: "default", "HV": "hv", "PR": "pr"}


# --------------------------------------------------------------------------------------------
# the request


def _single(params: Mapping[str, str | Sequence[str]], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    values = list(value)
    if len(values) != 1:
        raise UsageError(f"'{key}' given {len(values)} times; give it once")
    return values[0]


def _normalise_kvm_type(value: str | None) -> str | None:
    """hw/ppc/spapr.c ``spapr_kvm_type``: "auto" (or nothing), or HV / PR in any case."""
    if value is None or value == "auto":
        return None
    if value.lower() in ("hv", "pr"):
        return value.upper()
    raise UsageError(f"Unknown kvm-type specified '{value}' (give HV, PR or auto)")


@dataclass(frozen=True)
class CheckRequest:
    """A guest as QEMU would be asked for it.

    ``max_page_size`` is the ``cap-hpt-max-page-size`` text exactly as it would be written on
    the command line (None: the machine's default).  ``cpu`` is a ``-cpu`` model name (None:
    the machine type's default model, power9_v2.0 for pseries-4.0 and later).  ``mem_paths``
    are the ``mem-path`` of each RAM backend (none: anonymous RAM).  ``memory`` is ``-m``'s
    text (None: 512 MiB).  ``accel`` None means KVM when the probe found a usable PowerPC
    KVM, else TCG — what libvirt and the ``kvm`` wrapper do; plain ``qemu-system-ppc64``
    without ``-accel`` would pick TCG.  ``kvm_type`` "HV", "PR" or None (the default VM
    type: HV when kvm_hv is loaded).
    """

    max_page_size: str | None = None
    cpu: str | None = None
    machine: str = "pseries"
    mem_paths: tuple[str, ...] = ()
    memory: str | None = None
    accel: str | None = None
    kvm_type: str | None = None

    def __post_init__(self) -> None:
        if self.accel not in (None, "kvm", "tcg"):
            raise UsageError(f"accel must be 'kvm' or 'tcg', not {self.accel!r}")
        if self.kvm_type not in (None, "HV", "PR"):
            raise UsageError(f"kvm_type must be 'HV', 'PR' or None, not {self.kvm_type!r}")
        if "," in self.machine:
            raise UsageError(
                f"machine {self.machine!r}: give only the machine type (e.g. pseries-7.2);"
                " the page size goes in max_page_size"
            )
        if self.cpu is not None and "," in self.cpu:
            raise UsageError(
                f"cpu {self.cpu!r}: give only the model name; CPU properties are not modelled"
            )
        for path in self.mem_paths:
            if not path.startswith("/") or "\0" in path:
                raise UsageError(f"mem_path {path!r} must be an absolute path")

    @classmethod
    def from_params(cls, params: Mapping[str, str | Sequence[str]]) -> CheckRequest:
        """From a query string (``urllib.parse.parse_qs`` output or a plain mapping).

        Keys: max_page_size, cpu, machine, mem_path (repeatable), memory, accel, kvm_type.
        """
        unknown = sorted(set(params) - set(QUERY_KEYS))
        if unknown:
            raise UsageError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))};"
                f" known: {', '.join(QUERY_KEYS)}"
            )
        mem_path = params.get("mem_path", ())
        mem_paths = (mem_path,) if isinstance(mem_path, str) else tuple(mem_path)
        accel = _single(params, "accel")
        if accel is not None and accel not in ("kvm", "tcg"):
            raise UsageError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
        return cls(
            max_page_size=_single(params, "max_page_size"),
            cpu=_single(params, "cpu"),
            machine=_single(params, "machine") or "pseries",
            mem_paths=mem_paths,
            memory=_single(params, "memory"),
            accel=accel,
            kvm_type=_normalise_kvm_type(_single(params, "kvm_type")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_page_size": self.max_page_size,
            "cpu": self.cpu,
            "machine": self.machine,
            "mem_paths": list(self.mem_paths),
            "memory": self.memory,
            "accel": self.accel,
            "kvm_type": self.kvm_type,
        }


# --------------------------------------------------------------------------------------------
# RAM backing


@dataclass(frozen=True)
class Backing:
    """The page size QEMU's ``qemu_mempath_getpagesize`` finds for one RAM backend.

    ``mem_path`` None is RAM without a mem-path (the host's base page size).  ``source``:
    "hugetlbfs" (a mount from the probe), "statfs" (read live, as QEMU does), "base-page-size"
    (not on hugetlbfs) or "hugepage-pool" (a pool with no mount yet: a what-if for advice).
    ``error`` is QEMU's message when the path cannot be statfs'd.
    """

    mem_path: str | None
    page_size: int
    source: str
    mount: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mem_path": self.mem_path,
            "page_size": self.page_size,
            "source": self.source,
            "mount": self.mount,
            "error": self.error,
        }


def _under(path: str, mount: str) -> bool:
    mount = mount.rstrip("/") or "/"
    return mount in ("/", path) or path.startswith(mount + "/")


def resolve_backing(probe: ProbeResult, mem_path: str) -> Backing:
    """The backing page size of ``mem_path`` from the probe's mount table.

    The longest hugetlbfs mount containing the path gives its page size (what statfs
    ``f_bsize`` says there); a path on no hugetlbfs mount is backed by the base page size.
    """
    if not mem_path.startswith("/"):
        raise UsageError(f"mem_path {mem_path!r} must be an absolute path")
    path = posixpath.normpath(mem_path)
    mounts = [m for m in probe.hugepages.mounts if _under(path, posixpath.normpath(m.path))]
    if mounts:
        mount = max(mounts, key=lambda m: len(posixpath.normpath(m.path)))
        return Backing(mem_path, mount.page_size, "hugetlbfs", mount.path)
    return Backing(mem_path, probe.host.base_page_size, "base-page-size")


def anonymous_backing(probe: ProbeResult) -> Backing:
    """Main RAM without a mem-path: anonymous memory in base pages."""
    return Backing(None, probe.host.base_page_size, "base-page-size")


# --------------------------------------------------------------------------------------------
# -m


def parse_memory(text: str) -> tuple[int, tuple[tuple[str | None, str], ...]]:
    """``-m TEXT`` as QEMU 7.2 reads it (softmmu/vl.c ``parse_memory_options``).

    QemuOpts parses the size (bytes by default); zero means the default; a value ending in a
    digit is taken as MiB ("Fix up legacy suffix-less format") and parsed again as the
    machine's ``memory.size``; the result is rounded up to 8 KiB (``machine_set_mem``).
    Returns the size and the warnings, each with the location QEMU prints before it (the
    first parse happens while QEMU reads ``-m``, the second while it sets the machine up).
    Raises ``_QemuError`` with QEMU's message.
    """
    first = qemu_strtosz(text)
    warnings: list[tuple[str | None, str]] = [(f"-m {text}", w) for w in first.warnings]
    if first.value is None:
        if first.error == ERANGE:
            raise _QemuError("memory", f"-m {text}: Value '{text}' is out of range for parameter"
                             " 'size'")
        raise _QemuError(
            "memory", f"-m {text}: Parameter 'size' expects a non-negative number below 2^64"
        )
    if first.value == 0:
        return DEFAULT_RAM_SIZE, tuple(warnings)
    second_text = text + "M" if text[-1:].isdigit() and text[-1:].isascii() else text
    second = qemu_strtosz(second_text)
    warnings += [(None, w) for w in second.warnings]
    if second.value is None:
        raise _QemuError("memory", "Parameter 'memory.size' expects size")
    return (second.value + 8191) // 8192 * 8192, tuple(warnings)


class _QemuError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True)
class Problem:
    """One error or warning: QEMU's text, and what kvmppc knows about it."""

    kind: str
    message: str
    when: str  # "startup" or "cas" (only if the guest makes that choice at boot)
    order: int = 0  # position among all errors and warnings, in QEMU's order
    detail: str | None = None  # kvmppc's explanation, when the message alone is not enough
    qemu: bool = True  # the message is QEMU's own text (False: kvmppc's)
    location: str | None = None  # the option QEMU names before a warning ("-m 0x10k")

    @property
    def qemu_line(self) -> str:
        """The line as QEMU prints it, without the program name."""
        if self.location:
            return f"{self.location}: warning: {self.message}"
        return f"warning: {self.message}"


@dataclass(frozen=True)
class Suggestion:
    """One change, re-checked by the same policy: ``fixes`` lists the errors it removes."""

    change: str
    request: CheckRequest | None
    backings: tuple[Backing, ...] | None
    ok: bool
    fixes: tuple[str, ...]
    remaining: tuple[str, ...]
    qemu_args: tuple[str, ...]
    libvirt_xml: str | None
    extra_steps: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "ok": self.ok,
            "fixes": list(self.fixes),
            "remaining_errors": list(self.remaining),
            "steps": list(self.extra_steps),
            "qemu_args": list(self.qemu_args),
            "libvirt_xml": self.libvirt_xml,
        }


@dataclass(frozen=True)
class CheckResult:
    """The answer.  ``errors[0]`` is the message QEMU would stop with."""

    request: CheckRequest
    ok: bool
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
    mmu: dict[str, Any]
    advice: dict[str, Any] = field(default_factory=dict)

    @property
    def backing_page_size(self) -> int | None:
        return min((b.page_size for b in self.backings), default=None)

    @property
    def qemu_output(self) -> tuple[str, ...]:
        """What QEMU 7.2 prints before it stops (or starts): warnings up to the first error,
        then that error, each without the ``qemu-system-ppc64: `` prefix."""
        stop = self.errors[0].order if self.errors else None
        lines = [
            (p.order, p.qemu_line) for p in self.warnings
            if p.when == "startup" and p.qemu and (stop is None or p.order < stop)
        ]
        if self.errors:
            lines.append((self.errors[0].order, self.errors[0].message))
        return tuple(line for _order, line in sorted(lines))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "answer": "yes" if self.ok else "no",
            "qemu_version_modelled": "7.2",
            "request": self.request.to_dict(),
            "errors": [p.message for p in self.errors],
            "error_details": [_problem_dict(p) for p in self.errors],
            "warnings": [p.message for p in self.warnings],
            "warning_details": [_problem_dict(p) for p in self.warnings],
            "qemu_output": list(self.qemu_output),
            "notes": list(self.notes),
            "machine": self.machine.name if self.machine else None,
            "cpu": self.cpu.name if self.cpu else None,
            "cpu_family": self.cpu.family if self.cpu else None,
            "accel": self.accel,
            "kvm": None
            if self.accel != "kvm"
            else {
                "vm_type": self.vm_type,
                "implementation": self.kvm_kind,
                "smmu_flags": smmu_flag_names(self.smmu.flags) if self.smmu else None,
            },
            "max_page_shift": self.max_page_shift,
            "max_page_size": None if self.max_page_shift is None else 1 << self.max_page_shift,
            "max_page_size_source": self.max_page_size_source,
            "needs_host_contiguous_pages": self.needs_host_contiguous_pages,
            "backing_page_size": self.backing_page_size,
            "backings": [b.to_dict() for b in self.backings],
            "ram_size": self.ram_size,
            "guest": self.guest.to_dict() if self.guest else None,
            "mmu": self.mmu,
            "advice": _advice_to_dict(self.advice),
        }

    def render(self) -> str:
        return _render(self)


def _problem_dict(problem: Problem) -> dict[str, Any]:
    return {
        "kind": problem.kind,
        "message": problem.message,
        "when": problem.when,
        "detail": problem.detail,
        "qemu_text": problem.qemu,
    }


def _advice_to_dict(advice: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in advice.items():
        if key == "suggestions":
            out[key] = [s.to_dict() for s in value]
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# the check


def _usable_powerpc_kvm(probe: ProbeResult) -> bool:
    """A PowerPC KVM where some VM type can be created (libvirt would pick KVM there)."""
    return (
        probe.host.is_powerpc
        and probe.kvm.present
        and any(vm.available for vm in probe.kvm.vm_types.values())
    )


@dataclass
class _State:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, kind: str, message: str, when: str = "startup",
              detail: str | None = None, *, qemu: bool = True) -> None:
        self.errors.append(Problem(kind, message, when, self._next(), detail, qemu))

    def warn(self, kind: str, message: str, when: str = "startup",
             detail: str | None = None, *, qemu: bool = True,
             location: str | None = None) -> None:
        self.warnings.append(
            Problem(kind, message, when, self._next(), detail, qemu, location)
        )

    def _next(self) -> int:
        return len(self.errors) + len(self.warnings)


@dataclass(frozen=True)
class _Kvm:
    vm: VmTypeInfo
    smmu: SmmuInfo | None  # as QEMU reads it; None when QEMU could not get it
    smmu_error: str | None

    @property
    def radix(self) -> bool:
        return bool(self.vm.caps.get("PPC_MMU_RADIX", 0))

    @property
    def hash_v3(self) -> bool:
        return bool(self.vm.caps.get("PPC_MMU_HASH_V3", 0))


def _kvm_context(probe: ProbeResult, kvm_type: str | None, state: _State) -> _Kvm | None:
    """What QEMU's ``-accel kvm`` gets on this host, or None with QEMU's error recorded."""
    if not probe.host.is_powerpc:
        # A qemu-system-ppc64 built for another architecture has no KVM accelerator at all.
        state.error("accel", "-accel kvm: invalid accelerator kvm")
        state.notes.append(
            f"this host is {probe.host.arch}: qemu-system-ppc64 here runs pseries guests"
            " under TCG only; replay a POWER host's probe with --host-profile to check KVM"
        )
        return None
    if not probe.kvm.present:
        state.error("accel", "Could not access KVM kernel module: No such file or directory")
        state.notes.append("load kvm_hv (or kvm_pr): 'modprobe kvm_hv'")
        return None
    if probe.kvm.error and not probe.kvm.vm_types:
        state.error("accel", f"Could not access KVM kernel module: {_strerror(probe.kvm.error)}")
        return None
    name = _VM_TYPE_BY_KVM_TYPE[kvm_type]
    vm = probe.vm_type(name)
    if vm is None or not vm.available:
        # accel/kvm/kvm-all.c kvm_init; -EINVAL from KVM_CREATE_VM: that module is absent.
        module = "pr" if kvm_type == "PR" else "hv"
        state.error("accel", "ioctl(KVM_CREATE_VM) failed: 22 Invalid argument")
        state.notes.append(f"QEMU adds: PPC KVM module is not loaded. Try modprobe kvm_{module}.")
        return None
    smmu: SmmuInfo | None = vm.smmu
    smmu_error = None
    if not vm.caps.get("PPC_GET_SMMU_INFO", 0) or (smmu and smmu.source == SmmuSource.GUESSED):
        # target/ppc/kvm.c kvm_get_smmu_info (QEMU 3.1 and later): no fallback any more.
        smmu, smmu_error = None, "KVM doesn't expose the MMU features it supports"
    elif smmu is None:
        smmu_error = "KVM failed to provide the MMU features it supports"
        if vm.smmu_error:
            smmu_error += f": {_strerror(vm.smmu_error)}"
    return _Kvm(vm, smmu, smmu_error)


def _strerror(probe_error: str) -> str:
    """The strerror() inside a probe error ("OP on PATH: strerror. hint"), as QEMU prints it
    after its own message (``error_setg_errno``)."""
    match = re.search(r": (.+?)(?:\. |\.?$)", probe_error)
    return match.group(1) if match else probe_error


def _smmu_for_guest(kvm: _Kvm, cpu: CpuModel) -> SmmuInfo | None:
    if kvm.smmu is not None and kvm.vm.is_pr:
        return pr_smmu_with_vcpu(kvm.smmu, cpu.pvr)
    return kvm.smmu


def _backing_error(max_shift: int, min_backing: int) -> str | None:
    """hw/ppc/spapr_caps.c ``spapr_check_pagesize`` (only when host-contiguous pages matter)."""
    maxpagesize = 1 << max_shift
    if maxpagesize > min_backing:
        return (
            f"Can't support {maxpagesize >> 10} kiB guest pages with {min_backing >> 10} kiB"
            " host pages with this KVM implementation"
        )
    return None


def _page_size_errors(
    shift: int, cpu: CpuModel, smmu: SmmuInfo | None, *, kvm: bool, min_backing: int,
    host_page_size: int,
) -> list[tuple[str, str]]:
    """The errors that depend on the cap value alone, in QEMU's order: backing, then MMU."""
    if shift < 12:
        return [("below-4k", MSG_BELOW_4K)]
    found: list[tuple[str, str]] = []
    if needs_host_contiguous_pages(kvm, smmu):
        message = _backing_error(shift, min_backing)
        if message:
            found.append(("backing", message))
    if kvm and smmu is not None:
        table = filter_for_cap(HASH64_TABLES[cpu.hash64], shift)
        message = kvm_check_mmu(table, smmu, host_page_size)
        if message:
            kind = "ci-pages" if message.startswith("KVM can't supply") else "kvm-mmu"
            found.append((kind, message))
    return found


def _evaluate(
    probe: ProbeResult, request: CheckRequest, backings: Sequence[Backing] | None
) -> CheckResult:
    state = _State()
    machine: MachineType | None = None
    cpu: CpuModel | None = None
    ram: int | None = None
    shift: int | None = None
    shift_source: str | None = None
    kvm: _Kvm | None = None
    smmu: SmmuInfo | None = None
    guest: PageSizes | None = None
    contiguous = False
    mmu: dict[str, Any] = {}

    if backings is None:
        backings = [resolve_backing(probe, p) for p in request.mem_paths] or [
            anonymous_backing(probe)
        ]
    backings = tuple(backings)
    min_backing = min(b.page_size for b in backings)
    host_page = probe.host.base_page_size
    accel = request.accel or ("kvm" if _usable_powerpc_kvm(probe) else "tcg")

    def result() -> CheckResult:
        return CheckResult(
            request=request, ok=not state.errors, errors=tuple(state.errors),
            warnings=tuple(state.warnings), notes=tuple(state.notes), machine=machine, cpu=cpu,
            accel=accel, vm_type=kvm.vm.name if kvm else None,
            kvm_kind=kvm.vm.kind if kvm else None, smmu=smmu, max_page_shift=shift,
            max_page_size_source=shift_source, needs_host_contiguous_pages=contiguous,
            backings=backings, ram_size=ram, guest=guest, mmu=mmu,
        )

    # 1. Command line: -m, then the machine type, then the machine's properties.
    if request.memory is not None:
        try:
            ram, memory_warnings = parse_memory(request.memory)
        except _QemuError as exc:
            state.error(exc.kind, exc.message)
        else:
            for location, warning in memory_warnings:
                state.warn("memory", warning, location=location)
    else:
        ram = DEFAULT_RAM_SIZE
    try:
        machine = lookup_machine(request.machine)
    except QemuLookupError as exc:
        state.error("machine", str(exc))
        state.notes.append("machine types: pseries, pseries-2.1 ... pseries-7.2, pseries-2.12-sxxm")
        return result()
    if request.max_page_size is not None:
        for warning in parse_warnings(request.max_page_size):
            state.warn("max-page-size", warning)
        try:
            parsed = parse_max_page_size(request.max_page_size)
        except UsageError as exc:
            state.error("max-page-size", str(exc))
            return result()
        shift, shift_source = parsed.shift, "command line"

    # 2. The accelerator, then the CPU model.
    if accel == "kvm":
        kvm = _kvm_context(probe, request.kvm_type, state)
        if kvm is None:
            return result()
    try:
        cpu = lookup_cpu(
            request.cpu if request.cpu is not None else "max", machine,
            kvm=accel == "kvm", host_pvr=probe.host.pvr,
        )
    except QemuLookupError as exc:
        state.error("cpu", str(exc))
        return result()
    if kvm is not None:
        smmu = _smmu_for_guest(kvm, cpu)

    # 3. Machine init: the legacy default needs the SMMU flags; the RMA; RAM alignment.
    if shift is None:
        if machine.default_hpt_max_page_shift is not None:
            shift, shift_source = machine.default_hpt_max_page_shift, "machine default"
        else:
            if kvm is not None and smmu is None:
                state.error("smmu", kvm.smmu_error or "KVM gave no MMU information")
                return result()
            if needs_host_contiguous_pages(kvm is not None, smmu):
                shift = min_backing.bit_length() - 1  # ctz64(qemu_minrampagesize())
                shift_source = f"{machine.name} default: the smallest RAM backing page size"
            else:
                shift = LEGACY_MAX_SHIFT
                shift_source = f"{machine.name} default: 16 GiB without host-contiguous pages"
    if ram is not None:
        if rma_size(ram, machine.rma_limit) < MIN_RMA_SLOF:
            # hw/ppc/spapr.c spapr_rma_size; "%" HWADDR_PRIx "ld" prints 0x80 as "80ld".
            state.error(
                "memory", "pSeries SLOF firmware requires >= 80ldMiB guest RMA (Real Mode Area"
                " memory)"
            )
        elif machine.dr_lmb_enabled and ram % SPAPR_MEMORY_BLOCK_SIZE:
            state.error(
                "memory", f"Memory size 0x{ram:x} is not aligned to"
                f" {SPAPR_MEMORY_BLOCK_SIZE // MiB} MiB"
            )

    # 4. Machine reset: spapr_caps_apply in table order.  cap-htm (index 0) first.
    if machine.htm_default and cpu.isa >= Isa.V2_07:
        if kvm is None:
            state.error("htm", "No Transactional Memory support in TCG")
        elif kvm.vm.caps.get("PPC_HTM") == 0:
            state.error("htm", "KVM implementation does not support Transactional Memory")
        elif "PPC_HTM" not in kvm.vm.caps:
            state.warn(
                "htm",
                f"{machine.name} turns cap-htm on for {cpu.family}: QEMU stops with 'KVM"
                " implementation does not support Transactional Memory' unless this KVM has"
                " KVM_CAP_PPC_HTM (not in the probe); add cap-htm=off to be sure",
                qemu=False,
            )
    # cap-hpt-max-page-size (index 6): its own checks, then the backing check.
    if shift < 12:
        state.error("below-4k", MSG_BELOW_4K)
        return result()
    if shift < 16:
        state.warn("max-page-size", MSG_BELOW_64K)
    if kvm is not None and smmu is None:
        state.error("smmu", kvm.smmu_error or "KVM gave no MMU information")
        return result()
    kvm_on = kvm is not None
    contiguous = needs_host_contiguous_pages(kvm_on, smmu)
    for backing in backings:
        if backing.error:
            state.error("statfs", backing.error)
    page_errors = _page_size_errors(
        shift, cpu, smmu, kvm=kvm_on, min_backing=min_backing, host_page_size=host_page
    )
    for kind, message in page_errors:
        if kind == "backing":
            state.error(kind, message)

    # HPT at reset (spapr_machine_reset): skipped under KVM when the host has radix and the
    # model is POWER9 or later (the guest starts in radix); else set up, with the VRMA check.
    hpt_at_reset = not (kvm is not None and kvm.radix and cpu.radix_capable)
    vrma = None
    if kvm is not None and smmu is not None and ram is not None:
        vrma = vrma_error(smmu, min_backing, ram, machine.rma_limit)
    if vrma and hpt_at_reset:
        state.error("vrma", vrma)

    # CPU reset: filter, then kvm_check_mmu.
    guest = PageSizes(
        cpu, shift, filter_for_cap(HASH64_TABLES[cpu.hash64], shift),
        (MSG_BELOW_64K,) if shift < 16 else (),
    )
    for kind, message in page_errors:
        if kind != "backing":
            state.error(kind, message)

    # Device tree (and CAS): which MMU the guest may use.
    mmu = _mmu_modes(state, cpu, kvm, vrma, hpt_at_reset)
    return result()


def _mmu_modes(
    state: _State, cpu: CpuModel, kvm: _Kvm | None, vrma: str | None, hpt_at_reset: bool
) -> dict[str, Any]:
    """hw/ppc/spapr.c ``spapr_check_mmu_mode``: at device-tree time for pre-POWER9 models
    (they can only be hash), at CAS for POWER9 and later (the guest's choice)."""
    hash_ok = kvm is None or not (kvm.radix and not kvm.hash_v3)
    radix_ok = cpu.radix_capable and (kvm is None or kvm.radix)
    if not cpu.radix_capable:
        if not hash_ok:
            state.error("mmu-mode", "Guest requested unavailable MMU mode (hash).")
        state.notes.append(
            f"{cpu.family} guests use the hash MMU only: cap-hpt-max-page-size limits every"
            " page they map"
        )
    else:
        state.notes.append(
            f"{cpu.family} guests choose hash or radix at boot (CAS). A radix guest is not"
            " limited by cap-hpt-max-page-size (its page sizes are 4K, 64K, 2M and 1G), but"
            " QEMU applies the hash-MMU checks above at start-up whatever the guest will"
            " choose."
        )
        if not hash_ok:
            state.warn(
                "mmu-mode", "Guest requested unavailable MMU mode (hash).", "cas",
                "QEMU stops with this if the guest asks for hash at CAS: this KVM has radix"
                " but not KVM_CAP_PPC_MMU_HASH_V3, so only radix guests run",
            )
        elif kvm is not None and not kvm.radix:
            state.warn(
                "mmu-mode", "Guest requested unavailable MMU mode (radix).", "cas",
                "QEMU stops with this if the guest asks for radix at CAS: this KVM has no"
                " radix MMU, so the guest must run hash",
            )
        if hash_ok and vrma and not hpt_at_reset:
            state.warn("vrma", vrma, "cas",
                       "QEMU stops with this if the guest chooses hash at CAS")
    return {
        "hash": "available" if hash_ok else "refused",
        "radix": "available" if radix_ok else ("refused" if cpu.radix_capable else "n/a"),
        "hpt_allocated_at_reset": kvm is not None and hpt_at_reset,
        "radix_limited_by_cap": False,
    }


def check(
    probe: ProbeResult, request: CheckRequest, backings: Sequence[Backing] | None = None
) -> CheckResult:
    """Would QEMU 7.2 start this guest on the probed host?  With QEMU's errors, the guest's
    page-size table and, under ``advice``, what to change (each suggestion re-checked)."""
    result = _evaluate(probe, request, backings)
    return replace(result, advice=_advise(probe, request, result))


# --------------------------------------------------------------------------------------------
# advice


def _largest_working_shift(result: CheckResult, min_backing: int,
                           host_page: int) -> int | None:
    """The largest cap (12..34; larger caps filter alike) whose page-size checks pass."""
    if result.cpu is None:
        return None
    kvm = result.accel == "kvm"
    for shift in range(LEGACY_MAX_SHIFT, 11, -1):
        if not _page_size_errors(shift, result.cpu, result.smmu, kvm=kvm,
                                 min_backing=min_backing, host_page_size=host_page):
            return shift
    return None


def _effective_shift(cpu: CpuModel, shift: int) -> int:
    """The smallest cap giving the same guest table: its largest page size."""
    table = filter_for_cap(HASH64_TABLES[cpu.hash64], shift)
    pages = [p.page_shift for seg in table.segments for p in seg.pages]
    return max(pages) if pages else shift


def _qemu_args(request: CheckRequest, result: CheckResult) -> tuple[str, ...]:
    """The QEMU command-line arguments for this request, the cap written out explicitly."""
    options = [request.machine]
    if result.max_page_shift is not None:
        options.append(f"cap-hpt-max-page-size={format_size(1 << result.max_page_shift)}")
    if result.accel == "kvm" and request.kvm_type:
        options.append(f"kvm-type={request.kvm_type}")
    if len(request.mem_paths) == 1:
        options.append("memory-backend=ram0")
    args = ["-machine", ",".join(options), "-accel", result.accel]
    if request.cpu is not None:
        args += ["-cpu", request.cpu]
    size = format_size(result.ram_size) if result.ram_size else request.memory
    if request.memory is not None or request.mem_paths:
        args += ["-m", size or ""]
    for index, path in enumerate(request.mem_paths):
        args += [
            "-object",
            f"memory-backend-file,id=ram{index},size={size},mem-path={path},prealloc=on",
        ]
    return tuple(args)


def _libvirt_xml(result: CheckResult, shift: int | None, hugepage: int | None) -> str:
    lines = []
    if shift is not None:
        lines += [
            "<features>",
            "  <hpt>",
            f"    <maxpagesize unit='KiB'>{(1 << shift) >> 10}</maxpagesize>",
            "  </hpt>",
            "</features>",
        ]
    if hugepage is not None:
        lines += [
            "<memoryBacking>",
            "  <hugepages>",
            f"    <page size='{hugepage >> 10}' unit='KiB'/>",
            "  </hugepages>",
            "</memoryBacking>",
        ]
    return "\n".join(lines)


def _pool_steps(pool: HugepagePool | None, page_size: int, ram: int) -> tuple[list[str], bool]:
    """Whether the pool can hold the guest's RAM, and what to run if not."""
    needed = -(-ram // page_size)
    sysfs = f"/sys/kernel/mm/hugepages/hugepages-{page_size >> 10}kB/nr_hugepages"
    if pool is None:
        return [f"this kernel has no {format_bytes(page_size)} hugepage pool"], False
    if pool.available >= needed:
        return [], True
    more = needed - pool.available
    return [
        f"the {format_bytes(page_size)} pool has {pool.available} free pages, the guest's"
        f" {format_bytes(ram)} needs {needed}: echo {pool.total + more} > {sysfs}"
    ], False


def _suggest(probe: ProbeResult, base: CheckResult, change: str, request: CheckRequest, *,
             backings: Sequence[Backing] | None = None, steps: Sequence[str] = (),
             hugepage: int | None = None) -> Suggestion:
    tried = _evaluate(probe, request, backings)
    after = {p.message for p in tried.errors}
    shift = tried.max_page_shift
    return Suggestion(
        change=change,
        request=request,
        backings=tuple(backings) if backings is not None else None,
        ok=tried.ok,
        fixes=tuple(m for m in (p.message for p in base.errors) if m not in after),
        remaining=tuple(p.message for p in tried.errors),
        qemu_args=_qemu_args(request, tried),
        libvirt_xml=_libvirt_xml(tried, shift, hugepage) or None,
        extra_steps=tuple(steps),
    )


def _hugepage_sizes(probe: ProbeResult) -> list[int]:
    sizes = {m.page_size for m in probe.hugepages.mounts}
    sizes |= {p.page_size for p in probe.hugepages.pools}
    return sorted(s for s in sizes if s > probe.host.base_page_size)


def _advise(probe: ProbeResult, request: CheckRequest, result: CheckResult) -> dict[str, Any]:
    advice: dict[str, Any] = {}
    cpu = result.cpu
    if cpu is None or result.max_page_shift is None or result.machine is None:
        return advice
    host_page = probe.host.base_page_size
    min_backing = result.backing_page_size or host_page
    ram = result.ram_size or DEFAULT_RAM_SIZE
    largest = _largest_working_shift(result, min_backing, host_page)
    if largest is not None:
        effective = _effective_shift(cpu, largest)
        advice["largest_max_page_size"] = {
            "shift": largest, "bytes": 1 << largest, "qemu": format_size(1 << largest),
            "note": "caps above 16 GiB give the same guest table" if largest == 34 else None,
        }
        advice["recommended_max_page_size"] = {
            "shift": effective, "bytes": 1 << effective, "qemu": format_size(1 << effective),
            "note": "the smallest cap giving the same guest table (the safest to migrate)",
        }
    else:
        advice["largest_max_page_size"] = None
        advice["recommended_max_page_size"] = None

    # Each hugepage size: can it back the requested cap, and is its pool big enough?
    requested = 1 << result.max_page_shift
    hugepages = []
    for size in _hugepage_sizes(probe):
        mounts = [m.path for m in probe.hugepages.mounts if m.page_size == size]
        pool = probe.hugepages.pool(size)
        steps, enough = _pool_steps(pool, size, ram)
        best = _largest_working_shift(result, size, host_page)
        hugepages.append({
            "page_size": size,
            "mounts": mounts,
            "pool": None if pool is None else {
                "total": pool.total, "free": pool.free, "reserved": pool.reserved,
                "available": pool.available,
            },
            "pages_needed": -(-ram // size),
            "enough_free_pages": enough,
            "backs_requested_max_page_size": size >= requested,
            "largest_max_page_size": None if best is None else 1 << best,
            "steps": steps,
        })
    advice["hugepages"] = hugepages

    suggestions: list[Suggestion] = []
    kinds = {p.kind for p in result.errors}
    if result.ok:
        suggestions.append(_suggest(
            probe, result, "nothing to change; the same guest with its cap written out", request,
            hugepage=_hugepage_of(result),
        ))
    if kinds & {"backing", "kvm-mmu", "ci-pages", "below-4k"} and largest is not None:
        value = format_size(1 << _effective_shift(cpu, largest))
        suggestions.append(_suggest(
            probe, result,
            f"lower cap-hpt-max-page-size to {value} (the largest this RAM backing allows)",
            replace(request, max_page_size=value), hugepage=_hugepage_of(result),
        ))
    if kinds & {"backing", "vrma"}:
        suggestions += _hugepage_suggestions(probe, request, result, ram)
    if "ci-pages" in kinds:
        advice["host_kernel"] = (
            f"this host's base page size is {format_bytes(host_page)}: 64 KiB cache-inhibited"
            " pages need a 64 KiB base page, so under KVM a hash guest here is limited to"
            " 4 KiB pages (guest kernels built for 64 KiB pages cannot boot in hash mode);"
            " a host kernel with 64 KiB pages lifts this"
        )
    if "mmu-mode" in kinds:
        family = host_cpu_model(probe.host.pvr)
        if family is not None and family.radix_capable:
            alias = family.family.lower()
            suggestions.append(_suggest(
                probe, result, f"use a {family.family} CPU model so the guest can run radix",
                replace(request, cpu=alias),
            ))
    if "memory" in kinds and result.ram_size is not None:
        rounded = max(-(-result.ram_size // SPAPR_MEMORY_BLOCK_SIZE) * SPAPR_MEMORY_BLOCK_SIZE,
                      SPAPR_MEMORY_BLOCK_SIZE)
        suggestions.append(_suggest(
            probe, result, f"give -m a multiple of 256 MiB: {format_size(rounded)}",
            replace(request, memory=format_size(rounded)),
        ))
    if "htm" in kinds:
        advice["machine_options"] = ["cap-htm=off"]
    advice["suggestions"] = suggestions
    return advice


def _hugepage_of(result: CheckResult) -> int | None:
    sizes = [b.page_size for b in result.backings if b.source in ("hugetlbfs", "statfs")]
    return min(sizes) if sizes and min(sizes) > 0 else None


def _hugepage_suggestions(probe: ProbeResult, request: CheckRequest, result: CheckResult,
                          ram: int) -> list[Suggestion]:
    """Back RAM with each hugepage size that could help: mounted ones as they are, pools
    without a mount as a what-if (after mounting hugetlbfs with that page size)."""
    out: list[Suggestion] = []
    requested = 1 << (result.max_page_shift or 0)
    for size in _hugepage_sizes(probe):
        if size < requested and "vrma" not in {p.kind for p in result.errors}:
            continue
        pool = probe.hugepages.pool(size)
        steps, _enough = _pool_steps(pool, size, ram)
        mounts = [m for m in probe.hugepages.mounts if m.page_size == size]
        if mounts:
            path = mounts[0].path
            new_request = replace(request, mem_paths=(path,))
            backings: list[Backing] | None = None
        else:
            path = f"/dev/hugepages-{format_size(size)}"
            steps = [f"mkdir -p {path}; mount -t hugetlbfs -o pagesize={format_size(size)}"
                     f" none {path}", *steps]
            new_request = replace(request, mem_paths=(path,))
            backings = [Backing(path, size, "hugepage-pool", path)]
        out.append(_suggest(
            probe, result, f"back guest RAM with {format_bytes(size)} hugepages ({path})",
            new_request, backings=backings, steps=steps, hugepage=size,
        ))
    return out


# --------------------------------------------------------------------------------------------
# text


def _problem_line(problem: Problem) -> str:
    text = f"  qemu-system-ppc64: {problem.message}" if problem.qemu else f"  {problem.message}"
    if problem.detail:
        text += f"\n      ({problem.detail})"
    return text


def _render(result: CheckResult) -> str:
    lines = [
        "kvmppc check: QEMU 7.2 would " + ("start this guest" if result.ok else
                                           "NOT start this guest")
    ]
    desc = []
    if result.machine:
        desc.append(f"machine {result.machine.name}")
    if result.cpu:
        desc.append(f"cpu {result.cpu.name} ({result.cpu.family})")
    accel = result.accel
    if result.accel == "kvm" and result.vm_type:
        accel += f" ({result.kvm_kind or '?'}, VM type {result.vm_type})"
    desc.append(f"accel {accel}")
    lines.append("  " + ", ".join(desc))
    if result.max_page_shift is not None:
        lines.append(
            f"  cap-hpt-max-page-size: {format_bytes(1 << result.max_page_shift)}"
            f" ({result.max_page_size_source})"
        )
    backing = ", ".join(
        f"{format_bytes(b.page_size)} ({b.mem_path or 'anonymous RAM'}"
        + (f" on hugetlbfs {b.mount}" if b.mount else "") + ")"
        for b in result.backings
    )
    lines.append(f"  RAM backing: {backing}")
    if result.ram_size is not None:
        lines.append(f"  RAM: {format_bytes(result.ram_size)}")
    lines.append(
        "  host-contiguous pages needed: "
        + ("yes (KVM_PPC_PAGE_SIZES_REAL)" if result.needs_host_contiguous_pages else "no")
    )
    if result.guest:
        lines += ["  " + line for line in result.guest.render().splitlines()
                  if not line.startswith("warning: ")]
    if result.errors:
        lines.append("errors (QEMU's words; QEMU stops at the first):")
        lines += [_problem_line(p) for p in result.errors]
    if result.warnings:
        lines.append("warnings:")
        lines += [_problem_line(p) for p in result.warnings]
    for note in result.notes:
        lines.append(f"note: {note}")
    advice = result.advice
    largest = advice.get("largest_max_page_size")
    if largest:
        rec = advice.get("recommended_max_page_size") or {}
        same = f" (same guest table as {rec['qemu']})" if rec.get("qemu") != largest["qemu"] else ""
        limit = "" if result.needs_host_contiguous_pages else ", no host-contiguity limit"
        lines.append(
            f"largest cap-hpt-max-page-size this RAM backing allows: {largest['qemu']}{same}"
            f"{limit}"
        )
    elif "largest_max_page_size" in advice:
        lines.append("no cap-hpt-max-page-size works with this RAM backing")
    if advice.get("host_kernel"):
        lines.append(f"note: {advice['host_kernel']}")
    if advice.get("machine_options"):
        lines.append("add to -machine: " + ",".join(advice["machine_options"]))
    suggestions: list[Suggestion] = advice.get("suggestions", [])
    if suggestions:
        lines.append("what to change:" if not result.ok else "as QEMU arguments / libvirt XML:")
    for suggestion in suggestions:
        if suggestion.ok:
            status = "starts" + (" (after the steps below)" if suggestion.extra_steps else "")
        else:
            status = "still fails: " + "; ".join(suggestion.remaining)
        lines.append(f"  - {suggestion.change} -> {status}")
        for step in suggestion.extra_steps:
            lines.append(f"      {step}")
        lines.append("      qemu-system-ppc64 " + " ".join(suggestion.qemu_args))
        if suggestion.libvirt_xml:
            lines += ["      " + line for line in suggestion.libvirt_xml.splitlines()]
    return "\n".join(lines)

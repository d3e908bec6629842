"""What to change when QEMU would refuse a guest, each change checked again by the replay.

Advice is chosen by the kinds of QEMU's refusals (:class:`ProblemKind`), never by their text:
a cap too large for the RAM backing or for KVM's table (lower the cap, or back RAM with
hugepages), a VRMA too small for the RMA (hugepages), a pre-POWER9 model on a radix-only KVM
(a model that can run radix), RAM not a multiple of 256 MiB, cap-htm on a KVM without HTM;
for guest RAM (:mod:`.memory`): a backend smaller than its hugepage (more RAM, or smaller
hugepages), file or memfd RAM on a KVM without MMU notifiers (anonymous RAM), ``maxmem`` and
``slots`` QEMU refuses, a hugepage pool short of pages (how many to add); a capability this
KVM (or TCG) cannot give (QEMU's own hint: "Try appending -machine cap-fwnmi=off"), a CPU model
KVM-HV will not run (``-cpu host``, with ``max-cpu-compat`` to keep the older ISA), a
compatibility mode that needs a hash page table where nested KVM-HV has none.
"""

from __future__ import annotations

from dataclasses import replace

from kvmppc.model import HugepagePool, ProbeResult
from kvmppc.policy.backing import Backing
from kvmppc.policy.caps import COMPAT_LEVELS
from kvmppc.policy.cmdline import DEFAULT_RAM_SIZE
from kvmppc.policy.guest_pages import LEGACY_MAX_SHIFT
from kvmppc.policy.hash64 import HASH64_TABLES, filter_for_cap
from kvmppc.policy.machines import CpuModel, Isa, host_cpu_model, qemu_models
from kvmppc.policy.memory import MemoryBackend, max_hotplug_slots, parse_slots
from kvmppc.policy.problems import ProblemKind
from kvmppc.policy.request import CheckRequest
from kvmppc.policy.result import Advice, CapAdvice, CheckResult, HugepageOption, Suggestion
from kvmppc.policy.sizes import format_bytes, format_size, qemu_strtosz
from kvmppc.policy.startup import SPAPR_MEMORY_BLOCK_SIZE, page_size_refusals, replay

K = ProblemKind
# The refusals a smaller cap-hpt-max-page-size can lift.
_CAP_KINDS = frozenset({K.BACKING, K.KVM_MMU, K.CI_PAGES, K.BELOW_4K})


def advise(probe: ProbeResult, result: CheckResult) -> Advice | None:
    """Advice for the guest of ``result``; None when QEMU stopped before its machine and CPU
    model were known."""
    cpu, request = result.cpu, result.request
    if cpu is None or result.max_page_shift is None or result.machine is None:
        return None
    host_page = probe.host.base_page_size
    min_backing = result.backing_page_size or host_page
    ram = result.ram_size or DEFAULT_RAM_SIZE
    largest = largest_working_shift(result, min_backing, host_page)
    kinds = result.error_kinds

    suggestions: list[Suggestion] = []
    if result.ok:
        suggestions.append(_suggest(
            probe, result, "nothing to change; the same guest with its cap written out", request,
            hugepage_size=result.hugepage_size,
        ))
    if kinds & _CAP_KINDS and largest is not None:
        value = format_size(1 << effective_shift(cpu, largest))
        suggestions.append(_suggest(
            probe, result,
            f"lower cap-hpt-max-page-size to {value} (the largest this RAM backing allows)",
            replace(request, max_page_size=value), hugepage_size=result.hugepage_size,
        ))
    if kinds & {K.BACKING, K.VRMA}:
        suggestions += _hugepage_suggestions(probe, result, ram)
    host_kernel = None
    if K.CI_PAGES in kinds:
        host_kernel = (
            f"this host's base page size is {format_bytes(host_page)}: 64 KiB cache-inhibited"
            " pages need a 64 KiB base page, so under KVM a hash guest here is limited to"
            " 4 KiB pages (guest kernels built for 64 KiB pages cannot boot in hash mode);"
            " a host kernel with 64 KiB pages lifts this"
        )
    suggestions += _cap_and_cpu_suggestions(probe, result)
    if K.MMU_MODE in kinds and K.VCPU not in kinds and K.HPT not in kinds:
        family = host_cpu_model(probe.host.pvr, qemu_models(result.qemu_version or None))
        if result.kvm_kind == "HV" and family is not None and family.radix_capable:
            suggestions.append(_suggest(
                probe, result, f"use -cpu host (this {family.family} host's own model) so the"
                " guest can run radix", replace(request, cpu="host"),
            ))
        elif family is not None and family.radix_capable:
            suggestions.append(_suggest(
                probe, result, f"use a {family.family} CPU model so the guest can run radix",
                replace(request, cpu=family.family.lower()),
            ))
    if K.MEMORY in kinds and result.ram_size is not None:
        block = SPAPR_MEMORY_BLOCK_SIZE
        rounded = max(-(-result.ram_size // block) * block, block)
        suggestions.append(_suggest(
            probe, result, f"give -m a multiple of 256 MiB: {format_size(rounded)}",
            replace(request, memory=format_size(rounded)),
        ))
    suggestions += memory_suggestions(probe, result)
    return Advice(
        largest_max_page_size=None if largest is None else CapAdvice(
            largest, "caps above 16 GiB give the same guest table" if largest == 34 else None),
        recommended_max_page_size=None if largest is None else CapAdvice(
            effective_shift(cpu, largest),
            "the smallest cap giving the same guest table (the safest to migrate)"),
        hugepages=_hugepage_options(probe, result, ram, host_page),
        suggestions=tuple(suggestions),
        host_kernel=host_kernel,
        machine_options=_machine_options(result),
    )


_APPEND = "Try appending -machine "


def _machine_options(result: CheckResult) -> tuple[str, ...]:
    """The -machine options QEMU's hints name (error_append_hint), first error first."""
    options: list[str] = []
    for problem in result.errors:
        hints = [line for line in problem.more if line.startswith(_APPEND)]
        for hint in hints:  # error_append_hint: "Try appending -machine cap-fwnmi=off"
            option = hint[len(_APPEND):].strip()
            if option not in options:
                options.append(option)
        if not hints and problem.kind == K.HTM and "cap-htm=off" not in options:
            options.append("cap-htm=off")
    return tuple(options)


def _with_hints(request: CheckRequest, result: CheckResult) -> CheckRequest | None:
    """``request`` with every cap / max-cpu-compat change QEMU's hints ask for, or None."""
    caps = list(request.caps)
    compat = request.max_cpu_compat
    changed = False
    for option in _machine_options(result):
        name, _, value = option.partition("=")
        if name == "max-cpu-compat":
            compat, changed = value, True
        elif name.startswith("cap-"):
            caps = [c for c in caps if c.partition("=")[0].removeprefix("cap-") != name[4:]]
            caps.append(option)
            changed = True
    return replace(request, caps=tuple(caps), max_cpu_compat=compat) if changed else None


def _cap_and_cpu_suggestions(probe: ProbeResult, result: CheckResult) -> list[Suggestion]:
    """QEMU's hints applied until the caps pass; -cpu host for KVM-HV (keeping an older
    model's ISA with max-cpu-compat); a compat mode nested KVM-HV can run."""
    out: list[Suggestion] = []
    kinds = result.error_kinds
    request = result.request
    if kinds & {K.HTM, K.CAPABILITY}:
        fixed, tried = request, result
        for _round in range(len(COMPAT_LEVELS) + 16):  # each round lifts at least one cap
            changed = _with_hints(fixed, tried)
            if changed is None or changed == fixed:
                break
            fixed = changed
            tried = replay(probe, fixed)
            if not (tried.error_kinds & {K.HTM, K.CAPABILITY}):
                break
        if fixed != request:
            added = [c for c in fixed.caps if c not in request.caps]
            if fixed.max_cpu_compat != request.max_cpu_compat:
                added.append(f"max-cpu-compat={fixed.max_cpu_compat}")
            out.append(_suggest(probe, result, "add -machine " + ",".join(added)
                                + " (what QEMU's hints ask for)", fixed))
    cpu = result.cpu
    if K.VCPU in kinds and cpu is not None:
        out.append(_suggest(probe, result, "use -cpu host: KVM-HV runs only the host's own"
                            " CPU model", replace(request, cpu="host")))
        level = _compat_level(cpu)
        host = host_cpu_model(probe.host.pvr, qemu_models(result.qemu_version or None))
        if level is not None and host is not None and cpu.isa < host.isa:
            out.append(_suggest(
                probe, result, f"use -cpu host with -machine max-cpu-compat={level} to keep"
                f" the guest at {cpu.family}'s instruction set",
                replace(request, cpu="host", max_cpu_compat=level)))
    if K.HPT in kinds and request.max_cpu_compat is not None:
        out.append(_suggest(
            probe, result, "drop max-cpu-compat (or give power9 or later): nested KVM-HV runs"
            " radix guests only, and modes before POWER9 need a hash page table",
            replace(request, max_cpu_compat=None)))
    if K.COMPAT in kinds and cpu is not None:
        level = _compat_level(cpu)
        out.append(_suggest(
            probe, result, f"max-cpu-compat={level}: the newest mode {cpu.family} supports"
            if level else "drop max-cpu-compat: this model has no compatibility modes",
            replace(request, max_cpu_compat=level)))
    return out


def _compat_level(cpu: CpuModel) -> str | None:
    """The max-cpu-compat name of a model's own ISA (None: 970 and POWER5+ have none)."""
    names = {Isa.V2_06: "power7", Isa.V2_07: "power8", Isa.V3_00: "power9",
             Isa.V3_10: "power11" if cpu.family == "POWER11" else "power10"}
    return names.get(cpu.isa)


def largest_working_shift(result: CheckResult, min_backing: int,
                          host_page: int) -> int | None:
    """The largest cap (12..34; larger caps filter alike) whose page-size checks pass."""
    if result.cpu is None:
        return None
    kvm = result.accel == "kvm"
    for shift in range(LEGACY_MAX_SHIFT, 11, -1):
        if not page_size_refusals(shift, result.cpu, result.smmu, kvm=kvm,
                                  min_backing=min_backing, host_page_size=host_page):
            return shift
    return None


def effective_shift(cpu: CpuModel, shift: int) -> int:
    """The smallest cap giving the same guest table: its largest page size."""
    table = filter_for_cap(HASH64_TABLES[cpu.hash64], shift)
    pages = [p.page_shift for seg in table.segments for p in seg.pages]
    return max(pages) if pages else shift


def _hugepage_sizes(probe: ProbeResult) -> list[int]:
    sizes = {m.page_size for m in probe.hugepages.mounts}
    sizes |= {p.page_size for p in probe.hugepages.pools}
    return sorted(s for s in sizes if s > probe.host.base_page_size)


def _pool_steps(probe: ProbeResult, page_size: int, ram: int) -> tuple[tuple[str, ...], bool]:
    """Whether the pool can hold the guest's RAM, and what to run if not."""
    pool = probe.hugepages.pool(page_size)
    needed = -(-ram // page_size)
    sysfs = f"/sys/kernel/mm/hugepages/hugepages-{page_size >> 10}kB/nr_hugepages"
    if pool is None:
        return (f"this kernel has no {format_bytes(page_size)} hugepage pool",), False
    if pool.available >= needed:
        return (), True
    more = needed - pool.available
    return (
        f"the {format_bytes(page_size)} pool has {pool.available} free pages, the guest's"
        f" {format_bytes(ram)} needs {needed}: echo {pool.total + more} > {sysfs}",
    ), False


def _hugepage_options(probe: ProbeResult, result: CheckResult, ram: int,
                      host_page: int) -> tuple[HugepageOption, ...]:
    """Each hugepage size: can it back the requested cap, and is its pool big enough?"""
    assert result.max_page_shift is not None
    requested = 1 << result.max_page_shift
    options = []
    for size in _hugepage_sizes(probe):
        steps, enough = _pool_steps(probe, size, ram)
        best = largest_working_shift(result, size, host_page)
        options.append(HugepageOption(
            page_size=size,
            mounts=tuple(m.path for m in probe.hugepages.mounts if m.page_size == size),
            pool=probe.hugepages.pool(size),
            pages_needed=-(-ram // size),
            enough_free_pages=enough,
            backs_requested_max_page_size=size >= requested,
            largest_max_page_size=None if best is None else 1 << best,
            steps=steps,
        ))
    return tuple(options)


def _suggest(probe: ProbeResult, base: CheckResult, change: str, request: CheckRequest, *,
             backings: tuple[Backing, ...] | None = None, steps: tuple[str, ...] = (),
             hugepage_size: int | None = None) -> Suggestion:
    tried = replay(probe, request, backings)
    after = {p.message for p in tried.errors}
    return Suggestion(
        change=change,
        request=request,
        backings=backings,
        result=tried,
        fixes=tuple(m for m in (p.message for p in base.errors) if m not in after),
        steps=steps,
        hugepage_size=hugepage_size,
    )


def _hugepage_suggestions(probe: ProbeResult, result: CheckResult,
                          ram: int) -> list[Suggestion]:
    """Back RAM with each hugepage size that could help: mounted ones as they are, pools
    without a mount as a what-if (after mounting hugetlbfs with that page size)."""
    out: list[Suggestion] = []
    requested = 1 << (result.max_page_shift or 0)
    for size in _hugepage_sizes(probe):
        if size < requested and K.VRMA not in result.error_kinds:
            continue
        steps, _enough = _pool_steps(probe, size, ram)
        mounts = [m for m in probe.hugepages.mounts if m.page_size == size]
        backings: tuple[Backing, ...] | None = None
        if mounts:
            path = mounts[0].path
        elif result.request.backends:
            path = f"memfd hugetlb=on,hugetlbsize={format_size(size)}: no mount needed"
        else:
            path = f"/dev/hugepages-{format_size(size)}"
            steps = (f"mkdir -p {path}; mount -t hugetlbfs -o pagesize={format_size(size)}"
                     f" none {path}", *steps)
            backings = (Backing(path, size, "hugepage-pool", path),)
        change = f"back guest RAM with {format_bytes(size)} hugepages ({path})"
        request = _on_hugetlbfs(result.request, ram, path if mounts else None, size)
        if request.memory != result.request.memory and not result.request.backends:
            # softmmu/physmem.c file_ram_alloc: a backend holds whole hugepages.
            change += f" and -m {request.memory} (RAM of at least one hugepage)"
        out.append(_suggest(
            _pool_grown(probe, size, _round_up(ram, size) // size), result, change, request,
            backings=backings, steps=steps, hugepage_size=size,
        ))
    return out


def _pool_grown(probe: ProbeResult, page_size: int, pages: int) -> ProbeResult:
    """The host after the suggestion's steps: the pool of ``page_size`` has ``pages`` free
    pages at least (QEMU reserves them when it maps the backend)."""
    pools = list(probe.hugepages.pools)
    pool = probe.hugepages.pool(page_size)
    if pool is not None and pool.available >= pages:
        return probe
    grown = HugepagePool(page_size, (pool.total if pool else 0) + pages,
                         (pool.free if pool else 0) + pages, pool.reserved if pool else 0,
                         pool.surplus if pool else 0)
    pools = [grown if p.page_size == page_size else p for p in pools] if pool else [
        *pools, grown]
    return replace(probe, hugepages=replace(probe.hugepages, pools=tuple(pools)))


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _on_hugetlbfs(request: CheckRequest, ram: int, path: str | None,
                  size: int) -> CheckRequest:
    """The guest with its RAM in hugepages: ``-mem-path`` (RAM rounded up to the page size
    when smaller), or each mapped backend of whole pages, a file on the mount at ``path``, or
    without a mount a memfd with ``hugetlb=on`` (util/memfd.c: no mount needed)."""
    if not request.backends:
        memory = request.memory if ram >= size else format_size(size)
        return replace(request, mem_paths=(path or f"/dev/hugepages-{format_size(size)}",),
                       memory=memory)
    backends = tuple(
        (replace(b, qom_type="memory-backend-file", mem_path=path, hugetlb=False,
                 hugetlbsize=None, size=format_size(_round_up(b.size_bytes, size)))
         if path is not None else
         replace(b, qom_type="memory-backend-memfd", mem_path=None, hugetlb=True,
                 hugetlbsize=format_size(size), size=format_size(_round_up(b.size_bytes, size))))
        if b.use != "none" else b for b in request.backends)
    return _with_backends(request, backends)


def _with_backends(request: CheckRequest, backends: tuple[MemoryBackend, ...]) -> CheckRequest:
    """``backends`` in place of the request's, with ``-m`` following their total."""
    mapped = [b for b in backends if b.use == "ram"] or [b for b in backends if b.use == "numa"]
    memory = request.memory
    if memory is not None and mapped:
        memory = format_size(sum(b.size_bytes for b in mapped))
    return replace(request, backends=backends, memory=memory)


def memory_suggestions(probe: ProbeResult, result: CheckResult) -> list[Suggestion]:
    """What to change for the guest-RAM refusals (:mod:`.memory`), each replayed."""
    kinds, request = result.error_kinds, result.request
    out: list[Suggestion] = []
    ram = result.ram_size or DEFAULT_RAM_SIZE
    if K.SYNC_MMU in kinds:
        # softmmu/physmem.c qemu_ram_alloc_from_fd: file and memfd RAM need KVM_CAP_SYNC_MMU;
        # memory-backend-ram (anonymous, qemu_ram_alloc) does not.
        backends = tuple(
            replace(b, qom_type="memory-backend-ram", mem_path=None, hugetlb=False,
                    hugetlbsize=None) for b in request.backends)
        out.append(_suggest(
            probe, result, "back guest RAM with anonymous memory (no -mem-path, no file or"
            " memfd backends): this KVM has no MMU notifiers (KVM_CAP_SYNC_MMU 0, as KVM-PR)",
            replace(request, mem_paths=(), backends=backends)))
    if K.BACKEND_PAGE in kinds:
        page = max(b.page_size for b in result.backings)
        if request.backends:
            backends = tuple(
                replace(b, size=format_size(_round_up(b.size_bytes, page)))
                if b.qom_type != "memory-backend-ram" else b for b in request.backends)
            fixed = _with_backends(request, backends)
        else:
            fixed = replace(request, memory=format_size(_round_up(ram, page)))
        out.append(_suggest(
            probe, result, f"give each hugepage backend whole {format_bytes(page)} pages"
            f" (RAM {format_bytes(_round_up(ram, page))}), or use smaller hugepages", fixed))
    if K.HUGEPAGE_POOL in kinds:
        for size in sorted({b.page_size for b in result.backings
                            if b.page_size > probe.host.base_page_size}):
            pages = _round_up(ram, size) // size
            steps, _enough = _pool_steps(probe, size, ram)
            out.append(_suggest(
                _pool_grown(probe, size, pages), result, f"add {format_bytes(size)} hugepages"
                f" to the pool ({pages} free pages for {format_bytes(ram)} of RAM)", request,
                steps=steps, hugepage_size=size))
    if K.OVERCOMMIT in kinds and probe.host.memory is not None:
        out += _overcommit_suggestions(probe, result, ram)
    if K.HOTPLUG in kinds and request.slots is not None:
        vm = probe.vm_type(result.vm_type) if result.vm_type else None
        limit = max_hotplug_slots(vm.caps if vm is not None and result.accel == "kvm" else None)
        out.append(_suggest(
            probe, result, f"lower slots to {limit} (hw/ppc/spapr.c: half of KVM's memslots,"
            " at least 32)", replace(request, slots=str(limit))))
    if K.MEMORY in kinds and (request.maxmem is not None or request.slots is not None):
        hotplug = _hotplug_fixed(request, ram)
        if hotplug is not None:
            out.append(_suggest(probe, result, f"give maxmem={hotplug.maxmem} (at least -m, a"
                                " multiple of 256 MiB)", hotplug))
    return out


def _overcommit_suggestions(probe: ProbeResult, result: CheckResult,
                            ram: int) -> list[Suggestion]:
    """Anonymous RAM the kernel will not commit (mm/util.c __vm_enough_memory): less RAM, or
    the kernel told to allow it (vm.overcommit_memory=1), each replayed."""
    info = probe.host.memory
    assert info is not None
    out: list[Suggestion] = []
    if info.overcommit_memory == 0 and info.mem_total is not None and not result.request.backends:
        room = info.mem_total + (info.swap_total or 0)
        smaller = room // SPAPR_MEMORY_BLOCK_SIZE * SPAPR_MEMORY_BLOCK_SIZE
        if 0 < smaller < ram:
            out.append(_suggest(
                probe, result, f"give the guest at most {format_size(smaller)} of RAM (this"
                f" host's RAM and swap: {format_bytes(room)})",
                replace(result.request, memory=format_size(smaller))))
    lenient = replace(probe, host=replace(probe.host, memory=replace(info, overcommit_memory=1)))
    out.append(_suggest(
        lenient, result, "let the kernel overcommit (vm.overcommit_memory=1), or add swap",
        result.request, steps=("sysctl vm.overcommit_memory=1",)))
    return out


def _hotplug_fixed(request: CheckRequest, ram: int) -> CheckRequest | None:
    maxmem = qemu_strtosz(request.maxmem).value if request.maxmem is not None else None
    slots = parse_slots(request.slots) if request.slots is not None else None
    if maxmem is None and not slots:
        return None
    block = SPAPR_MEMORY_BLOCK_SIZE
    wanted = max(maxmem or 0, ram + (block if slots else 0))
    wanted = _round_up(wanted, block)
    if wanted == maxmem:
        return None
    return replace(request, maxmem=format_size(wanted))

"""QEMU's start-up of a pseries guest, replayed: one function per phase, in QEMU's order.

The phases and checks are the same in every modelled release (7.2 and 10.0: the differential
tests show it); what differs is each release's data (:mod:`kvmppc.qemu_versions`): machine
types, CPU models, the size syntax, messages.  The release answered for is the request's
``qemu_version``, else the one the probe found installed, else the newest modelled.

Every decision QEMU makes about ``cap-hpt-max-page-size`` is replayed as a pure function of
a probe (:class:`kvmppc.model.ProbeResult`) and a request:

1. the command line: ``-m``, the machine type, ``-m``'s slots and maxmem
   (:func:`_memory_options`), the cap's value (:func:`_command_line`);
2. the accelerator: KVM's VM type (accel/kvm/kvm-all.c, :func:`_accelerator`), the machine's
   deprecation warning (:func:`_machine_deprecation`), every ``-object memory-backend-*``
   created (``qemu_create_late_backends``, :func:`_memory_backends`), then the ``-cpu`` model
   (:func:`_cpu_model`);
3. board and machine init: guest RAM (hw/core/machine.c ``machine_run_board_init``:
   ``-mem-path``'s backend, the NUMA total, :func:`_board_memory`), then hw/ppc/spapr.c
   ``spapr_machine_init``: the pseries-2.12-and-older default, the RMA for SLOF (in NUMA node
   0), the alignment of RAM, maxmem and nodes, the hotplug slots (:func:`_machine_init`);
4. machine reset: the capabilities in table order (``spapr_caps_apply``: cap-htm, then
   cap-hpt-max-page-size with its backing check), the HPT and its VRMA (``spapr_setup_hpt``)
   (:func:`_machine_reset`), then each CPU's reset: the page-size filter and
   ``kvm_check_mmu`` (:func:`_cpu_reset`);
5. the device tree: the MMU-mode check for pre-POWER9 models (:func:`_device_tree`).

Each phase records QEMU's refusals and warnings in a :class:`ProblemLog` and says whether
QEMU could go on.  QEMU stops at its first error; kvmppc goes on wherever the later phases
can still be judged, so ``errors[0]`` is what QEMU prints and the rest are what it would
print after each fix.  QEMU 7.2 makes the backing check (reset, ``spapr_caps_apply``)
*before* the CPU checks (CPU reset, ``kvm_check_mmu``); QEMU 3.x called the CPU reset from
core realize, before machine reset, so its users saw "KVM can't supply 64kiB CI pages" first
where 7.2 users see "Can't support 64 kiB guest pages with 4 kiB host pages".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvmppc.model import ProbeResult, SmmuInfo, SmmuSource, VmTypeInfo
from kvmppc.policy import caps as spapr_caps
from kvmppc.policy.backing import Backing, backings_for, resolve_backing
from kvmppc.policy.cmdline import (
    DEFAULT_RAM_SIZE,
    SIZE_SUFFIX_HINT,
    parse_max_page_size,
    parse_memory,
)
from kvmppc.policy.cmdline import parse_warnings as cap_parse_warnings
from kvmppc.policy.guest_pages import LEGACY_MAX_SHIFT, MSG_BELOW_4K, MSG_BELOW_64K, PageSizes
from kvmppc.policy.hash64 import HASH64_TABLES, filter_for_cap
from kvmppc.policy.machines import (
    CpuModel,
    Hash64Table,
    MachineType,
    QemuModels,
    deprecation_warning,
    lookup_cpu,
    lookup_machine,
    qemu_models,
)
from kvmppc.policy.memory import (
    DEFAULT_RAM_ID,
    Created,
    MemoryBackend,
    PoolLedger,
    create_backend,
    max_hotplug_slots,
    mem_property_error,
    node0_size,
    numa_nodes,
    parse_slots,
)
from kvmppc.policy.mmu import (
    MiB,
    hpt_shift_for_ramsize,
    kvm_check_mmu,
    needs_host_contiguous_pages,
    pr_smmu_with_vcpu,
    rma_size,
    vrma_limit,
)
from kvmppc.policy.problems import ProblemKind, ProblemLog, QemuRefusalError, When
from kvmppc.policy.request import VM_TYPE_BY_KVM_TYPE, CheckRequest
from kvmppc.policy.result import CheckResult, MmuModes
from kvmppc.policy.sizes import qemu_strtosz
from kvmppc.qemu_versions import choose
from kvmppc.qemu_versions.table import Messages

SPAPR_MEMORY_BLOCK_SIZE = 256 * MiB
MIN_RMA_SLOF = 128 * MiB

K = ProblemKind


@dataclass(frozen=True)
class KvmContext:
    """What ``-accel kvm`` gets on this host: the VM type and its SMMU as QEMU reads it."""

    vm: VmTypeInfo
    smmu: SmmuInfo | None  # None when QEMU could not get it
    smmu_error: str | None

    @property
    def radix(self) -> bool:
        return bool(self.vm.caps.get("PPC_MMU_RADIX", 0))

    @property
    def hash_v3(self) -> bool:
        return bool(self.vm.caps.get("PPC_MMU_HASH_V3", 0))


@dataclass
class _Startup:
    """What QEMU has set up so far; each phase adds its part."""

    probe: ProbeResult
    request: CheckRequest
    backings: tuple[Backing, ...]
    accel: str
    qemu: QemuModels
    log: ProblemLog = field(default_factory=ProblemLog)
    ram: int | None = None
    machine: MachineType | None = None
    shift: int | None = None
    shift_source: str | None = None
    kvm: KvmContext | None = None
    cpu: CpuModel | None = None
    smmu: SmmuInfo | None = None
    contiguous: bool = False
    vrma: str | None = None
    hpt_at_reset: bool = True
    guest: PageSizes | None = None
    mmu: MmuModes | None = None
    resolve: Callable[[str], Backing] | None = None  # a mem-path's backing (live: statfs)
    maxmem: int | None = None  # -m maxmem= (machine_set_mem: maxram_size)
    slots: int | None = None  # -m slots=
    node_sizes: tuple[int, ...] = ()  # each NUMA node's memdev size
    created: dict[int, Created] = field(default_factory=dict)  # index in request.backends
    ledger: PoolLedger | None = None
    cmdline_caps: dict[str, int] = field(default_factory=dict)  # cap-NAME=VALUE, parsed
    max_compat: str | None = None  # max-cpu-compat, parsed
    caps: dict[str, int] = field(default_factory=dict)  # spapr->eff.caps after machine init

    @property
    def radix_capable(self) -> bool:
        """The model can run radix and max-cpu-compat lets it (POWER9 mode or later)."""
        assert self.cpu is not None
        return self.cpu.radix_capable and spapr_caps.supports_compat(
            self.cpu, "power9", self.qemu.table, self.max_compat)

    @property
    def min_backing(self) -> int:
        return min(b.page_size for b in self.backings)

    def result(self) -> CheckResult:
        return CheckResult(
            request=self.request, errors=tuple(self.log.errors),
            warnings=tuple(self.log.warnings), notes=tuple(self.log.notes),
            machine=self.machine, cpu=self.cpu, accel=self.accel,
            vm_type=self.kvm.vm.name if self.kvm else None,
            kvm_kind=self.kvm.vm.kind if self.kvm else None, smmu=self.smmu,
            max_page_shift=self.shift, max_page_size_source=self.shift_source,
            needs_host_contiguous_pages=self.contiguous, backings=self.backings,
            ram_size=self.ram, guest=self.guest, mmu=self.mmu,
            qemu_version=self.qemu.version,
        )


def replay(probe: ProbeResult, request: CheckRequest,
           backings: Sequence[Backing] | None = None, *,
           resolve: Callable[[str], Backing] | None = None) -> CheckResult:
    """QEMU's start-up for ``request`` on the probed host, phase by phase (no advice).

    ``backings`` replace the mem-paths' page sizes (the CLI statfs'es them live); ``resolve``
    gives a mem-path's backing where the request has backends (default: the probe's mounts).
    """
    choice = choose(request.qemu_version, probe.host.qemu_version)
    s = _Startup(
        probe, request,
        tuple(backings) if backings is not None else ram_backings(probe, request, resolve),
        request.accel or ("kvm" if usable_powerpc_kvm(probe) else "tcg"),
        qemu_models(choice.table),
    )
    s.resolve = resolve
    s.ledger = PoolLedger(probe.hugepages, memory=probe.host.memory)
    for note in choice.notes:
        s.log.note(note)
    if probe.provenance is not None and probe.provenance.derived:
        s.log.note(f"host profile {probe.source.removeprefix('profile:')} is DERIVED from"
                   f" kernel source, not captured from a running kernel"
                   f" (from {probe.provenance.derived_from}): {probe.provenance.why}")
    phases = (_command_line, _accelerator, _machine_deprecation, _memory_backends, _cpu_model,
              _machine_init, _machine_reset, _cpu_reset, _set_compat, _device_tree)
    for phase in phases:
        if not phase(s):
            break
    return s.result()


def usable_powerpc_kvm(probe: ProbeResult) -> bool:
    """A PowerPC KVM where some VM type can be created (libvirt would pick KVM there)."""
    return (
        probe.host.is_powerpc
        and probe.kvm.present
        and any(vm.available for vm in probe.kvm.vm_types.values())
    )


# --------------------------------------------------------------------------------------------
# 1. the command line: -m, then the machine type, then the machine's properties


def _command_line(s: _Startup) -> bool:
    request, log = s.request, s.log
    if request.memory is None:
        s.ram = DEFAULT_RAM_SIZE
    else:
        try:
            s.ram, memory_warnings = parse_memory(request.memory, s.qemu.table)
        except QemuRefusalError as refusal:
            log.refused(refusal)
        else:
            for location, warning in memory_warnings:
                log.warn(K.MEMORY, warning, location=location)
    try:
        s.machine = lookup_machine(request.machine, s.qemu)
    except QemuRefusalError as refusal:
        log.refused(refusal)
        log.note(f"QEMU {s.qemu.version}'s machine types: {s.qemu.machine_list()}")
        return False
    _memory_options(s)
    if request.max_page_size is not None:
        for warning in cap_parse_warnings(request.max_page_size, s.qemu.table):
            log.warn(K.MAX_PAGE_SIZE, warning)
        try:
            parsed = parse_max_page_size(request.max_page_size, s.qemu.table)
        except QemuRefusalError as refusal:
            log.refused(refusal)
            return False
        s.shift, s.shift_source = parsed.shift, "command line"
    return _machine_properties(s)


def _machine_properties(s: _Startup) -> bool:
    """The other -machine properties: each cap-NAME (spapr_caps.c spapr_cap_set_bool /
    spapr_cap_set_string) and max-cpu-compat (target/ppc/compat.c ppc_compat_prop_set)."""
    assert s.machine is not None
    for text in s.request.caps:
        name, value = spapr_caps.split_cap(text)
        try:
            s.cmdline_caps[name] = spapr_caps.parse_cap(s.machine, name, value, s.qemu.table)
        except QemuRefusalError as refusal:
            s.log.refused(refusal)
            return False
    if s.request.max_cpu_compat is not None:
        try:
            s.max_compat = spapr_caps.parse_max_cpu_compat(s.request.max_cpu_compat,
                                                           s.qemu.table)
        except QemuRefusalError as refusal:
            s.log.refused(refusal)
            return False
    return True


def _memory_options(s: _Startup) -> None:
    """``-m``'s slots and maxmem: QemuOpts parses them with the option, then
    hw/core/machine.c ``machine_set_mem`` checks them when the machine's options are set
    (after the machine type is known, before the capabilities)."""
    request, log = s.request, s.log
    if request.maxmem is not None:
        maxmem = qemu_strtosz(request.maxmem, s.qemu.table.strtosz).value
        if maxmem is None:
            log.error(K.MEMORY, f"-m {request.memory or '512M'},maxmem={request.maxmem}:"
                      " Parameter 'maxmem' expects a non-negative number below 2^64",
                      more=SIZE_SUFFIX_HINT)
            return
        s.maxmem = maxmem
    if request.slots is not None:
        s.slots = parse_slots(request.slots)
    if s.ram is not None:
        message = mem_property_error(s.ram, s.maxmem, s.slots)
        if message:
            log.error(K.MEMORY, message)


# --------------------------------------------------------------------------------------------
# 2. the accelerator (accel/kvm/kvm-all.c kvm_init, target/ppc/kvm.c), then the CPU model


def _accelerator(s: _Startup) -> bool:
    if s.accel != "kvm":
        return True
    s.kvm = kvm_context(s.probe, s.request.kvm_type, s.log, s.qemu.table.messages)
    return s.kvm is not None


def kvm_context(probe: ProbeResult, kvm_type: str | None, log: ProblemLog,
                messages: Messages) -> KvmContext | None:
    """What QEMU's ``-accel kvm`` gets on this host, or None with QEMU's error recorded."""
    if not probe.host.is_powerpc:
        # A qemu-system-ppc64 built for another architecture has no KVM accelerator at all.
        log.error(K.ACCEL, "-accel kvm: invalid accelerator kvm")
        log.note(
            f"this host is {probe.host.arch}: qemu-system-ppc64 here runs pseries guests"
            " under TCG only; replay a POWER host's probe with --host-profile to check KVM"
        )
        return None
    if not probe.kvm.present:
        log.error(K.ACCEL, "Could not access KVM kernel module: No such file or directory")
        log.note("load kvm_hv (or kvm_pr): 'modprobe kvm_hv'")
        return None
    if probe.kvm.error and not probe.kvm.vm_types:
        log.error(K.ACCEL, f"Could not access KVM kernel module: {_strerror(probe.kvm.error)}")
        return None
    vm = probe.vm_type(VM_TYPE_BY_KVM_TYPE[kvm_type])
    if vm is None or not vm.available:
        # accel/kvm/kvm-all.c kvm_init; -EINVAL from KVM_CREATE_VM: that module is absent.
        # kvm_arch_get_default_type's hint (target/ppc/kvm.c), then kvm_init's caller.
        module = "pr" if kvm_type == "PR" else "hv"
        log.error(K.ACCEL, messages.kvm_create_vm_failed, more=(
            f"PPC KVM module is not loaded. Try modprobe kvm_{module}.",
            "-accel kvm: failed to initialize kvm: Invalid argument"))
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
    return KvmContext(vm, smmu, smmu_error)


def _strerror(probe_error: str) -> str:
    """The strerror() inside a probe error ("OP on PATH: strerror. hint"), as QEMU prints it
    after its own message (``error_setg_errno``)."""
    match = re.search(r": (.+?)(?:\. |\.?$)", probe_error)
    return match.group(1) if match else probe_error


def _machine_deprecation(s: _Startup) -> bool:
    assert s.machine is not None
    # system/vl.c qemu_init: the deprecation warning comes after the machine options (-m,
    # memory.size, the caps: their errors print without it) and before the late backends and
    # -cpu (their errors print after it), as QEMU 10.0 shows under TCG; in the source it
    # follows configure_accelerators, so a KVM error comes first too.
    deprecated = deprecation_warning(s.machine, s.qemu)
    if deprecated is not None:
        s.log.warn(K.MACHINE, deprecated)
    return True


def _sync_mmu(s: _Startup) -> bool:
    """accel/kvm/kvm-all.c ``kvm_has_sync_mmu``: KVM_CAP_SYNC_MMU on the VM (true under TCG,
    where the check is not made; a probe without the cap is taken to have it)."""
    return s.kvm is None or bool(s.kvm.vm.caps.get("SYNC_MMU", 1))


def _create(s: _Startup, backend: MemoryBackend, size: int) -> Created:
    assert s.ledger is not None

    def resolve(path: str) -> Backing:
        # A mem-path whose backing the caller gave (statfs'd live, or a what-if) is that.
        given = next((b for b in s.backings if b.mem_path == path), None)
        if given is not None:
            return given
        return s.resolve(path) if s.resolve is not None else resolve_backing(s.probe, path)

    return create_backend(s.probe, backend, size, kvm_sync_mmu=_sync_mmu(s), ledger=s.ledger,
                          resolve=resolve)


_CREATE_KINDS = {"sync-mmu": K.SYNC_MMU, "page-size": K.BACKEND_PAGE, "pool": K.HUGEPAGE_POOL,
                 "memfd": K.BACKEND_PAGE, "statfs": K.STATFS, "overcommit": K.OVERCOMMIT}


def _record_created(s: _Startup, created: Created, what: str) -> None:
    """A backend's refusal as QEMU's error.  A pool short of pages is judged on the pool the
    probe saw (pools change: the advice says how many pages to add)."""
    if not created.error or not created.kind:
        return
    detail = None
    if created.kind == "pool":
        detail = (f"{what}: the hugepage pool the probe saw has too few free pages; QEMU 7.2"
                  " maps with reserve=on (MAP_NORESERVE only with reserve=off)")
    s.log.error(_CREATE_KINDS[created.kind], created.error, detail=detail)


def _memory_backends(s: _Startup) -> bool:
    """softmmu/vl.c ``qemu_create_late_backends``: every ``-object memory-backend-*`` is
    allocated here, in command-line order, used as RAM or not (QEMU stops at the first that
    fails; kvmppc records each)."""
    for index, backend in enumerate(s.request.backends):
        created = _create(s, backend, backend.size_bytes)
        s.created[index] = created
        _record_created(s, created, f"backend {backend.id or index}")
    if s.request.backends:
        s.backings = ram_backings(s.probe, s.request, s.resolve, s.created)
    return True


def ram_backings(probe: ProbeResult, request: CheckRequest,
                 resolve: Callable[[str], Backing] | None = None,
                 created: dict[int, Created] | None = None) -> tuple[Backing, ...]:
    """The backends ``qemu_minrampagesize`` counts: the mapped ones (the machine's, or each
    NUMA node's), else the default backend of ``-mem-path`` or anonymous RAM."""
    if not request.backends:
        return backings_for(probe, request.mem_paths)
    mapped = [(i, b) for i, b in enumerate(request.backends) if b.use == "ram"] or [
        (i, b) for i, b in enumerate(request.backends) if b.use == "numa"]
    if not mapped:
        return backings_for(probe, request.mem_paths[:1])
    out = []
    for index, backend in mapped:
        if created is not None and index in created:
            out.append(created[index].backing)
        else:
            out.append(create_backend(probe, backend, backend.size_bytes, kvm_sync_mmu=True,
                                      ledger=PoolLedger(probe.hugepages), resolve=resolve
                                      ).backing)
    return tuple(out)


def _cpu_model(s: _Startup) -> bool:
    assert s.machine is not None
    try:
        s.cpu = lookup_cpu(
            s.request.cpu if s.request.cpu is not None else "max", s.machine,
            kvm=s.accel == "kvm", host_pvr=s.probe.host.pvr, qemu=s.qemu,
        )
    except QemuRefusalError as refusal:
        s.log.refused(refusal)
        return False
    if s.kvm is not None:
        s.smmu = smmu_for_guest(s.kvm, s.cpu, s.probe.host.pvr)
    return True


def smmu_for_guest(kvm: KvmContext, cpu: CpuModel,
                   host_pvr: int | None = None) -> SmmuInfo | None:
    """The SMMU QEMU reads once the vCPUs exist (KVM-PR's grows with vCPU 0's PVR)."""
    if kvm.smmu is not None and kvm.vm.is_pr:
        return pr_smmu_with_vcpu(kvm.smmu, cpu.pvr, host_pvr)
    return kvm.smmu


# --------------------------------------------------------------------------------------------
# 3. machine init: the legacy default needs the SMMU flags; the RMA; RAM alignment


def _machine_init(s: _Startup) -> bool:
    machine, log = s.machine, s.log
    assert machine is not None
    _board_memory(s)
    if s.shift is None:
        if machine.default_hpt_max_page_shift is not None:
            s.shift, s.shift_source = machine.default_hpt_max_page_shift, "machine default"
        else:
            if s.kvm is not None and s.smmu is None:
                log.error(K.SMMU, s.kvm.smmu_error or "KVM gave no MMU information")
                return False
            if needs_host_contiguous_pages(s.kvm is not None, s.smmu):
                s.shift = s.min_backing.bit_length() - 1  # ctz64(qemu_minrampagesize())
                s.shift_source = f"{machine.name} default: the smallest RAM backing page size"
            else:
                s.shift = LEGACY_MAX_SHIFT
                s.shift_source = f"{machine.name} default: 16 GiB without host-contiguous pages"
    if s.ram is not None and _rma_size(s) >= MIN_RMA_SLOF:
        _vsmt(s)  # after spapr_rma_size, before spapr_validate_node_memory
    if s.ram is not None:
        if _rma_size(s) < MIN_RMA_SLOF:
            # hw/ppc/spapr.c spapr_rma_size; "%" HWADDR_PRIx "ld" prints 0x80 as "80ld".
            log.error(
                K.MEMORY, "pSeries SLOF firmware requires >= 80ldMiB guest RMA (Real Mode Area"
                " memory)"
            )
        elif machine.dr_lmb_enabled:
            _validate_node_memory(s)
    _caps_init(s)
    started = _create_vcpus(s)  # spapr_init_cpus, before the hotplug memory region
    _hotplug_slots(s)
    return started


def _caps_init(s: _Startup) -> None:
    """hw/ppc/spapr_caps.c ``spapr_caps_init``: the machine's defaults for this model (and
    max-cpu-compat), then what the command line set."""
    assert s.machine is not None and s.cpu is not None
    s.caps = spapr_caps.default_caps(s.machine, s.cpu, s.qemu.table, s.max_compat)
    s.caps.update(s.cmdline_caps)


# KVM-HV cannot spoof the PVR: arch/powerpc/kvm/book3s_hv.c kvm_arch_vcpu_ioctl_set_sregs_hv
# returns -EINVAL unless sregs->pvr is the host's (vcpu->arch.pvr = mfspr(SPRN_PVR)); KVM-PR
# takes any PVR (book3s_pr.c kvmppc_set_pvr_pr).
MSG_HV_CPU_HOST = ("Register sync failed... If you're using kvm-hv.ko, only \"-cpu host\" is"
                   " possible")
MSG_INIT_VCPU = "kvm_init_vcpu: kvm_arch_init_vcpu failed (0): Invalid argument"


def _create_vcpus(s: _Startup) -> bool:
    """spapr_init_cpus -> kvm_init_vcpu -> target/ppc/kvm.c ``kvm_arch_init_vcpu``:
    ``kvm_arch_sync_sregs`` sets the model's PVR with KVM_SET_SREGS; error_report prints
    the first line, accel/kvm's error_setg_errno (vCPU 0) the second, then QEMU exits."""
    cpu, kvm, host_pvr = s.cpu, s.kvm, s.probe.host.pvr
    assert cpu is not None
    if kvm is None or kvm.vm.is_pr or host_pvr is None or cpu.pvr == host_pvr:
        return True
    s.log.error(K.VCPU, MSG_HV_CPU_HOST, more=(MSG_INIT_VCPU,),
                detail=f"KVM-HV takes only the host's PVR ({host_pvr:#010x}); {cpu.name}'s is"
                f" {cpu.pvr:#010x}")
    # QEMU exits here; the later checks still say what this model would meet where KVM
    # takes it (KVM-PR, or a host with this PVR).
    return True


def _board_memory(s: _Startup) -> None:
    """hw/core/machine.c ``machine_run_board_init`` before the board's own init: the machine's
    backend against ``-m``, else the default backend (``-mem-path`` or anonymous RAM, created
    only now), then hw/core/numa.c ``numa_complete_configuration``."""
    request, log = s.request, s.log
    ram_backend = next((b for b in request.backends if b.use == "ram"), None)
    numa = numa_nodes(request.backends)
    if ram_backend is not None:
        if request.memory is None:
            s.ram = ram_backend.size_bytes  # softmmu/vl.c qemu_resolve_machine_memdev
        elif s.ram is not None and ram_backend.size_bytes != s.ram:
            log.error(K.MEMORY,
                      "Machine memory size does not match the size of the memory backend")
    elif not numa and s.ram:
        path = request.mem_paths[0] if len(request.mem_paths) == 1 else None
        kind = "memory-backend-file" if path else "memory-backend-ram"
        created = _create(s, MemoryBackend(kind, f"{s.ram}B", mem_path=path,
                                           id=None if path else DEFAULT_RAM_ID), s.ram)
        _record_created(s, created, path or "guest RAM")
    elif len(request.mem_paths) > 1 and not _sync_mmu(s):
        log.error(K.SYNC_MMU, "host lacks kvm mmu notifiers, -mem-path unsupported")
    if numa:
        s.node_sizes = tuple(b.size_bytes for b in numa)
        if s.ram is not None and sum(s.node_sizes) != s.ram:
            log.error(K.MEMORY, f"total memory for NUMA nodes (0x{sum(s.node_sizes):x}) should"
                      f" equal RAM size (0x{s.ram:x})")
        elif ram_backend is not None:
            log.error(K.MEMORY, "'-machine memory-backend' and '-numa memdev' properties are"
                      " mutually exclusive")


def _rma_size(s: _Startup) -> int:
    """hw/ppc/spapr.c ``spapr_rma_size``: RAM, within node 0, 1 TiB and the machine's limit."""
    assert s.ram is not None and s.machine is not None
    return rma_size(node0_size(s.ram, s.node_sizes), s.machine.rma_limit)


def _validate_node_memory(s: _Startup) -> None:
    """hw/ppc/spapr.c ``spapr_validate_node_memory`` (sic: the maxmem message prints the RAM
    size, as QEMU 7.2 does)."""
    assert s.ram is not None
    block = SPAPR_MEMORY_BLOCK_SIZE
    if s.ram % block:
        s.log.error(K.MEMORY, f"Memory size 0x{s.ram:x} is not aligned to {block // MiB} MiB")
    elif s.maxmem is not None and s.maxmem % block:
        s.log.error(K.MEMORY, f"Maximum memory size 0x{s.ram:x} is not aligned to"
                    f" {block // MiB} MiB")
    else:
        for index, size in enumerate(s.node_sizes):
            if size % block:
                s.log.error(K.MEMORY, f"Node {index} memory size 0x{size:x} is not aligned to"
                            f" {block // MiB} MiB")
                break


def _hotplug_slots(s: _Startup) -> None:
    """hw/ppc/spapr.c ``spapr_machine_init``, after the vCPUs: with hotpluggable memory the
    slots may be at most half KVM's memslots (at least 32; 32 under TCG)."""
    if s.ram is None or s.maxmem is None or s.maxmem <= s.ram or not s.slots:
        return
    limit = max_hotplug_slots(s.kvm.vm.caps if s.kvm is not None else None)
    if s.slots > limit:
        s.log.error(K.HOTPLUG, f"Specified number of memory slots {s.slots} exceeds max"
                    f" supported {limit}")


def hpt_ram_size(s: _Startup) -> int:
    """hw/ppc/spapr.c ``spapr_setup_hpt``: the HPT is sized for ``maxmem`` when HPT resizing
    is off (machines up to pseries-2.9, or a KVM-HV without KVM_CAP_SPAPR_RESIZE_HPT:
    ``kvmppc_check_papr_resize_hpt``), else for the RAM present at boot."""
    assert s.ram is not None and s.machine is not None
    maxram = s.maxmem if s.maxmem is not None else s.ram
    version = re.fullmatch(r"pseries-(\d+)\.(\d+)(?:-.*)?", s.machine.name)
    disabled = version is not None and (int(version[1]), int(version[2])) <= (2, 9)
    if s.kvm is not None and not s.kvm.vm.is_pr and not s.kvm.vm.caps.get(
            "SPAPR_RESIZE_HPT", 0):
        disabled = True
    return maxram if disabled else s.ram


def _vsmt(s: _Startup) -> None:
    """hw/ppc/spapr.c ``spapr_set_vsmt_mode`` for one thread a core (kvmppc's guests).

    pseries-4.1 and older ask KVM for VSMT mode 8, later ones for 1 (-smp threads).  QEMU
    asks only when KVM's mode (KVM_CAP_PPC_SMT on the VM, 0 meaning 1) differs.  The kernel
    takes it through kvm_ops->set_smt_mode, which only HV has (arch/powerpc/kvm/powerpc.c:
    -EINVAL otherwise), for a mode in KVM_CAP_PPC_SMT_POSSIBLE.  With one thread a core and
    KVM's mode 1, a refusal is only a warning ("we'll waste some vcpu ids").
    """
    machine, kvm = s.machine, s.kvm
    if kvm is None or machine is None:
        return  # TCG: nothing to set
    vsmt = 1 if machine.smp_threads_vsmt else 8
    kvm_smt = kvm.vm.caps.get("PPC_SMT") or 1
    if vsmt == kvm_smt:
        return
    possible = kvm.vm.caps.get("PPC_SMT_POSSIBLE", 0)
    if kvm.vm.is_pr is False and possible & vsmt:
        return
    if vsmt % kvm_smt == 0:
        s.log.warn(K.VSMT, f"Failed to set KVM's VSMT mode to {vsmt} (errno -22)")
    else:  # KVM's mode is not a divisor of ours: QEMU stops (no kernel here answers so)
        s.log.error(K.VSMT, f"Failed to set KVM's VSMT mode to {vsmt} (errno -22)", more=(
            f"On PPC, a VM with 1 threads/core on a host with {kvm_smt} threads/core requires"
            f" the use of VSMT mode {vsmt}.",))


# --------------------------------------------------------------------------------------------
# 4. machine reset: spapr_caps_apply in table order, then the HPT


def _machine_reset(s: _Startup) -> bool:
    machine, cpu, kvm, log = s.machine, s.cpu, s.kvm, s.log
    assert machine is not None and cpu is not None and s.shift is not None
    # spapr_caps_apply: the caps before cap-hpt-max-page-size (index 0 to 5) ...
    context = _apply_context(s)
    _log_caps(s, spapr_caps.apply_caps(context, until="hpt-max-page-size"))
    # cap-hpt-max-page-size (index 6): cap_hpt_maxpagesize_apply, then the backing check.
    if s.shift < 12:
        log.error(K.BELOW_4K, MSG_BELOW_4K)
        return False
    if s.shift < 16:
        log.warn(K.MAX_PAGE_SIZE, MSG_BELOW_64K)
    if kvm is not None and s.smmu is None:
        log.error(K.SMMU, kvm.smmu_error or "KVM gave no MMU information")
        return False
    s.contiguous = needs_host_contiguous_pages(kvm is not None, s.smmu)
    for backing in s.backings:
        if backing.error:
            log.error(K.STATFS, backing.error)
    if s.contiguous:
        message = backing_error(s.shift, s.min_backing)
        if message:
            log.error(K.BACKING, message)
    # ... and the caps after it (index 7 on).
    _log_caps(s, spapr_caps.apply_caps(context, start="nested-hv"))
    # The HPT at reset (spapr_machine_reset): skipped under KVM when the host has radix and
    # the model is POWER9 or later, max-cpu-compat included (the guest starts in radix);
    # else set up, with the VRMA.
    s.hpt_at_reset = not (kvm is not None and kvm.radix and s.radix_capable)
    if kvm is not None and s.hpt_at_reset and nested_hv(kvm):
        # spapr_reallocate_hpt: KVM_PPC_ALLOCATE_HTAB gives -EOPNOTSUPP in a nested
        # hypervisor (arch/powerpc/kvm/book3s_hv.c kvm_arch_vm_ioctl_hv: "If we're a nested
        # hypervisor, we currently only support radix").
        log.error(K.HPT, "HPT not supported in nested guests",
                  detail="this KVM-HV runs in a guest (KVM_PPC_NO_HASH): only radix guests,"
                  " so the model and max-cpu-compat must allow POWER9 mode or later")
        return True
    if kvm is not None and s.smmu is not None and s.ram is not None:
        s.vrma = _vrma_error(s)
    if s.vrma and s.hpt_at_reset:
        log.error(K.VRMA, s.vrma)
    return True


def _vrma_error(s: _Startup) -> str | None:
    """hw/ppc/spapr.c ``spapr_setup_hpt``'s check under KVM, with its message (sic: no ')'):
    the RMA within node 0, the HPT sized by :func:`hpt_ram_size`."""
    assert s.smmu is not None
    rma = _rma_size(s)
    limit = vrma_limit(s.smmu, s.min_backing, hpt_shift_for_ramsize(hpt_ram_size(s)))
    if limit < rma:
        return f"Unable to create {rma // MiB}MiB RMA (VRMA only allows {limit // MiB}MiB"
    return None


def nested_hv(kvm: KvmContext) -> bool:
    """KVM-HV inside a guest (kvmhv_on_pseries()): book3s_hv.c kvm_vm_ioctl_get_smmu_info_hv
    sets KVM_PPC_NO_HASH exactly then."""
    return not kvm.vm.is_pr and kvm.smmu is not None and kvm.smmu.no_hash


def _apply_context(s: _Startup) -> spapr_caps.ApplyContext:
    assert s.cpu is not None
    kvm = s.kvm
    host_pvr = s.probe.host.pvr
    return spapr_caps.ApplyContext(
        cpu=s.cpu, qemu=s.qemu.table, max_compat=s.max_compat,
        kvm=kvm.vm if kvm is not None else None,
        radix=kvm is not None and kvm.radix,
        spectre=spapr_caps.kvm_spectre(kvm.vm, host_pvr is not None and (
            host_pvr >> 16) in (0x004B, 0x004C, 0x004D)) if kvm is not None else None,
        dec_bits=s.probe.host.dec_bits,
        caps=s.caps,
    )


def _log_caps(s: _Startup, said: list[tuple[str, spapr_caps.Said]]) -> None:
    for name, what in said:
        kind = K.HTM if name == "htm" else K.CAPABILITY
        if what.note:
            s.log.note(what.message)
        elif what.error:
            s.log.error(kind, what.message, qemu=what.qemu,
                        more=(what.hint,) if what.hint else ())
        else:
            s.log.warn(kind, what.message, qemu=what.qemu)


def backing_error(max_shift: int, min_backing: int) -> str | None:
    """hw/ppc/spapr_caps.c ``spapr_check_pagesize`` (only when host-contiguous pages matter)."""
    maxpagesize = 1 << max_shift
    if maxpagesize > min_backing:
        return (
            f"Can't support {maxpagesize >> 10} kiB guest pages with {min_backing >> 10} kiB"
            " host pages with this KVM implementation"
        )
    return None


# --------------------------------------------------------------------------------------------
# CPU reset: the page-size filter, then kvm_check_mmu


def _cpu_reset(s: _Startup) -> bool:
    cpu, shift = s.cpu, s.shift
    assert cpu is not None and shift is not None
    table = filter_for_cap(HASH64_TABLES[cpu.hash64], shift)
    s.guest = PageSizes(cpu, shift, table, (MSG_BELOW_64K,) if shift < 16 else ())
    if s.kvm is not None and s.smmu is not None:
        try:
            kvm_check_mmu(table, s.smmu, s.probe.host.base_page_size)
        except QemuRefusalError as refusal:
            s.log.refused(refusal)
    return True


# --------------------------------------------------------------------------------------------
# after the devices' reset: max-cpu-compat (spapr_machine_reset -> ppc_set_compat_all)


def _set_compat(s: _Startup) -> bool:
    """target/ppc/compat.c ``ppc_set_compat``: the mode must be one the model supports."""
    cpu = s.cpu
    assert cpu is not None
    if s.max_compat is None:
        return True
    level = spapr_caps.COMPAT_LEVELS[s.max_compat]
    if not spapr_caps.supports_compat(cpu, s.max_compat, s.qemu.table):
        s.log.error(K.COMPAT, f"Compatibility PVR 0x{level.pvr:08x} not valid for CPU")
        return True
    if s.kvm is not None and s.kvm.vm.is_pr:
        # kvmppc_set_compat sets KVM_REG_PPC_ARCH_COMPAT (ONE_REG), which only book3s_hv.c
        # handles: KVM-PR's kvmppc_set_one_reg_pr gives -EINVAL (the real POWER8 KVM-PR runs
        # print this for max-cpu-compat=power8).
        s.log.error(K.COMPAT, "Unable to set CPU compatibility mode in KVM: Invalid argument")
    return True


# --------------------------------------------------------------------------------------------
# 5. the device tree (and CAS): which MMU the guest may use


def _device_tree(s: _Startup) -> bool:
    """hw/ppc/spapr.c ``spapr_check_mmu_mode``: at device-tree time for pre-POWER9 models
    (they can only be hash), at CAS for POWER9 and later (the guest's choice)."""
    cpu, kvm, log = s.cpu, s.kvm, s.log
    assert cpu is not None
    hash_ok = kvm is None or not (kvm.radix and not kvm.hash_v3)
    radix_ok = s.radix_capable and (kvm is None or kvm.radix)
    if not s.radix_capable:
        if not hash_ok:
            log.error(K.MMU_MODE, "Guest requested unavailable MMU mode (hash).")
        log.note(
            f"{cpu.family} guests"
            + (f" in {s.max_compat} mode" if cpu.radix_capable else "")
            + " use the hash MMU only: cap-hpt-max-page-size limits every page they map"
        )
    else:
        log.note(
            f"{cpu.family} guests choose hash or radix at boot (CAS). A radix guest is not"
            " limited by cap-hpt-max-page-size (its page sizes are 4K, 64K, 2M and 1G), but"
            " QEMU applies the hash-MMU checks above at start-up whatever the guest will"
            " choose."
        )
        if not hash_ok:
            log.warn(
                K.MMU_MODE, "Guest requested unavailable MMU mode (hash).", When.CAS,
                "QEMU stops with this if the guest asks for hash at CAS: this KVM has radix"
                " but not KVM_CAP_PPC_MMU_HASH_V3, so only radix guests run",
            )
        elif kvm is not None and not kvm.radix:
            log.warn(
                K.MMU_MODE, "Guest requested unavailable MMU mode (radix).", When.CAS,
                "QEMU stops with this if the guest asks for radix at CAS: this KVM has no"
                " radix MMU, so the guest must run hash",
            )
        if hash_ok and s.vrma and not s.hpt_at_reset:
            log.warn(K.VRMA, s.vrma, When.CAS,
                     "QEMU stops with this if the guest chooses hash at CAS")
    s.mmu = MmuModes(
        hash="available" if hash_ok else "refused",
        radix="available" if radix_ok else ("refused" if cpu.radix_capable else "n/a"),
        hpt_allocated_at_reset=kvm is not None and s.hpt_at_reset,
    )
    return True


# --------------------------------------------------------------------------------------------
# the cap alone, for advice: which values pass the page-size checks


def page_size_refusals(shift: int, cpu: CpuModel, smmu: SmmuInfo | None, *, kvm: bool,
                       min_backing: int, host_page_size: int) -> list[QemuRefusalError]:
    """The refusals that depend on the cap value alone, in QEMU's order: backing, then MMU."""
    if shift < 12:
        return [QemuRefusalError(K.BELOW_4K, MSG_BELOW_4K)]
    found: list[QemuRefusalError] = []
    if needs_host_contiguous_pages(kvm, smmu):
        message = backing_error(shift, min_backing)
        if message:
            found.append(QemuRefusalError(K.BACKING, message))
    if kvm and smmu is not None:
        refusal = _kvm_check_mmu_refusal(cpu.hash64, shift, smmu, host_page_size)
        if refusal is not None:
            found.append(refusal)
    return found


@functools.lru_cache(maxsize=256)  # the advice asks it for each shift and each backing
def _kvm_check_mmu_refusal(hash64: Hash64Table, shift: int, smmu: SmmuInfo,
                           host_page_size: int) -> QemuRefusalError | None:
    try:
        kvm_check_mmu(filter_for_cap(HASH64_TABLES[hash64], shift), smmu, host_page_size)
    except QemuRefusalError as refusal:
        return refusal
    return None

"""QEMU's start-up of a pseries guest, replayed: one function per phase, in QEMU's order.

The phases and checks are the same in every modelled release (7.2 and 10.0: the differential
tests show it); what differs is each release's data (:mod:`kvmppc.qemu_versions`): machine
types, CPU models, the size syntax, messages.  The release answered for is the request's
``qemu_version``, else the one the probe found installed, else the newest modelled.

Every decision QEMU makes about ``cap-hpt-max-page-size`` is replayed as a pure function of
a probe (:class:`kvmppc.model.ProbeResult`) and a request:

1. the command line: ``-m``, the machine type, the cap's value (:func:`_command_line`);
2. the accelerator: KVM's VM type (accel/kvm/kvm-all.c, :func:`_accelerator`), then the
   ``-cpu`` model (:func:`_cpu_model`);
3. machine init (hw/ppc/spapr.c ``spapr_machine_init``): the pseries-2.12-and-older default,
   the RMA for SLOF, RAM alignment (:func:`_machine_init`);
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
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvmppc.model import ProbeResult, SmmuInfo, SmmuSource, VmTypeInfo
from kvmppc.policy import caps as spapr_caps
from kvmppc.policy.backing import Backing, backings_for
from kvmppc.policy.cmdline import DEFAULT_RAM_SIZE, parse_max_page_size, parse_memory
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
from kvmppc.policy.mmu import (
    MiB,
    kvm_check_mmu,
    needs_host_contiguous_pages,
    pr_smmu_with_vcpu,
    rma_size,
    vrma_error,
)
from kvmppc.policy.problems import ProblemKind, ProblemLog, QemuRefusalError, When
from kvmppc.policy.request import VM_TYPE_BY_KVM_TYPE, CheckRequest
from kvmppc.policy.result import CheckResult, MmuModes
from kvmppc.qemu_versions import choose

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
           backings: Sequence[Backing] | None = None) -> CheckResult:
    """QEMU's start-up for ``request`` on the probed host, phase by phase (no advice)."""
    choice = choose(request.qemu_version, probe.host.qemu_version)
    s = _Startup(
        probe, request,
        tuple(backings) if backings is not None else backings_for(probe, request.mem_paths),
        request.accel or ("kvm" if usable_powerpc_kvm(probe) else "tcg"),
        qemu_models(choice.table),
    )
    for note in choice.notes:
        s.log.note(note)
    phases = (_command_line, _accelerator, _cpu_model, _machine_init, _machine_reset,
              _cpu_reset, _set_compat, _device_tree)
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


# --------------------------------------------------------------------------------------------
# 2. the accelerator (accel/kvm/kvm-all.c kvm_init, target/ppc/kvm.c), then the CPU model


def _accelerator(s: _Startup) -> bool:
    if s.accel != "kvm":
        return True
    s.kvm = kvm_context(s.probe, s.request.kvm_type, s.log)
    return s.kvm is not None


def kvm_context(probe: ProbeResult, kvm_type: str | None, log: ProblemLog) -> KvmContext | None:
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
        log.error(K.ACCEL, "ioctl(KVM_CREATE_VM) failed: 22 Invalid argument", more=(
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


def _cpu_model(s: _Startup) -> bool:
    assert s.machine is not None
    # system/vl.c qemu_init: the deprecation warning comes after the machine options (-m,
    # memory.size, the caps: their errors print without it) and before -cpu is parsed (its
    # errors print after it), as QEMU 10.0 shows under TCG; in the source it follows
    # configure_accelerators, so a KVM error comes first too.
    deprecated = deprecation_warning(s.machine, s.qemu)
    if deprecated is not None:
        s.log.warn(K.MACHINE, deprecated)
    try:
        s.cpu = lookup_cpu(
            s.request.cpu if s.request.cpu is not None else "max", s.machine,
            kvm=s.accel == "kvm", host_pvr=s.probe.host.pvr, qemu=s.qemu,
        )
    except QemuRefusalError as refusal:
        s.log.refused(refusal)
        return False
    if s.kvm is not None:
        s.smmu = smmu_for_guest(s.kvm, s.cpu)
    return True


def smmu_for_guest(kvm: KvmContext, cpu: CpuModel) -> SmmuInfo | None:
    """The SMMU QEMU reads once the vCPUs exist (KVM-PR's grows with vCPU 0's PVR)."""
    if kvm.smmu is not None and kvm.vm.is_pr:
        return pr_smmu_with_vcpu(kvm.smmu, cpu.pvr)
    return kvm.smmu


# --------------------------------------------------------------------------------------------
# 3. machine init: the legacy default needs the SMMU flags; the RMA; RAM alignment


def _machine_init(s: _Startup) -> bool:
    machine, log = s.machine, s.log
    assert machine is not None
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
    if s.ram is not None:
        if rma_size(s.ram, machine.rma_limit) < MIN_RMA_SLOF:
            # hw/ppc/spapr.c spapr_rma_size; "%" HWADDR_PRIx "ld" prints 0x80 as "80ld".
            log.error(
                K.MEMORY, "pSeries SLOF firmware requires >= 80ldMiB guest RMA (Real Mode Area"
                " memory)"
            )
        elif machine.dr_lmb_enabled and s.ram % SPAPR_MEMORY_BLOCK_SIZE:
            log.error(
                K.MEMORY, f"Memory size 0x{s.ram:x} is not aligned to"
                f" {SPAPR_MEMORY_BLOCK_SIZE // MiB} MiB"
            )
    _caps_init(s)
    return _create_vcpus(s)


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
        s.vrma = vrma_error(s.smmu, s.min_backing, s.ram, machine.rma_limit)
    if s.vrma and s.hpt_at_reset:
        log.error(K.VRMA, s.vrma)
    return True


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

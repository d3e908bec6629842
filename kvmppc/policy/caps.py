"""The pseries capabilities (``-machine cap-NAME=VALUE``) and ``max-cpu-compat``, as QEMU
sets, defaults and checks them (hw/ppc/spapr_caps.c, target/ppc/compat.c).

Everything here is data where QEMU's is data: the capability table (:data:`CAPS`, QEMU's
``capability_table``: name, index, value syntax), each release's list of caps
(:attr:`kvmppc.qemu_versions.QemuTable.caps`), the machine defaults and their
``spapr_machine_X_Y_class_options`` overrides (:data:`BASE_DEFAULTS`,
:data:`MACHINE_OVERRIDES`), the defaults that depend on the CPU (:data:`CPU_RULES`,
``default_caps_with_cpu``), and the compat levels (:data:`COMPAT_LEVELS`).  What each cap's
``apply`` checks is one small function per cap (:data:`APPLY`), because that is code in QEMU
too: each returns QEMU's words, the error (``error_setg`` + ``error_append_hint``) or the
warning (``warn_report``), for TCG or for KVM (HV or PR) as the probe describes it.

The defaults were read from both binaries with ``qom-get /machine cap-*`` for every machine
type and CPU family (tests/test_policy_caps.py checks them again); the KVM checks come from
QEMU 7.2's spapr_caps.c and target/ppc/kvm.c, each citing the ``KVM_CAP_*`` it asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kvmppc.errors import UsageError
from kvmppc.model import CpuChar, VmTypeInfo
from kvmppc.policy.machines import CpuModel, Isa, MachineType, QemuModels, lookup_machine
from kvmppc.policy.problems import ProblemKind, QemuRefusalError
from kvmppc.qemu_versions import QemuTable

K = ProblemKind

OFF, ON = 0, 1
BROKEN, WORKAROUND, FIXED = 0, 1, 2  # SPAPR_CAP_BROKEN ... SPAPR_CAP_FIXED
FIXED_IBS, FIXED_CCD, FIXED_NA = 2, 3, 4  # cap-ibs's extra levels

# qapi/qapi-util.c qapi_bool_parse: what a bool property accepts from -machine
_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})


@dataclass(frozen=True)
class CapInfo:
    """One row of hw/ppc/spapr_caps.c ``capability_table``."""

    name: str  # without "cap-"
    index: int  # SPAPR_CAP_*: the order spapr_caps_apply() walks
    kind: str  # "bool", "string" (one of ``values``, any case) or "size" (hpt-max-page-size)
    values: tuple[str, ...] = ()  # SpaprCapPossible.vals: the value's index is its level
    help: str = ""  # what "cap-NAME=?" prints (as an error)


_TRISTATE_HELP = ("broken - no protection, workaround - workaround available, fixed - fixed"
                  " in hardware")
CAPS: Mapping[str, CapInfo] = {c.name: c for c in (
    CapInfo("htm", 0, "bool"),
    CapInfo("vsx", 1, "bool"),
    CapInfo("dfp", 2, "bool"),
    CapInfo("cfpc", 3, "string", ("broken", "workaround", "fixed"), _TRISTATE_HELP),
    CapInfo("sbbc", 4, "string", ("broken", "workaround", "fixed"), _TRISTATE_HELP),
    CapInfo("ibs", 5, "string", ("broken", "workaround", "fixed-ibs", "fixed-ccd", "fixed-na"),
            "broken - no protection, workaround - count cache flush, fixed-ibs - indirect"
            " branch serialisation, fixed-ccd - cache count disabled, fixed-na - fixed in"
            " hardware (no longer applicable)"),
    CapInfo("hpt-max-page-size", 6, "size"),
    CapInfo("nested-hv", 7, "bool"),
    CapInfo("large-decr", 8, "bool"),
    CapInfo("ccf-assist", 9, "bool"),
    CapInfo("fwnmi", 10, "bool"),
    CapInfo("rpt-invalidate", 11, "bool"),
    CapInfo("ail-mode-3", 12, "bool"),  # QEMU 8.0 and later
    CapInfo("nested-papr", 13, "bool"),  # QEMU 9.0 and later
    CapInfo("dawr1", 14, "bool"),  # QEMU 9.0 and later
)}

# hw/ppc/spapr.c spapr_machine_class_init: smc->default_caps (hpt-max-page-size is kept by
# the start-up replay itself, from MachineType.default_hpt_max_page_shift)
BASE_DEFAULTS: Mapping[str, int] = {
    "htm": OFF, "vsx": ON, "dfp": ON, "cfpc": WORKAROUND, "sbbc": WORKAROUND,
    "ibs": WORKAROUND, "nested-hv": OFF, "large-decr": ON, "ccf-assist": ON, "fwnmi": ON,
    "rpt-invalidate": OFF, "ail-mode-3": ON, "nested-papr": OFF, "dawr1": ON,
}
# The compat chain: spapr_machine_X_Y_class_options calls the next newer one, then changes
# these; so every machine type up to and including the version gets them.
MACHINE_OVERRIDES: tuple[tuple[tuple[int, int], Mapping[str, int]], ...] = (
    ((4, 2), {"ccf-assist": OFF, "fwnmi": OFF}),  # spapr_machine_4_2_class_options
    ((3, 1), {"cfpc": BROKEN, "sbbc": BROKEN, "ibs": BROKEN, "large-decr": OFF}),
    ((2, 11), {"htm": ON}),  # spapr_machine_2_11_class_options
)
# spapr_machine_2_12_sxxm_class_options: pseries-2.12 with the spectre mitigations on
TAGGED_OVERRIDES: Mapping[str, Mapping[str, int]] = {
    "pseries-2.12-sxxm": {"cfpc": WORKAROUND, "sbbc": WORKAROUND, "ibs": FIXED_CCD},
}


@dataclass(frozen=True)
class CompatLevel:
    """A target/ppc/compat.c ``compat_table`` row: ``max-cpu-compat=NAME``."""

    name: str
    pvr: int  # the logical PVR (CPU_POWERPC_LOGICAL_*)
    order: int  # compat_table position: QEMU compares levels by it


COMPAT_LEVELS: Mapping[str, CompatLevel] = {c.name: c for c in (
    CompatLevel("power6", 0x0F000002, 0),
    CompatLevel("power7", 0x0F000003, 1),
    CompatLevel("power7+", 0x0F100003, 2),
    CompatLevel("power8", 0x0F000004, 3),
    CompatLevel("power9", 0x0F000005, 4),
    CompatLevel("power10", 0x0F000006, 5),
    CompatLevel("power11", 0x0F000007, 6),
)}
# The newest level each family's class supports (pcr_supported); 970 and POWER5+ have none.
_FAMILY_LEVEL = {"POWER7": "power7+", "POWER8": "power8", "POWER9": "power9",
                 "POWER10": "power10", "POWER11": "power11"}

# spapr_caps.c default_caps_with_cpu: the cap falls to this value unless the model (capped
# by max-cpu-compat) supports the compat level.
CPU_RULES: tuple[tuple[str, Mapping[str, int]], ...] = (
    ("power10", {"dawr1": OFF}),
    ("power9", {"large-decr": OFF}),
    ("power8", {"htm": OFF, "cfpc": BROKEN, "ail-mode-3": OFF}),
    ("power7+", {"sbbc": BROKEN}),
    ("power7", {"vsx": OFF, "dfp": OFF, "ibs": BROKEN}),
)


def supports_compat(cpu: CpuModel, level: str, qemu: QemuTable,
                    max_compat: str | None = None) -> bool:
    """target/ppc/compat.c ``ppc_type_check_compat(cpu, level, 0, max_compat)``."""
    wanted = COMPAT_LEVELS[level]
    if max_compat is not None and wanted.order > COMPAT_LEVELS[max_compat].order:
        return False
    top = _FAMILY_LEVEL.get(cpu.family)
    if top is None or wanted.order > COMPAT_LEVELS[top].order:
        return False
    return level != "power7+" or cpu.family in qemu.compat_2_06_plus


def default_caps(machine: MachineType, cpu: CpuModel, qemu: QemuTable,
                 max_compat: str | None = None) -> dict[str, int]:
    """``spapr_caps_init``: the machine's defaults adjusted to the CPU model (no
    hpt-max-page-size: the replay keeps it)."""
    caps = {name: BASE_DEFAULTS[name] for name in qemu.caps if name in BASE_DEFAULTS}
    for newest, changes in MACHINE_OVERRIDES:
        if machine.version <= newest:
            caps.update({k: v for k, v in changes.items() if k in caps})
    caps.update({k: v for k, v in TAGGED_OVERRIDES.get(machine.name, {}).items() if k in caps})
    for level, changes in CPU_RULES:
        if not supports_compat(cpu, level, qemu, max_compat):
            caps.update({k: v for k, v in changes.items() if k in caps})
    return caps


# --------------------------------------------------------------------------------------------
# the command line


def split_cap(text: str) -> tuple[str, str]:
    """``cap-NAME=VALUE`` or ``NAME=VALUE`` as (NAME, VALUE); ValueError without '='."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise ValueError(f"{text!r}: give NAME=VALUE (e.g. htm=off or cap-htm=off)")
    return (name[4:] if name.startswith("cap-") else name), value


def parse_cap(machine: MachineType, name: str, value: str, qemu: QemuTable) -> int:
    """The level QEMU stores for ``-machine cap-NAME=VALUE`` (spapr_cap_set_bool /
    spapr_cap_set_string), or its refusal.  hpt-max-page-size is parsed elsewhere."""
    info = CAPS.get(name)
    if info is None or name not in qemu.caps:
        # qom/object.c object_property_find_err: the machine's QOM type names the property.
        raise QemuRefusalError(
            K.CAPABILITY, f"Property '{machine.name}-machine.cap-{name}' not found")
    if info.kind == "bool":
        lowered = value.lower()
        if lowered in _TRUE:
            return ON
        if lowered in _FALSE:
            return OFF
        raise QemuRefusalError(K.CAPABILITY, f"Parameter 'cap-{name}' expects 'on' or 'off'")
    if value == "?":
        raise QemuRefusalError(K.CAPABILITY, info.help)
    for level, known in enumerate(info.values):
        if value.lower() == known:  # strcasecmp
            return level
    raise QemuRefusalError(K.CAPABILITY, f'Invalid capability mode "{value}" for cap-{name}')


def parse_max_cpu_compat(value: str, qemu: QemuTable) -> str | None:
    """target/ppc/compat.c ``ppc_compat_prop_set``: "" is none, else an exact name."""
    if value == "":
        return None
    if value not in qemu.compat_modes:
        raise QemuRefusalError(K.COMPAT, f'Invalid compatibility mode "{value}"')
    return value


def cap_value_name(name: str, level: int) -> str:
    """The value as the command line writes it (for advice and messages)."""
    info = CAPS[name]
    if info.kind == "string":
        return info.values[level]
    return "on" if level else "off"


def check_cap_syntax(machine: str, caps: list[str] | tuple[str, ...], max_cpu_compat: str | None,
                     max_page_size: str | None, qemu: QemuModels) -> str | None:
    """``kvmppc pagesizes``: refuse what QEMU would refuse while parsing -machine, and
    return the page-size cap (from ``max_page_size``, else a cap hpt-max-page-size=SIZE)."""
    machine_type = lookup_machine(machine, qemu)
    for text in caps:
        try:
            name, value = split_cap(text)
        except ValueError as exc:
            raise UsageError(f"--cap {exc}") from None
        if name == "hpt-max-page-size":
            max_page_size = max_page_size if max_page_size is not None else value
            continue
        parse_cap(machine_type, name, value, qemu.table)
    if max_cpu_compat is not None:
        parse_max_cpu_compat(max_cpu_compat, qemu.table)
    return max_page_size


# --------------------------------------------------------------------------------------------
# what KVM offers, as target/ppc/kvm.c reads it


_CHAR_SPEC_BAR_ORI31 = 1 << 63  # H_CPU_CHAR_* (include/hw/ppc/spapr.h, PPC_BIT numbering)
_CHAR_BCCTRL_SERIALISED = 1 << 62
_CHAR_L1D_FLUSH_ORI30 = 1 << 61
_CHAR_L1D_FLUSH_TRIG2 = 1 << 60
_CHAR_L1D_THREAD_PRIV = 1 << 59
_CHAR_CACHE_COUNT_DIS = 1 << 56
_BEHAV_L1D_FLUSH_PR = 1 << 62  # H_CPU_BEHAV_*
_BEHAV_BNDS_CHK_SPEC_BAR = 1 << 61
_BEHAV_FLUSH_COUNT_CACHE = 1 << 58


@dataclass(frozen=True)
class KvmSpectre:
    """target/ppc/kvm.c ``kvmppc_get_cpu_characteristics``: the levels KVM can give."""

    cfpc: int
    sbbc: int
    ibs: int
    ccf_assist: int


def kvm_spectre(vm: VmTypeInfo, host_is_power8: bool) -> KvmSpectre | None:
    """The four levels from KVM_PPC_GET_CPU_CHAR (all broken without the cap or the ioctl);
    None when the probe did not ask for KVM_CAP_PPC_GET_CPU_CHAR."""
    if "PPC_GET_CPU_CHAR" not in vm.caps:
        return None
    char: CpuChar | None = vm.cpu_char
    if not vm.caps["PPC_GET_CPU_CHAR"] or char is None:
        return KvmSpectre(BROKEN, BROKEN, BROKEN, OFF)
    c = char.character & char.character_mask
    b = char.behaviour & char.behaviour_mask
    not_b = ~char.behaviour & char.behaviour_mask
    not_c = ~char.character & char.character_mask
    # parse_cap_ppc_safe_cache: POWER8 hosts need no L1D thread-private bit
    if not_b & _BEHAV_L1D_FLUSH_PR:
        cfpc = FIXED
    elif (host_is_power8 or c & _CHAR_L1D_THREAD_PRIV) and c & (
            _CHAR_L1D_FLUSH_ORI30 | _CHAR_L1D_FLUSH_TRIG2):
        cfpc = WORKAROUND
    else:
        cfpc = BROKEN
    # parse_cap_ppc_safe_bounds_check
    if not_b & _BEHAV_BNDS_CHK_SPEC_BAR:
        sbbc = FIXED
    elif c & _CHAR_SPEC_BAR_ORI31:
        sbbc = WORKAROUND
    else:
        sbbc = BROKEN
    # parse_cap_ppc_safe_indirect_branch
    if (not_b & _BEHAV_FLUSH_COUNT_CACHE) and (not_c & _CHAR_CACHE_COUNT_DIS) and (
            not_c & _CHAR_BCCTRL_SERIALISED):
        ibs = FIXED_NA
    elif c & _CHAR_CACHE_COUNT_DIS:
        ibs = FIXED_CCD
    elif c & _CHAR_BCCTRL_SERIALISED:
        ibs = FIXED_IBS
    elif b & _BEHAV_FLUSH_COUNT_CACHE:
        ibs = WORKAROUND
    else:
        ibs = BROKEN
    ccf = ON if b & _BEHAV_FLUSH_COUNT_CACHE else OFF  # parse_..._count_cache_flush_assist
    return KvmSpectre(cfpc, sbbc, ibs, ccf)


# --------------------------------------------------------------------------------------------
# spapr_caps_apply: each cap's check


@dataclass(frozen=True)
class Said:
    """What one apply function says: an error (QEMU stops) or a warning."""

    message: str
    error: bool = True
    hint: str | None = None  # error_append_hint: printed after the error, no prefix
    qemu: bool = True  # False: kvmppc's words where the probe cannot tell
    note: bool = False  # True: only a note (the probe did not record what QEMU asks)


@dataclass(frozen=True)
class ApplyContext:
    """What the apply functions look at: the model, the accelerator and KVM's answers."""

    cpu: CpuModel
    qemu: QemuTable
    max_compat: str | None
    kvm: VmTypeInfo | None  # None under TCG
    radix: bool = False  # kvmppc_has_cap_mmu_radix()
    spectre: KvmSpectre | None = None
    dec_bits: int | None = None  # the host's ibm,dec-bits (None: not probed)
    caps: Mapping[str, int] = field(default_factory=dict)

    def kvm_cap(self, name: str) -> int | None:
        """KVM_CAP_<name> on the VM, None when the probe did not ask."""
        assert self.kvm is not None
        return self.kvm.caps.get(name)


def _try_off(name: str) -> str:
    return f"Try appending -machine cap-{name}=off"


def _unknown(name: str, kvm_cap: str, message: str) -> Said:
    return Said(f"cap-{name}=on needs KVM_CAP_{kvm_cap}, which this probe did not record;"
                f" QEMU stops with '{message}' if KVM lacks it (take the probe again with this"
                " kvmppc)", error=False, qemu=False, note=True)


def _needs_kvm_cap(ctx: ApplyContext, name: str, kvm_cap: str, message: str) -> list[Said]:
    """The common tail of an apply check under KVM: QEMU's error and its "Try appending
    -machine cap-NAME=off" hint when KVM_CAP_<kvm_cap> is 0, a note when the probe lacks it."""
    value = ctx.kvm_cap(kvm_cap)
    if value is None:
        return [_unknown(name, kvm_cap, message)]
    if not value:
        return [Said(message, hint=_try_off(name))]
    return []


def _apply_htm(ctx: ApplyContext, val: int) -> list[Said]:
    if not val:
        return []
    if ctx.kvm is None:
        return [Said("No Transactional Memory support in TCG", hint=_try_off("htm"))]
    message = "KVM implementation does not support Transactional Memory"
    htm = ctx.kvm_cap("PPC_HTM")
    if htm is None:
        return [Said(f"cap-htm is on for {ctx.cpu.family}: QEMU stops with '{message}' unless"
                     " this KVM has KVM_CAP_PPC_HTM (not in the probe); add cap-htm=off to be"
                     " sure", error=False, qemu=False)]
    if not htm:
        # target/ppc/kvm.c kvm_arch_init_vcpu turns cap_htm on for POWER8 models under HV
        # when the host's AT_HWCAP2 has HTM; the probe does not read the auxv.
        return [Said(message, hint=_try_off("htm"))]
    return []


def _apply_vsx(ctx: ApplyContext, val: int) -> list[Said]:
    if val and ctx.cpu.isa < Isa.V2_06:  # insns_flags2 & PPC2_VSX: POWER7 and later
        return [Said("VSX support not available", hint=_try_off("vsx"))]
    return []


def _apply_dfp(ctx: ApplyContext, val: int) -> list[Said]:
    if val and ctx.cpu.isa < Isa.V2_06:  # PPC2_DFP: POWER7 and later among pseries models
        return [Said("DFP support not available", hint=_try_off("dfp"))]
    return []


def _spectre(name: str, what: str, kvm_field: str) -> Callable[[ApplyContext, int], list[Said]]:
    def apply(ctx: ApplyContext, val: int) -> list[Said]:
        if ctx.kvm is None:
            if val:  # TCG only supports broken; allow the others with a warning
                return [Said(f"TCG doesn't support requested feature, cap-{name}="
                             f"{cap_value_name(name, val)}", error=False)]
            return []
        message = f"Requested {what} capability level not supported by KVM"
        if ctx.spectre is None:
            return [Said(f"cap-{name}={cap_value_name(name, val)} needs KVM_PPC_GET_CPU_CHAR,"
                         " which this probe did not record; QEMU stops with"
                         f" '{message}' if KVM offers less", error=False, qemu=False,
                         note=True)]
        kvm_val: int = getattr(ctx.spectre, kvm_field)
        if val > kvm_val:
            return [Said(message, hint=f"Try appending -machine cap-{name}="
                                       f"{cap_value_name(name, kvm_val)}")]
        return []
    return apply


def _apply_nested_hv(ctx: ApplyContext, val: int) -> list[Said]:
    if not val:
        return []
    message = "Nested-HV only supported on POWER9 and later"
    if ctx.cpu.isa < Isa.V3_00:  # insns_flags2 & PPC2_ISA300
        return [Said(message, hint=_try_off("nested-hv"))]
    if ctx.kvm is None:
        return []  # TCG runs a nested KVM-HV since QEMU 7.0 (with threads=1)
    if not supports_compat(ctx.cpu, "power9", ctx.qemu, ctx.max_compat):
        return [Said(message, hint="Try appending -machine max-cpu-compat=power9")]
    # KVM_CAP_PPC_NESTED_HV is 1 only where enabling it works (kvm_vm_ioctl_check_extension:
    # !kvmppc_hv_ops->enable_nested(NULL)), so "Error enabling cap-nested-hv" cannot follow.
    message = "KVM implementation does not support Nested-HV"
    return _needs_kvm_cap(ctx, "nested-hv", "PPC_NESTED_HV", message)


# pcc->lrg_decr_bits (target/ppc/cpu_init.c): POWER9 and POWER10 classes; 0 for the others
_LRG_DECR_BITS = {"POWER9": 56, "POWER10": 56, "POWER11": 56}


def _apply_large_decr(ctx: ApplyContext, val: int) -> list[Said]:
    if not val:
        return []
    if ctx.kvm is None:
        if not supports_compat(ctx.cpu, "power9", ctx.qemu, ctx.max_compat):
            return [Said("Large decrementer only supported on POWER9", hint="Try -cpu POWER9")]
        return []
    # kvmppc_get_cap_large_decr: the host's /proc/device-tree/cpus/<cpu>/ibm,dec-bits
    if ctx.dec_bits is None:
        return [Said("cap-large-decr=on needs the host's ibm,dec-bits, which this probe did"
                     " not record; QEMU stops with 'No large decrementer support' if the host"
                     " has none (take the probe again with this kvmppc)", error=False,
                     qemu=False, note=True)]
    model_bits = _LRG_DECR_BITS.get(ctx.cpu.family, 0)
    if not ctx.dec_bits:
        return [Said("No large decrementer support", hint=_try_off("large-decr"))]
    if ctx.dec_bits != model_bits:
        return [Said(f"KVM large decrementer size ({ctx.dec_bits}) differs to model"
                     f" ({model_bits})", hint=_try_off("large-decr"))]
    return []


def _apply_ccf_assist(ctx: ApplyContext, val: int) -> list[Said]:
    if ctx.kvm is None:
        if val:  # TCG doesn't implement anything here, but allows it with a warning
            return [Said("TCG doesn't support requested feature, cap-ccf-assist=on",
                         error=False)]
        return []
    message = "Requested count cache flush assist capability level not supported by KVM"
    if not val:
        return []
    if ctx.spectre is None:
        return [Said("cap-ccf-assist=on needs KVM_PPC_GET_CPU_CHAR, which this probe did not"
                     f" record; QEMU stops with '{message}' if KVM lacks it", error=False,
                     qemu=False, note=True)]
    # A host with count-cache-disabled makes the flush unnecessary: QEMU allows it.
    if val > ctx.spectre.ccf_assist and ctx.spectre.ibs != FIXED_CCD:
        return [Said(message, hint=_try_off("ccf-assist"))]
    return []


def _apply_fwnmi(ctx: ApplyContext, val: int) -> list[Said]:
    if not val or ctx.kvm is None:
        return []
    message = "Firmware Assisted Non-Maskable Interrupts(FWNMI) not supported by KVM."
    # kvmppc_get_fwnmi(): KVM_CAP_PPC_FWNMI
    return _needs_kvm_cap(ctx, "fwnmi", "PPC_FWNMI", message)


def _apply_rpt_invalidate(ctx: ApplyContext, val: int) -> list[Said]:
    if not val:
        return []
    if ctx.kvm is None:
        return [Said("No H_RPT_INVALIDATE support in TCG", hint=_try_off("rpt-invalidate"))]
    if not ctx.radix:
        return [Said("H_RPT_INVALIDATE only supported on Radix")]
    message = "KVM implementation does not support H_RPT_INVALIDATE"
    # KVM_CAP_PPC_RPT_INVALIDATE (202) is not among the probe's caps yet (its number must
    # come from the cffi build, kvmppc/_ioctl_build.py): until then a note, no verdict.
    return _needs_kvm_cap(ctx, "rpt-invalidate", "PPC_RPT_INVALIDATE", message)


def _apply_ail_mode_3(ctx: ApplyContext, val: int) -> list[Said]:
    if not val:
        return []
    if ctx.kvm is None:
        if ctx.cpu.isa < Isa.V2_07:  # pcc->insns_flags2 & PPC2_ISA207S
            return [Said("TCG only supports cap-ail-mode-3 on POWER8 and later CPUs",
                         hint=_try_off("ail-mode-3"))]
        return []
    message = "KVM implementation does not support cap-ail-mode-3"
    # kvmppc_supports_ail_3(): KVM_CAP_PPC_AIL_MODE_3
    return _needs_kvm_cap(ctx, "ail-mode-3", "PPC_AIL_MODE_3", message)


def _apply_nested_papr(ctx: ApplyContext, val: int) -> list[Said]:
    if val and ctx.kvm is not None:
        return [Said("cap-nested-papr=on under KVM is not modelled by kvmppc (QEMU 10.0 runs"
                     " the nested PAPR API under TCG only)", qemu=False)]
    return []


def _apply_dawr1(ctx: ApplyContext, val: int) -> list[Said]:
    if not val:
        return []
    if not supports_compat(ctx.cpu, "power10", ctx.qemu, ctx.max_compat):
        return [Said("DAWR1 supported only on POWER10 and later CPUs", hint=_try_off("dawr1"))]
    if ctx.kvm is None:
        return []
    message = "DAWR1 not supported by KVM."
    # kvmppc_has_cap_dawr1(): KVM_CAP_PPC_DAWR1
    return _needs_kvm_cap(ctx, "dawr1", "PPC_DAWR1", message)


APPLY: Mapping[str, Callable[[ApplyContext, int], list[Said]]] = {
    "htm": _apply_htm,
    "vsx": _apply_vsx,
    "dfp": _apply_dfp,
    "cfpc": _spectre("cfpc", "safe cache", "cfpc"),
    "sbbc": _spectre("sbbc", "safe bounds check", "sbbc"),
    "ibs": _spectre("ibs", "safe indirect branch", "ibs"),
    "nested-hv": _apply_nested_hv,
    "large-decr": _apply_large_decr,
    "ccf-assist": _apply_ccf_assist,
    "fwnmi": _apply_fwnmi,
    "rpt-invalidate": _apply_rpt_invalidate,
    "ail-mode-3": _apply_ail_mode_3,
    "nested-papr": _apply_nested_papr,
    "dawr1": _apply_dawr1,
}


def apply_caps(ctx: ApplyContext, *, until: str | None = None,
               start: str | None = None) -> list[tuple[str, Said]]:
    """``spapr_caps_apply``: each cap in index order (``start`` inclusive to ``until``
    exclusive), with what its apply function says."""
    out: list[tuple[str, Said]] = []
    names = list(ctx.qemu.caps)
    first = names.index(start) if start is not None else 0
    last = names.index(until) if until is not None else len(names)
    for name in names[first:last]:
        check = APPLY.get(name)
        if check is not None and name in ctx.caps:
            out += [(name, said) for said in check(ctx, ctx.caps[name])]
    return out


__all__ = [
    "APPLY", "BASE_DEFAULTS", "CAPS", "COMPAT_LEVELS", "CPU_RULES", "MACHINE_OVERRIDES",
    "ApplyContext", "CapInfo", "CompatLevel", "KvmSpectre", "Said", "apply_caps",
    "cap_value_name", "check_cap_syntax", "default_caps", "kvm_spectre", "parse_cap",
    "parse_max_cpu_compat", "split_cap", "supports_compat",
]

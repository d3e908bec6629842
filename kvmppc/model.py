"""The data that crosses kvmppc's rooms: what a host and its PowerPC KVM report.

Plain frozen dataclasses, no I/O and no cdata: the kernel door (:mod:`kvmppc._kvm`) and the
probe (:mod:`kvmppc.probe`) fill them; the policy, the daemon and the CLI read them.  Names
follow the kernel's UAPI (``include/uapi/linux/kvm.h``, powerpc's ``asm/kvm.h``) and QEMU
(``target/ppc/mmu-hash64.h``): ``page_shift``, ``slb_enc``, ``pte_enc``.  A
:class:`ProbeResult` serialises to the host-profile JSON (``schema_version``).
"""

# No ``from __future__ import annotations`` here: reading a host profile resolves every
# field's type (from_jsonable), and string annotations would be compiled anew at each run.
import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmppc.errors import ProfileError

SCHEMA_VERSION = 1  # of the host-profile JSON

# The KVM_CREATE_VM type argument for each VM type the probe asks for (include/uapi/linux/
# kvm.h: KVM_VM_PPC_HV 1, KVM_VM_PPC_PR 2; 0 is the kernel's default implementation).
VM_TYPES: dict[str, int] = {"default": 0, "hv": 1, "pr": 2}

# kvm.h: KVM_PPC_PAGE_SIZES_MAX_SZ; rows and enc slots per row.
PAGE_SIZES_MAX_SZ = 8


class SmmuFlag(enum.IntFlag):
    """``kvm_ppc_smmu_info.flags`` bits."""

    PAGE_SIZES_REAL = 0x1  # guest pages must fit the backing store's pages
    ONE_T_SEGMENTS = 0x2  # 1T segments are supported besides 256M ones
    NO_HASH = 0x4  # HPT guests are not supported: radix only (nested HV)


# The kernel's own spellings, used in JSON and in output.
SMMU_FLAG_NAMES: dict[SmmuFlag, str] = {
    SmmuFlag.PAGE_SIZES_REAL: "PAGE_SIZES_REAL",
    SmmuFlag.ONE_T_SEGMENTS: "1T_SEGMENTS",
    SmmuFlag.NO_HASH: "NO_HASH",
}


def smmu_flag_names(flags: int) -> list[str]:
    """Names of the known bits set in ``flags``, plus ``0x..`` for unknown ones."""
    names = [name for bit, name in SMMU_FLAG_NAMES.items() if flags & bit]
    unknown = flags & ~sum(SMMU_FLAG_NAMES)
    if unknown:
        names.append(f"{unknown:#x}")
    return names


@dataclass(frozen=True)
class PageSize:
    """One actual page size within a segment: ``struct kvm_ppc_one_page_size``."""

    page_shift: int
    pte_enc: int


@dataclass(frozen=True)
class SegmentPageSizes:
    """One segment base page size and its actual page sizes (``kvm_ppc_one_seg_page_size``)."""

    page_shift: int
    slb_enc: int
    pages: tuple[PageSize, ...]


class SmmuSource(enum.Enum):
    """Where an :class:`SmmuInfo` came from."""

    KERNEL = "kernel"  # KVM_PPC_GET_SMMU_INFO answered
    GUESSED = "guessed"  # QEMU 3.0's kvm_get_fallback_smmu_info guess (no GET_SMMU_INFO cap)


@dataclass(frozen=True)
class SmmuInfo:
    """``struct kvm_ppc_smmu_info`` with unused rows and slots dropped."""

    flags: int
    slb_size: int
    data_keys: int
    instr_keys: int
    segments: tuple[SegmentPageSizes, ...]
    source: SmmuSource = SmmuSource.KERNEL

    @property
    def page_sizes_real(self) -> bool:
        return bool(self.flags & SmmuFlag.PAGE_SIZES_REAL)

    @property
    def one_t_segments(self) -> bool:
        return bool(self.flags & SmmuFlag.ONE_T_SEGMENTS)

    @property
    def no_hash(self) -> bool:
        return bool(self.flags & SmmuFlag.NO_HASH)

    @property
    def flag_names(self) -> list[str]:
        return smmu_flag_names(self.flags)


@dataclass(frozen=True)
class RadixGeometry:
    """``struct kvm_ppc_radix_geom``: smallest page shift and index bits per level."""

    page_shift: int
    level_bits: tuple[int, ...]


@dataclass(frozen=True)
class RmmuInfo:
    """``struct kvm_ppc_rmmu_info`` with unused entries dropped."""

    geometries: tuple[RadixGeometry, ...]
    ap_encodings: tuple[int, ...]

    @property
    def page_shifts(self) -> tuple[int, ...]:
        """Radix page sizes: the low 6 bits of each AP encoding are log2(page size)."""
        return tuple(ap & 0x3F for ap in self.ap_encodings)


# asm/kvm.h KVM_PPC_CPU_CHAR_* / KVM_PPC_CPU_BEHAV_* (same bits as H_GET_CPU_CHARACTERISTICS).
CPU_CHAR_NAMES: dict[int, str] = {
    1 << 63: "SPEC_BAR_ORI31",
    1 << 62: "BCCTRL_SERIALISED",
    1 << 61: "L1D_FLUSH_ORI30",
    1 << 60: "L1D_FLUSH_TRIG2",
    1 << 59: "L1D_THREAD_PRIV",
    1 << 58: "BR_HINT_HONOURED",
    1 << 57: "MTTRIG_THR_RECONF",
    1 << 56: "COUNT_CACHE_DIS",
    1 << 55: "BCCTR_FLUSH_ASSIST",
}
CPU_BEHAV_NAMES: dict[int, str] = {
    1 << 63: "FAVOUR_SECURITY",
    1 << 62: "L1D_FLUSH_PR",
    1 << 61: "BNDS_CHK_SPEC_BAR",
    1 << 58: "FLUSH_COUNT_CACHE",
}


def _bit_names(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if value & bit]


@dataclass(frozen=True)
class CpuChar:
    """``struct kvm_ppc_cpu_char``: speculation-related CPU characteristics and behaviours."""

    character: int
    behaviour: int
    character_mask: int
    behaviour_mask: int

    @property
    def character_names(self) -> list[str]:
        return _bit_names(self.character & self.character_mask, CPU_CHAR_NAMES)

    @property
    def behaviour_names(self) -> list[str]:
        return _bit_names(self.behaviour & self.behaviour_mask, CPU_BEHAV_NAMES)


@dataclass(frozen=True)
class PvInfo:
    """``struct kvm_ppc_pvinfo`` (PR only: the hypercall instruction sequence)."""

    flags: int
    hcall: tuple[int, ...]


@dataclass(frozen=True)
class MemoryInfo:
    """What the kernel lets a process commit: ``/proc/meminfo`` (bytes) and
    ``/proc/sys/vm/overcommit_memory`` (0 guess, 1 always, 2 never)."""

    mem_total: int | None = None
    swap_total: int | None = None
    overcommit_memory: int | None = None
    commit_limit: int | None = None
    committed_as: int | None = None


@dataclass(frozen=True)
class HostInfo:
    """The host CPU, kernel and MMU as ``/proc/cpuinfo`` and uname describe them."""

    arch: str
    kernel_release: str | None
    cpu_model: str | None
    pvr: int | None
    platform: str | None  # "PowerNV" (bare metal) or "pSeries" (an LPAR or a guest)
    mmu: str | None  # "radix" or "hash"
    base_page_size: int
    error: str | None = None
    # ``qemu-system-ppc64 --version`` ("10.0.13"), None when not installed or not probed
    # (profiles taken before kvmppc recorded it load with None)
    qemu_version: str | None = None
    # What QEMU's anonymous guest RAM may commit (probes from before the field: None)
    memory: MemoryInfo | None = None
    # the first CPU node's ibm,dec-bits in /proc/device-tree (target/ppc/kvm.c
    # kvmppc_get_dec_bits: what cap-large-decr=on under KVM needs); 0 when the host has none,
    # None when not probed (profiles taken before kvmppc read it)
    dec_bits: int | None = None

    @property
    def is_powerpc(self) -> bool:
        return self.arch.startswith(("ppc", "powerpc"))


@dataclass(frozen=True)
class HugepagePool:
    """``/sys/kernel/mm/hugepages/hugepages-<N>kB``: counts of pages of ``page_size`` bytes."""

    page_size: int
    total: int
    free: int
    reserved: int
    surplus: int

    @property
    def available(self) -> int:
        """Pages a new guest can take: free pages not already promised to a mapping."""
        return max(self.free - self.reserved, 0)


@dataclass(frozen=True)
class HugetlbfsMount:
    """A hugetlbfs mount and the page size QEMU would see through statfs ``f_bsize``."""

    path: str
    page_size: int
    page_size_from: str  # "statfs" (as QEMU reads it) or "mount-options"


@dataclass(frozen=True)
class HugepageInfo:
    default_page_size: int | None
    pools: tuple[HugepagePool, ...]
    mounts: tuple[HugetlbfsMount, ...]
    error: str | None = None

    def pool(self, page_size: int) -> HugepagePool | None:
        return next((pool for pool in self.pools if pool.page_size == page_size), None)


@dataclass(frozen=True)
class VmTypeInfo:
    """What one KVM_CREATE_VM type offers.  ``vm_type`` is the argument (0 default, 1 HV, 2 PR)."""

    name: str
    vm_type: int
    available: bool
    error: str | None = None
    is_pr: bool | None = None  # QEMU's kvmppc_is_pr(): KVM_CAP_PPC_GET_PVINFO on the VM fd
    caps: dict[str, int] = field(default_factory=dict)
    smmu: SmmuInfo | None = None
    smmu_error: str | None = None
    rmmu: RmmuInfo | None = None
    rmmu_error: str | None = None
    cpu_char: CpuChar | None = None
    cpu_char_error: str | None = None
    pvinfo: PvInfo | None = None
    pvinfo_error: str | None = None

    @property
    def kind(self) -> str | None:
        """"PR" or "HV", the implementation this VM type lands on, when known."""
        if self.is_pr is None:
            return None
        return "PR" if self.is_pr else "HV"


@dataclass(frozen=True)
class KvmInfo:
    device: str
    present: bool
    powerpc: bool  # the device answered the PowerPC ioctls
    api_version: int | None = None
    modules: tuple[str, ...] = ()
    caps: dict[str, int] = field(default_factory=dict)  # on the system fd
    vm_types: dict[str, VmTypeInfo] = field(default_factory=dict)  # "default", "hv", "pr"
    error: str | None = None

    @property
    def usable_vm_types(self) -> list[VmTypeInfo]:
        return [vm for vm in self.vm_types.values() if vm.available and vm.smmu is not None]


@dataclass(frozen=True)
class Provenance:
    """Where a host profile comes from.  ``kind`` "captured": a real kernel's own answers (a
    probe); "derived": written from the kernel's source where no such host could be run,
    from the captured profile ``derived_from``, changed as ``why`` says, per ``sources``."""

    kind: str
    derived_from: str | None = None
    why: str = ""
    sources: tuple[str, ...] = ()

    @property
    def derived(self) -> bool:
        return self.kind == "derived"


@dataclass(frozen=True)
class ProbeResult:
    host: HostInfo
    hugepages: HugepageInfo
    kvm: KvmInfo
    probed_at: float
    duration_s: float
    source: str = "live"  # "live", or "profile:NAME" when replayed
    kvmppc_version: str = ""
    schema_version: int = SCHEMA_VERSION
    # None: a live probe, or a profile from before the field (captured).
    provenance: Provenance | None = None

    def to_dict(self) -> dict[str, Any]:
        """The profile format, as ``kvmppc probe --json`` and ``GET /v1/host`` give it."""
        data: dict[str, Any] = jsonable(self)
        # Fields added later are left out when empty, so older profiles round-trip as written.
        if data["provenance"] is None:
            del data["provenance"]
        if data["host"]["memory"] is None:
            del data["host"]["memory"]
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProbeResult":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ProfileError(
                f"host profile has schema_version {version!r}; this kvmppc reads version"
                f" {SCHEMA_VERSION}: take the probe again with this version's"
                " 'kvmppc probe --json'"
            )
        try:
            result = from_jsonable(cls, data)
        except (TypeError, ValueError, KeyError) as exc:
            raise ProfileError(f"host profile does not match the probe schema: {exc}") from None
        assert isinstance(result, ProbeResult)
        return result

    def vm_type(self, name: str) -> VmTypeInfo | None:
        return self.kvm.vm_types.get(name.lower())


def jsonable(obj: Any) -> Any:
    """Turn model dataclasses (and enums, tuples) into JSON-ready values."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if hasattr(obj, "__dataclass_fields__"):
        return {name: jsonable(getattr(obj, name)) for name in obj.__dataclass_fields__}
    if isinstance(obj, (list, tuple)):
        return [jsonable(item) for item in obj]
    if isinstance(obj, dict):
        return {str(key): jsonable(value) for key, value in obj.items()}
    return obj


__all__ = [
    "PAGE_SIZES_MAX_SZ",
    "SCHEMA_VERSION",
    "VM_TYPES",
    "CpuChar",
    "HostInfo",
    "HugepageInfo",
    "HugepagePool",
    "HugetlbfsMount",
    "KvmInfo",
    "PageSize",
    "ProbeResult",
    "PvInfo",
    "RadixGeometry",
    "RmmuInfo",
    "SegmentPageSizes",
    "SmmuFlag",
    "SmmuInfo",
    "SmmuSource",
    "VmTypeInfo",
    "from_jsonable",
    "jsonable",
    "smmu_flag_names",
]


def from_jsonable(cls: Any, data: Any) -> Any:
    """Rebuild a model dataclass (or any annotated type) from :func:`jsonable` output.

    Strict: unknown or missing fields and wrong types raise ``ValueError`` naming the field.
    """
    return _decode(cls, data, "$")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Resolving the string annotations is most of the cost of reading a profile: once a class.
    return typing.get_type_hints(cls)


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if data is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _decode(option, data, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {data!r} is none of {tp}")
    if origin is tuple:
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(_decode(item_type, item, f"{where}[{i}]") for i, item in enumerate(data))
    if origin is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        _key_type, value_type = typing.get_args(tp)
        return {str(k): _decode(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise ValueError(f"{where}: {data!r} is not a {tp.__name__}") from None
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        hints = _type_hints(tp)
        names = set(tp.__dataclass_fields__)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        kwargs = {}
        for name in names:
            if name in data:
                kwargs[name] = _decode(hints[name], data[name], f"{where}.{name}")
            else:
                dc_field = tp.__dataclass_fields__[name]
                if dc_field.default is dataclasses.MISSING and (
                    dc_field.default_factory is dataclasses.MISSING
                ):
                    raise ValueError(f"{where}: missing field {name!r}")
        return tp(**kwargs)
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if tp in (int, str, bool):
        if type(data) is not tp:
            raise ValueError(f"{where}: expected {tp.__name__}, got {data!r}")
        return data
    raise ValueError(f"{where}: cannot decode type {tp}")

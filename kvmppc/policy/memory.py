"""Guest RAM: memory backends, ``-m``'s hotplug options and the checks QEMU makes on them.

QEMU 7.2 (read at the v7.2.0 tree) meets guest RAM at three moments of its start-up:

1. ``-m SIZE,slots=N,maxmem=SIZE`` becomes the machine's ``memory`` property
   (softmmu/vl.c ``parse_memory_options``, hw/core/machine.c ``machine_set_mem``), checked
   when the machine's options are applied: after the machine type is known, before the
   capabilities (a bad ``maxmem`` is reported before a bad ``cap-hpt-max-page-size``, as QEMU
   7.2 shows under TCG).
2. ``-object memory-backend-*`` objects are created late (softmmu/vl.c
   ``object_create_early`` keeps ``memory-backend-`` prefixed types for
   ``qemu_create_late_backends``): after the accelerator, before ``-cpu`` is parsed.  Each is
   allocated then, whether or not it will be guest RAM, so each can stop QEMU there
   (backends/hostmem-file.c, hostmem-memfd.c, softmmu/physmem.c ``qemu_ram_alloc_from_fd``,
   ``file_ram_alloc``, util/memfd.c ``qemu_memfd_create``).
3. Board init (hw/core/machine.c ``machine_run_board_init``): the machine's backend must
   have ``-m``'s size; without one, ``-mem-path`` (or anonymous RAM) becomes a default backend
   created only now, after ``-cpu`` (``create_default_memdev``); the NUMA nodes' memdevs must
   add up to ``-m`` (hw/core/numa.c ``numa_complete_configuration``); then spapr's RMA, the
   256 MiB alignment of RAM, ``maxmem`` and each node (``spapr_validate_node_memory``), and
   after the vCPUs the hotplug slots against KVM's memslots.

The smallest backing page size (``qemu_minrampagesize``, softmmu/physmem.c) walks every
object under ``/objects`` that is a memory backend *and is mapped*
(``host_memory_backend_is_mapped``): the machine's ``memory-backend``, each NUMA node's
memdev (``numa_init_memdev_container``) and the default backend of ``-mem-path``.  A backend
created but not used as RAM does not count.  The page size of each is its RAM block's
(``host_memory_backend_pagesize`` is ``qemu_ram_pagesize`` since QEMU 7.2: a memfd with
``hugetlb=on`` counts with its hugepage size).  Hotpluggable memory (``maxmem``) adds no
backend at start-up, so it does not change that answer; it changes the hash table's size
when HPT resizing is off (``spapr_setup_hpt``), and so the VRMA.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.model import HugepageInfo, MemoryInfo, ProbeResult
from kvmppc.policy.backing import Backing, resolve_backing
from kvmppc.policy.sizes import qemu_strtosz

MiB = 1 << 20

BACKEND_TYPES = ("memory-backend-ram", "memory-backend-file", "memory-backend-memfd")
BACKEND_USES = ("ram", "numa", "none")
# The -object keys kvmppc reads; the others QEMU takes for a memory backend have no bearing on
# page sizes or on whether the backend can be created on a host that has the memory.
BACKEND_KEYS = ("qom-type", "id", "size", "mem-path", "hugetlb", "hugetlbsize", "use", "node")
IGNORED_BACKEND_KEYS = frozenset({
    "prealloc", "prealloc-threads", "share", "merge", "dump", "host-nodes", "policy", "seal",
    "reserve", "discard-data", "x-use-canonical-path-for-ramblock-id", "pmem",
})
_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})

# include/hw/ppc/spapr.h; hw/ppc/spapr.c spapr_machine_init caps hotplug slots at half KVM's
# memslots, but never below this.
SPAPR_MAX_RAM_SLOTS = 32
# arch/powerpc/include/asm/kvm_host.h KVM_USER_MEM_SLOTS, which arch/powerpc/kvm/powerpc.c
# returns for KVM_CAP_NR_MEMSLOTS (HV and PR alike); QEMU's kvm_init keeps it in nr_slots.
KVM_PPC_USER_MEM_SLOTS = 512


def _bool(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"backend {key}={value!r}: give on or off")


def backend_size(text: str) -> int:
    """A backend's ``size`` as QEMU's keyval visitor reads it (qemu_strtosz, bytes)."""
    result = qemu_strtosz(text)
    if result.value is None:
        raise UsageError(f"backend size={text!r}: Parameter 'size' expects a size")
    if result.value == 0:
        # backends/hostmem.c host_memory_backend_set_size
        raise UsageError(f"backend size={text!r}: property 'size' of memory backends doesn't"
                         " take value '0'")
    return result.value


@dataclass(frozen=True)
class MemoryBackend:
    """One ``-object memory-backend-*``, and how the guest uses it.

    ``qom_type`` memory-backend-ram, -file or -memfd; ``size`` and ``hugetlbsize`` in QEMU's
    size syntax; ``mem_path`` for a file backend; ``hugetlb`` for a memfd.  ``use``: "ram"
    (``-machine memory-backend=``), "numa" (a ``-numa node,memdev=``, nodes in the order
    given, or ``node``, the node id, when the objects come in another order than the nodes)
    or "none" (created, not mapped as RAM).  As text (the ``backend`` query parameter,
    ``kvmppc check --backend``) it is the ``-object`` text, with ``use=`` (and ``node=``)
    added: ``memory-backend-file,size=2G,mem-path=/dev/hugepages,use=numa``.
    """

    qom_type: str
    size: str
    mem_path: str | None = None
    hugetlb: bool = False
    hugetlbsize: str | None = None
    use: str = "ram"
    id: str | None = None
    node: int | None = None

    def __post_init__(self) -> None:
        if self.qom_type not in BACKEND_TYPES:
            raise UsageError(f"backend type {self.qom_type!r}: give one of"
                             f" {', '.join(BACKEND_TYPES)}")
        if self.use not in BACKEND_USES:
            raise UsageError(f"backend use={self.use!r}: give ram, numa or none")
        backend_size(self.size)
        if self.qom_type == "memory-backend-file":
            if not self.mem_path:
                raise UsageError("memory-backend-file needs mem-path=PATH")
            if not self.mem_path.startswith("/") or "\0" in self.mem_path:
                raise UsageError(f"mem-path {self.mem_path!r} must be an absolute path")
        elif self.mem_path is not None:
            raise UsageError(f"{self.qom_type} takes no mem-path (memory-backend-file does)")
        if (self.hugetlb or self.hugetlbsize is not None) and (
                self.qom_type != "memory-backend-memfd"):
            raise UsageError("hugetlb and hugetlbsize are memory-backend-memfd's properties;"
                             " for hugetlbfs files use memory-backend-file,mem-path=")
        if self.hugetlbsize is not None and qemu_strtosz(self.hugetlbsize).value is None:
            raise UsageError(f"hugetlbsize={self.hugetlbsize!r}: Parameter 'hugetlbsize'"
                             " expects a size")

    @property
    def size_bytes(self) -> int:
        return backend_size(self.size)

    @property
    def hugetlbsize_bytes(self) -> int:
        """0: the kernel's default hugepage size."""
        if self.hugetlbsize is None:
            return 0
        value = qemu_strtosz(self.hugetlbsize).value
        assert value is not None
        return value

    @classmethod
    def from_spec(cls, text: str, default_use: str = "ram") -> MemoryBackend:
        """``TYPE,size=SIZE[,mem-path=PATH][,hugetlb=on][,hugetlbsize=SIZE][,use=...][,id=]``
        (QEMU's ``-object`` keyval text; ``,,`` is a comma)."""
        props = split_spec(text)
        unknown = sorted(set(props) - set(BACKEND_KEYS) - IGNORED_BACKEND_KEYS)
        if unknown:
            raise UsageError(f"backend {text!r}: unknown key(s) {', '.join(unknown)}; known:"
                             f" {', '.join(BACKEND_KEYS[1:])}")
        if "size" not in props:
            raise UsageError(f"backend {text!r}: Parameter 'size' is missing")
        return cls(
            qom_type=props["qom-type"], size=props["size"], mem_path=props.get("mem-path"),
            hugetlb=_bool("hugetlb", props["hugetlb"]) if "hugetlb" in props else False,
            hugetlbsize=props.get("hugetlbsize"), use=props.get("use", default_use),
            id=props.get("id"), node=_node(props["node"]) if "node" in props else None,
        )

    def to_spec(self) -> str:
        parts = [self.qom_type]
        if self.id is not None:
            parts.append(f"id={self.id}")
        parts.append(f"size={self.size}")
        if self.mem_path is not None:
            parts.append(f"mem-path={self.mem_path}")
        if self.hugetlb:
            parts.append("hugetlb=on")
        if self.hugetlbsize is not None:
            parts.append(f"hugetlbsize={self.hugetlbsize}")
        parts.append(f"use={self.use}")
        if self.node is not None:
            parts.append(f"node={self.node}")
        return ",".join(part.replace(",", ",,") if i else part for i, part in enumerate(parts))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.qom_type, "id": self.id, "size": self.size,
                "mem_path": self.mem_path, "hugetlb": self.hugetlb,
                "hugetlbsize": self.hugetlbsize, "use": self.use, "node": self.node}


def _node(text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"backend node={text!r}: give the NUMA node id (0, 1, ...)")
    return int(text)


def numa_nodes(backends: tuple[MemoryBackend, ...]) -> list[MemoryBackend]:
    """The NUMA nodes' memdevs in node order (``node=`` where given, else as listed)."""
    numa = [b for b in backends if b.use == "numa"]
    return sorted(numa, key=lambda b: b.node if b.node is not None else numa.index(b))


def split_commas(text: str) -> list[str]:
    """Split at single commas; ``,,`` is a literal comma (QemuOpts and keyval alike)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def split_spec(text: str) -> dict[str, str]:
    """keyval (util/keyval.c): ``,,`` a literal comma, the first element the type."""
    elements = split_commas(text)
    props: dict[str, str] = {}
    for index, element in enumerate(elements):
        key, eq, value = element.partition("=")
        if not eq:
            if index == 0 and element:
                key, value = "qom-type", element
            else:
                raise UsageError(f"backend {text!r}: Expected '=' after parameter '{element}'")
        props[key] = value
    if "qom-type" not in props:
        raise UsageError(f"backend {text!r}: give the type first (memory-backend-file, ...)")
    return props


def backends_from_specs(specs: tuple[str, ...]) -> tuple[MemoryBackend, ...]:
    """Backends as given: one without ``use=`` is the machine's RAM when it is the only one
    without, else the NUMA nodes' memdevs in order."""
    plain = sum(1 for spec in specs if "use" not in split_spec(spec))
    default = "ram" if plain == 1 and not any(
        split_spec(s).get("use") == "numa" for s in specs) else "numa"
    return tuple(MemoryBackend.from_spec(spec, default) for spec in specs)


def validate_layout(backends: tuple[MemoryBackend, ...]) -> None:
    """kvmppc's own limits on a request's backends (QEMU's are replayed, not refused here)."""
    ram = [b for b in backends if b.use == "ram"]
    if len(ram) > 1:
        raise UsageError("only one backend can be the machine's RAM (use=ram);"
                         " give the others use=numa or use=none")
    ids = [b.id for b in backends if b.id is not None]
    if len(ids) != len(set(ids)):
        raise UsageError("backend ids must differ")


# --------------------------------------------------------------------------------------------
# creating a backend: QEMU's checks in the order it makes them


@dataclass
class PoolLedger:
    """Hugepages promised so far, per page size: each backend's mapping reserves its pages
    (mm/hugetlb.c ``hugetlb_reserve_pages`` at mmap, unless MAP_NORESERVE: QEMU 7.2 maps
    with ``reserve=on`` by default), so backends created later see fewer."""

    hugepages: HugepageInfo
    taken: dict[int, int] = field(default_factory=dict)
    memory: MemoryInfo | None = None
    committed: int = 0

    def commit(self, size: int) -> bool:
        """mm/util.c ``__vm_enough_memory`` for a private writable anonymous mapping of
        ``size`` bytes (QEMU's RAM without a file: util/mmap-alloc.c ``mmap_activate``).
        OVERCOMMIT_GUESS (0): each mapping at most RAM + swap; ALWAYS (1): anything; NEVER (2):
        all commitments within CommitLimit (QEMU runs as root: no admin reserve).  Unknown
        (a probe without the figures): allowed."""
        info = self.memory
        if info is None or info.overcommit_memory is None or info.overcommit_memory == 1:
            return True
        if info.overcommit_memory == 0:
            if info.mem_total is None:
                return True
            return size <= info.mem_total + (info.swap_total or 0)
        if info.commit_limit is None or info.committed_as is None:
            return True
        if info.committed_as + self.committed + size > info.commit_limit:
            return False
        self.committed += size
        return True

    def reserve(self, page_size: int, pages: int) -> bool:
        pool = self.hugepages.pool(page_size)
        available = (pool.available if pool else 0) - self.taken.get(page_size, 0)
        if pages > available:
            return False
        self.taken[page_size] = self.taken.get(page_size, 0) + pages
        return True


@dataclass(frozen=True)
class Created:
    """A backend after QEMU created it: its RAM block's page size, or QEMU's error."""

    backing: Backing
    error: str | None = None
    kind: str | None = None  # "sync-mmu", "page-size", "pool", "memfd"


def memfd_flags(hugetlb: bool, hugetlbsize: int, seal: bool = True) -> int:
    """util/memfd.c ``qemu_memfd_create``: MFD_CLOEXEC, MFD_ALLOW_SEALING (the backend seals
    by default), MFD_HUGETLB and the page size's log2 at MFD_HUGE_SHIFT (26)."""
    flags = 0x1 | (0x2 if seal else 0)
    if hugetlb:
        flags |= 0x4 | ((hugetlbsize.bit_length() - 1 if hugetlbsize else 0) << 26)
    return flags


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def create_backend(probe: ProbeResult, backend: MemoryBackend, size: int, *, kvm_sync_mmu: bool,
                   ledger: PoolLedger,
                   resolve: Callable[[str], Backing] | None = None) -> Created:
    """``host_memory_backend_memory_complete`` for one backend of ``size`` bytes.

    * memory-backend-ram: anonymous memory in base pages; nothing refuses it here.
    * memory-backend-memfd (util/memfd.c ``qemu_memfd_create``): a hugepage size not a power
      of 2; ``memfd_create`` with MFD_HUGETLB fails with ENODEV when the kernel has no pool of
      that size (mm/hugetlb.c ``hugetlb_file_setup``); ``ftruncate`` to a size that is not a
      multiple of the hugepage fails with EINVAL (fs/hugetlbfs/inode.c
      ``hugetlbfs_setattr``); then ``qemu_ram_alloc_from_fd`` as for files.
    * memory-backend-file: ``qemu_ram_alloc_from_fd`` refuses under KVM without MMU notifiers
      (``kvm_has_sync_mmu``: KVM_CAP_SYNC_MMU, 0 on KVM-PR's book3s_pr); ``file_ram_alloc``
      refuses a size below the page size, rounds the size up to it and maps it, which on
      hugetlbfs reserves the pages (ENOMEM when the pool lacks them).
    """
    base = probe.host.base_page_size
    if backend.qom_type == "memory-backend-ram":
        backing = Backing(None, base, "anonymous (memory-backend-ram)")
        if not ledger.commit(_round_up(size, base)):
            # softmmu/physmem.c ram_block_add; the region is named after the backend's id
            # (hw/core/machine.c create_default_memdev: the machine's "ppc_spapr.ram").
            return Created(backing, f"cannot set up guest memory '{backend.id or DEFAULT_RAM_ID}':"
                           " Cannot allocate memory", "overcommit")
        return Created(backing)
    if backend.qom_type == "memory-backend-memfd":
        if not backend.hugetlb:
            backing = Backing(None, base, "memfd (shmem, base pages)")
            if not kvm_sync_mmu:
                return Created(backing, MSG_SYNC_MMU, "sync-mmu")
            return Created(backing)
        asked = backend.hugetlbsize_bytes
        if asked & (asked - 1):
            return Created(Backing(None, base, "memfd hugetlb"),
                           "Hugepage size must be a power of 2", "memfd")
        page = asked or (probe.hugepages.default_page_size or 0)
        flags = memfd_flags(True, asked)
        if not page or probe.hugepages.pool(page) is None:
            return Created(Backing(None, base, "memfd hugetlb"),
                           f"failed to create memfd with flags 0x{flags:x}: No such device",
                           "memfd")
        backing = Backing(None, page, "memfd hugetlb")
        if size % page:
            return Created(backing, f"failed to resize memfd to {size}: Invalid argument",
                           "page-size")
        if not kvm_sync_mmu:
            return Created(backing, MSG_SYNC_MMU, "sync-mmu")
        if not ledger.reserve(page, size // page):
            return Created(backing, MSG_NO_MEMORY, "pool")
        return Created(backing)
    assert backend.mem_path is not None
    backing = (resolve or (lambda p: resolve_backing(probe, p)))(backend.mem_path)
    # A path statfs cannot read keeps its error on the backing: the replay reports it where
    # it always has, with the backing check.
    if not kvm_sync_mmu:
        return Created(backing, MSG_SYNC_MMU, "sync-mmu")
    size = _round_up(size, base)  # HOST_PAGE_ALIGN
    if size < backing.page_size:
        return Created(backing, page_size_error(size, backing.page_size), "page-size")
    if backing.page_size > base and not ledger.reserve(
            backing.page_size, _round_up(size, backing.page_size) // backing.page_size):
        return Created(backing, MSG_NO_MEMORY, "pool")
    return Created(backing)


DEFAULT_RAM_ID = "ppc_spapr.ram"  # hw/ppc/spapr.c mc->default_ram_id
MSG_SYNC_MMU = "host lacks kvm mmu notifiers, -mem-path unsupported"
MSG_NO_MEMORY = "unable to map backing store for guest RAM: Cannot allocate memory"


def page_size_error(size: int, page_size: int) -> str:
    """softmmu/physmem.c ``file_ram_alloc`` (RAM_ADDR_FMT is %lx)."""
    return (f"memory size 0x{size:x} must be equal to or larger than page size"
            f" 0x{page_size:x}")


# --------------------------------------------------------------------------------------------
# -m's slots and maxmem


def parse_slots(text: str) -> int:
    """QemuOpts QEMU_OPT_NUMBER (util/qemu-option.c ``parse_option_number``:
    ``qemu_strtou64`` with base 0, so ``0x10``, ``020`` and ``-1`` (2**64 - 1) are numbers)."""
    body = text.strip()
    negative = body.startswith("-")
    digits = body[1:] if body[:1] in "+-" else body
    try:
        if digits.lower().startswith("0x") and len(digits) > 2:
            value = int(digits[2:], 16)
        elif digits.startswith("0") and len(digits) > 1:
            value = int(digits[1:], 8)
        else:
            if not digits.isdigit():
                raise ValueError(digits)
            value = int(digits, 10)
    except ValueError:
        raise UsageError(f"slots={text!r}: Parameter 'slots' expects a number") from None
    if value >= 1 << 64:
        raise UsageError(f"slots={text!r}: Parameter 'slots' expects a number")
    return (-value) % (1 << 64) if negative else value


def mem_property_error(ram_size: int, maxmem: int | None, slots: int | None) -> str | None:
    """hw/core/machine.c ``machine_set_mem``, word for word."""
    if maxmem is not None:
        if maxmem < ram_size:
            return (f"invalid value of maxmem: maximum memory size (0x{maxmem:x}) must be at"
                    f" least the initial memory size (0x{ram_size:x})")
        if slots and maxmem == ram_size:
            return ("invalid value of maxmem: memory slots were specified but maximum memory"
                    f" size (0x{maxmem:x}) is equal to the initial memory size"
                    f" (0x{ram_size:x})")
        return None
    if slots is not None:
        return "slots specified but no max-size"
    return None


def max_hotplug_slots(kvm_caps: Mapping[str, int] | None) -> int:
    """hw/ppc/spapr.c ``spapr_machine_init``: half of KVM's memslots, at least 32; TCG 32."""
    if kvm_caps is None:
        return SPAPR_MAX_RAM_SLOTS
    nr_slots = kvm_caps.get("NR_MEMSLOTS") or KVM_PPC_USER_MEM_SLOTS
    return max(nr_slots // 2, SPAPR_MAX_RAM_SLOTS)


def pow2floor(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value > 0 else 0


def node0_size(ram_size: int, node_sizes: tuple[int, ...]) -> int:
    """hw/ppc/spapr.c ``spapr_node0_size``: the first node with memory, rounded down to a power
    of two, at most RAM (the RMA has to fit in it)."""
    for size in node_sizes:
        if size:
            return min(pow2floor(size), ram_size)
    return ram_size

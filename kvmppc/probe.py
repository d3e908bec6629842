"""The host probe: what this host offers a pseries guest, gathered without failing as a whole.

Each part (host, hugepages, KVM, each VM type and each ioctl) carries its own ``error``
instead of aborting the probe, so a probe on an x86 machine still reports the host and says
plainly that its KVM is not PowerPC.  Paths are parameters so tests can use fixture trees.

It fills the plain dataclasses of :mod:`kvmppc.model`.  The result serialises to JSON with a
``schema_version``; that JSON is also a *host profile* (:func:`kvmppc.profiles.load_profile`),
a probe taken on one POWER host that can be examined anywhere.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvmppc import __version__, _kvm
from kvmppc.errors import KvmOSError
from kvmppc.ioctls import Cap, VmType
from kvmppc.model import (
    VM_TYPES,
    HostInfo,
    HugepageInfo,
    HugepagePool,
    HugetlbfsMount,
    KvmInfo,
    MemoryInfo,
    PageSize,
    ProbeResult,
    SegmentPageSizes,
    SmmuInfo,
    SmmuSource,
    VmTypeInfo,
)
from kvmppc.qemu_versions import parse_version_output

KVM_API_VERSION = 12  # include/uapi/linux/kvm.h: the only stable API there has been


@dataclass(frozen=True)
class ProbePaths:
    """Where the probe looks; defaults are the real host."""

    kvm_device: str = "/dev/kvm"
    proc: str = "/proc"
    sys: str = "/sys"
    mounts: str = "/proc/self/mounts"
    # the QEMU whose version decides which release kvmppc models by default; None: don't ask
    qemu: str | None = "qemu-system-ppc64"


# --------------------------------------------------------------------------------------------
# host


def _read(path: str | Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


_PVR_RE = re.compile(r"\(pvr\s+([0-9a-fA-F]{4})\s+([0-9a-fA-F]{4})\)")


def parse_cpuinfo(text: str) -> dict[str, str | int | None]:
    """Pick the CPU model, PVR, platform and MMU from ``/proc/cpuinfo``.

    powerpc prints ``cpu : POWER9 (architected), altivec supported``, ``revision : 2.2 (pvr
    004e 1202)``, ``platform : PowerNV`` and ``MMU : Radix`` (arch/powerpc/kernel/setup-common.c
    show_cpuinfo); other architectures' ``model name`` is taken as the model.
    """
    cpu_model: str | None = None
    pvr: int | None = None
    platform: str | None = None
    mmu: str | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "cpu" and cpu_model is None:
            cpu_model = value.split(",")[0].strip()
        elif key == "model name" and cpu_model is None:
            cpu_model = value
        elif key == "revision" and pvr is None:
            match = _PVR_RE.search(value)
            if match:
                pvr = int(match.group(1) + match.group(2), 16)
        elif key == "platform":
            platform = value
        elif key == "MMU":
            mmu = value.lower()
    return {"cpu_model": cpu_model, "pvr": pvr, "platform": platform, "mmu": mmu}


def probe_qemu_version(binary: str | None) -> str | None:
    """``BINARY --version``'s release ("10.0.13"), or None when it is missing or says none.

    The first line reads "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)"
    (system/vl.c ``version()``).  A missing QEMU is not a probe error: kvmppc then answers
    for the newest release it models.
    """
    if binary is None:
        return None
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    # Asked once per installed binary: the daemon re-probes often, and starting QEMU costs
    # tens of milliseconds; a package upgrade replaces the file (new inode, mtime).
    return _qemu_version_of(path, st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _qemu_version_of(path: str, _ino: int, _mtime_ns: int, _size: int) -> str | None:
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                              check=False, env={"LC_ALL": "C", "PATH": os.defpath})
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version_output(proc.stdout)


def probe_host(paths: ProbePaths, *, machine: str, base_page_size: int) -> HostInfo:
    errors = []
    release: str | None = None
    try:
        release = _read(Path(paths.proc, "sys/kernel/osrelease")).strip()
    except OSError as exc:
        errors.append(f"kernel release: {exc}")
    fields: dict[str, str | int | None] = {
        "cpu_model": None, "pvr": None, "platform": None, "mmu": None,
    }
    try:
        fields = parse_cpuinfo(_read(Path(paths.proc, "cpuinfo")))
    except OSError as exc:
        errors.append(f"cpuinfo: {exc}")
    cpu_model, pvr, platform, mmu = (
        fields["cpu_model"], fields["pvr"], fields["platform"], fields["mmu"],
    )
    memory = None
    try:
        memory = probe_memory(paths)
    except (OSError, ValueError) as exc:
        errors.append(f"meminfo: {exc}")
    return HostInfo(
        memory=memory,
        arch=machine,
        kernel_release=release,
        cpu_model=cpu_model if isinstance(cpu_model, str) else None,
        pvr=pvr if isinstance(pvr, int) else None,
        platform=platform if isinstance(platform, str) else None,
        mmu=mmu if isinstance(mmu, str) else None,
        base_page_size=base_page_size,
        error="; ".join(errors) or None,
        qemu_version=probe_qemu_version(paths.qemu),
        dec_bits=probe_dec_bits(paths) if machine.startswith(("ppc", "powerpc")) else None,
    )


_MEMINFO_KEYS = {"MemTotal": "mem_total", "SwapTotal": "swap_total",
                 "CommitLimit": "commit_limit", "Committed_AS": "committed_as"}


def probe_memory(paths: ProbePaths) -> MemoryInfo:
    """``/proc/meminfo``'s totals and the overcommit mode: what mm/util.c
    ``__vm_enough_memory`` weighs an anonymous mapping (QEMU's RAM) against."""
    values: dict[str, int] = {}
    for line in _read(Path(paths.proc, "meminfo")).splitlines():
        key, _, rest = line.partition(":")
        if key in _MEMINFO_KEYS:
            values[_MEMINFO_KEYS[key]] = int(rest.split()[0]) * 1024  # kB
    mode = int(_read(Path(paths.proc, "sys/vm/overcommit_memory")).strip())
    return MemoryInfo(overcommit_memory=mode, **values)
def probe_dec_bits(paths: ProbePaths) -> int:
    """target/ppc/kvm.c ``kvmppc_get_dec_bits``: ``ibm,dec-bits`` of the first CPU node of
    /proc/device-tree/cpus that has a ``clock-frequency`` (kvmppc_find_cpu_dt), a big-endian
    cell; 0 when there is none (QEMU then says "No large decrementer support")."""
    cpus = Path(paths.proc, "device-tree/cpus")
    try:
        nodes = sorted(cpus.iterdir())
    except OSError:
        return 0
    for node in nodes:
        if not (node / "clock-frequency").exists():
            continue
        try:
            raw = (node / "ibm,dec-bits").read_bytes()
        except OSError:
            return 0
        return int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
    return 0


# --------------------------------------------------------------------------------------------
# hugepages


_POOL_RE = re.compile(r"^hugepages-(\d+)kB$")
_SIZE_OPTION_RE = re.compile(r"^(\d+)([KMGkmg]?)$")


def _parse_size_option(text: str) -> int | None:
    """hugetlbfs's ``pagesize=`` mount option (memparse syntax: 2M, 1G, 16M, 2048K)."""
    match = _SIZE_OPTION_RE.match(text)
    if not match:
        return None
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]


def _unescape_mount_path(text: str) -> str:
    # The mount table escapes space, tab, newline and backslash as octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _read_count(path: str) -> int:
    # os.open/os.read rather than open(): the daemon re-reads these four small sysfs files per
    # pool for every answer, and a text-mode file object costs several times more.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


def read_hugepage_pools(sys_root: str) -> tuple[HugepagePool, ...]:
    base = os.path.join(sys_root, "kernel/mm/hugepages")
    pools = []
    for entry in os.listdir(base):
        match = _POOL_RE.match(entry)
        if not match:
            continue
        pool = os.path.join(base, entry)
        pools.append(
            HugepagePool(
                page_size=int(match.group(1)) * 1024,
                total=_read_count(os.path.join(pool, "nr_hugepages")),
                free=_read_count(os.path.join(pool, "free_hugepages")),
                reserved=_read_count(os.path.join(pool, "resv_hugepages")),
                surplus=_read_count(os.path.join(pool, "surplus_hugepages")),
            )
        )
    return tuple(sorted(pools, key=lambda pool: pool.page_size))


def read_hugetlbfs_mounts(
    mounts_file: str,
    default_page_size: int | None,
    statfs: Callable[[str], tuple[int, int]] | None,
    hugetlbfs_magic: int,
) -> tuple[HugetlbfsMount, ...]:
    """hugetlbfs mounts from the mount table, each with the page size QEMU would use.

    QEMU (util/mmap-alloc.c qemu_mempath_getpagesize) takes statfs ``f_bsize`` when ``f_type``
    is HUGETLBFS_MAGIC; where the mount cannot be statfs'd (a fixture tree, or another mount
    namespace) its ``pagesize=`` option, else the default huge page size, stands in.
    """
    mounts = []
    for line in _read(mounts_file).splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] != "hugetlbfs":
            continue
        path = _unescape_mount_path(parts[1])
        page_size: int | None = None
        source = "statfs"
        if statfs is not None:
            try:
                f_type, f_bsize = statfs(path)
            except OSError:
                pass  # not visible from here: fall back to the mount options below
            else:
                if f_type == hugetlbfs_magic:
                    page_size = f_bsize
        if page_size is None:
            source = "mount-options"
            options = dict(
                option.partition("=")[::2] for option in parts[3].split(",")
            )
            page_size = _parse_size_option(options.get("pagesize", "")) or default_page_size
        if page_size:
            mounts.append(HugetlbfsMount(path, page_size, source))
    return tuple(mounts)


def _default_hugepage_size(proc: str) -> int | None:
    for line in _read(Path(proc, "meminfo")).splitlines():
        if line.startswith("Hugepagesize:"):
            return int(line.split()[1]) * 1024
    return None


def probe_hugepages(
    paths: ProbePaths, statfs: Callable[[str], tuple[int, int]] | None, hugetlbfs_magic: int
) -> HugepageInfo:
    errors = []
    default: int | None = None
    pools: tuple[HugepagePool, ...] = ()
    mounts: tuple[HugetlbfsMount, ...] = ()
    try:
        default = _default_hugepage_size(paths.proc)
    except (OSError, ValueError, IndexError) as exc:
        errors.append(f"meminfo: {exc}")
    try:
        pools = read_hugepage_pools(paths.sys)
    except FileNotFoundError:
        pass  # no hugetlb support in this kernel: no pools, which is an answer, not an error
    except (OSError, ValueError) as exc:
        errors.append(f"hugepage pools: {exc}")
    try:
        mounts = read_hugetlbfs_mounts(paths.mounts, default, statfs, hugetlbfs_magic)
    except OSError as exc:
        errors.append(f"mount table: {exc}")
    return HugepageInfo(default, pools, mounts, "; ".join(errors) or None)


# --------------------------------------------------------------------------------------------
# KVM


def fallback_smmu_info(is_pr: bool, cpu_model: str | None) -> SmmuInfo:
    """QEMU 3.0's guess when the kernel lacks KVM_CAP_PPC_GET_SMMU_INFO
    (target/ppc/kvm.c kvm_get_fallback_smmu_info, removed in 3.1).

    PR "only supports 4K and 16M pages, but supports them regardless of the backing store";
    HV needs real pages, has 1T segments when the CPU does, a 32-entry SLB and 64K pages on
    MMU 2.06/2.07 (POWER7/POWER8), else 64 entries; "P7 encodings" are assumed.
    """
    if is_pr:
        return SmmuInfo(
            flags=0,
            slb_size=64,
            data_keys=0,
            instr_keys=0,
            segments=(
                SegmentPageSizes(12, 0x000, (PageSize(12, 0),)),
                SegmentPageSizes(24, 0x100, (PageSize(24, 0),)),
            ),
            source=SmmuSource.GUESSED,
        )
    model = (cpu_model or "").upper()
    mmu_2_06_or_2_07 = model.startswith(("POWER7", "POWER8"))
    # POWER7 and later hash MMUs have PPC_HASH64_1TSEG; 970 and POWER5+ (basic table) do not.
    one_t = model.startswith(("POWER7", "POWER8", "POWER9", "POWER10", "POWER11"))
    segments = [SegmentPageSizes(12, 0x000, (PageSize(12, 0),))]
    if mmu_2_06_or_2_07:
        segments.append(SegmentPageSizes(16, 0x110, (PageSize(16, 1),)))
    segments.append(SegmentPageSizes(24, 0x100, (PageSize(24, 0),)))
    return SmmuInfo(
        flags=0x1 | (0x2 if one_t else 0),
        slb_size=32 if mmu_2_06_or_2_07 else 64,
        data_keys=0,
        instr_keys=0,
        segments=tuple(segments),
        source=SmmuSource.GUESSED,
    )


def _loaded_modules(sys_root: str) -> tuple[str, ...]:
    # /sys/module/<name> exists for loaded modules and for built-in ones with parameters.
    return tuple(
        name for name in ("kvm", "kvm_hv", "kvm_pr") if Path(sys_root, "module", name).is_dir()
    )


_VM_TYPE_NAMES = {VmType(number): name for name, number in VM_TYPES.items()}


def _probe_vm_type(device: Any, vm_type: VmType, system_caps: dict[str, int],
                   host: HostInfo) -> VmTypeInfo:
    name = _VM_TYPE_NAMES[vm_type]
    try:
        vm = device.create_vm(vm_type)
    except KvmOSError as exc:
        return VmTypeInfo(name, int(vm_type), available=False, error=str(exc))
    with vm:
        caps: dict[str, int] = {}
        per_vm = system_caps.get(Cap.CHECK_EXTENSION_VM.name, 0) > 0
        for cap in Cap:
            # Ask the VM where the kernel allows it (KVM_CAP_CHECK_EXTENSION_VM): with both
            # modules loaded the system fd answers as if HV were in use.
            if per_vm:
                try:
                    caps[cap.name] = vm.check_extension(cap)
                    continue
                except KvmOSError:
                    pass  # QEMU's kvm_vm_check_extension falls back to the system fd too
            caps[cap.name] = system_caps.get(cap.name, 0)
        # QEMU target/ppc/kvm.c kvmppc_is_pr(): "Assume KVM-PR if the GET_PVINFO capability
        # is available" (the kernel reports it only for PR, powerpc.c).
        is_pr = caps.get(Cap.PPC_GET_PVINFO.name, 0) != 0
        info = VmTypeInfo(
            name, int(vm_type), available=True, is_pr=is_pr if host.is_powerpc else None,
            caps=caps,
        )
        if caps.get(Cap.PPC_GET_SMMU_INFO.name, 0) or not host.is_powerpc:
            # Off powerpc the ioctl is issued anyway: its ENOTTY is the real answer.
            try:
                info = replace(info, smmu=vm.get_smmu_info())
            except KvmOSError as exc:
                info = replace(info, smmu_error=str(exc))
        else:
            # A PowerPC kernel older than KVM_PPC_GET_SMMU_INFO (Linux 3.5): QEMU 3.0's guess.
            info = replace(info, smmu=fallback_smmu_info(is_pr, host.cpu_model))
        try:
            info = replace(info, rmmu=vm.get_rmmu_info())
        except KvmOSError as exc:
            info = replace(info, rmmu_error=str(exc))
        try:
            info = replace(info, cpu_char=vm.get_cpu_char())
        except KvmOSError as exc:
            info = replace(info, cpu_char_error=str(exc))
        if is_pr and host.is_powerpc:
            try:
                info = replace(info, pvinfo=vm.get_pvinfo())
            except KvmOSError as exc:
                info = replace(info, pvinfo_error=str(exc))
    return info


def probe_kvm(paths: ProbePaths, host: HostInfo) -> KvmInfo:
    """Open the device, read its API version and caps, and probe each VM type.

    The type argument of KVM_CREATE_VM is architecture-specific (on x86, 1 would ask for a
    software-protected VM), so HV and PR are only tried on powerpc.
    """
    modules = _loaded_modules(paths.sys)
    try:
        device = _kvm.KvmDevice(paths.kvm_device)
    except KvmOSError as exc:
        return KvmInfo(
            device=paths.kvm_device,
            present=os.path.exists(paths.kvm_device),
            powerpc=host.is_powerpc,
            modules=modules,
            error=str(exc),
        )
    with device:
        try:
            api_version = device.api_version()
        except KvmOSError as exc:
            # Not a KVM device at all (a path that opens, such as /dev/null, answers ENOTTY):
            # the KVM part carries the error, as the probe promises, instead of raising.
            return KvmInfo(paths.kvm_device, True, host.is_powerpc, modules=modules,
                           error=f"{paths.kvm_device} does not answer KVM_GET_API_VERSION: {exc}")
        if api_version != KVM_API_VERSION:
            return KvmInfo(
                paths.kvm_device, True, host.is_powerpc, api_version, modules,
                error=f"KVM API version {api_version}, expected {KVM_API_VERSION}:"
                " this kernel's KVM is not one kvmppc (or QEMU) can use",
            )
        caps: dict[str, int] = {}
        for cap in Cap:
            caps[cap.name] = device.check_extension(cap)
        vm_types = {}
        for vm_type in (VmType.DEFAULT, VmType.HV, VmType.PR):
            if vm_type != VmType.DEFAULT and not host.is_powerpc:
                vm_types[_VM_TYPE_NAMES[vm_type]] = VmTypeInfo(
                    _VM_TYPE_NAMES[vm_type], int(vm_type), available=False,
                    error=f"KVM-{vm_type.name} exists only on PowerPC hosts;"
                    f" this host is {host.arch}",
                )
                continue
            vm_types[_VM_TYPE_NAMES[vm_type]] = _probe_vm_type(device, vm_type, caps, host)
    return KvmInfo(
        device=paths.kvm_device,
        present=True,
        powerpc=host.is_powerpc,
        api_version=api_version,
        modules=modules,
        caps=caps,
        vm_types=vm_types,
    )


def probe(
    paths: ProbePaths | None = None,
    *,
    machine: str | None = None,
    base_page_size: int | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Probe the host.  Never raises for a part that fails: the part carries the error."""
    paths = paths or ProbePaths()
    start = monotonic()
    probed_at = clock()
    host = probe_host(
        paths,
        machine=machine or os.uname().machine,
        base_page_size=base_page_size or os.sysconf("SC_PAGE_SIZE"),
    )
    hugepages = probe_hugepages(paths, _kvm.statfs_type_and_block_size, _kvm.HUGETLBFS_MAGIC)
    kvm = probe_kvm(paths, host)
    return ProbeResult(
        host=host,
        hugepages=hugepages,
        kvm=kvm,
        probed_at=probed_at,
        duration_s=monotonic() - start,
        kvmppc_version=__version__,
    )


def refresh_hugepages(result: ProbeResult, paths: ProbePaths | None = None) -> ProbeResult:
    """The cached probe with its fast-changing part, the hugepage pool counts, read again.

    Only the counts: the mount table and the default size change when an administrator acts,
    and are read again with the rest of the probe (at a re-probe, SIGHUP or POST /v1/refresh).
    """
    if result.source != "live":
        return result  # a replayed profile describes another host: nothing here to re-read
    paths = paths or ProbePaths()
    try:
        pools = read_hugepage_pools(paths.sys)
    except FileNotFoundError:
        pools = ()  # as probe_hugepages: no hugetlb support, no pools
    except (OSError, ValueError) as exc:
        # Keep the last counts read and say why they are not fresh.
        error = "; ".join(filter(None, (result.hugepages.error, f"hugepage pools re-read: {exc}")))
        return replace(result, hugepages=replace(result.hugepages, error=error))
    if pools == result.hugepages.pools:
        return result
    return replace(result, hugepages=replace(result.hugepages, pools=pools))

"""Synthetic host probes for the policy's table tests, built from the kernel's own tables.

The SMMU tables are written out from the reference (kvm-ppc-facts.md §5), not computed by
kvmppc: §5.1 for KVM-HV (any POWER7/8/9 host, hash or radix, since Linux 4.15), §5.3 for
KVM-PR as a probe sees it (no vCPU yet: 4K and 16M only, no 1T segments).
"""

from __future__ import annotations

from dataclasses import replace

from kvmppc.model import (
    VM_TYPES,
    HostInfo,
    HugepageInfo,
    HugepagePool,
    HugetlbfsMount,
    KvmInfo,
    PageSize,
    ProbeResult,
    SegmentPageSizes,
    SmmuInfo,
    SmmuSource,
    VmTypeInfo,
)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def seg(shift: int, slb: int, *pages: tuple[int, int]) -> SegmentPageSizes:
    return SegmentPageSizes(shift, slb, tuple(PageSize(s, e) for s, e in pages))


# §5.1: kvm_vm_ioctl_get_smmu_info_hv, flags REAL|1T (|NO_HASH when nested), SLB 32.
HV_SEGMENTS = (
    seg(12, 0x000, (12, 0x0), (24, 0x38)),
    seg(16, 0x110, (16, 0x1), (24, 0x8)),
    seg(24, 0x100, (24, 0x0)),
)
HV_SMMU = SmmuInfo(flags=0x3, slb_size=32, data_keys=32, instr_keys=32, segments=HV_SEGMENTS)
HV_NESTED_SMMU = SmmuInfo(flags=0x7, slb_size=32, data_keys=32, instr_keys=32,
                          segments=HV_SEGMENTS)
# §5.3: kvm_vm_ioctl_get_smmu_info_pr before any vCPU exists.
PR_SMMU_NO_VCPU = SmmuInfo(
    flags=0x0, slb_size=64, data_keys=0, instr_keys=0,
    segments=(seg(12, 0x000, (12, 0x0)), seg(24, 0x100, (24, 0x0))),
)
# §3.3: QEMU 3.0's guess on a kernel without KVM_CAP_PPC_GET_SMMU_INFO.
HV_GUESSED_SMMU = SmmuInfo(
    flags=0x3, slb_size=32, data_keys=0, instr_keys=0,
    segments=(seg(12, 0, (12, 0)), seg(16, 0x110, (16, 1)), seg(24, 0x100, (24, 0))),
    source=SmmuSource.GUESSED,
)

POWER9_PVR = 0x004E1200  # POWER9 DD2.0: QEMU 7.2's power9 model, so KVM-HV takes -cpu power9
POWER8_PVR = 0x004D0200


def vm_type(name: str, *, smmu: SmmuInfo | None, is_pr: bool, radix: bool = False,
            hash_v3: bool = False, smmu_error: str | None = None,
            extra_caps: dict[str, int] | None = None) -> VmTypeInfo:
    caps = {
        "PPC_GET_SMMU_INFO": 1,
        "PPC_GET_PVINFO": int(is_pr),
        "PPC_MMU_RADIX": int(radix),
        "PPC_MMU_HASH_V3": int(hash_v3),
        **(extra_caps or {}),
    }
    number = VM_TYPES[name]
    return VmTypeInfo(name, number, available=True, is_pr=is_pr, caps=caps, smmu=smmu,
                      smmu_error=smmu_error)


def host(
    *,
    base_page_size: int = 64 * KiB,
    mmu: str = "radix",
    pvr: int = POWER9_PVR,
    mounts: tuple[tuple[str, int], ...] = (),
    pools: tuple[tuple[int, int, int], ...] = (),
    hv: VmTypeInfo | None = None,
    pr: VmTypeInfo | None = None,
    default: VmTypeInfo | None = None,
    qemu_version: str | None = "7.2.22",
) -> ProbeResult:
    """A POWER host.  ``pools`` are (page size, total, free); ``mounts`` (path, page size).
    ``qemu_version``: the installed QEMU the probe recorded (Debian 12's 7.2 unless told), the
    release kvmppc answers for by default."""
    # A hugetlbfs mount of a page size implies the kernel has that pool; where the test names
    # no pool, give it room for any guest here (QEMU reserves a backend's pages when it maps
    # it: softmmu/physmem.c file_ram_alloc, mm/hugetlb.c hugetlb_reserve_pages).
    named = {size for size, _total, _free in pools}
    pools = pools + tuple((size, 4096, 4096) for size in sorted({s for _p, s in mounts})
                          if size not in named)
    vm_types: dict[str, VmTypeInfo] = {}
    if default is None:
        default = hv or pr
    for name, vm in (("default", default), ("hv", hv), ("pr", pr)):
        if vm is None:
            vm_types[name] = VmTypeInfo(name, VM_TYPES[name],
                                        available=False, error="Invalid argument")
        else:
            vm_types[name] = replace(vm, name=name, vm_type=VM_TYPES[name])
    return ProbeResult(
        host=HostInfo(arch="ppc64le", kernel_release="6.1.0", cpu_model="POWER",
                      pvr=pvr, platform="PowerNV", mmu=mmu, base_page_size=base_page_size,
                      qemu_version=qemu_version),
        hugepages=HugepageInfo(
            default_page_size=pools[0][0] if pools else None,
            pools=tuple(HugepagePool(size, total, free, 0, 0) for size, total, free in pools),
            mounts=tuple(HugetlbfsMount(path, size, "statfs") for path, size in mounts),
        ),
        kvm=KvmInfo(device="/dev/kvm", present=True, powerpc=True, api_version=12,
                    modules=("kvm", "kvm_hv"), vm_types=vm_types),
        probed_at=0.0,
        duration_s=0.0,
        source="test",
    )


def hv_host(*, radix: bool = True, hash_v3: bool = True, nested: bool = False,
            **kwargs: object) -> ProbeResult:
    """KVM-HV (§5.1) on a POWER9: radix host with HPT support unless told otherwise."""
    smmu = HV_NESTED_SMMU if nested else HV_SMMU
    hv = vm_type("hv", smmu=smmu, is_pr=False, radix=radix, hash_v3=hash_v3)
    return host(hv=hv, mmu="radix" if radix else "hash", **kwargs)  # type: ignore[arg-type]


def pr_host(**kwargs: object) -> ProbeResult:
    """KVM-PR (§5.3) on a hash host (PR will not load on a radix POWER9)."""
    pr = vm_type("pr", smmu=PR_SMMU_NO_VCPU, is_pr=True)
    kwargs.setdefault("pvr", POWER8_PVR)
    return host(pr=pr, mmu="hash", **kwargs)  # type: ignore[arg-type]

"""QEMU's KVM-side decisions about a hash guest's MMU, as pure functions of the probe.

* ``kvmppc_hpt_needs_host_contiguous_pages`` (target/ppc/kvm.c): KVM in use and the SMMU
  flags carry ``KVM_PPC_PAGE_SIZES_REAL``.
* ``kvm_check_mmu`` (target/ppc/kvm.c, run at every CPU reset): the filtered model table
  against ``KVM_PPC_GET_SMMU_INFO``, then 64 KiB cache-inhibited pages against the host's base
  page size.
* ``kvmppc_vrma_limit`` with ``spapr_hpt_shift_for_ramsize`` and ``spapr_rma_size``
  (hw/ppc/spapr.c, QEMU 5.0 and later): the RMA must fit the VRMA.
* KVM-PR's answer once vCPU 0 exists (arch/powerpc/kvm/book3s_pr.c
  ``kvm_vm_ioctl_get_smmu_info_pr``): a probe asks before any vCPU exists, QEMU asks after.
"""

from __future__ import annotations

from dataclasses import replace

from kvmppc.model import PAGE_SIZES_MAX_SZ, PageSize, SegmentPageSizes, SmmuFlag, SmmuInfo
from kvmppc.policy.hash64 import SLB_VSID_64K, FilteredTable, to_rows
from kvmppc.policy.problems import ProblemKind, QemuRefusalError

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def needs_host_contiguous_pages(kvm: bool, smmu: SmmuInfo | None) -> bool:
    """``kvmppc_hpt_needs_host_contiguous_pages()``: HV says so with PAGE_SIZES_REAL.

    False under TCG (the stub), false for KVM-PR (never sets the flag).
    """
    return kvm and smmu is not None and bool(smmu.flags & SmmuFlag.PAGE_SIZES_REAL)


def kvm_check_mmu(table: FilteredTable, smmu: SmmuInfo, host_page_size: int) -> None:
    """``kvm_check_mmu(cpu, errp)``: raises :class:`QemuRefusalError` with the first reason KVM
    cannot give the guest this table (kind KVM_MMU), or cannot back its 64 KiB
    cache-inhibited pages (kind CI_PAGES)."""
    mismatch = _kernel_table_mismatch(table, smmu)
    if mismatch is not None:
        raise QemuRefusalError(ProblemKind.KVM_MMU, mismatch)
    if table.ci_large_pages and host_page_size < 0x10000:
        # Cache-inhibited 64K pages map I/O, which gets an ordinary host mapping, so only the
        # host's base page size can back them ("qemu_real_host_page_size() < 0x10000").
        raise QemuRefusalError(ProblemKind.CI_PAGES,
                          "KVM can't supply 64kiB CI pages, which guest expects")


def _kernel_table_mismatch(table: FilteredTable, smmu: SmmuInfo) -> str | None:
    """The first difference between the guest's table and ``KVM_PPC_GET_SMMU_INFO``'s.

    QEMU walks all 8 rows and all 8 entries of each, zero ones included, and looks each up in
    the kernel's (equally zero-padded) arrays: a zero entry matches the kernel's first unused
    slot, so a kernel that filled every slot would fail on "base page shift 0".
    """
    if table.one_t_segments and not smmu.flags & SmmuFlag.ONE_T_SEGMENTS:
        return "KVM does not support 1TiB segments which guest expects"
    if smmu.slb_size < table.slb_size:
        return (
            f"KVM only supports {smmu.slb_size} SLB entries, but guest needs {table.slb_size}"
        )
    kernel_rows = to_rows(smmu.segments)
    for q_shift, q_slb, q_enc in table.rows:
        kernel_row = next((row for row in kernel_rows if row[0] == q_shift), None)
        if kernel_row is None:
            return f"KVM doesn't support for base page shift {q_shift}"
        k_shift, k_slb, k_enc = kernel_row
        if k_slb != q_slb:
            return (
                f"KVM uses SLB encoding {k_slb:#x} for page shift {k_shift},"
                f" but guest expects {q_slb:#x}"
            )
        for page_shift, pte_enc in q_enc:
            kernel_page = next((enc for enc in k_enc if enc[0] == page_shift), None)
            if kernel_page is None:
                return f"KVM doesn't support page shift {page_shift}/{q_shift}"
            if kernel_page[1] != pte_enc:
                return (
                    f"KVM uses PTE encoding {kernel_page[1]:#x} for page shift"
                    f" {page_shift}/{q_shift}, but guest expects {pte_enc:#x}"
                )
    return None


# arch/powerpc/kvm/book3s_pr.c kvmppc_set_pvr_pr(): PVR versions that get
# BOOK3S_HFLAG_MULTI_PGSIZE (POWER6, POWER7, POWER7+, POWER8E, POWER8NVL, POWER8, POWER9,
# HX-C2000).  POWER10 is not in the list.
PR_MULTI_PGSIZE_PVR_VERSIONS = frozenset({0x003E, 0x003F, 0x004A, 0x004B, 0x004C, 0x004D,
                                          0x004E, 0x0066})


def pr_smmu_with_vcpu(smmu: SmmuInfo, guest_pvr: int, host_pvr: int | None = None) -> SmmuInfo:
    """KVM-PR's table as QEMU reads it, after vCPU 0 was created and given ``guest_pvr``.

    The kernel builds it from scratch each time: 4K, then 64K (with 1T segments) only "if the
    CPUs we're emulating support it" — vCPU 0's BOOK3S_HFLAG_MULTI_PGSIZE — then 16M.  A
    probe creates no vCPU, so it sees the minimum; QEMU's ``kvm_check_mmu`` runs with vCPUs
    present.  book3s_pr.c kvmppc_core_vcpu_create_pr gives a new vCPU the host's PVR (on a
    host with 1T segments, POWER7 and later) and kvmppc_set_pvr_pr sets MULTI_PGSIZE for a
    POWER6+ PVR but never clears it, so QEMU's KVM_SET_SREGS with an older model's PVR (970)
    keeps the 64K row the host's PVR gave (a 970 guest started at 2 GiB under KVM-PR on
    POWER8, where the 4K-only table's VRMA would have been 512 MiB).
    """
    segments = [seg for seg in smmu.segments if seg.page_shift != 16]
    flags = smmu.flags & ~SmmuFlag.ONE_T_SEGMENTS
    if any(pvr is not None and (pvr >> 16) in PR_MULTI_PGSIZE_PVR_VERSIONS
           for pvr in (guest_pvr, host_pvr)):
        flags |= SmmuFlag.ONE_T_SEGMENTS
        row = SegmentPageSizes(16, SLB_VSID_64K, (PageSize(16, 1),))
        index = next((i for i, seg in enumerate(segments) if seg.page_shift > 16), len(segments))
        segments.insert(index, row)
    return replace(smmu, flags=int(flags), segments=tuple(segments[:PAGE_SIZES_MAX_SZ]))


def _pow2ceil(value: int) -> int:
    return 1 << (value - 1).bit_length() if value > 1 else 1


def hpt_shift_for_ramsize(ram_size: int) -> int:
    """``spapr_hpt_shift_for_ramsize``: an HPT of 1/128 of RAM, within 2**18 .. 2**46."""
    shift = (_pow2ceil(ram_size).bit_length() - 1) - 7
    return min(max(shift, 18), 46)


def rma_size(ram_size: int, rma_limit: int | None) -> int:
    """``spapr_rma_size`` without NUMA: RAM, at most 1 TiB, at most the machine's limit."""
    size = min(ram_size, 1 * TiB)
    if rma_limit is not None:
        size = min(size, rma_limit)
    return size


def vrma_limit(smmu: SmmuInfo, min_ram_page_size: int, htab_shift: int) -> int:
    """``kvmppc_vrma_limit``: the largest KVM base page size that fits the RAM backing page
    size (``qemu_minrampagesize()``), giving ``1 << (best + htab_shift - 7)``."""
    best = 0
    for seg in smmu.segments:
        if seg.page_shift and best < seg.page_shift and (1 << seg.page_shift) <= min_ram_page_size:
            best = seg.page_shift
    return 1 << (best + htab_shift - 7)


def vrma_error(smmu: SmmuInfo, min_ram_page_size: int, ram_size: int,
               rma_limit: int | None) -> str | None:
    """hw/ppc/spapr.c ``spapr_setup_hpt``'s check under KVM, with its message (sic: no ')')."""
    rma = rma_size(ram_size, rma_limit)
    limit = vrma_limit(smmu, min_ram_page_size, hpt_shift_for_ramsize(ram_size))
    if limit < rma:
        return f"Unable to create {rma // MiB}MiB RMA (VRMA only allows {limit // MiB}MiB"
    return None

"""Guest RAM under KVM: memory backends, -m slots/maxmem, hugepages against RAM, SYNC_MMU,
and the PowerNV profile derived from the nested one.

Expected values are worked out by hand from QEMU 7.2's source (the v7.2.0 tree: backends/
hostmem*.c, softmmu/physmem.c, softmmu/vl.c, hw/core/machine.c, hw/core/numa.c,
hw/ppc/spapr.c, util/memfd.c) and Linux 6.1's (arch/powerpc/kvm/), or quoted from real runs
(issue 10's, and QEMU 7.2 on this host for the words QEMU prints under TCG too); each test says
which.  What QEMU decides under TCG is checked against the real binaries in
tests/test_policy_memory_qemu.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_hosts import POWER8_PVR, GiB, KiB, hv_host

from kvmppc.cli import main
from kvmppc.errors import UsageError
from kvmppc.inputs import translate_argv
from kvmppc.model import ProbeResult
from kvmppc.policy import CheckRequest, CheckResult, ProblemKind, check
from kvmppc.policy.memory import MemoryBackend, memfd_flags
from kvmppc.profiles import describe_shipped, load_profile
from kvmppc.render import qemu_args

MiB = 1024 * KiB
K = ProblemKind

# softmmu/physmem.c qemu_ram_alloc_from_fd, QEMU 7.2: kvm_enabled() && !kvm_has_sync_mmu().
SYNC_MMU = "host lacks kvm mmu notifiers, -mem-path unsupported"
# softmmu/physmem.c file_ram_alloc, mmap of hugetlbfs with reserve=on: ENOMEM (QEMU 7.2 on this
# host printed exactly this for a 2 MiB memfd and a 2 MiB file backend with an empty pool).
NO_MEMORY = "unable to map backing store for guest RAM: Cannot allocate memory"


def cant(guest_kib: int, host_kib: int) -> str:
    """hw/ppc/spapr_caps.c spapr_check_pagesize."""
    return (f"Can't support {guest_kib} kiB guest pages with {host_kib} kiB host pages with"
            " this KVM implementation")


# A POWER9 KVM-HV host (64 KiB pages) with 2 MiB and 1 GiB hugetlbfs, 512 and 8 free pages.
HV64 = hv_host(mounts=(("/dev/hugepages", 2 * MiB), ("/mnt/huge1G", GiB)),
               pools=((2 * MiB, 512, 512), (GiB, 8, 8)))


def run_argv(probe: ProbeResult, *argv: str, qemu_version: str = "7.2") -> CheckResult:
    translation = translate_argv(["kvm", *argv])
    assert translation.request is not None, translation.cannot_judge
    from dataclasses import replace  # noqa: PLC0415 - one use

    return check(probe, replace(translation.request, qemu_version=qemu_version))


def messages(result: CheckResult) -> list[str]:
    return [p.message for p in result.errors]


# --- qemu_minrampagesize: the mapped backends only ------------------------------------------


def test_min_page_size_over_the_numa_nodes_backends() -> None:
    """softmmu/physmem.c find_min_backend_pagesize: the smallest page of the mapped backends
    (a 1 GiB and a 2 MiB node: 2 MiB cannot back a 16M cap)."""
    result = run_argv(HV64, "-M", "pseries,cap-hpt-max-page-size=16M", "-m", "2G",
                      "-object", "memory-backend-file,id=a,size=1G,mem-path=/mnt/huge1G",
                      "-object", "memory-backend-file,id=b,size=1G,mem-path=/dev/hugepages",
                      "-numa", "node,memdev=a", "-numa", "node,memdev=b")
    assert messages(result) == [cant(16384, 2048)]
    assert result.backing_page_size == 2 * MiB


def test_unmapped_backend_does_not_count() -> None:
    """host_memory_backend_is_mapped: a backend created but not used as RAM (64 KiB pages
    here) is skipped by the walk; both nodes on 1 GiB pages back a 16M cap."""
    result = run_argv(HV64, "-M", "pseries,cap-hpt-max-page-size=16M", "-m", "2G",
                      "-object", "memory-backend-file,id=a,size=1G,mem-path=/mnt/huge1G",
                      "-object", "memory-backend-file,id=b,size=1G,mem-path=/mnt/huge1G",
                      "-object", "memory-backend-ram,id=spare,size=256M",
                      "-numa", "node,memdev=a", "-numa", "node,memdev=b")
    assert messages(result) == []
    assert result.backing_page_size == GiB


def test_memfd_hugepages_count_with_their_page_size() -> None:
    """backends/hostmem.c host_memory_backend_pagesize is qemu_ram_pagesize in 7.2, so a memfd
    with hugetlb=on counts with its hugepage size (hugetlbsize, else the kernel's default:
    2 MiB on this host)."""
    cap = ("-M", "pseries,cap-hpt-max-page-size=16M,memory-backend=m")
    assert messages(run_argv(HV64, *cap, "-object",
                             "memory-backend-memfd,id=m,size=1G,hugetlb=on,hugetlbsize=1G")) == []
    assert messages(run_argv(HV64, *cap, "-object",
                             "memory-backend-memfd,id=m,size=1G,hugetlb=on")) == [
        cant(16384, 2048)]
    # without hugetlb a memfd is shmem: base pages
    assert messages(run_argv(HV64, *cap, "-object", "memory-backend-memfd,id=m,size=1G")) == [
        cant(16384, 64)]


def test_memfd_hugepage_size_the_kernel_lacks() -> None:
    """util/memfd.c qemu_memfd_create: memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING |
    MFD_HUGETLB | 24 << MFD_HUGE_SHIFT) fails with ENODEV without a 16 MiB pool (QEMU 7.2 on
    this x86 host printed these words for 16M)."""
    assert memfd_flags(True, 16 * MiB) == 0x60000007
    result = run_argv(HV64, "-object",
                      "memory-backend-memfd,id=m,size=1G,hugetlb=on,hugetlbsize=16M",
                      "-M", "pseries,memory-backend=m")
    assert messages(result)[0] == ("failed to create memfd with flags 0x60000007: No such"
                                   " device")


# --- hugepages larger than a backend -----------------------------------------------------------


def test_hugepage_larger_than_ram_under_kvm() -> None:
    """Issue 10's real run: "memory size 0x20000000 must be equal to or larger than page size
    0x40000000" (-m 512M on 1 GiB hugetlbfs); the memfd equivalent is ftruncate's EINVAL
    (fs/hugetlbfs/inode.c hugetlbfs_setattr), "failed to resize memfd to 536870912"."""
    result = run_argv(HV64, "-m", "512M", "-mem-path", "/mnt/huge1G")
    assert messages(result) == [
        "memory size 0x20000000 must be equal to or larger than page size 0x40000000"]
    assert result.errors[0].kind == K.BACKEND_PAGE
    result = run_argv(HV64, "-object",
                      "memory-backend-memfd,id=m,size=512M,hugetlb=on,hugetlbsize=1G",
                      "-M", "pseries,memory-backend=m")
    assert messages(result)[0] == "failed to resize memfd to 536870912: Invalid argument"
    # What to change: whole hugepages (1 GiB of RAM), checked again.
    fix = next(s for s in check(HV64, run_argv(HV64, "-m", "512M", "-mem-path",
                                               "/mnt/huge1G").request).advice.suggestions
               if s.change.startswith("give each hugepage backend whole 1 GiB pages"))
    assert fix.ok and fix.request.memory == "1G"


def test_backend_errors_come_before_the_cpu_and_mem_path_after() -> None:
    """softmmu/vl.c qemu_init: qemu_create_late_backends, then -cpu; -mem-path's backend is
    made at board init (hw/core/machine.c create_default_memdev), after -cpu (the order QEMU
    7.2 shows under TCG for these words)."""
    backend = run_argv(HV64, "-m", "1G", "-object",
                       "memory-backend-file,id=m,size=1M,mem-path=/dev/hugepages", "-cpu", "bogus")
    assert messages(backend)[0] == (
        "memory size 0x100000 must be equal to or larger than page size 0x200000")
    mem_path = run_argv(HV64, "-m", "1M", "-mem-path", "/dev/hugepages", "-cpu", "bogus")
    assert messages(mem_path) == ["unable to find CPU model 'bogus'"]


# --- KVM-PR without MMU notifiers ------------------------------------------------------------


PR = load_profile("power8-hash-pr")  # captured: KVM_CAP_SYNC_MMU 0 on the PR VM


@pytest.mark.parametrize("backend", [
    "memory-backend-file,id=m,size=1G,mem-path=/srv/guest",
    "memory-backend-memfd,id=m,size=1G",
])
def test_pr_without_sync_mmu_refuses_file_and_memfd_ram(backend: str) -> None:
    """qemu_ram_alloc_from_fd refuses both (memfd RAM goes through it too), at -object time,
    before -cpu is even parsed; Linux 6.1 arch/powerpc/kvm/powerpc.c: KVM_CAP_SYNC_MMU is
    hv_enabled, so 0 under PR."""
    assert PR.vm_type("pr").caps["SYNC_MMU"] == 0
    result = run_argv(PR, "-M", "pseries,memory-backend=m", "-object", backend, "-cpu", "bogus")
    assert messages(result)[0] == SYNC_MMU
    assert result.errors[0].kind == K.SYNC_MMU
    result = run_argv(PR, "-M", "pseries,memory-backend=m", "-object", backend, "-cpu", "POWER8")
    assert messages(result)[0] == SYNC_MMU
    advice = result.advice
    assert advice is not None
    fix = next(s for s in advice.suggestions if "anonymous memory" in s.change)
    assert K.SYNC_MMU not in fix.result.error_kinds
    assert all(b.qom_type == "memory-backend-ram" for b in fix.request.backends)


def test_pr_without_sync_mmu_refuses_mem_path_but_not_anonymous_ram() -> None:
    mem_path = run_argv(PR, "-cpu", "POWER8", "-m", "1G", "-mem-path", "/srv")
    assert SYNC_MMU in messages(mem_path)
    ram = run_argv(PR, "-cpu", "POWER8", "-m", "1G", "-object",
                   "memory-backend-ram,id=m,size=1G", "-M", "pseries,memory-backend=m")
    assert SYNC_MMU not in messages(ram)


# --- hugepage pools ---------------------------------------------------------------------------


def test_pool_reservations_add_up_over_backends() -> None:
    """mm/hugetlb.c hugetlb_reserve_pages at each mmap: 8 free 1 GiB pages hold one 5 GiB
    node but not a second (QEMU's ENOMEM words from its run on this host)."""
    result = run_argv(HV64, "-m", "10G",
                      "-object", "memory-backend-file,id=a,size=5G,mem-path=/mnt/huge1G",
                      "-object", "memory-backend-file,id=b,size=5G,mem-path=/mnt/huge1G",
                      "-numa", "node,memdev=a", "-numa", "node,memdev=b")
    assert messages(result) == [NO_MEMORY]
    assert result.errors[0].kind == K.HUGEPAGE_POOL
    fix = next(s for s in check(HV64, result.request).advice.suggestions
               if s.change.startswith("add 1 GiB hugepages to the pool"))
    assert fix.ok
    assert fix.steps == ("the 1 GiB pool has 8 free pages, the guest's 10 GiB needs 10: echo 10"
                         " > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",)


# --- -m slots and maxmem ----------------------------------------------------------------------


def test_hotplug_slots_under_kvm() -> None:
    """hw/ppc/spapr.c spapr_machine_init: half of KVM's memslots (KVM_USER_MEM_SLOTS 512 on
    book3s, arch/powerpc/include/asm/kvm_host.h), so 256 under KVM (32 under TCG)."""
    assert messages(run_argv(HV64, "-m", "1G,slots=256,maxmem=2G")) == []
    result = run_argv(HV64, "-m", "1G,slots=257,maxmem=2G")
    assert messages(result) == ["Specified number of memory slots 257 exceeds max supported 256"]
    fix = next(s for s in result.advice.suggestions if s.change.startswith("lower slots"))
    assert fix.ok and fix.request.slots == "256"


def test_maxmem_refusals_and_their_fix() -> None:
    """hw/core/machine.c machine_set_mem and spapr_validate_node_memory (sic: the maxmem
    message prints the RAM size), QEMU 7.2's words on this host."""
    result = run_argv(HV64, "-m", "1G,maxmem=1100M")
    assert messages(result) == ["Maximum memory size 0x40000000 is not aligned to 256 MiB"]
    fix = next(s for s in result.advice.suggestions if s.change.startswith("give maxmem="))
    assert fix.ok and fix.request.maxmem == "1280M"
    assert messages(run_argv(HV64, "-m", "1G,slots=2")) == ["slots specified but no max-size"]


# A POWER8 KVM-HV host on 4 KiB pages (hash MMU), without KVM_CAP_SPAPR_RESIZE_HPT.
P8_HV4 = hv_host(radix=False, hash_v3=False, pvr=POWER8_PVR, base_page_size=4 * KiB)


def test_maxmem_sizes_the_hpt_when_resizing_is_off() -> None:
    """hw/ppc/spapr.c spapr_setup_hpt: without HPT resizing (kvmppc_check_papr_resize_hpt:
    no KVM_CAP_SPAPR_RESIZE_HPT on HV) the HPT is sized for maxmem: 1/128 of 8 GiB is 2**26,
    and kvmppc_vrma_limit on 4 KiB backing gives 1 << (12 + 26 - 7) = 2 GiB, enough for the
    2 GiB RMA; for 2 GiB of RAM alone it is 1 << (12 + 24 - 7) = 512 MiB."""
    base = ("-cpu", "POWER8", "-M", "pseries,cap-hpt-max-page-size=4k")
    assert messages(run_argv(P8_HV4, *base, "-m", "2G")) == [
        "Unable to create 2048MiB RMA (VRMA only allows 512MiB"]
    assert messages(run_argv(P8_HV4, *base, "-m", "2G,maxmem=4G")) == [
        "Unable to create 2048MiB RMA (VRMA only allows 1024MiB"]
    assert messages(run_argv(P8_HV4, *base, "-m", "2G,maxmem=8G")) == []
    resizing = hv_host(radix=False, hash_v3=False, pvr=POWER8_PVR, base_page_size=4 * KiB)
    for vm in resizing.kvm.vm_types.values():
        vm.caps["SPAPR_RESIZE_HPT"] = 1
    assert messages(run_argv(resizing, *base, "-m", "2G,maxmem=8G")) == [
        "Unable to create 2048MiB RMA (VRMA only allows 512MiB"]


def test_rma_fits_node_0_rounded_down_to_a_power_of_two() -> None:
    """hw/ppc/spapr.c spapr_rma_size: the RMA is at most node 0, and spapr_node0_size rounds
    the node down to a power of two: 768 MiB gives a 512 MiB RMA; the HPT for 1 GiB is 2**23
    and on 4 KiB backing kvmppc_vrma_limit gives 1 << (12 + 23 - 7) = 256 MiB."""
    result = run_argv(P8_HV4, "-cpu", "POWER8", "-M", "pseries,cap-hpt-max-page-size=4k",
                      "-m", "1G", "-object", "memory-backend-ram,id=a,size=768M",
                      "-object", "memory-backend-ram,id=b,size=256M",
                      "-numa", "node,memdev=a", "-numa", "node,memdev=b")
    assert messages(result) == ["Unable to create 512MiB RMA (VRMA only allows 256MiB"]


# --- the request ------------------------------------------------------------------------------


def test_backends_as_query_parameters_round_trip() -> None:
    request = CheckRequest.from_params({
        "backend": ["memory-backend-file,size=1G,mem-path=/dev/hugepages",
                    "memory-backend-memfd,size=1G,hugetlb=on,hugetlbsize=2M"],
        "memory": "2G", "maxmem": "4G", "slots": "2"})
    assert [(b.qom_type, b.use) for b in request.backends] == [
        ("memory-backend-file", "numa"), ("memory-backend-memfd", "numa")]
    assert CheckRequest.from_params(request.to_params()) == request
    one = CheckRequest.from_params({"backend": "memory-backend-ram,size=1G"})
    assert one.backends[0].use == "ram"  # a lone backend is the machine's RAM


@pytest.mark.parametrize(("spec", "words"), [
    ("memory-backend-file,size=1G", "needs mem-path"),
    ("memory-backend-ram", "'size' is missing"),
    ("memory-backend-ram,size=1G,colour=red", "unknown key(s) colour"),
    ("memory-backend-file,size=1G,mem-path=/x,hugetlb=on", "memory-backend-memfd's"),
    ("memory-backend-epc,size=1G", "give one of"),
    ("memory-backend-ram,size=lots", "expects a size"),
])
def test_bad_backend_specs(spec: str, words: str) -> None:
    with pytest.raises(UsageError, match=None) as raised:
        MemoryBackend.from_spec(spec)
    assert words in str(raised.value)


def test_check_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--host-profile", "power8-hash-pr", "--qemu-version", "7.2",
                 "--cpu", "power8", "--memory", "1G", "--backend",
                 "memory-backend-file,size=1G,mem-path=/srv", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"][0] == SYNC_MMU
    assert main(["check", "--host-profile", "power9-radix-hv", "--qemu-version", "7.2",
                 "--memory", "1G", "--slots", "2", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == ["slots specified but no max-size"]


# --- PowerNV, derived from the nested profile ----------------------------------------------------


NESTED = load_profile("power9-radix-hv")
POWERNV = load_profile("power9-radix-hv-powernv")


def test_powernv_profile_is_marked_derived() -> None:
    assert NESTED.provenance is None  # captured before the field: loads as it was
    assert POWERNV.provenance is not None and POWERNV.provenance.derived
    assert POWERNV.provenance.derived_from == "power9-radix-hv"
    assert ("power9-radix-hv-powernv", next(
        text for name, text in describe_shipped() if name == "power9-radix-hv-powernv")
            )[1].endswith("DERIVED from power9-radix-hv (kernel source, not captured)")
    result = check(POWERNV, CheckRequest(qemu_version="7.2"))
    assert any(note.startswith("host profile power9-radix-hv-powernv is DERIVED")
               for note in result.notes)


def test_powernv_smmu_has_no_no_hash_flag() -> None:
    """arch/powerpc/kvm/book3s_hv.c kvm_vm_ioctl_get_smmu_info_hv (6.1): PAGE_SIZES_REAL |
    1T_SEGMENTS, plus NO_HASH only if kvmhv_on_pseries(); the same three segments."""
    for vm_type in ("default", "hv"):
        nested, powernv = NESTED.vm_type(vm_type).smmu, POWERNV.vm_type(vm_type).smmu
        assert (nested.flags, powernv.flags) == (0x7, 0x3)
        assert nested.segments == powernv.segments


def test_hash_guests_run_on_powernv_not_nested() -> None:
    """spapr_check_mmu_mode with KVM_CAP_PPC_MMU_HASH_V3 (powerpc.c: ARCH_300 and not on
    pseries): a POWER9 guest that picks hash at CAS is refused nested, allowed on PowerNV."""
    nested = check(NESTED, CheckRequest(qemu_version="7.2"))
    powernv = check(POWERNV, CheckRequest(qemu_version="7.2"))
    assert nested.ok and powernv.ok
    assert (nested.mmu.hash, powernv.mmu.hash) == ("refused", "available")
    hash_refused = "Guest requested unavailable MMU mode (hash)."
    assert [w.message for w in nested.warnings if w.kind == K.MMU_MODE] == [hash_refused]
    assert [w.message for w in powernv.warnings if w.kind == K.MMU_MODE] == []


def test_htm_on_powernv_not_nested() -> None:
    """pseries-2.11 turns cap-htm on; KVM_CAP_PPC_HTM is 0 nested (captured) and 1 on a POWER9
    DD2.2 PowerNV host (powerpc.c: hv_enabled && CPU_FTR_P9_TM_HV_ASSIST)."""
    refusal = "KVM implementation does not support Transactional Memory"
    assert refusal in messages(check(NESTED, CheckRequest(machine="pseries-2.11",
                                                          qemu_version="7.2")))
    assert refusal not in messages(check(POWERNV, CheckRequest(machine="pseries-2.11",
                                                               qemu_version="7.2")))


def test_other_profiles_are_captured() -> None:
    for name, text in describe_shipped():
        if name != "power9-radix-hv-powernv":
            assert text.endswith(": captured"), name


# --- anonymous RAM the kernel will not commit ------------------------------------------------


def _with_memory(probe: ProbeResult, **fields: int) -> ProbeResult:
    from dataclasses import replace  # noqa: PLC0415 - one use

    from kvmppc.model import MemoryInfo  # noqa: PLC0415 - one use

    return replace(probe, host=replace(probe.host, memory=MemoryInfo(**fields)))


# A 4 GiB guest kernel (the harness's L1): MemTotal a little under 4 GiB, no swap.
L1 = _with_memory(HV64, mem_total=(4 << 30) - (180 << 20), swap_total=0, overcommit_memory=0)


def test_overcommit_guess_refuses_more_than_ram_and_swap() -> None:
    """The harness's real runs (HV and PR L1s of 4 GiB): -m 4G gives "cannot set up guest
    memory 'ppc_spapr.ram': Cannot allocate memory" (softmmu/physmem.c ram_block_add), the
    kernel's OVERCOMMIT_GUESS (mm/util.c __vm_enough_memory: pages > totalram + swap), at board
    init, before the page-size checks; a named backend is named by its id."""
    result = run_argv(L1, "-M", "pseries,cap-hpt-max-page-size=16M", "-m", "4G")
    assert messages(result)[0] == ("cannot set up guest memory 'ppc_spapr.ram': Cannot allocate"
                                   " memory")
    assert result.errors[0].kind == K.OVERCOMMIT
    assert messages(run_argv(L1, "-m", "3G")) == []
    named = run_argv(L1, "-object", "memory-backend-ram,id=m0,size=4G", "-object",
                     "memory-backend-ram,id=m1,size=1G", "-M", "pseries,memory-backend=m0")
    assert messages(named) == ["cannot set up guest memory 'm0': Cannot allocate memory"]
    # each mapping is weighed alone in mode 0: two 3 GiB nodes pass
    assert messages(run_argv(L1, "-m", "6G", "-object", "memory-backend-ram,id=a,size=3G",
                             "-object", "memory-backend-ram,id=b,size=3G", "-numa",
                             "node,memdev=a", "-numa", "node,memdev=b")) == []
    # RAM and swap: 4096 - 180 = 3916 MiB; the largest multiple of 256 MiB in it is 3840 MiB.
    fixes = {s.change.split(" (")[0]: s for s in result.advice.suggestions}
    # (the 16M cap still needs hugepages: the change lifts the RAM refusal, not that one)
    assert K.OVERCOMMIT not in fixes["give the guest at most 3840M of RAM"].result.error_kinds
    assert fixes["let the kernel overcommit"].steps == ("sysctl vm.overcommit_memory=1",)


def test_overcommit_modes_always_and_never() -> None:
    """Mode 1 (OVERCOMMIT_ALWAYS) commits anything; mode 2 (NEVER) sums every commitment
    against CommitLimit (mm/util.c __vm_enough_memory)."""
    always = _with_memory(HV64, mem_total=1 << 30, swap_total=0, overcommit_memory=1)
    assert messages(run_argv(always, "-m", "64G")) == []
    never = _with_memory(HV64, mem_total=8 << 30, swap_total=0, overcommit_memory=2,
                         commit_limit=6 << 30, committed_as=1 << 30)
    assert messages(run_argv(never, "-m", "4G")) == []
    result = run_argv(never, "-m", "6G", "-object", "memory-backend-ram,id=a,size=3G",
                      "-object", "memory-backend-ram,id=b,size=3G", "-numa", "node,memdev=a",
                      "-numa", "node,memdev=b")
    assert messages(result) == ["cannot set up guest memory 'b': Cannot allocate memory"]


def test_probe_reads_meminfo_and_the_overcommit_mode(tmp_path: Path) -> None:
    from kvmppc.probe import ProbePaths, probe_memory  # noqa: PLC0415 - one use

    (tmp_path / "sys/vm").mkdir(parents=True)
    (tmp_path / "sys/vm/overcommit_memory").write_text("0\n")
    (tmp_path / "meminfo").write_text(
        "MemTotal:        4009600 kB\nMemFree:          100 kB\nSwapTotal:             0 kB\n"
        "CommitLimit:     2004800 kB\nCommitted_AS:     512000 kB\n")
    info = probe_memory(ProbePaths(proc=str(tmp_path)))
    assert (info.mem_total, info.swap_total, info.overcommit_memory, info.commit_limit,
            info.committed_as) == (4009600 * 1024, 0, 0, 2004800 * 1024, 512000 * 1024)


def test_advice_args_keep_the_caps_beside_backends() -> None:
    """The suggestion QEMU is given again (kvm_oracle runs it) keeps every -machine property:
    on KVM-PR, pseries-7.2 with a RAM backend and cap-fwnmi=off; without the cap QEMU stops
    on FWNMI (what the KVM-PR guest's QEMU printed before render.qemu_args kept it)."""
    probe = load_profile("power8-hash-pr")
    request = CheckRequest(
        machine="pseries-7.2", accel="kvm", qemu_version="7.2", memory="512M",
        caps=("cap-fwnmi=off",), max_page_size="16M",
        backends=(MemoryBackend.from_spec("memory-backend-ram,id=m0,size=512M"),))
    result = check(probe, request)
    fixes = [s for s in result.advice.suggestions if s.ok] if result.advice else []
    assert fixes, result.errors
    machine = qemu_args(fixes[0].request, fixes[0].result)[1]
    assert "cap-fwnmi=off" in machine.split(","), machine

"""Table tests for the KVM-side decisions the differential test cannot reach under TCG.

Expected values come from the reference (kvm-ppc-facts.md): the kernel tables of §5, QEMU's
messages and order of §3, and the user reports of §7, quoted word for word.  Hosts are built
in tests/policy_hosts.py from those tables.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from policy_hosts import (
    HV_GUESSED_SMMU,
    HV_SMMU,
    POWER8_PVR,
    GiB,
    KiB,
    MiB,
    host,
    hv_host,
    pr_host,
    seg,
    vm_type,
)

from kvmppc.errors import UsageError
from kvmppc.model import ProbeResult, SmmuInfo
from kvmppc.policy import (
    Backing,
    CheckRequest,
    QemuRefusalError,
    When,
    check,
    guest_page_sizes,
    resolve_backing,
)
from kvmppc.profiles import load_profile
from kvmppc.render import check_json, page_sizes_json, qemu_args, render_check
from tests.helpers import cant

CI = "KVM can't supply 64kiB CI pages, which guest expects"


def errors(probe, **request):  # type: ignore[no-untyped-def]
    return [p.message for p in check(probe, CheckRequest(**request)).errors]


# --- KVM-HV, 64 KiB host (Debian ppc64el, RHEL) ----------------------------------------------

HV64 = hv_host(
    base_page_size=64 * KiB,
    mounts=(("/dev/hugepages", 2 * MiB), ("/mnt/huge1G", GiB)),
    pools=((2 * MiB, 512, 512), (GiB, 8, 8)),
)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({}, []),
        ({"max_page_size": "64k"}, []),
        ({"max_page_size": "4k"}, []),
        # §7.4, tp-qemu: "Can't support 16384 kiB guest pages with 64 kiB host pages ..."
        ({"max_page_size": "16M"}, [cant(16384, 64)]),
        # §7.4, tp-libvirt #2146 on a POWER9 radix host: 2 MiB hugetlbfs cannot back 16M.
        ({"max_page_size": "16M", "mem_paths": ("/dev/hugepages",)}, [cant(16384, 2048)]),
        # 2 MiB hugepages allow a 2M cap, whose table is the 64K one.
        ({"max_page_size": "2M", "mem_paths": ("/dev/hugepages",)}, []),
        # §7.4, tp-qemu #2640: 1 GiB pages on POWER9 back a 16M guest.
        # (1 GiB pages need at least 1 GiB of RAM: softmmu/physmem.c file_ram_alloc.)
        ({"max_page_size": "16M", "mem_paths": ("/mnt/huge1G/vm1",), "memory": "1G"}, []),
        # Issue 10, a real run: "memory size 0x20000000 must be equal to or larger than page
        # size 0x40000000" (-m 512M on 1 GiB hugetlbfs), before any page-size check.
        ({"max_page_size": "16M", "mem_paths": ("/mnt/huge1G/vm1",)},
         ["memory size 0x20000000 must be equal to or larger than page size 0x40000000"]),
        # HV's table has no 16G segment (§5.1): the backing passes, kvm_check_mmu does not.
        ({"max_page_size": "16G", "mem_paths": ("/mnt/huge1G",), "memory": "2G"},
         [cant(16 * 1024 * 1024, 1024 * 1024), "KVM doesn't support for base page shift 34"]),
        ({"max_page_size": "1G", "mem_paths": ("/mnt/huge1G",), "memory": "1G"}, []),
        # qemu_minrampagesize(): the smallest backend decides.
        ({"max_page_size": "16M", "mem_paths": ("/mnt/huge1G", "/dev/hugepages")},
         [cant(16384, 2048)]),
        ({"max_page_size": "16M", "mem_paths": ("/srv/images",)}, [cant(16384, 64)]),
    ],
)
def test_hv_on_64k_host(request_: dict, expected: list[str]) -> None:  # type: ignore[type-arg]
    """KVM-HV on a 64 KiB host: the backing check, then kvm_check_mmu (QEMU 7.2's order)."""
    assert errors(HV64, **request_) == expected


def test_hv_needs_host_contiguous_pages() -> None:
    """HV sets KVM_PPC_PAGE_SIZES_REAL: guest pages must be host-contiguous."""
    result = check(HV64, CheckRequest(max_page_size="16M", mem_paths=("/mnt/huge1G",)))
    assert result.needs_host_contiguous_pages
    assert result.backing_page_size == GiB
    assert check_json(result)["backing_page_size"] == GiB


def test_16m_guest_table_on_hv() -> None:
    """A 16M cap gives the guest MPSS 16M pages in 4K and 64K segments plus a 16M segment."""
    result = check(HV64, CheckRequest(max_page_size="16M", mem_paths=("/mnt/huge1G",)))
    assert result.guest is not None
    assert page_sizes_json(result.guest)["cells"] == [
        12, 0x0, 2, 12, 0x0, 24, 0x38,
        16, 0x110, 2, 16, 0x1, 24, 0x8,
        24, 0x100, 1, 24, 0x0,
    ]


# --- KVM-HV, 4 KiB host (Void Linux, Debian's 4K kernel) -------------------------------------

HV4 = hv_host(base_page_size=4 * KiB, mounts=(("/dev/hugepages", 2 * MiB),),
              pools=((2 * MiB, 1024, 1024), (GiB, 0, 0)))
# The same on a POWER8 (hash) host: KVM-HV runs the POWER8 model only where it is the host's
HV4_P8 = hv_host(radix=False, pvr=POWER8_PVR, base_page_size=4 * KiB,
                 mounts=(("/dev/hugepages", 2 * MiB),),
                 pools=((2 * MiB, 1024, 1024), (GiB, 0, 0)))


def test_void_default_machine_on_4k_host() -> None:
    """§7.1: plain pseries on a 4 KiB host — QEMU 7.2 stops at the backing check first; the
    CI-page error (what QEMU 3.x printed first) is next in line."""
    assert errors(HV4) == [cant(64, 4), CI]
    result = check(HV4, CheckRequest())
    assert result.qemu_output == (cant(64, 4),)


def test_void_workaround_4096() -> None:
    """§7.1: cap-hpt-max-page-size=4096 starts, with QEMU's warning."""
    result = check(HV4, CheckRequest(max_page_size="4096"))
    assert result.ok
    assert [w.message for w in result.warnings if w.when == When.STARTUP] == [
        "Many guests require at least 64kiB hpt-max-page-size"
    ]
    assert result.guest is not None and not result.guest.table.ci_large_pages


def test_void_pseries_2_11_default() -> None:
    """§7.1: pseries-2.11 works on a 4 KiB host: its default cap is the backing page size."""
    result = check(HV4, CheckRequest(machine="pseries-2.11", cpu="power9"))
    assert result.ok
    assert result.max_page_shift == 12


def test_void_hugepages_even_on_2_11() -> None:
    """§7.1: with -mem-path hugepages on a 4K host, "KVM can't supply 64kiB CI pages" even on
    pseries-2.11 (its default cap follows the 2 MiB backing)."""
    result = check(HV4, CheckRequest(machine="pseries-2.11", cpu="power9",
                                     mem_paths=("/dev/hugepages",)))
    assert [p.message for p in result.errors] == [CI]
    assert result.max_page_shift == 21


def test_void_hugepages_with_4096_cap() -> None:
    """§7.1: hugepages on a 4K host need cap-hpt-max-page-size=4096 too."""
    assert errors(HV4, max_page_size="4096", mem_paths=("/dev/hugepages",)) == []


def test_vrma_on_4k_host_hash_guest() -> None:
    """§7.2: "Unable to create 2048MiB RMA (VRMA only allows 512MiB" — a hash guest whose HPT
    is set up at reset (POWER8 model) with 4 KiB backing; 2 MiB hugepages cure it."""
    assert errors(HV4_P8, cpu="power8", max_page_size="4096", memory="2G") == [
        "Unable to create 2048MiB RMA (VRMA only allows 512MiB"
    ]
    assert errors(HV4_P8, cpu="power8", max_page_size="4096", memory="2G",
                  mem_paths=("/dev/hugepages",)) == []


def test_vrma_only_at_cas_for_power9_on_radix_host() -> None:
    """With radix KVM and a POWER9 model no HPT exists at reset: the VRMA limit only bites if
    the guest picks hash at CAS, so it is a warning."""
    result = check(HV4, CheckRequest(cpu="power9", max_page_size="4096", memory="2G"))
    assert result.ok
    cas = [w for w in result.warnings if w.when == When.CAS]
    assert [w.message for w in cas] == ["Unable to create 2048MiB RMA (VRMA only allows 512MiB"]


def test_vrma_on_hash_host_power9() -> None:
    """A POWER9 booted hash (no radix cap): the HPT is set up at reset, VRMA applies."""
    probe = hv_host(radix=False, base_page_size=4 * KiB)
    assert errors(probe, cpu="power9", max_page_size="4k", memory="4G") == [
        "Unable to create 4096MiB RMA (VRMA only allows 1024MiB"
    ]


def test_vrma_rma_limit_of_old_machines() -> None:
    """pseries-4.2 and older clamp the RMA to 16 GiB."""
    probe = hv_host(radix=False, base_page_size=4 * KiB)
    # 64 GiB of RAM: HPT shift 29, 4K pages: 2**(12+29-7) = 16 GiB = the clamped RMA: fits.
    assert errors(probe, machine="pseries-4.2", cpu="power9", max_page_size="4k",
                  memory="64G") == []
    assert errors(probe, machine="pseries-5.0", cpu="power9", max_page_size="4k",
                  memory="64G") == ["Unable to create 65536MiB RMA (VRMA only allows 16384MiB"]


# --- KVM-PR (§5.3) ---------------------------------------------------------------------------

PR64 = pr_host(base_page_size=64 * KiB)


def test_pr_never_needs_contiguous_pages() -> None:
    """PR never sets PAGE_SIZES_REAL: no backing check, whatever the backing."""
    result = check(PR64, CheckRequest(cpu="power8", max_page_size="64k"))
    assert result.ok
    assert not result.needs_host_contiguous_pages
    assert result.kvm_kind == "PR"


def test_pr_16m_fails_kvm_check_mmu() -> None:
    """§5.3: PR has no MPSS, so a 16M cap fails on the 16M-in-4K pair."""
    assert errors(PR64, cpu="power8", max_page_size="16M") == [
        "KVM doesn't support page shift 24/12"
    ]


def test_pr_table_with_vcpu() -> None:
    """QEMU checks after creating vCPU 0: a POWER7+ PVR brings the 64K row and 1T segments
    the vCPU-less probe does not show."""
    result = check(PR64, CheckRequest(cpu="power7", max_page_size="64k"))
    assert result.ok
    assert result.smmu is not None
    assert [s.page_shift for s in result.smmu.segments] == [12, 16, 24]
    assert result.smmu.one_t_segments


# Without a 64K row (no MULTI_PGSIZE PVR) KVM-PR's largest base page that fits 64 KiB of
# backing is 4K, and QEMU 5.0+'s VRMA limit, computed from the SMMU table whatever the KVM
# flavour, is then a quarter of the RAM: the HPT set up at reset fails before the CPU checks.
VRMA_512M_4K = "Unable to create 512MiB RMA (VRMA only allows 128MiB"


def test_pr_vcpu_keeps_the_hosts_multi_pgsize() -> None:
    """book3s_pr.c: a new vCPU gets the host's PVR (POWER8 here: MULTI_PGSIZE), and
    kvmppc_set_pvr_pr never clears the flag when QEMU then sets POWER10's PVR (not in its
    list): the 64K row and 1T segments stay, so no 1TiB-segments refusal and a 64K VRMA."""
    assert errors(PR64, cpu="power10", max_page_size="64k") == []
    unknown_host = replace(PR64, host=replace(PR64.host, pvr=None))
    assert errors(unknown_host, cpu="power10", max_page_size="64k") == [
        VRMA_512M_4K, "KVM does not support 1TiB segments which guest expects"
    ]


def test_pr_970_on_a_power8_host() -> None:
    """The 970's basic table (4K, 16M; no 1T) passes kvm_check_mmu under PR even at 16M, and
    its VRMA uses the 64K row vCPU creation left (real QEMU 7.2 under KVM-PR on POWER8
    started -cpu 970 with 2 GiB: tests/powerguest/kvm_cases.toml, cpu-models)."""
    assert errors(PR64, cpu="970", max_page_size="16M") == []
    assert errors(PR64, cpu="970", memory="2G") == []


def test_pr_ci_pages_on_4k_host() -> None:
    """§5.3: the CI check does not depend on REAL, so PR on a 4K host fails it too (after the
    VRMA, which 4K backing also fails)."""
    assert errors(pr_host(base_page_size=4 * KiB), cpu="power8") == [VRMA_512M_4K, CI]


def test_pr_by_kvm_type() -> None:
    """kvm-type=PR picks the PR VM type even when the default is HV."""
    probe = host(hv=vm_type("hv", smmu=HV_SMMU, is_pr=False, radix=False, hash_v3=True),
                 pr=vm_type("pr", smmu=pr_host().vm_type("pr").smmu, is_pr=True),  # type: ignore[union-attr]
                 pvr=POWER8_PVR, mmu="hash")
    assert check(probe, CheckRequest(cpu="power8")).kvm_kind == "HV"
    result = check(probe, CheckRequest(cpu="power8", kvm_type="PR", max_page_size="16M"))
    assert result.kvm_kind == "PR"
    assert [p.message for p in result.errors] == ["KVM doesn't support page shift 24/12"]


def test_missing_vm_type() -> None:
    """kvm-type=PR with no kvm_pr: KVM_CREATE_VM fails with EINVAL."""
    assert errors(HV64, kvm_type="PR") == ["ioctl(KVM_CREATE_VM) failed: 22 Invalid argument"]


# --- MMU modes -------------------------------------------------------------------------------


def test_shipped_nested_profile() -> None:
    """The shipped POWER9 nested-HV profile: radix without HASH_V3."""
    probe = load_profile("power9-radix-hv")
    result = check(probe, CheckRequest())
    assert result.ok
    assert result.mmu.hash == "refused"
    assert [w.message for w in result.warnings if w.when == When.CAS] == [
        "Guest requested unavailable MMU mode (hash)."
    ]
    # A POWER8 model: KVM-HV refuses its PVR when it creates the vCPU (target/ppc/kvm.c)
    result = check(probe, CheckRequest(cpu="power8", qemu_version="7.2"))
    assert result.qemu_output == (
        'Register sync failed... If you\'re using kvm-hv.ko, only "-cpu host" is possible',
        "kvm_init_vcpu: kvm_arch_init_vcpu failed (0): Invalid argument",
    )
    # The host's model in POWER8 mode needs an HPT at reset; nested KVM-HV allocates none
    # (hw/ppc/spapr.c spapr_reallocate_hpt; book3s_hv.c KVM_PPC_ALLOCATE_HTAB -EOPNOTSUPP).
    assert errors(probe, max_cpu_compat="power8", qemu_version="7.2")[0] == (
        "HPT not supported in nested guests")
    assert errors(probe, max_cpu_compat="power9", qemu_version="7.2") == []


def test_radix_guest_note() -> None:
    """POWER9 answers say radix guests are not limited by the cap."""
    result = check(HV64, CheckRequest(cpu="power9"))
    assert any("not limited by cap-hpt-max-page-size" in n for n in result.notes)
    assert result.mmu.radix_limited_by_cap is False


def test_radix_refused_without_radix_cap() -> None:
    """A POWER9 model on a KVM without radix: radix is refused at CAS."""
    result = check(hv_host(radix=False), CheckRequest(cpu="power9"))
    assert result.ok
    assert result.mmu.radix == "refused"


# --- kvm_check_mmu against odd kernels ------------------------------------------------------


def _hv_with(smmu: SmmuInfo, **kwargs: object):  # type: ignore[no-untyped-def]
    # Radix KVM and a POWER9 model: no HPT at reset, so only kvm_check_mmu speaks.
    hv = vm_type("hv", smmu=smmu, is_pr=False, radix=True, hash_v3=True)
    return host(hv=hv, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("smmu", "expected"),
    [
        (SmmuInfo(0x1, 32, 0, 0, HV_SMMU.segments),
         "KVM does not support 1TiB segments which guest expects"),
        (SmmuInfo(0x3, 16, 0, 0, HV_SMMU.segments),
         "KVM only supports 16 SLB entries, but guest needs 32"),
        (SmmuInfo(0x3, 32, 0, 0, (seg(12, 0, (12, 0)), seg(16, 0x100, (16, 1)))),
         "KVM uses SLB encoding 0x100 for page shift 16, but guest expects 0x110"),
        (SmmuInfo(0x3, 32, 0, 0, (seg(12, 0, (12, 0)), seg(16, 0x110, (16, 2)))),
         "KVM uses PTE encoding 0x2 for page shift 16/16, but guest expects 0x1"),
        (SmmuInfo(0x3, 32, 0, 0, (seg(12, 0, (12, 0)),)),
         "KVM doesn't support for base page shift 16"),
        # Every row used: QEMU's zero rows find no unused kernel row (§3.5).
        (SmmuInfo(0x3, 32, 0, 0, (seg(12, 0, (12, 0)), seg(16, 0x110, (16, 1)),
                                  *(seg(17 + i, 0, (17 + i, 0)) for i in range(6)))),
         "KVM doesn't support for base page shift 0"),
        # Every slot of the 4K row used: QEMU's zero entries find no unused slot.
        (SmmuInfo(0x3, 32, 0, 0, (seg(12, 0, *[(12 + i, 0) for i in range(8)]),
                                  seg(16, 0x110, (16, 1)))),
         "KVM doesn't support page shift 0/12"),
    ],
)
def test_kvm_check_mmu_messages(smmu: SmmuInfo, expected: str) -> None:
    """QEMU's kvm_check_mmu messages, word for word (sic "for base page shift")."""
    assert errors(_hv_with(smmu), max_page_size="64k") == [expected]


def test_guessed_smmu_is_refused_by_qemu_7_2() -> None:
    """§3.2: QEMU 3.1 and later have no fallback: a kernel without GET_SMMU_INFO is fatal."""
    assert errors(_hv_with(HV_GUESSED_SMMU)) == [
        "KVM doesn't expose the MMU features it supports"
    ]


def test_smmu_ioctl_failure() -> None:
    """§5.2: 4.11-4.14 kernels on radix POWER9 fail the ioctl with EINVAL."""
    probe = host(hv=vm_type("hv", smmu=None, is_pr=False,
                            smmu_error="KVM_PPC_GET_SMMU_INFO on /dev/kvm (VM type 0): Invalid"
                            " argument. This is not a PowerPC KVM (or ...)"))
    assert errors(probe) == ["KVM failed to provide the MMU features it supports: Invalid"
                             " argument"]


# --- TCG and accelerator choice ---------------------------------------------------------------


def test_tcg_has_no_backing_check() -> None:
    """Under TCG nothing needs host-contiguous pages: 16G on a 4K host starts."""
    result = check(HV4, CheckRequest(accel="tcg", max_page_size="16G"))
    assert result.ok and not result.needs_host_contiguous_pages


def test_accel_default_follows_probe() -> None:
    """No accel: KVM when the probe has a usable PowerPC KVM."""
    assert check(HV64, CheckRequest()).accel == "kvm"


# --- machine defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "mem_paths", "shift"),
    [
        ("pseries", (), 16),
        ("pseries-3.0", (), 16),
        ("pseries-2.12", (), 16),  # ctz64(64 KiB)
        ("pseries-2.12", ("/dev/hugepages",), 21),
        ("pseries-2.12", ("/mnt/huge1G",), 30),
        ("pseries-2.12-sxxm", ("/mnt/huge1G",), 30),
    ],
)
def test_machine_default_cap_under_hv(machine: str, mem_paths: tuple[str, ...],
                                      shift: int) -> None:
    """pseries-3.0+: 64 KiB; 2.12 and older: the smallest RAM backing page size under HV."""
    result = check(HV64, CheckRequest(machine=machine, cpu="power9", mem_paths=mem_paths))
    assert result.max_page_shift == shift


def test_legacy_default_without_contiguity() -> None:
    """pseries-2.12 under PR (or TCG): 16 GiB, "i.e. everything"."""
    assert check(PR64, CheckRequest(machine="pseries-2.12", cpu="970")).max_page_shift == 34


# --- backing resolution ----------------------------------------------------------------------


def test_resolve_backing_longest_mount() -> None:
    """The longest hugetlbfs mount containing the path wins; components, not characters."""
    probe = hv_host(mounts=(("/dev/hugepages", 2 * MiB), ("/dev/hugepages/big", GiB)))
    assert resolve_backing(probe, "/dev/hugepages/big/vm").page_size == GiB
    assert resolve_backing(probe, "/dev/hugepages/vm").page_size == 2 * MiB
    assert resolve_backing(probe, "/dev/hugepages").page_size == 2 * MiB
    other = resolve_backing(probe, "/dev/hugepages2/vm")
    assert other.page_size == 64 * KiB and other.source == "base-page-size"
    assert resolve_backing(probe, "/dev/hugepages/../hugepages/x").mount == "/dev/hugepages"
    with pytest.raises(UsageError):
        resolve_backing(probe, "relative/path")


def test_explicit_backings_override() -> None:
    """The CLI's live statfs result is used as given."""
    live = [Backing("/mnt/x", 16 * MiB, "statfs", "/mnt/x")]
    assert errors(HV64, max_page_size="16M") == [cant(16384, 64)]
    assert check(HV64, CheckRequest(max_page_size="16M"), live).ok


def test_statfs_failure_is_qemus_error() -> None:
    """A mem-path QEMU cannot statfs stops it."""
    bad = [Backing("/nope", 64 * KiB, "statfs", error="Couldn't statfs() memory path: No such"
                   " file or directory")]
    result = check(HV64, CheckRequest(mem_paths=("/nope",)), bad)
    assert [p.message for p in result.errors] == [
        "Couldn't statfs() memory path: No such file or directory"
    ]


# --- advice ----------------------------------------------------------------------------------


def test_advice_for_16m_on_radix_host() -> None:
    """16M on a radix POWER9 without suitable backing: lower the cap, or use 1 GiB pages."""
    result = check(HV64, CheckRequest(max_page_size="16M", memory="4G"))
    advice = check_json(result)["advice"]
    assert advice["largest_max_page_size"]["bytes"] == 64 * KiB
    changes = {s["change"]: s for s in advice["suggestions"]}
    lower = changes["lower cap-hpt-max-page-size to 64K (the largest this RAM backing allows)"]
    assert lower["ok"]
    assert "-machine" in lower["qemu_args"]
    assert "pseries,cap-hpt-max-page-size=64K" in lower["qemu_args"]
    huge = [s for s in advice["suggestions"] if "1 GiB hugepages" in s["change"]]
    assert len(huge) == 1 and huge[0]["ok"]
    assert "mem-path=/mnt/huge1G" in " ".join(huge[0]["qemu_args"])
    assert "<maxpagesize unit='KiB'>16384</maxpagesize>" in huge[0]["libvirt_xml"]
    assert "<page size='1048576' unit='KiB'/>" in huge[0]["libvirt_xml"]
    # 2 MiB pages cannot back 16M: not suggested.
    assert not [s for s in advice["suggestions"] if "2 MiB hugepages" in s["change"]]
    pools = {h["page_size"]: h for h in advice["hugepages"]}
    assert pools[GiB]["pages_needed"] == 4 and pools[GiB]["enough_free_pages"]
    assert pools[2 * MiB]["backs_requested_max_page_size"] is False


def test_advice_pool_too_small() -> None:
    """A pool with too few free pages says how many to reserve."""
    probe = hv_host(pools=((GiB, 2, 1),))
    result = check(probe, CheckRequest(max_page_size="16M", memory="4G"))
    assert result.advice is not None
    huge = [s for s in result.advice.suggestions if "1 GiB" in s.change]
    assert len(huge) == 1
    steps = " ".join(huge[0].steps)
    assert "mount -t hugetlbfs -o pagesize=1G" in steps
    assert "has 1 free pages" in steps and "needs 4" in steps
    assert "echo 5 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages" in steps


def test_advice_on_4k_host() -> None:
    """A 4K host: lower the cap to 4K; the host-kernel note explains the CI pages."""
    result = check(HV4, CheckRequest())
    assert result.advice is not None and result.advice.host_kernel is not None
    lower = [s for s in result.advice.suggestions if s.change.startswith("lower")]
    assert len(lower) == 1 and lower[0].ok
    assert "cap-hpt-max-page-size=4K" in " ".join(qemu_args(lower[0].request, lower[0].result))
    assert "64 KiB" in result.advice.host_kernel


# Each failing guest, and the changes kvmppc must offer for it: (the start of the change, does
# QEMU start after it, QEMU's arguments).  Written by hand from QEMU 7.2's rules, not from the
# code: spapr_check_pagesize (hw/ppc/spapr_caps.c) refuses a cap above the smallest RAM backing
# page under KVM_PPC_PAGE_SIZES_REAL; kvm_check_mmu (target/ppc/kvm.c) refuses 64 KiB
# cache-inhibited pages on a 4 KiB host (the POWER7+ table has them from a 64K cap on);
# spapr_setup_hpt's VRMA is 1 << (backing-limited page shift + HPT shift - 7), the HPT 1/128 of
# RAM; spapr_check_mmu_mode refuses a hash-only model on a radix-only KVM; spapr_machine_init
# wants RAM in 256 MiB blocks.  A suggestion is an honest one if QEMU would do what it says.
_P8_2G = ("-machine", "pseries,cap-hpt-max-page-size=4K,memory-backend=ram0", "-accel", "kvm",
          "-cpu", "power8", "-m", "2G", "-object")
SUGGESTIONS = [
    # 64 KiB anonymous pages cannot back 16M; 64K can, and so can the 1 GiB mount (8 free).
    (HV64, CheckRequest(max_page_size="16M"), [
        ("lower cap-hpt-max-page-size to 64K", True,
         ("-machine", "pseries,cap-hpt-max-page-size=64K", "-accel", "kvm")),
        # softmmu/physmem.c file_ram_alloc: "memory size ... must be equal to or larger than
        # page size": 512M of RAM on 1 GiB pages is refused, so the change gives -m 1G.
        ("back guest RAM with 1 GiB hugepages (/mnt/huge1G) and -m 1G", True,
         ("-machine", "pseries,cap-hpt-max-page-size=16M,memory-backend=ram0", "-accel", "kvm",
          "-m", "1G", "-object",
          "memory-backend-file,id=ram0,size=1G,mem-path=/mnt/huge1G,prealloc=on")),
    ]),
    # 4 KiB host, default 64K cap: backing and CI pages both refuse it; only a 4K cap lifts
    # both.  Hugepages lift the backing check but not the CI pages (host page size), so QEMU
    # still stops: offered, marked as failing.
    (HV4, CheckRequest(), [
        ("lower cap-hpt-max-page-size to 4K", True,
         ("-machine", "pseries,cap-hpt-max-page-size=4K", "-accel", "kvm")),
        ("back guest RAM with 2 MiB hugepages (/dev/hugepages)", False,
         ("-machine", "pseries,cap-hpt-max-page-size=64K,memory-backend=ram0", "-accel", "kvm",
          "-m", "512M", "-object",
          "memory-backend-file,id=ram0,size=512M,mem-path=/dev/hugepages,prealloc=on")),
        ("back guest RAM with 1 GiB hugepages (/dev/hugepages-1G) and -m 1G", False,
         ("-machine", "pseries,cap-hpt-max-page-size=64K,memory-backend=ram0", "-accel", "kvm",
          "-m", "1G", "-object",
          "memory-backend-file,id=ram0,size=1G,mem-path=/dev/hugepages-1G,prealloc=on")),
    ]),
    # 2 GiB on 4 KiB pages: HPT 2**24, VRMA 1 << (12 + 24 - 7) = 512 MiB < the 2 GiB RMA.
    # 16M pages (from 2 MiB or 1 GiB backing) give 1 << (24 + 24 - 7) = 2 TiB: enough.
    (HV4_P8, CheckRequest(cpu="power8", max_page_size="4k", memory="2G"), [
        ("back guest RAM with 2 MiB hugepages (/dev/hugepages)", True,
         (*_P8_2G, "memory-backend-file,id=ram0,size=2G,mem-path=/dev/hugepages,prealloc=on")),
        ("back guest RAM with 1 GiB hugepages (/dev/hugepages-1G)", True,
         (*_P8_2G,
          "memory-backend-file,id=ram0,size=2G,mem-path=/dev/hugepages-1G,prealloc=on")),
    ]),
    # POWER9 nested KVM-HV (radix only): KVM-HV refuses the POWER8 model's PVR; the host's
    # model runs; keeping POWER8's ISA with max-cpu-compat needs an HPT, which nested has not.
    (load_profile("power9-radix-hv"), CheckRequest(cpu="power8"), [
        ("use -cpu host", True,
         ("-machine", "pseries,cap-hpt-max-page-size=64K", "-accel", "kvm", "-cpu", "host")),
        ("use -cpu host with -machine max-cpu-compat=power8", False,
         ("-machine", "pseries,cap-hpt-max-page-size=64K,max-cpu-compat=power8", "-accel",
          "kvm", "-cpu", "host")),
    ]),
    # KVM-PR has no FWNMI (powerpc.c: KVM_CAP_PPC_FWNMI is hv_enabled) and QEMU 10.0 also
    # asks for AIL mode 3 (KVM_CAP_PPC_AIL_MODE_3 is 0 under PR): QEMU's hints lift both.
    (load_profile("power8-hash-pr"), CheckRequest(cpu="power8", qemu_version="10.0"), [
        ("add -machine cap-fwnmi=off,cap-ail-mode-3=off", True,
         ("-machine", "pseries,cap-hpt-max-page-size=64K,cap-fwnmi=off,cap-ail-mode-3=off",
          "-accel", "kvm", "-cpu", "power8")),
    ]),
    # 300 MiB is not a multiple of 256 MiB; 512 MiB is.
    (HV64, CheckRequest(memory="300M"), [
        ("give -m a multiple of 256 MiB: 512M", True,
         ("-machine", "pseries,cap-hpt-max-page-size=64K", "-accel", "kvm", "-m", "512M")),
    ]),
]


@pytest.mark.parametrize(("probe", "request_", "expected"), SUGGESTIONS)
def test_suggestions_do_what_they_say(probe: ProbeResult, request_: CheckRequest,
                                      expected: list[tuple[str, bool, tuple[str, ...]]]) -> None:
    """The changes offered for a failing guest, whether QEMU starts after each, and its
    arguments, against expectations derived by hand from QEMU's rules."""
    result = check(probe, request_)
    assert not result.ok and result.advice is not None
    got = [(s, s.ok, qemu_args(s.request, s.result)) for s in result.advice.suggestions]
    assert len(got) == len(expected), render_check(result)
    for (suggestion, ok, args), (change, want_ok, want_args) in zip(got, expected, strict=True):
        assert suggestion.change.startswith(change)
        assert (ok, args) == (want_ok, want_args), suggestion.change
        # A change marked as failing says which of QEMU's errors remain.
        assert bool(suggestion.remaining) != want_ok


def test_to_dict_is_json() -> None:
    """The answer serialises, and carries the keys clients rely on."""
    data = check_json(check(HV64, CheckRequest(max_page_size="16M")))
    json.dumps(data)
    for key in ("ok", "errors", "warnings", "needs_host_contiguous_pages", "backing_page_size",
                "guest", "advice", "qemu_output"):
        assert key in data
    assert set(data["guest"]) >= {"max_page_shift", "segments", "cells", "ci_large_pages",
                                  "warnings"}


def test_render_mentions_the_error_and_the_fix() -> None:
    text = render_check(check(HV64, CheckRequest(max_page_size="16M")))
    assert "NOT start" in text
    assert cant(16384, 64) in text
    assert "lower cap-hpt-max-page-size to 64K" in text


# --- request validation ----------------------------------------------------------------------


def test_from_params() -> None:
    """Query strings: repeatable mem_path, HV/PR/auto in any case, lists of one."""
    request = CheckRequest.from_params({
        "max_page_size": ["16M"], "cpu": "power9", "mem_path": ["/a", "/b"],
        "kvm_type": "pr", "accel": "kvm", "memory": "4G", "machine": "pseries-5.0",
    })
    assert request == CheckRequest("16M", "power9", "pseries-5.0", ("/a", "/b"), "4G", "kvm",
                                   "PR")
    assert CheckRequest.from_params({}) == CheckRequest()
    assert CheckRequest.from_params({"kvm_type": "auto"}).kvm_type is None
    assert CheckRequest.from_params({"mem_path": "/x"}).mem_paths == ("/x",)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bogus": "1"}, "unknown parameter"),
        ({"cpu": ["a", "b"]}, "given 2 times"),
        ({"accel": "xen"}, "accel must be"),
        ({"kvm_type": "bogus"}, "Unknown kvm-type specified 'bogus'"),
        ({"mem_path": "relative"}, "absolute"),
        ({"machine": "pseries,cap-hpt-max-page-size=16M"}, "only the machine type"),
        ({"cpu": "power9,compat=power8"}, "only the model name"),
    ],
)
def test_from_params_rejects(params: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError, match=message):
        CheckRequest.from_params(params)


def test_guest_page_sizes_interface() -> None:
    """guest_page_sizes(cpu, shift): the pagesizes --json shape."""
    data = page_sizes_json(guest_page_sizes("power9", 16))
    assert data["max_page_shift"] == 16
    assert data["segments"] == [
        {"page_shift": 12, "slb_enc": 0, "pages": [{"page_shift": 12, "pte_enc": 0}]},
        {"page_shift": 16, "slb_enc": 0x110, "pages": [{"page_shift": 16, "pte_enc": 1}]},
    ]
    assert data["cells"] == [12, 0, 1, 12, 0, 16, 0x110, 1, 16, 1]
    assert data["ci_large_pages"] is True
    assert data["warnings"] == []
    assert page_sizes_json(guest_page_sizes("970", 24))["ci_large_pages"] is False
    with pytest.raises(QemuRefusalError, match="Require at least 4kiB"):
        guest_page_sizes("power9", 11)
    with pytest.raises(QemuRefusalError, match="unable to find CPU model 'z80'"):
        guest_page_sizes("z80", 16)


@pytest.mark.parametrize("name", ["power8-hash-pr", "power10-radix-hv"])
def test_other_shipped_profiles(name: str) -> None:
    """The harness's real PR (POWER8, hash) and nested-HV (POWER10) answers: 64K starts;
    16M fails as §5.3 / §5.1 say."""
    probe = load_profile(name)
    cpu = "power8" if "pr" in name else None
    # KVM-PR: no FWNMI (arch/powerpc/kvm/powerpc.c: KVM_CAP_PPC_FWNMI is hv_enabled), and
    # cap-fwnmi is on from pseries-5.0 (spapr_machine_4_2_class_options turns it off)
    caps = ("cap-fwnmi=off",) if "pr" in name else ()
    assert check(probe, CheckRequest(cpu=cpu, caps=caps, qemu_version="7.2")).ok
    expected = ("KVM doesn't support page shift 24/12" if "pr" in name
                else cant(16384, 64))
    assert errors(probe, max_page_size="16M", cpu=cpu, caps=caps,
                  qemu_version="7.2")[0] == expected


# cap-htm: pseries-2.11 and older turn it on for ISA 2.07+ CPUs; under KVM QEMU's
# cap_htm_apply (hw/ppc/spapr_caps.c) then needs KVM_CAP_PPC_HTM.
NO_HTM = "KVM implementation does not support Transactional Memory"


def _hv_with_htm(htm: int) -> ProbeResult:
    hv = vm_type("hv", smmu=HV_SMMU, is_pr=False, radix=False, hash_v3=True,
                 extra_caps={"PPC_HTM": htm})
    return host(hv=hv, mmu="hash", pvr=POWER8_PVR)


def test_htm_on_old_machine_needs_the_kvm_cap() -> None:
    result = check(_hv_with_htm(0), CheckRequest(machine="pseries-2.11", cpu="power8"))
    assert not result.ok
    assert result.errors[0].message == NO_HTM
    assert "cap-htm=off" in json.dumps(check_json(result)["advice"])


def test_htm_cap_present_lets_old_machine_start() -> None:
    result = check(_hv_with_htm(1), CheckRequest(machine="pseries-2.11", cpu="power8"))
    assert NO_HTM not in [problem.message for problem in result.errors]
    assert result.ok, result.errors


def test_htm_off_by_default_from_pseries_2_12() -> None:
    result = check(_hv_with_htm(0), CheckRequest(machine="pseries-2.12", cpu="power8"))
    assert NO_HTM not in [problem.message for problem in result.errors]


def test_htm_on_real_nested_power9_kernel() -> None:
    """The real POWER9 nested-HV kernel answered KVM_CAP_PPC_HTM = 0."""
    profile = load_profile("power9-radix-hv")
    assert profile.kvm.vm_types["hv"].caps["PPC_HTM"] == 0
    # pseries-2.11 is QEMU 7.2's (10.0 has no 2.x machines); the profile records no QEMU
    result = check(profile, CheckRequest(machine="pseries-2.11", cpu="power9",
                                         qemu_version="7.2"))
    assert result.errors[0].message == NO_HTM


@pytest.mark.parametrize(("profile", "family"), [
    ("power9-radix-hv", "POWER9"), ("power10-radix-hv", "POWER10"), ("power8-hash-pr", "POWER8"),
])
@pytest.mark.parametrize("qemu_version", ["7.2", "10.0"])
def test_default_cpu_under_kvm_is_the_host(profile: str, family: str, qemu_version: str) -> None:
    """Under KVM no -cpu (or -cpu max) is ``host``, the host's own family: QEMU's
    kvm_arch_init() overrides every pseries machine's default CPU type (target/ppc/kvm.c,
    pseries_machine_class_fixup).  Under TCG it stays the machine's: POWER9 for pseries-7.2,
    POWER10 for pseries-10.0."""
    probe = load_profile(profile)
    for cpu in (None, "max"):
        result = check(probe, CheckRequest(cpu=cpu, qemu_version=qemu_version))
        assert (result.accel, result.cpu.name, result.cpu.family) == ("kvm", "host", family)
        tcg = check(probe, CheckRequest(cpu=cpu, accel="tcg", qemu_version=qemu_version))
        assert (tcg.accel, tcg.cpu.name) == (
            "tcg", {"7.2": "power9_v2.0", "10.0": "power10_v2.0"}[qemu_version])

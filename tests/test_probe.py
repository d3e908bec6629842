"""The probe over fixture /proc and /sys trees, over this machine's real KVM, host profiles,
and QEMU 3.0's fallback SMMU guess."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from kvmppc import _kvm
from kvmppc import probe as probe_mod
from kvmppc.cli import main as cli_main
from kvmppc.errors import ProfileError
from kvmppc.model import (
    SCHEMA_VERSION,
    HugepagePool,
    HugetlbfsMount,
    PageSize,
    ProbeResult,
    SegmentPageSizes,
    SmmuSource,
)
from kvmppc.probe import ProbePaths, fallback_smmu_info, parse_cpuinfo, probe
from kvmppc.profiles import load_profile, shipped_profiles
from kvmppc.render import render_probe
from tests.helpers import needs_kvm

# /proc/cpuinfo as a POWER9 PowerNV host prints it (arch/powerpc/kernel/setup-common.c).
POWER9_CPUINFO = """\
processor\t: 0
cpu\t\t: POWER9, altivec supported
clock\t\t: 3800.000000MHz
revision\t: 2.2 (pvr 004e 1202)

processor\t: 1
cpu\t\t: POWER9, altivec supported
clock\t\t: 3800.000000MHz
revision\t: 2.2 (pvr 004e 1202)

timebase\t: 512000000
platform\t: PowerNV
model\t\t: 9006-22P
machine\t\t: PowerNV 9006-22P
firmware\t: OPAL
MMU\t\t: Radix
"""


def make_tree(root: Path, *, cpuinfo: str = POWER9_CPUINFO,
              pools: dict[int, tuple[int, int, int, int]] | None = None,
              mounts: str = "", modules: tuple[str, ...] = ()) -> ProbePaths:
    proc, sys_ = root / "proc", root / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text("6.1.0-28-powerpc64le\n")
    (proc / "cpuinfo").write_text(cpuinfo)
    (proc / "meminfo").write_text("MemTotal: 1 kB\nHugepagesize:       2048 kB\n")
    for size_kb, (total, free, resv, surp) in (pools or {}).items():
        pool = sys_ / f"kernel/mm/hugepages/hugepages-{size_kb}kB"
        pool.mkdir(parents=True)
        for name, value in (("nr_hugepages", total), ("free_hugepages", free),
                            ("resv_hugepages", resv), ("surplus_hugepages", surp)):
            (pool / name).write_text(f"{value}\n")
    for module in modules:
        (sys_ / "module" / module).mkdir(parents=True)
    (root / "mounts").write_text(mounts)
    return ProbePaths(kvm_device=str(root / "kvm"), proc=str(proc), sys=str(sys_),
                      mounts=str(root / "mounts"))


def test_parse_power9_cpuinfo() -> None:
    assert parse_cpuinfo(POWER9_CPUINFO) == {
        "cpu_model": "POWER9", "pvr": 0x004E1202, "platform": "PowerNV", "mmu": "radix",
    }


def test_probe_fixture_tree_host_and_hugepages(tmp_path: Path) -> None:
    paths = make_tree(
        tmp_path,
        pools={2048: (512, 500, 10, 0), 1048576: (4, 4, 0, 1)},
        mounts=(
            "proc /proc proc rw 0 0\n"
            "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
            "none /mnt/huge\\0401g hugetlbfs rw,pagesize=1024M 0 0\n"
            "none /mnt/default hugetlbfs rw 0 0\n"
        ),
        modules=("kvm", "kvm_hv"),
    )
    result = probe(paths, machine="ppc64le", base_page_size=65536, clock=lambda: 1234.5)
    assert result.host.arch == "ppc64le"
    assert result.host.kernel_release == "6.1.0-28-powerpc64le"
    assert result.host.cpu_model == "POWER9"
    assert result.host.pvr == 0x004E1202
    assert result.host.platform == "PowerNV"
    assert result.host.mmu == "radix"
    assert result.host.base_page_size == 65536
    assert result.probed_at == 1234.5
    assert result.hugepages.default_page_size == 2 << 20
    assert result.hugepages.pools == (
        HugepagePool(2 << 20, 512, 500, 10, 0),
        HugepagePool(1 << 30, 4, 4, 0, 1),
    )
    assert result.hugepages.pools[0].available == 490
    # The fixture paths cannot be statfs'd as hugetlbfs: the mount options stand in.
    assert result.hugepages.mounts == (
        HugetlbfsMount("/dev/hugepages", 2 << 20, "mount-options"),
        HugetlbfsMount("/mnt/huge 1g", 1 << 30, "mount-options"),
        HugetlbfsMount("/mnt/default", 2 << 20, "mount-options"),
    )
    assert result.kvm.modules == ("kvm", "kvm_hv")
    # No device in the tree: the KVM part carries the error, the rest is filled in.
    assert not result.kvm.present
    assert result.kvm.error is not None and "modprobe kvm_hv" in result.kvm.error


def test_probe_missing_proc_parts_are_errors_not_failures(tmp_path: Path) -> None:
    paths = ProbePaths(kvm_device=str(tmp_path / "kvm"), proc=str(tmp_path / "noproc"),
                       sys=str(tmp_path / "nosys"), mounts=str(tmp_path / "nomounts"))
    result = probe(paths, machine="ppc64le", base_page_size=4096)
    assert result.host.error is not None and "cpuinfo" in result.host.error
    assert result.hugepages.pools == ()
    assert result.hugepages.error is not None and "mount table" in result.hugepages.error
    assert result.host.base_page_size == 4096


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting hugetlbfs needs root")
def test_real_hugetlbfs_mount_page_size_comes_from_statfs(tmp_path: Path) -> None:
    """As QEMU's qemu_mempath_getpagesize: statfs f_type HUGETLBFS_MAGIC, f_bsize."""
    mountpoint = tmp_path / "huge"
    mountpoint.mkdir()
    pagesize = max(probe_mod.read_hugepage_pools("/sys"), key=lambda p: p.page_size,
                   default=None)
    if pagesize is None:
        pytest.skip("this kernel has no hugepage pools")
    done = subprocess.run(
        ["mount", "-t", "hugetlbfs", "-o", f"pagesize={pagesize.page_size >> 10}K", "none",
         str(mountpoint)], capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount hugetlbfs here: {done.stderr.strip()}")
    try:
        mounts = tmp_path / "mounts"
        # A mount table whose options lie: statfs must win.
        mounts.write_text(f"none {mountpoint} hugetlbfs rw,pagesize=64K 0 0\n")
        found = probe_mod.read_hugetlbfs_mounts(
            str(mounts), None, _kvm.statfs_type_and_block_size, _kvm.HUGETLBFS_MAGIC
        )
        assert found == (HugetlbfsMount(str(mountpoint), pagesize.page_size, "statfs"),)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


@needs_kvm
@pytest.mark.skipif(os.uname().machine.startswith("ppc"), reason="this test is for non-POWER")
def test_live_probe_on_x86_says_kvm_present_not_powerpc() -> None:
    result = probe()
    assert result.kvm.present and result.kvm.api_version == 12
    assert not result.kvm.powerpc
    default = result.kvm.vm_types["default"]
    assert default.available and default.smmu is None
    assert default.smmu_error is not None and "not a PowerPC KVM" in default.smmu_error
    assert not result.kvm.vm_types["hv"].available
    assert not result.kvm.vm_types["pr"].available
    assert result.host.kernel_release == os.uname().release
    assert result.host.base_page_size == os.sysconf("SC_PAGE_SIZE")


def test_a_device_that_is_not_kvm_is_the_kvm_parts_error_not_a_crash() -> None:
    """/dev/null opens but answers KVM_GET_API_VERSION with ENOTTY: the probe still returns,
    the host part intact and the KVM part carrying the error."""
    result = probe(ProbePaths(kvm_device="/dev/null"))
    assert result.kvm.present and result.kvm.api_version is None
    assert result.kvm.error is not None and "KVM_GET_API_VERSION" in result.kvm.error
    assert result.kvm.vm_types == {} and result.host.error is None


@needs_kvm
def test_no_fd_leak_over_thousands_of_probes() -> None:
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(1000):
        probe_mod.probe_kvm(ProbePaths(), probe_mod.probe_host(
            ProbePaths(), machine=os.uname().machine, base_page_size=4096))
    assert set(os.listdir("/proc/self/fd")) == before


def test_cli_probe_here_exits_0_and_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["probe"]) == 0
    out = capsys.readouterr().out
    assert "host:" in out
    if os.path.exists("/dev/kvm") and not os.uname().machine.startswith("ppc"):
        assert "not PowerPC" in out


def test_cli_probe_json_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["probe", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == SCHEMA_VERSION
    again = ProbeResult.from_dict(data)
    assert json.loads(again.to_json()) == data


# --------------------------------------------------------------------------------------------
# host profiles


def test_shipped_profiles_load_and_round_trip() -> None:
    names = shipped_profiles()
    assert "power9-radix-hv" in names
    for name in names:
        result = load_profile(name)
        assert result.source == f"profile:{name}"
        data = json.loads(result.to_json())
        text = json.loads((Path(probe_mod.__file__).parent / "profiles" / f"{name}.json")
                          .read_text())
        data["source"] = text["source"]  # "live" when captured, "derived" when not
        assert data == text


def test_power9_profile_is_the_kernels_hv_answer() -> None:
    hv = load_profile("power9-radix-hv").kvm.vm_types["hv"]
    assert hv.smmu is not None and hv.kind == "HV"
    assert hv.smmu.flags == 0x7 and hv.smmu.slb_size == 32
    assert hv.smmu.segments[1] == SegmentPageSizes(16, 0x110, (PageSize(16, 1), PageSize(24, 8)))


def test_profile_from_file_and_cli_replay(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "host.json"
    saved.write_text(load_profile("power9-radix-hv").to_json())
    assert cli_main(["probe", "--host-profile", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "PAGE_SIZES_REAL|1T_SEGMENTS|NO_HASH" in out
    assert "64KiB segment (slb_enc 0x110)" in out


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "is not JSON"),
    ("[]", "is not a JSON object"),
    ('{"schema_version": 99}', "schema_version 99"),
    ('{"schema_version": 1, "host": {}}', "does not match the probe schema"),
])
def test_bad_profiles_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ProfileError, match=message):
        load_profile(str(path))


def test_unknown_profile_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["probe", "--host-profile", "no-such-host"]) == 2
    assert "power9-radix-hv" in capsys.readouterr().err


def test_profile_with_a_wrongly_typed_field_names_it(tmp_path: Path) -> None:
    data = json.loads(load_profile("power9-radix-hv").to_json())
    data["kvm"]["vm_types"]["hv"]["smmu"]["slb_size"] = "32"
    path = tmp_path / "typed.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"smmu.*slb_size"):
        load_profile(str(path))


# --------------------------------------------------------------------------------------------
# QEMU 3.0's fallback guess (target/ppc/kvm.c kvm_get_fallback_smmu_info, kvm-ppc-facts §3.3)


def test_fallback_guess_pr() -> None:
    info = fallback_smmu_info(is_pr=True, cpu_model="POWER8")
    assert info.source is SmmuSource.GUESSED
    assert (info.flags, info.slb_size) == (0, 64)
    assert info.segments == (
        SegmentPageSizes(12, 0, (PageSize(12, 0),)),
        SegmentPageSizes(24, 0x100, (PageSize(24, 0),)),
    )


@pytest.mark.parametrize(("cpu", "flags", "slb", "shifts"), [
    ("POWER7", 0x3, 32, [12, 16, 24]),
    ("POWER8E", 0x3, 32, [12, 16, 24]),
    ("POWER9", 0x3, 64, [12, 24]),  # MMU 3.00 is neither 2.06 nor 2.07
    ("PPC970MP", 0x1, 64, [12, 24]),  # no 1T segments on the basic table
])
def test_fallback_guess_hv(cpu: str, flags: int, slb: int, shifts: list[int]) -> None:
    info = fallback_smmu_info(is_pr=False, cpu_model=cpu)
    assert info.source is SmmuSource.GUESSED
    assert (info.flags, info.slb_size) == (flags, slb)
    assert [seg.page_shift for seg in info.segments] == shifts
    assert all(seg.pages == (PageSize(seg.page_shift, 1 if seg.page_shift == 16 else 0),)
               for seg in info.segments)


def test_refresh_hugepages_rereads_counts_only(tmp_path: Path) -> None:
    paths = make_tree(tmp_path, pools={2048: (8, 8, 0, 0)},
                      mounts="none /dev/hugepages hugetlbfs rw,pagesize=2M 0 0\n")
    result = probe(paths, machine="ppc64le", base_page_size=65536)
    assert probe_mod.refresh_hugepages(result, paths) is result  # nothing changed
    pool = tmp_path / "sys/kernel/mm/hugepages/hugepages-2048kB"
    (pool / "free_hugepages").write_text("3\n")
    (tmp_path / "mounts").write_text("")  # mounts are re-read by a re-probe, not here
    fresh = probe_mod.refresh_hugepages(result, paths)
    assert fresh.hugepages.pools == (HugepagePool(2 << 20, 8, 3, 0, 0),)
    assert fresh.hugepages.mounts == result.hugepages.mounts
    assert fresh.kvm is result.kvm
    (pool / "free_hugepages").write_text("garbage\n")
    broken = probe_mod.refresh_hugepages(fresh, paths)
    assert broken.hugepages.pools == fresh.hugepages.pools  # last good counts kept
    assert broken.hugepages.error is not None and "re-read" in broken.hugepages.error


def test_refresh_hugepages_leaves_profiles_alone() -> None:
    result = load_profile("power9-radix-hv")
    assert probe_mod.refresh_hugepages(result) is result


def test_cli_pr_profile_explains_the_vcpu_dependent_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["probe", "--host-profile", "power8-hash-pr"]) == 0
    out = capsys.readouterr().out
    assert "lands on KVM-PR" in out
    assert "once vCPU 0 has a POWER7 or later PVR" in out
    assert "HV (type 1): not available" in out


def test_probe_text_names_the_qemu_checks_answer_for() -> None:
    """The text says which qemu-system-ppc64 the probe found (what `check` answers for by
    default), or that none was, as for the shipped profiles captured in guests without QEMU."""
    profile = load_profile("power9-radix-hv")
    assert "  qemu-system-ppc64: none found" in render_probe(profile)
    found = replace(profile, host=replace(profile.host, qemu_version="10.0.13"))
    assert "  qemu-system-ppc64: 10.0.13\n" in render_probe(found)

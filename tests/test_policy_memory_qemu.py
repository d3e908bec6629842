"""Differential test: guest RAM (backends, NUMA, -m slots/maxmem, hugetlbfs) against the real
qemu-system-ppc64 7.2 and 10.0 under TCG (tests/memory_oracle.py runs both sides).

Under TCG QEMU makes every guest-RAM check but the KVM ones (SYNC_MMU, the memslot limit under
KVM, the backing check): ``-m``'s options (hw/core/machine.c ``machine_set_mem``), the late
backends' creation (before ``-cpu`` is parsed), board init (the machine's backend against
``-m``, the NUMA total, spapr's RMA in node 0 and the 256 MiB alignment of RAM, maxmem and each
node) and spapr's 32 hotplug slots.  The hugetlbfs cases mount hugetlbfs (2 MiB pages) in a
private mount namespace, so the live probe sees what QEMU sees and nothing else on the host
does; they skip with the reason where that cannot be done (with CI=true they fail).  This
host's pools are empty, so a backend that needs pages fails to map: QEMU's ENOMEM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from memory_oracle import kvmppc_outcome, qemu_outcome
from qemu_oracle import need, qemu10, qemu72

from kvmppc.probe import probe as live_probe

pytestmark = pytest.mark.qemu

TESTS = Path(__file__).resolve().parent

# -m's options (machine_set_mem, spapr_validate_node_memory, the slots limit) and their order
# against the machine type, the cap and -cpu.
HOTPLUG = [
    ["-m", "1G,maxmem=512M"],
    ["-m", "1G,maxmem=0"],
    ["-m", "1G,slots=2"],
    ["-m", "1G,slots=2,maxmem=1G"],
    ["-m", "1G,slots=0,maxmem=1G"],
    ["-m", "1G,maxmem=1G"],
    ["-m", "1G,maxmem=2G"],
    ["-m", "1G,slots=4,maxmem=2G"],
    ["-m", "1G,slots=32,maxmem=2G"],
    ["-m", "1G,slots=33,maxmem=2G"],
    ["-m", "1G,slots=0x10,maxmem=2G"],
    ["-m", "1G,slots=-1,maxmem=2G"],
    ["-m", "1G,maxmem=1100M"],
    ["-m", "300M,maxmem=2G"],
    ["-m", "1G,maxmem=512M", "-M", "pseries,cap-hpt-max-page-size=bogus"],
    ["-m", "1G,maxmem=1100M", "-cpu", "bogus"],
    ["-m", "1G,slots=4,maxmem=2G", "-M", "pseries-3.0"],
    ["-m", "1G,maxmem=1100M", "-M", "pseries-3.0"],
    ["-m", "1G", "-object", "memory-backend-memfd,id=a,size=1M,hugetlb=on,hugetlbsize=2M",
     "-M", "pseries-3.0"],
]
# Backends: mapped (the machine's, NUMA nodes') or not, and board init's checks.
BACKENDS = [
    ["-m", "1G", "-object", "memory-backend-ram,id=a,size=512M", "-object",
     "memory-backend-ram,id=b,size=256M", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    ["-m", "1G", "-object", "memory-backend-ram,id=a,size=512M", "-object",
     "memory-backend-ram,id=b,size=512M", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    ["-m", "1G", "-object", "memory-backend-ram,id=a,size=64M", "-object",
     "memory-backend-ram,id=b,size=960M", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    ["-m", "1G", "-object", "memory-backend-ram,id=a,size=384M", "-object",
     "memory-backend-ram,id=b,size=640M", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    ["-m", "1G", "-object", "memory-backend-ram,id=b,size=640M", "-object",
     "memory-backend-ram,id=a,size=384M", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    ["-m", "1G", "-object", "memory-backend-ram,id=a,size=512M", "-M",
     "pseries,memory-backend=a"],
    ["-m", "1G", "-object", "memory-backend-ram,id=a,size=512M", "-M",
     "pseries,memory-backend=a", "-cpu", "bogus"],
    ["-object", "memory-backend-memfd,id=a,size=512M", "-M", "pseries,memory-backend=a"],
    ["-object", "memory-backend-memfd,id=a,size=300M", "-M", "pseries,memory-backend=a"],
    ["-m", "1G", "-object", "memory-backend-memfd,id=a,size=1G", "-object",
     "memory-backend-memfd,id=b,size=1G", "-M", "pseries,memory-backend=a", "-numa",
     "node,memdev=b"],
    ["-m", "2G", "-object", "memory-backend-memfd,id=a,size=1G", "-object",
     "memory-backend-ram,id=b,size=1G", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    ["-m", "1G", "-object", "memory-backend-ram,id=x,size=64M"],
    ["-m", "1G,slots=2,maxmem=2G", "-object", "memory-backend-ram,id=a,size=512M", "-object",
     "memory-backend-ram,id=b,size=512M", "-numa", "node,memdev=a", "-numa", "node,memdev=b"],
    # memfd hugepages: a size no pool has (ENODEV), a size not a multiple of the page
    # (ftruncate's EINVAL), a pool with no free page (mmap's ENOMEM); the first backend
    # that fails stops QEMU before -cpu is parsed, mapped or not.
    ["-object", "memory-backend-memfd,id=a,size=32M,hugetlb=on,hugetlbsize=16M"],
    ["-object", "memory-backend-memfd,id=a,size=1M,hugetlb=on,hugetlbsize=2M"],
    ["-object", "memory-backend-memfd,id=a,size=4M,hugetlb=on,hugetlbsize=2M"],
    ["-object", "memory-backend-memfd,id=a,size=4M,hugetlb=on", "-cpu", "bogus"],
    ["-object", "memory-backend-memfd,id=a,size=3M,hugetlb=on,hugetlbsize=2M,seal=off"],
]
# On hugetlbfs (2 MiB pages, mounted at HUGETLBFS in the namespace): below a page, and the
# empty pool; -mem-path's default backend is created at board init, after -cpu.
HUGETLBFS = "/run/kvmppc-memtest-hp2M"
ON_HUGETLBFS = [
    ["-m", "1G", "-object", f"memory-backend-file,id=m0,size=1M,mem-path={HUGETLBFS}"],
    ["-m", "1G", "-object", f"memory-backend-file,id=m0,size=1M,mem-path={HUGETLBFS}", "-cpu",
     "bogus"],
    ["-object", f"memory-backend-file,id=m0,size=1G,mem-path={HUGETLBFS}", "-M",
     "pseries,memory-backend=m0"],
    ["-m", "1G", "-mem-path", HUGETLBFS, "-cpu", "bogus"],
    ["-m", "1G", "-mem-path", HUGETLBFS],
    ["-m", "1G", "-mem-path", HUGETLBFS, "-object", "memory-backend-ram,id=a,size=1G", "-numa",
     "node,memdev=a"],
    ["-m", "1G", "-object", "memory-backend-file,id=m0,size=1G,mem-path=/tmp", "-M",
     "pseries,memory-backend=m0"],
]


def _id(args: list[str]) -> str:
    return " ".join(args)


@pytest.fixture(scope="module")
def probe():  # type: ignore[no-untyped-def]
    return live_probe()


@pytest.mark.parametrize("release", ["7.2", "10.0"])
@pytest.mark.parametrize("args", HOTPLUG + BACKENDS, ids=_id)
def test_guest_ram_like_qemu(args: list[str], release: str, probe) -> None:  # type: ignore[no-untyped-def]
    """Exit status and every line QEMU prints, word for word, in order."""
    qemu = need(qemu72() if release == "7.2" else qemu10())
    assert kvmppc_outcome(probe, args, release) == qemu_outcome(qemu, args)


def _in_namespace_with_hugetlbfs(cases: list[list[str]], release: str,
                                 root: Path | None) -> list[dict[str, object]]:
    """Run tests/memory_oracle.py in a private mount namespace with hugetlbfs mounted (at the
    same path inside QEMU 10.0's root too, where that QEMU runs)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        reason = "mounting hugetlbfs needs root and unshare (util-linux)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if not Path("/sys/kernel/mm/hugepages/hugepages-2048kB").is_dir():
        reason = "this kernel has no 2 MiB hugepage pool to mount hugetlbfs with"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(cases, handle)
    try:
        script = (f'set -e; mount --make-rprivate /; mkdir -p {HUGETLBFS};'
                  f' mount -t hugetlbfs -o pagesize=2M none {HUGETLBFS};')
        if root is not None:
            script += (f' mkdir -p {root}{HUGETLBFS};'
                       f' mount -t hugetlbfs -o pagesize=2M none {root}{HUGETLBFS};')
        script += ' exec "$0" "$@"'
        run = subprocess.run(
            ["unshare", "--mount", "--fork", "sh", "-c", script, sys.executable,
             str(TESTS / "memory_oracle.py"), handle.name, release],
            capture_output=True, text=True, timeout=600, check=False)
    finally:
        os.unlink(handle.name)
    if run.returncode != 0 and "mount" in run.stderr and not run.stdout:
        reason = f"cannot mount hugetlbfs in a private namespace: {run.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert run.returncode == 0, run.stderr
    result: list[dict[str, object]] = json.loads(run.stdout)
    return result


@pytest.mark.parametrize("release", ["7.2", "10.0"])
def test_hugetlbfs_backends_like_qemu(release: str) -> None:
    """Backends on a 2 MiB hugetlbfs mount: "memory size 0x100000 must be equal to or larger
    than page size 0x200000" (softmmu/physmem.c file_ram_alloc), ENOMEM from the empty pool,
    and where in start-up each comes (late backends before -cpu, -mem-path after it)."""
    qemu = need(qemu72() if release == "7.2" else qemu10())
    results = _in_namespace_with_hugetlbfs(ON_HUGETLBFS, release, qemu.root)
    assert [r["args"] for r in results] == ON_HUGETLBFS
    for entry in results:
        assert entry["kvmppc"] == entry["qemu"], entry["args"]
    # The outcomes themselves, so that agreement on some other failure cannot pass this.
    assert results[0]["qemu"] == [False, [
        "memory size 0x100000 must be equal to or larger than page size 0x200000"]]
    assert results[3]["qemu"] == [False, ["unable to find CPU model 'bogus'"]]
    starts, lines = results[5]["qemu"]  # type: ignore[misc]
    assert starts is True
    assert [line for line in lines  # type: ignore[attr-defined]
            if not line.startswith("warning: TCG doesn't support requested feature, cap-")
            ] == []

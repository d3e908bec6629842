"""Differential test: kvmppc's policy against the real qemu-system-ppc64 (Debian's 7.2).

Each case runs ``qemu-system-ppc64 -M <machine>,cap-hpt-max-page-size=V,dumpdtb=FILE -accel
tcg -cpu X [-m M]``.  A pseries machine that gets through its first reset writes the device
tree and exits 0 ("dtb dumped to ... Exiting."), so accept/reject, QEMU's messages and the
guest's ``ibm,segment-page-sizes`` can all be compared with ``kvmppc.policy.check`` on the
same request.  Under TCG the KVM-only checks (backing, ``kvm_check_mmu``, VRMA, MMU mode) do
not run; tests/test_policy_tables.py pins those.

The grid: every size spelling below on the default machine; every CPU name (models, aliases,
case variants, PVR spellings, refusals) at four cap values; every machine version family
with five CPU models and four caps; ``-m`` spellings; and combinations whose order matters.
QEMU runs two at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from policy_fdt import cells, read_fdt

from kvmppc.policy import CheckRequest, check
from kvmppc.policy._qemu72_cpus import NON_SPAPR_NAMES, NON_SPAPR_PVRS
from kvmppc.policy.machines import MACHINE_TYPES, SPAPR_CPU_ALIASES, SPAPR_CPU_MODELS
from kvmppc.probe import probe as live_probe
from kvmppc.profiles import load_profile

QEMU = shutil.which("qemu-system-ppc64")
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-ppc64 is not installed"
                       " (Debian package qemu-system-ppc, see scripts/setup-system.sh)"),
]

PREFIX = "qemu-system-ppc64: "
# TCG's own complaints about the Spectre capabilities: printed for every machine, nothing to
# do with page sizes, and not modelled.
UNRELATED_WARNING = re.compile(r"^warning: TCG doesn't support requested feature, cap-")
# A warning, possibly after the option it is about ("-m 0x10k: warning: ...").
WARNING = re.compile(r"^(?:-\w+ [^:]*: )?warning: ")


@dataclass(frozen=True)
class Case:
    machine: str = "pseries"
    size: str | None = None
    cpu: str | None = None
    memory: str | None = None

    @property
    def id(self) -> str:
        parts = [self.machine, f"cap={self.size!r}" if self.size is not None else "cap=default"]
        if self.cpu is not None:
            parts.append(f"cpu={self.cpu!r}")
        if self.memory is not None:
            parts.append(f"m={self.memory!r}")
        return ",".join(parts)


SIZES_VALID = [
    "4096", "4k", "8K", "16k", "32k", "64k", "64K", "65536", "0x10000", "0X10000", "128k",
    "1M", "2m", "8M", "16M", "16m", "32M", "1G", "8g", "16G", "16g", "32G", "1T", "1p", "1E",
    "8E", "0.0625m", "0.5M", "0.015625G", ".5M", " 64k", "\t16M", "\n4k", "+64k", "0x1000000",
    "0x10k", "0x4000K", "1.k", "64.k", "64.K", "1.99999999999999999999k", "0.25M", "2k",
    "1K", "1024", "1.", "1b", "2048b", "4096B", "0x1", "00000000000000000064k",
    "1.5e-400xk", "0.5k", "0x4m", "0.00000000000000000000000001E",
    # Fractions that round to 1.0 (the cast of 2**64 gives 0) and underflowing exponents
    # (the error is dropped and one character skipped): either reading changes the answer.
    "3.99999999999999999999k", "63.99999999999999999999k", "4.5e-400xk", "64.5e-400Xk",
    "16.0000000000000000001M",
]
SIZES_INVALID = [
    "", "abc", "64kb", "64KiB", "64k ", "-64k", "- 64k", "1e4", "0x1p16", "16E", "0.5", "3000",
    "1.5k", "0", "0x", "0x.5", "1.5e3k", "18446744073709551616", "0x10000000000000000",
    "17179869184G", "1.k5", "0x10b", "0x1e", "0x10000 ", "64 k", "six", "0b1000", "1,5k",
    "0x1.8k", "inf", "nan", "1.5e-4k", "64k\t", "16EB", "1.0", "0.5b", "0.7", "--4k",
    "+-4k", "18446744073709551615", "0xffffffffffffffff", "15E", "3k",
]
CPUS_ACCEPTED = (
    sorted(SPAPR_CPU_MODELS) + sorted(SPAPR_CPU_ALIASES)
    + ["POWER9", "Power8E", "POWER5+", "power5GS", "POWER10_V2.0", "PoWeR7+", "max"]
    + ["004e1200", "0x004e1200", "004E1200", "+04e1200", "  4e1200", "0x4e1200", "00800100",
       "003f0203", "00390202", "00440100", "004a0201"]
)
CPUS_REFUSED = [
    "4e1200", "0X004E1200", " 004e1200", "power9_v2.2", "970fx", "ppc64", "nonsense", "MAX",
    "host", "003f0201", "00080100", "00000000", "e500", "G4", "power11", "power9_v3.0",
    "-1234567", "",
]
MACHINES = [
    "pseries", "pseries-7.2", "pseries-7.0", "pseries-6.2", "pseries-5.0", "pseries-4.2",
    "pseries-4.0", "pseries-3.1", "pseries-3.0", "pseries-2.12", "pseries-2.12-sxxm",
    "pseries-2.11", "pseries-2.9", "pseries-2.8", "pseries-2.7", "pseries-2.5", "pseries-2.4",
    "pseries-2.1",
]
MACHINES_REFUSED = ["pseries-1.0", "PSERIES", "pseries-8.0", "pseries-2.13", "spapr"]
MEMORIES = [
    "256M", "300M", "100M", "128M", "1G", "0x10", "1x", "16E", "1000", "1024", "0.5G", "0",
    "0.0001k", "1b", " 512", "512 ", "1.5", "2G", "17592186044416", "0x200M", "0x400",
    "0x10k",
]


def _cases() -> list[Case]:
    cases: list[Case] = [Case()]
    cases += [Case(size=size) for size in SIZES_VALID + SIZES_INVALID]
    for cpu in CPUS_ACCEPTED + CPUS_REFUSED:
        cases += [Case(size=size, cpu=cpu) for size in (None, "4k", "16M", "16G")]
    for machine in MACHINES:
        for cpu in (None, "970", "power5+", "power7", "power8", "power9", "power10"):
            cases += [Case(machine, size, cpu) for size in (None, "4k", "64k", "16M", "16G")]
    cases += [Case(machine) for machine in MACHINES_REFUSED]
    for machine in ("pseries", "pseries-2.4", "pseries-4.2"):
        cases += [Case(machine, size, memory=m) for m in MEMORIES for size in (None, "2k")]
    # Which error comes first when several apply.
    cases += [
        Case(size="abc", cpu="nonsense"),
        Case(size="3000", cpu="nonsense"),
        Case(size="2k", cpu="970fx"),
        Case(size="abc", memory="1x"),
        Case(size="abc", memory="300M"),
        Case(size="2k", memory="300M"),
        Case(size="2k", cpu="970fx", memory="100M"),
        Case("pseries-1.0", size="abc"),
        Case("pseries-1.0", memory="1x"),
        Case("pseries-2.11", size="2k", cpu="power8"),
        Case("pseries-2.11", size="abc", cpu="power8"),
        Case("pseries-2.11", cpu="power9", memory="300M"),
        Case("pseries-2.12", size="0x10k", cpu="nonsense"),
        Case(size="0x1p16", memory="0x10"),
        Case(cpu="max", memory="100M"),
    ]
    seen: set[Case] = set()
    return [c for c in cases if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]


CASES = _cases()


@dataclass(frozen=True)
class QemuRun:
    returncode: int
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    dtb: bytes | None


def _run_qemu(case: Case, workdir: str, index: int) -> QemuRun:
    assert QEMU is not None
    dtb = Path(workdir, f"{index}.dtb")
    machine = case.machine
    if case.size is not None:
        # keyval: a comma inside a value is written twice.
        machine += ",cap-hpt-max-page-size=" + case.size.replace(",", ",,")
    machine += f",dumpdtb={dtb}"
    argv = [QEMU, "-M", machine, "-accel", "tcg", "-nodefaults", "-nographic"]
    if case.cpu is not None:
        argv += ["-cpu", case.cpu]
    if case.memory is not None:
        argv += ["-m", case.memory]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "LC_ALL": "C"})
    errors, warnings = [], []
    for line in proc.stderr.splitlines():
        if not line.startswith(PREFIX):
            continue  # hints (error_append_hint) continue the previous message
        text = line[len(PREFIX):]
        if text.startswith("info: "):
            continue
        if WARNING.match(text):
            if not UNRELATED_WARNING.match(text):
                warnings.append(text)
        else:
            errors.append(text)
    blob = dtb.read_bytes() if dtb.exists() else None
    return QemuRun(proc.returncode, tuple(errors), tuple(warnings), blob)


@pytest.fixture(scope="module")
def qemu_runs() -> Iterator[dict[Case, QemuRun]]:
    with tempfile.TemporaryDirectory(prefix="kvmppc-qemu-") as workdir, ThreadPoolExecutor(
        max_workers=2
    ) as pool:
        futures = {case: pool.submit(_run_qemu, case, workdir, i) for i, case in
                   enumerate(CASES)}
        yield {case: future.result() for case, future in futures.items()}


@pytest.fixture(scope="module")
def probe():  # type: ignore[no-untyped-def]
    # Under TCG the host does not matter to QEMU; any probe will do.
    return load_profile("power9-radix-hv")


def _cpu_node(tree: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    nodes = [path for path in tree if re.fullmatch(r"/cpus/[^/]+@0", path)]
    assert len(nodes) == 1, nodes
    return tree[nodes[0]]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_qemu(case: Case, qemu_runs: dict[Case, QemuRun], probe) -> None:  # type: ignore[no-untyped-def]
    """kvmppc says what QEMU says: accept/reject, first error, warnings, guest table, model."""
    run = qemu_runs[case]
    result = check(
        probe,
        CheckRequest(max_page_size=case.size, cpu=case.cpu, machine=case.machine,
                     memory=case.memory, accel="tcg"),
    )
    qemu_says = list(run.warnings) + list(run.errors[:1])
    assert list(result.qemu_output) == qemu_says, (run, result.errors, result.warnings)
    assert result.ok == (run.returncode == 0), run
    if not result.ok:
        assert run.dtb is None
        return
    assert run.dtb is not None, run
    node = _cpu_node(read_fdt(run.dtb))
    assert result.guest is not None and result.cpu is not None
    assert cells(node["cpu-version"]) == [result.cpu.pvr]
    assert cells(node["ibm,segment-page-sizes"]) == result.guest.cells
    assert ("ibm,processor-segment-sizes" in node) == result.guest.table.one_t_segments
    assert cells(node["ibm,slb-size"]) == [result.guest.table.slb_size]
    if "ibm,pa-features" in node:  # ISA 2.06 and later models only
        assert bool(node["ibm,pa-features"][3] & 0x20) == result.guest.table.ci_large_pages
    else:
        assert not result.guest.table.ci_large_pages


def test_grid_size() -> None:
    """The grid stays big enough to mean something."""
    assert len(CASES) > 600


def test_accel_kvm_on_this_host_matches_qemu() -> None:
    """On a non-POWER host QEMU has no KVM accelerator for ppc64, and kvmppc says so."""
    assert QEMU is not None
    live = live_probe()
    if live.host.is_powerpc:
        pytest.skip("this host is POWER: -accel kvm may work here")
    proc = subprocess.run([QEMU, "-M", "pseries", "-accel", "kvm", "-nodefaults",
                           "-nographic"], capture_output=True, text=True, timeout=60,
                          check=False)
    first = proc.stderr.splitlines()[0].removeprefix(PREFIX)
    result = check(live, CheckRequest(accel="kvm"))
    assert not result.ok and proc.returncode != 0
    assert result.errors[0].message == first


def _cpu_help() -> tuple[dict[str, int], dict[str, str]]:
    assert QEMU is not None
    out = subprocess.run([QEMU, "-M", "pseries", "-cpu", "help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    models, aliases = {}, {}
    for line in out.splitlines():
        if m := re.match(r"PowerPC (\S+)\s+PVR ([0-9a-f]{8})$", line.strip()):
            models[m.group(1)] = int(m.group(2), 16)
        elif m := re.match(r"PowerPC (\S+)\s+\(alias for (\S+)\)$", line.strip()):
            aliases[m.group(1)] = m.group(2)
    return models, aliases


def test_cpu_tables_match_qemu_cpu_help() -> None:
    """The pseries models, their PVRs and aliases, and the non-pseries names are QEMU's."""
    models, aliases = _cpu_help()
    for name, model in SPAPR_CPU_MODELS.items():
        assert models[name] == model.pvr
    for alias, target in SPAPR_CPU_ALIASES.items():
        assert aliases[alias] == target
    others = {n for n in models if n not in SPAPR_CPU_MODELS}
    others |= {a for a, t in aliases.items() if t not in SPAPR_CPU_MODELS}
    assert others == NON_SPAPR_NAMES
    assert {p for n, p in models.items() if n not in SPAPR_CPU_MODELS} == NON_SPAPR_PVRS


def test_machine_list_matches_qemu() -> None:
    """kvmppc knows exactly the pseries machine types QEMU offers, and their alias."""
    assert QEMU is not None
    out = subprocess.run([QEMU, "-M", "help"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.startswith("pseries")}
    assert names == set(MACHINE_TYPES)
    alias = re.search(r"^pseries\s.*\(alias of (\S+)\)", out, re.M)
    assert alias is not None
    assert MACHINE_TYPES["pseries"].name == alias.group(1)

"""Differential test: kvmppc's policy against the real qemu-system-ppc64, 7.2 and 10.0.

QEMU 7.2 is the host's (Debian 12); QEMU 10.0 is Debian 13's, run in a Debian 13 root
(tests/qemu_oracle.py).  Each case runs ``qemu-system-ppc64 -M <machine>,cap-hpt-max-page-size=V
-accel tcg -cpu X [-m M]``.  7.2 takes ``dumpdtb=FILE`` on the machine: a pseries machine that
gets through its first reset writes the device tree and exits 0 ("dtb dumped to ...
Exiting.").  10.0 no longer honours that at start-up, so it starts with ``-S -qmp stdio`` and
the tree is taken with QMP ``dumpdtb`` after the first reset.  Either way accept/reject,
QEMU's messages and the guest's ``ibm,segment-page-sizes`` can all be compared with
``kvmppc.policy.check`` on the same request, with ``qemu_version`` set to the release run.
Under TCG the KVM-only checks (backing, ``kvm_check_mmu``, VRMA, MMU mode) do
not run; tests/test_policy_tables.py pins those.

The grid, per release: every size spelling below on the default machine; every CPU name of
either release (models, aliases, case variants, PVR spellings, refusals) at four cap values;
machine types of either release (deprecated, removed and new ones included) with the CPU
families and five caps; ``-m`` spellings; and combinations whose order matters.  QEMU runs
two at a time.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from policy_fdt import cells, read_fdt
from qemu_oracle import Qemu, need, qemu10, qemu72

from kvmppc.policy import CheckRequest, check
from kvmppc.probe import probe as live_probe
from kvmppc.profiles import load_profile
from kvmppc.qemu_versions import MODELLED

pytestmark = pytest.mark.qemu

PREFIX = "qemu-system-ppc64: "
# TCG's own complaints about the Spectre capabilities ("TCG doesn't support requested
# feature, cap-cfpc=workaround") are compared like every other line: they say which cap
# defaults QEMU chose for the machine type and model (kvmppc.policy.caps).
# A warning, possibly after the option it is about ("-m 0x10k: warning: ...").
WARNING = re.compile(r"^(?:-\w+ [^:]*: )?warning: ")


@dataclass(frozen=True)
class Case:
    machine: str = "pseries"
    size: str | None = None
    cpu: str | None = None
    memory: str | None = None
    caps: tuple[str, ...] = ()  # other -machine cap-NAME=VALUE
    compat: str | None = None  # -machine max-cpu-compat

    @property
    def id(self) -> str:
        parts = [self.machine, f"cap={self.size!r}" if self.size is not None else "cap=default"]
        if self.cpu is not None:
            parts.append(f"cpu={self.cpu!r}")
        if self.memory is not None:
            parts.append(f"m={self.memory!r}")
        parts += list(self.caps)
        if self.compat is not None:
            parts.append(f"max-cpu-compat={self.compat!r}")
        return ",".join(parts)


LOGICAL_PVR = {"power6": 0x0F000002, "power7": 0x0F000003, "power7+": 0x0F100003,
               "power8": 0x0F000004, "power9": 0x0F000005, "power10": 0x0F000006,
               "power11": 0x0F000007}
# The other capabilities and max-cpu-compat under TCG (hw/ppc/spapr_caps.c,
# target/ppc/compat.c): their syntax, their TCG checks, and the defaults they change.
CAP_CASES = [
    Case(caps=("cap-htm=on",)),
    Case(caps=("cap-htm=maybe",)),
    Case(caps=("cap-htm=",)),
    Case(caps=("cap-xyz=on",)),
    Case("pseries-4.2", caps=("cap-bogus=1",)),
    Case(caps=("cap-cfpc=bogus",)),
    Case(caps=("cap-cfpc=FIXED",)),
    Case(caps=("cap-sbbc=?",)),
    Case(caps=("cap-ibs=fixed-na", "cap-sbbc=fixed")),
    Case(caps=("cap-ibs=Fixed-CCD",), cpu="power7"),
    Case(caps=("cap-cfpc=broken", "cap-sbbc=broken", "cap-ibs=broken",
               "cap-ccf-assist=off")),
    Case(caps=("cap-vsx=on",), cpu="970"),
    Case(caps=("cap-dfp=on",), cpu="power5+"),
    Case(caps=("cap-vsx=off", "cap-dfp=off"), cpu="power9"),
    Case(caps=("cap-large-decr=on",), cpu="power8"),
    Case(caps=("cap-large-decr=on",), cpu="power9", compat="power8"),
    Case(caps=("cap-large-decr=on",), cpu="power9"),
    Case(caps=("cap-nested-hv=on",), cpu="power8"),
    Case(caps=("cap-nested-hv=on",), cpu="power9"),
    Case(caps=("cap-rpt-invalidate=on",)),
    Case(caps=("cap-fwnmi=off", "cap-fwnmi=on")),
    Case(caps=("cap-htm=on", "cap-rpt-invalidate=on")),
    Case(size="2k", caps=("cap-rpt-invalidate=on",)),
    Case("pseries-2.11", cpu="power8", caps=("cap-htm=off",)),
    Case("pseries-2.12-sxxm", cpu="power7"),
    Case("pseries-3.1", cpu="power9", caps=("cap-ccf-assist=on",)),
    Case(compat="power11"),
    Case(compat="POWER8"),
    Case(compat=""),
    Case(compat="power8", cpu="power9"),
    Case(compat="power7", cpu="power9"),
    Case(compat="power6", cpu="power7"),
    Case(compat="power7+", cpu="power8"),
    Case(compat="power9", cpu="power8"),
    Case(compat="power10", cpu="power9"),
    Case(compat="power8", cpu="970"),
    Case(compat="power8", cpu="power9", caps=("cap-nested-hv=on",)),
]
CAP_CASES_10 = [
    Case(caps=("cap-dawr1=on",), cpu="power9"),
    Case(caps=("cap-dawr1=on",), cpu="power10", compat="power9"),
    Case(caps=("cap-ail-mode-3=on",), cpu="power7"),
    Case(caps=("cap-ail-mode-3=off",), cpu="power10"),
    Case(caps=("cap-nested-papr=on",), cpu="power9"),
    Case(compat="power11", cpu="power11"),
    Case(compat="power11", cpu="power10"),
    Case("pseries-8.2", cpu="power10", compat="power7+"),
]
CAP_CASES_72 = [
    Case(caps=("cap-ail-mode-3=on",)),  # not in 7.2
    Case(caps=("cap-dawr1=off",)),  # not in 7.2
]


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
# The models and aliases of both releases: each release's matrix has the other's names too.
_NAMES = sorted({name for table in MODELLED.values()
                 for name in [*table.cpus, *table.cpu_aliases, *table.cpu_aliases_listed_only]})
CPUS_ACCEPTED = [
    *_NAMES,
    "POWER9", "Power8E", "POWER5+", "power5GS", "POWER10_V2.0", "PoWeR7+", "max",
    "004e1200", "0x004e1200", "004E1200", "+04e1200", "  4e1200", "0x4e1200", "00800100",
    "003f0203", "00390202", "00440100", "004a0201",
    # PVRs new in 10.0: power9_v2.2, power10_v2.0 (changed), power11_v2.0
    "004e1202", "00801200", "00821200", "POWER11", "Power5P_V2.1",
]
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
# QEMU 10.0's grid: its machine types (deprecated 3.0 ... 7.0, new 8.0 ... 10.0) and some
# 7.2 had; POWER11; negative -m values (parse_uint's ERANGE since QEMU 8.1).
MACHINES_10 = [
    "pseries", "pseries-10.0", "pseries-9.2", "pseries-9.0", "pseries-8.2", "pseries-8.0",
    "pseries-7.2", "pseries-7.1", "pseries-7.0", "pseries-6.2", "pseries-5.0", "pseries-4.2",
    "pseries-4.0", "pseries-3.1", "pseries-3.0", "pseries-2.12", "pseries-2.12-sxxm",
    "pseries-2.11", "pseries-2.1",
]
MACHINES_REFUSED_10 = ["pseries-1.0", "PSERIES", "pseries-10.1", "pseries-2.13", "spapr"]
MEMORIES_10 = [*MEMORIES, "-1", "-0", "-1G", ".5G", "0x200", "1.5G"]


def _cases(version: str = "7.2") -> list[Case]:
    new = version == "10.0"
    cases: list[Case] = [Case()]
    cases += [Case(size=size) for size in SIZES_VALID + SIZES_INVALID]
    for cpu in CPUS_ACCEPTED + CPUS_REFUSED:
        cases += [Case(size=size, cpu=cpu) for size in (None, "4k", "16M", "16G")]
    families = ["970", "power5+", "power7", "power8", "power9", "power10"]
    for machine in MACHINES_10 if new else MACHINES:
        for cpu in [None, *families, *(["power11"] if new else [])]:
            cases += [Case(machine, size, cpu) for size in (None, "4k", "64k", "16M", "16G")]
    cases += [Case(machine) for machine in (MACHINES_REFUSED_10 if new else MACHINES_REFUSED)]
    memory_machines = ("pseries", "pseries-3.0", "pseries-4.2") if new else (
        "pseries", "pseries-2.4", "pseries-4.2")
    for machine in memory_machines:
        cases += [Case(machine, size, memory=m) for m in (MEMORIES_10 if new else MEMORIES)
                  for size in (None, "2k")]
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
    if new:  # a deprecated machine's warning against the errors before and after it
        cases += [
            Case("pseries-4.2", cpu="nonsense"),
            Case("pseries-5.0", size="abc"),
            Case("pseries-6.2", memory="1x"),
            Case("pseries-6.2", memory="0x10"),
            Case("pseries-3.0", size="2k"),
            Case("pseries-7.0", memory="300M"),
            Case("pseries-3.1", size="0x10k", cpu="power9"),
            Case("pseries-4.0", cpu="power9_v1.0", memory="100M"),
        ]
    cases += CAP_CASES + (CAP_CASES_10 if new else CAP_CASES_72)
    seen: set[Case] = set()
    return [c for c in cases if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]


CASES = {"7.2": _cases("7.2"), "10.0": _cases("10.0")}


@dataclass(frozen=True)
class QemuRun:
    returncode: int
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    dtb: bytes | None


def _run_qemu(qemu: Qemu, case: Case, workdir: str, index: int) -> QemuRun:
    machine = case.machine
    if case.size is not None:
        # keyval: a comma inside a value is written twice.
        machine += ",cap-hpt-max-page-size=" + case.size.replace(",", ",,")
    for cap in case.caps:
        machine += "," + cap
    if case.compat is not None:
        machine += ",max-cpu-compat=" + case.compat
    args = ["-accel", "tcg", "-nodefaults"]
    if case.cpu is not None:
        args += ["-cpu", case.cpu]
    if case.memory is not None:
        args += ["-m", case.memory]
    if qemu.version[:2] >= (8, 2):  # dumpdtb= no longer reaches start-up: QMP dumpdtb
        run = qemu.run_dtb(["-M", machine, "-display", "none", *args], timeout=60)
        returncode, stderr, blob = run.returncode, run.stderr, run.dtb
    else:
        dtb = Path(workdir, f"{index}.dtb")
        run = qemu.run(["-M", f"{machine},dumpdtb={dtb}", "-nographic", *args], timeout=60)
        returncode, stderr = run.returncode, run.stderr
        blob = dtb.read_bytes() if dtb.exists() else None
    errors, warnings = [], []
    for line in stderr.splitlines():
        if not line.startswith(PREFIX):
            if line.strip() and errors:  # a hint (error_append_hint) after an error
                errors.append(line)
            continue
        text = line[len(PREFIX):]
        if text.startswith("info: "):
            continue
        if WARNING.match(text):
            warnings.append(text)
        else:
            errors.append(text)
    return QemuRun(returncode, tuple(errors), tuple(warnings), blob)


@pytest.fixture(scope="module")
def qemu_runs() -> Iterator[dict[str, dict[Case, QemuRun]]]:
    """Each release's whole grid, run once on first use (a release that cannot run here
    skips its cases, or fails them with CI=true)."""
    yield {}


def _runs_for(version: str, runs: dict[str, dict[Case, QemuRun]]) -> dict[Case, QemuRun]:
    qemu = need(qemu72() if version == "7.2" else qemu10())
    if version not in runs:
        with tempfile.TemporaryDirectory(prefix="kvmppc-qemu-") as workdir, \
                ThreadPoolExecutor(max_workers=2) as pool:
            futures = {case: pool.submit(_run_qemu, qemu, case, workdir, i)
                       for i, case in enumerate(CASES[version])}
            runs[version] = {case: future.result() for case, future in futures.items()}
    return runs[version]


@pytest.fixture(scope="module")
def probe():  # type: ignore[no-untyped-def]
    # Under TCG the host does not matter to QEMU; any probe will do.
    return load_profile("power9-radix-hv")


def _cpu_node(tree: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    nodes = [path for path in tree if re.fullmatch(r"/cpus/[^/]+@0", path)]
    assert len(nodes) == 1, nodes
    return tree[nodes[0]]


_PARAMS = [(version, case) for version, cases in CASES.items() for case in cases]


@pytest.mark.parametrize(("version", "case"), _PARAMS,
                         ids=[f"{v}:{c.id}" for v, c in _PARAMS])
def test_matches_qemu(version: str, case: Case, qemu_runs: dict[str, dict[Case, QemuRun]],
                      probe) -> None:  # type: ignore[no-untyped-def]
    """kvmppc says what QEMU says: accept/reject, every line it prints (warnings, its error
    and what it adds to it), guest table, model."""
    run = _runs_for(version, qemu_runs)[case]
    result = check(
        probe,
        CheckRequest(max_page_size=case.size, cpu=case.cpu, machine=case.machine,
                     memory=case.memory, accel="tcg", qemu_version=version, caps=case.caps,
                     max_cpu_compat=case.compat),
    )
    assert result.qemu_version == version
    qemu_says = list(run.warnings) + list(run.errors)  # QEMU stops at its first error
    assert list(result.qemu_output) == qemu_says, (run, result.errors, result.warnings)
    assert result.ok == (run.returncode == 0), run
    if not result.ok:
        assert run.dtb is None
        return
    assert run.dtb is not None, run
    node = _cpu_node(read_fdt(run.dtb))
    assert result.guest is not None and result.cpu is not None
    # with max-cpu-compat the node carries the logical PVR (target/ppc/cpu-models.h
    # CPU_POWERPC_LOGICAL_*), else the model's
    assert cells(node["cpu-version"]) == [LOGICAL_PVR.get(case.compat or "", result.cpu.pvr)]
    assert cells(node["ibm,segment-page-sizes"]) == result.guest.cells
    assert ("ibm,processor-segment-sizes" in node) == result.guest.table.one_t_segments
    assert cells(node["ibm,slb-size"]) == [result.guest.table.slb_size]
    if "ibm,pa-features" in node:  # ISA 2.06 and later models only
        assert bool(node["ibm,pa-features"][3] & 0x20) == result.guest.table.ci_large_pages
    elif case.compat != "power6":  # ISA 2.05 mode: QEMU writes no pa-features at all
        assert not result.guest.table.ci_large_pages


def test_grid_size() -> None:
    """The grid stays big enough to mean something."""
    assert len(CASES["7.2"]) > 600 and len(CASES["10.0"]) > 600


@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_accel_kvm_on_this_host_matches_qemu(version: str) -> None:
    """On a non-POWER host QEMU has no KVM accelerator for ppc64, and kvmppc says so.
    (The CPU tables and machine lists are compared with both releases in
    tests/test_qemu_versions.py.)"""
    qemu = need(qemu72() if version == "7.2" else qemu10())
    live = live_probe()
    if live.host.is_powerpc:
        pytest.skip("this host is POWER: -accel kvm may work here")
    run = qemu.run(["-M", "pseries", "-accel", "kvm", "-nodefaults", "-display", "none"])
    first = run.stderr.splitlines()[0].removeprefix(PREFIX)
    result = check(live, CheckRequest(accel="kvm", qemu_version=version))
    assert not result.ok and run.returncode != 0
    assert result.errors[0].message == first

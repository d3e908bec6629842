"""The version tables (kvmppc/qemu_versions) against the real QEMUs they describe.

QEMU 7.2 is the host's qemu-system-ppc64; QEMU 10.0 is Debian 13's, in the Debian 13 root of
tests/qemu_oracle.py (built on first use; skipped with the reason when it cannot be).  Every
expected value comes from the binary: ``--version``, ``-M help``, QMP ``query-machines``
(``default-cpu-type``, ``deprecated``), ``-cpu help``, and a start of each machine and model
(warnings and refusals word for word, the PVR in the device tree).
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from policy_fdt import cells, read_fdt
from qemu_oracle import Qemu, need, qemu10, qemu72

from kvmppc.policy._qemu72_cpus import NON_SPAPR_NAMES, NON_SPAPR_PVRS
from kvmppc.probe import probe_qemu_version
from kvmppc.qemu_versions import MODELLED, QemuTable, parse_version, parse_version_output

pytestmark = pytest.mark.qemu

PREFIX = "qemu-system-ppc64: "
TCG = ["-accel", "tcg", "-nodefaults", "-display", "none"]
# TCG's complaints about the Spectre capabilities: on every start, nothing to do with us.
UNRELATED = re.compile(r"^warning: TCG doesn't support requested feature, cap-")


@pytest.fixture(scope="module", params=["7.2", "10.0"])
def qemu(request: pytest.FixtureRequest) -> Qemu:
    return need(qemu72() if request.param == "7.2" else qemu10())


@pytest.fixture(scope="module")
def table(qemu: Qemu) -> QemuTable:
    return MODELLED[parse_version(qemu.name)]


def _lines(stderr: str) -> list[str]:
    """QEMU's own lines (hints, which carry no prefix, dropped), without the TCG noise."""
    out = [line[len(PREFIX):] for line in stderr.splitlines() if line.startswith(PREFIX)]
    return [line for line in out if not UNRELATED.match(line)]


def _help_text(qemu: Qemu, args: list[str]) -> str:
    proc = subprocess.run(qemu.argv(args), capture_output=True, text=True, timeout=120,
                          check=True, env={**os.environ, "LC_ALL": "C"})
    return proc.stdout


def test_version(qemu: Qemu, table: QemuTable) -> None:
    """``--version`` names the release the table is for, and kvmppc reads it."""
    found = parse_version_output(qemu.version_line)
    assert found is not None and parse_version(found) == table.version, qemu.version_line


def test_machine_list(qemu: Qemu, table: QemuTable) -> None:
    """``-M help``: exactly the table's pseries machines, its alias and deprecations."""
    out = _help_text(qemu, ["-M", "help"])
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("pseries")}
    alias = re.search(r"^pseries\s.*\(alias of (\S+)\)", out, re.M)
    assert alias is not None and alias[1] == table.default_machine
    del rows["pseries"]
    assert set(rows) == set(table.machines)
    deprecated = {name for name, line in rows.items() if line.endswith("(deprecated)")}
    assert deprecated == {m.name for m in table.machines.values() if m.deprecated}


def test_default_cpu_per_machine(qemu: Qemu, table: QemuTable) -> None:
    """QMP ``query-machines``: each machine's default CPU type and deprecation flag."""
    run = qemu.run(["-M", "none", *TCG, "-qmp", "stdio"], qmp=[
        {"execute": "query-machines"}, {"execute": "quit"}])
    machines = next(r["return"] for r in run.replies if isinstance(r.get("return"), list))
    assert isinstance(machines, list)
    seen = {m["name"]: m for m in machines if str(m["name"]).startswith("pseries-")}
    assert set(seen) == set(table.machines)
    for name, row in table.machines.items():
        assert seen[name]["default-cpu-type"] == f"{row.default_cpu}-powerpc64-cpu", name
        assert bool(seen[name].get("deprecated")) == row.deprecated, name


def test_cpu_models_and_aliases(qemu: Qemu, table: QemuTable) -> None:
    """``-cpu help``: the pseries models' PVRs, the aliases that lead to them, and the models
    without an sPAPR core (the same in both versions)."""
    models, aliases = {}, {}
    for line in _help_text(qemu, ["-M", "pseries", "-cpu", "help"]).splitlines():
        # 7.2 prints "PowerPC NAME ...", 10.0 "Available CPUs:" then "  NAME ..."
        if m := re.match(r"(?:PowerPC )?(\S+)\s+PVR ([0-9a-f]{8})$", line.strip()):
            models[m[1]] = int(m[2], 16)
        elif m := re.match(r"(?:PowerPC )?(\S+)\s+\(alias for (\S+)\)$", line.strip()):
            aliases[m[1]] = m[2]
    assert {name: models.get(name) for name in table.cpus} == {
        name: row.pvr for name, row in table.cpus.items()}
    listed = {a: t for a, t in aliases.items() if t in table.cpus}
    assert set(listed) == set(table.cpu_aliases) | table.cpu_aliases_listed_only
    assert {a: listed[a] for a in table.cpu_aliases} == dict(table.cpu_aliases)
    others = {n for n in models if n not in table.cpus}
    others |= {a for a, t in aliases.items() if t not in table.cpus}
    assert others == NON_SPAPR_NAMES
    assert {p for n, p in models.items() if n not in table.cpus} == NON_SPAPR_PVRS


def _start(qemu: Qemu, args: list[str]) -> tuple[int, list[str], int | None]:
    """Start and stop: exit status, QEMU's lines, and the boot CPU's PVR if it started."""
    run = qemu.run_dtb([*args, *TCG])
    pvr = None
    if run.dtb is not None:
        tree = read_fdt(run.dtb)
        (node,) = [v for k, v in tree.items() if re.fullmatch(r"/cpus/[^/]+@0", k)]
        pvr = cells(node["cpu-version"])[0]
    return run.returncode, _lines(run.stderr), pvr


def test_each_machine_starts_with_its_default_cpu(qemu: Qemu, table: QemuTable) -> None:
    """Every machine starts; the deprecated ones warn, word for word; the boot CPU is the
    table's default (its PVR in the device tree)."""
    names = [*table.machines, "pseries"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        # pseries-2.11 and older turn cap-htm on, which TCG refuses for POWER8 and later
        # ("No Transactional Memory support in TCG"): not what this test is about.
        results = dict(zip(names, pool.map(lambda n: _start(qemu, [
            "-M", n + (",cap-htm=off" if table.machine(n).version <= (2, 11) else "")]),
            names), strict=True))
    for name in names:
        row = table.machine(name)
        assert row is not None
        returncode, lines, pvr = results[name]
        expected = []
        if row.deprecated:
            assert table.messages.deprecated_machine is not None
            expected = ["warning: " + table.messages.deprecated_machine.format(name=name)]
        assert (returncode, lines) == (0, expected), name
        assert pvr == table.cpus[row.default_cpu].pvr, name


def test_each_cpu_model_starts(qemu: Qemu, table: QemuTable) -> None:
    """Every pseries model in the table, and every alias, starts with the table's PVR; an
    alias ``-cpu help`` lists but ``-cpu`` cannot resolve is refused."""
    names = [*table.cpus, *table.cpu_aliases, *table.cpu_aliases_listed_only]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(names, pool.map(
            lambda n: _start(qemu, ["-M", "pseries", "-cpu", n]), names), strict=True))
    for name in names:
        if name in table.cpu_aliases_listed_only:
            assert results[name] == (1, [f"unable to find CPU model '{name}'"], None), name
            continue
        model = table.cpus[table.cpu_aliases.get(name, name)]
        assert results[name] == (0, [], model.pvr), name


def test_vanished_machines_and_models_are_refused() -> None:
    """What 7.2 had and 10.0 has not: refused with 10.0's messages, word for word."""
    qemu = need(qemu10())
    old, new = MODELLED[(7, 2)], MODELLED[(10, 0)]
    machines = sorted(set(old.machines) - set(new.machines))
    cpus = sorted((set(old.cpus) | set(old.cpu_aliases)) - set(new.cpus) - set(new.cpu_aliases))
    assert "pseries-2.12" in machines and "power9_v1.0" in cpus  # the grid means something
    cases = [["-M", m] for m in machines] + [["-M", "pseries", "-cpu", c] for c in cpus]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: qemu.run([*a, *TCG]), cases))
    for args, run in zip(cases, results, strict=True):
        assert run.returncode == 1, args
        if args[0] == "-M" and len(args) == 2:
            assert _lines(run.stderr) == [
                new.messages.unsupported_machine.format(name=args[1])], args
            assert "Use -machine help to list supported machines" in run.stderr
        else:
            assert _lines(run.stderr) == [f"unable to find CPU model '{args[-1]}'"], args


def test_probe_records_the_installed_version() -> None:
    """The probe asks the installed qemu-system-ppc64 (the host's: 7.2)."""
    qemu = need(qemu72())
    assert probe_qemu_version("qemu-system-ppc64") == parse_version_output(qemu.version_line)
    assert probe_qemu_version("kvmppc-no-such-qemu") is None

"""``kvmppc audit --what-if qemu-version=10.0`` against the real QEMU 7.2 and 10.0.

"Which of my guests stop starting when this host moves to Debian 13?"  Each guest's command
line is started (TCG, stopped at once, the device tree taken over QMP) by the host's QEMU 7.2
and by Debian 13's QEMU 10.0 (tests/qemu_oracle.py); what they print and the boot CPU's PVR
are the expected values of the audit's two answers: this host (QEMU 7.2) and the what-if host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from policy_fdt import cells, read_fdt
from qemu_oracle import Qemu, QemuRun, need, qemu10, qemu72

from kvmppc.qemu_versions import MODELLED, parse_version

pytestmark = pytest.mark.qemu

PREFIX = "qemu-system-ppc64: "
BASE = ["-accel", "tcg", "-m", "2G", "-nodefaults", "-display", "none"]
# name -> the guest's options (besides BASE): what Debian 13 removes, deprecates, renames
GUESTS = {
    "old-machine": ["-M", "pseries-2.12"],
    "deprecated": ["-M", "pseries-5.2"],
    "default": ["-M", "pseries"],
    "new-machine": ["-M", "pseries-9.0"],
    "gone-cpu": ["-M", "pseries", "-cpu", "power9_v1.0"],
    "alias": ["-M", "pseries-7.2", "-cpu", "power9"],
    "power10": ["-M", "pseries-7.2", "-cpu", "power10"],
    "option": ["-M", "pseries-7.2", "-singlestep"],
}


def _lines(stderr: str) -> list[str]:
    """Every line QEMU printed, without the program name (hints have none); the caps' TCG
    warnings too, which kvmppc models (kvmppc/policy/caps.py)."""
    return [line.removeprefix(PREFIX) for line in stderr.splitlines() if line.strip()]


def _pvr(run: QemuRun) -> int | None:
    if run.dtb is None:
        return None
    tree = read_fdt(run.dtb)
    (node,) = [v for k, v in tree.items() if re.fullmatch(r"/cpus/[^/]+@0", k)]
    return cells(node["cpu-version"])[0]


@pytest.fixture(scope="module")
def real() -> dict[tuple[str, str], QemuRun]:
    qemus = {"7.2": need(qemu72()), "10.0": need(qemu10())}
    cases = [(v, name) for v in qemus for name in GUESTS]

    def start(case: tuple[str, str]) -> QemuRun:
        qemu: Qemu = qemus[case[0]]
        try:
            return qemu.run_dtb([*GUESTS[case[1]], *BASE])
        except AssertionError:  # a QMP error: QEMU refused before the monitor ran
            return qemu.run([*GUESTS[case[1]], *BASE])

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(start, cases), strict=True))


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, object]]]:
    directory = tmp_path_factory.mktemp("guests")
    args = []
    for name, options in GUESTS.items():
        path = directory / f"{name}.cmdline"
        path.write_text(" ".join(["qemu-system-ppc64", *options, *BASE]) + "\n")
        args += ["--qemu-cmdline-file", str(path)]
    run = subprocess.run([sys.executable, "-m", "kvmppc", "audit", "--host-profile",
                          "power9-radix-hv", "--qemu-version", "7.2", "--what-if",
                          "qemu-version=10.0", "--json", *args],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr  # some guests stop starting
    body = json.loads(run.stdout)
    assert [h["host"] for h in body["hosts"]] == [
        "this host (profile:power9-radix-hv, QEMU 7.2)", "what-if qemu-version=10.0 (QEMU 10.0)"]
    return {"7.2": body["hosts"][0]["guests"], "10.0": body["hosts"][1]["guests"]}


def _row(rows: list[dict[str, object]], name: str) -> dict[str, object]:
    (row,) = [r for r in rows if Path(str(r["guest"])).stem == name]
    return row


@pytest.mark.parametrize("name", GUESTS)
def test_each_guest_as_each_qemu_says(name: str, real: dict[tuple[str, str], QemuRun],
                                      audited: dict[str, list[dict[str, object]]]) -> None:
    for version in ("7.2", "10.0"):
        run, row = real[(version, name)], _row(audited[version], name)
        starts = run.returncode == 0
        assert row["would_start"] == ("yes" if starts else "no"), (version, name, run.stderr)
        detail = row["detail"]
        if detail is None:  # the command line itself refused: QEMU's words, then kvmppc's
            (line,) = _lines(run.stderr)
            assert str(row["first_error"]).startswith(line), (version, name)
            continue
        assert isinstance(detail, dict)
        check = detail["check"]
        # what QEMU prints before it starts or stops: deprecation warnings, the first error
        assert check["qemu_output"] == _lines(run.stderr), (version, name)
        if starts:
            table = MODELLED[parse_version(version)]
            assert table.cpus[check["cpu"]].pvr == _pvr(run), (version, name)


def test_what_changed_names_the_real_differences(real: dict[tuple[str, str], QemuRun],
                                                 audited: dict[str, list[dict[str, object]]],
                                                 ) -> None:
    for name in GUESTS:
        changed = " | ".join(map(str, _row(audited["10.0"], name)["changed_from_this_host"]))
        before, after = real[("7.2", name)], real[("10.0", name)]
        old_pvr, new_pvr = _pvr(before), _pvr(after)
        if old_pvr is not None and new_pvr is not None and old_pvr != new_pvr:
            assert f"PVR {new_pvr:#010x}" in changed and f"PVR {old_pvr:#010x}" in changed, name
        else:
            assert "PVR" not in changed, name
        for line in _lines(after.stderr):
            if line.startswith("warning: Machine type"):
                assert "new warning: " + line[len("warning: "):] in changed, name
    assert _row(audited["10.0"], "old-machine")["changed_from_this_host"] == [
        "machine type pseries-2.12 is gone in QEMU 10.0"]
    assert "CPU model power9_v1.0 is gone in QEMU 10.0" in _row(
        audited["10.0"], "gone-cpu")["changed_from_this_host"]
    assert "Use -machine help to list supported machines" in real[("10.0", "old-machine")].stderr

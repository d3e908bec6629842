"""The KVM-mode differential harness: real QEMU with ``-accel kvm`` inside the POWER guests.

Under TCG on x86 QEMU never reaches its KVM checks (the backing check, kvm_check_mmu, the
caps KVM must support, the vCPU's CPU model), so those are compared here: each guest config
of tests/powerguest (nested KVM-HV on POWER9, KVM-PR on POWER8, with 64 KiB- and 4 KiB-page
kernels) boots with Debian's ppc64el ``qemu-system-ppc64`` in its initramfs (harness.qemu_layer)
and, inside the guest, ``guest/kvm_diff.py`` runs QEMU on every case of ``kvm_cases.toml`` and
kvmppc's answer for the same command line on the guest's own live probe.  The host compares:

* start or not: QEMU exits 0 after writing the device tree, kvmppc answers "yes";
* QEMU's stderr, line by line, without the ``qemu-system-ppc64: `` prefix, against
  kvmppc's ``qemu_output`` (the warnings QEMU prints before its first error, then the error);
* when both start: ``ibm,segment-page-sizes`` of CPU 0, and ``cap-hpt-max-page-size``
  (QMP ``qom-get``) for cases that do not give the cap.

A case kvmppc answers "cannot judge" for is a disagreement too: the issue asks that every
real configuration be expressible.

QEMU's results do not depend on kvmppc, so they are cached per kernel build, QEMU layer and
command line (``$KVMPPC_GUEST_CACHE/kvm-oracle/``); a boot then runs QEMU only for new cases.
kvmppc's answers are always computed in the guest.  Every QEMU run inside has a time limit.

CLI::

    python3 -m tests.powerguest.kvm_oracle run power9-hv [--full]   # boot, compare, report
    python3 -m tests.powerguest.kvm_oracle replay power9-hv         # host-side, from the cache
    python3 -m tests.powerguest.kvm_oracle cases [--full]            # list the cases
"""

from __future__ import annotations

import argparse
import base64
import functools
import gzip
import hashlib
import itertools
import json
import os
import re
import shlex
import sys
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kvmppc.model import ProbeResult
from tests.powerguest import harness
from tests.powerguest.battery import GuestCommand, commands_for
from tests.powerguest.guest.kvm_diff import argv_key, kvmppc_answer

CASES_FILE = harness.HERE / "kvm_cases.toml"
PREFIX = "qemu-system-ppc64: "
QEMU_TIMEOUT = 60  # seconds for one QEMU run in the guest (about 1 s is usual)
# Reserved in the guest and mounted at /mnt/hp-<size>: radix hosts have 2 MiB and 1 GiB
# pages, hash hosts 16 MiB ones (a size the kernel lacks is skipped).
HUGEPAGES = {
    "hv": {"2048kB": 700, "1048576kB": 1},
    "pr": {"16384kB": 80},
}
# Which configs the harness runs, with the Debian release whose QEMU they use.
ORACLE_CONFIGS = ("power9-hv", "power10-hv", "power9-hv-4k", "power8-pr", "power8-pr-4k",
                  "power9-hv-debian13", "power9-hv-debian13-64k")


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    argv: tuple[str, ...]  # after "qemu-system-ppc64"
    kinds: frozenset[str]
    in_slice: bool

    @property
    def key(self) -> str:
        """What QEMU's cached result is filed under: the command line's hash."""
        return argv_key(list(self.argv))

    @property
    def gives_cap(self) -> bool:
        return any("cap-hpt-max-page-size=" in arg for arg in self.argv)

    @property
    def command_line(self) -> str:
        return shlex.join(["qemu-system-ppc64", *self.argv])


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    """Every case of the matrix, in file order (each group's product in axis order)."""
    data = tomllib.loads(path.read_text())
    base = list(data.get("base", []))
    cases: list[Case] = []
    seen: set[str] = set()
    for group in data["group"]:
        axes = [group.get(axis, [""]) for axis in ("machine", "props", "cpu", "memory")]
        for index, (machine, props, cpu, memory) in enumerate(itertools.product(*axes)):
            argv = [*base, "-M", ",".join(part for part in (machine, props) if part)]
            if cpu:
                argv += ["-cpu", cpu]
            argv += shlex.split(memory) + list(group.get("extra", []))
            digest = argv_key(argv)
            case_id = f"{group['name']}-{index:02d}-{digest}"
            if digest in seen:
                raise ValueError(f"{path.name}: {shlex.join(argv)} is in two groups")
            seen.add(digest)
            cases.append(Case(case_id, group["name"], tuple(argv), frozenset(group["kinds"]),
                              index < group.get("slice", 0)))
    return cases


def cases_for(config: harness.GuestConfig, full: bool) -> list[Case]:
    return [case for case in load_cases()
            if config.kind in case.kinds and (full or case.in_slice)]


# --------------------------------------------------------------------------------------------
# the cache of QEMU's results


def _qemu_cache(config: harness.GuestConfig, kernel: harness.Kernel, qemu_layer: Path) -> Path:
    """One directory per (guest CPU, kernel build, QEMU layer): QEMU's answers depend on all."""
    key = hashlib.sha256(f"{config.cpu}\0{config.machine}\0{kernel.key}\0{qemu_layer.name}"
                         .encode()).hexdigest()[:16]
    path = harness.cache_dir() / "kvm-oracle" / f"{config.name}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(cache: Path, case: Case) -> dict[str, Any] | None:
    path = cache / f"{case.key}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data if data.get("argv") == list(case.argv) else None


# --------------------------------------------------------------------------------------------
# running


@dataclass
class OracleRun:
    config: harness.GuestConfig
    kernel_release: str
    probe: dict[str, Any]
    qemu: dict[str, dict[str, Any]]  # case id -> QEMU's result
    kvmppc: dict[str, dict[str, Any]]  # case id -> kvmppc's answer in the guest
    cases: list[Case]
    seconds: float
    qemu_runs: int  # QEMU runs made in this boot (the rest came from the cache)
    guest_seconds: float
    cache: Path  # QEMU's results for this config, kernel and QEMU layer
    boot: harness.GuestRun  # the boot itself, with the battery's results when it ran

    def disagreements(self, case: Case) -> list[str]:
        answer = self.kvmppc[case.id]
        return disagreements(case, self.qemu[case.id], answer, advice_result(self.cache, answer))


def run(config_name: str, *, full: bool = False, timeout: float | None = None,
        echo: bool = False, with_battery: bool = False) -> OracleRun:
    """Boot ``config_name`` with QEMU inside, run its cases, return both sides' answers.

    ``with_battery``: run the config's battery (battery.py) first in the same boot, so the
    test session boots each config once (:func:`session`)."""
    config = harness.CONFIGS[config_name]
    cases = cases_for(config, full)
    kernel = harness.kernel_named(config.kernel)
    qemu_layer = harness.qemu_layer(config.suite)
    cache = _qemu_cache(config, kernel, qemu_layer)
    cached = {case.id: _cached(cache, case) for case in cases}
    todo = [case for case in cases if cached[case.id] is None]
    advice_cached = sorted(path.name.removeprefix("advice-").removesuffix(".json")
                           for path in cache.glob("advice-*.json"))
    spec = {
        "advice_cached": advice_cached,
        "hugepages": HUGEPAGES[config.kind],
        "timeout": QEMU_TIMEOUT,
        "dtb": "machine" if config.suite == harness.HOST_SUITE else "qmp",
        "cases": [{"id": case.id, "argv": list(case.argv), "qemu": cached[case.id] is None,
                   "qom": not case.gives_cap} for case in cases],
    }
    # About 1.1 s a QEMU run (two for a qom-get) and 0.3 s a kvmppc answer, plus the boot.
    limit = timeout or 300 + 4 * len(todo) + len(cases)
    command = GuestCommand("kvm-diff", "python3 /opt/kvmppc-guest/kvm_diff.py",
                           timeout=int(limit))
    battery = list(commands_for(config.kind)) if with_battery else []
    started = time.monotonic()
    boot = harness.run_in_guest(
        config, [*battery, command],
        timeout=limit + 60 + sum(c.timeout for c in battery) / 4, echo=echo,
        extra_layers=[qemu_layer],
        files={"etc/kvmppc-guest/kvm-cases.json": json.dumps(spec).encode()})
    result = boot.result("kvm-diff")
    if result.rc != 0:
        raise harness.HarnessError(f"{config_name}: kvm_diff.py exited {result.rc}:\n"
                                   f"{result.output[-3000:]}\nconsole:\n{boot.console_tail()}")
    document = json.loads(gzip.decompress(base64.b64decode(result.output.strip())))
    qemu: dict[str, dict[str, Any]] = {}
    kvmppc: dict[str, dict[str, Any]] = {}
    by_id = {case.id: case for case in cases}
    for entry in document["cases"]:
        case = by_id[entry["id"]]
        kvmppc[case.id] = entry["kvmppc"]
        if "qemu" in entry:
            if entry["qemu"]["rc"] == "timeout":
                raise harness.HarnessError(
                    f"{config_name}: QEMU ran out of {QEMU_TIMEOUT} s on {case.command_line}")
            qemu[case.id] = entry["qemu"]
            record = {"argv": list(case.argv), "kernel": boot.kernel_release, **entry["qemu"]}
            (cache / f"{case.key}.json").write_text(json.dumps(record, indent=1))
        else:
            qemu[case.id] = cached[case.id] or {}
        if "advice_qemu" in entry:
            record = entry["advice_qemu"]
            (cache / f"advice-{argv_key(record['argv'])}.json").write_text(
                json.dumps(record, indent=1))
    (cache / "probe.json").write_text(json.dumps(document["probe"], indent=1))
    return OracleRun(config, boot.kernel_release, document["probe"], qemu, kvmppc, cases,
                     time.monotonic() - started, len(todo), boot.seconds, cache, boot)


FULL_MATRIX = os.environ.get("KVMPPC_KVM_MATRIX") == "full"


@functools.cache
def session(config_name: str) -> OracleRun | harness.HarnessError:
    """The test session's one boot of ``config_name``: battery and cases (CI's slice, or the
    whole matrix with KVMPPC_KVM_MATRIX=full), or why there is none."""
    try:
        return run(config_name, full=FULL_MATRIX, with_battery=True)
    except harness.HarnessError as exc:
        return exc


# --------------------------------------------------------------------------------------------
# comparing


def qemu_lines(stderr: str) -> list[str]:
    """QEMU's stderr, each line without the program name, less the harness's own dumpdtb
    report ("info: dtb dumped to FILE. Exiting.")."""
    lines = [line.removeprefix(PREFIX) for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if not line.startswith("info: dtb dumped to ")]


def advice_result(cache: Path, kvmppc: dict[str, Any]) -> dict[str, Any] | None:
    """QEMU's run of kvmppc's first piece of advice for a refused case, if it has one."""
    advice = kvmppc.get("advice") or []
    if kvmppc.get("verdict") != "no" or not advice:
        return None
    path = cache / f"advice-{argv_key(advice[0]['argv'])}.json"
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def disagreements(case: Case, qemu: dict[str, Any], kvmppc: dict[str, Any],
                  advice: dict[str, Any] | None = None) -> list[str]:
    """How kvmppc's answer differs from QEMU's for ``case`` (empty: they agree); ``advice``
    is QEMU's run of kvmppc's first suggestion, which must start."""
    if kvmppc["verdict"] == "cannot judge":
        return ["kvmppc cannot judge: " + "; ".join(kvmppc["cannot_judge"])]
    if kvmppc["verdict"] == "usage error":
        return [f"kvmppc refused the command line: {kvmppc['usage_error']}"]
    found = []
    started = qemu["rc"] == 0
    if started != (kvmppc["verdict"] == "yes"):
        found.append(f"QEMU {'starts' if started else 'refuses'} (exit {qemu['rc']}),"
                     f" kvmppc says {kvmppc['verdict']}")
    said = qemu_lines(qemu["stderr"])
    if said != kvmppc["qemu_output"]:
        found.append(f"QEMU printed {said}, kvmppc predicts {kvmppc['qemu_output']}")
    if started and kvmppc["verdict"] == "yes":
        if qemu.get("cells") != kvmppc.get("cells"):
            found.append(f"segment page sizes: QEMU {qemu.get('cells')},"
                         f" kvmppc {kvmppc.get('cells')}")
        if "cap" in qemu and qemu["cap"] != kvmppc.get("cap"):
            found.append(f"cap-hpt-max-page-size: QEMU {qemu['cap']}, kvmppc {kvmppc.get('cap')}")
    if advice is not None and advice["rc"] != 0:
        found.append(f"kvmppc's advice '{kvmppc['advice'][0]['change']}'"
                     f" ({shlex.join(advice['argv'])}) does not start: QEMU printed"
                     f" {qemu_lines(advice['stderr'])}")
    return found


def report(results: OracleRun | None, config_name: str, *,
           answers: dict[str, dict[str, Any]], qemu: dict[str, dict[str, Any]],
           cases: Sequence[Case], cache: Path) -> tuple[int, int, int, str]:
    """(cases, agreeing, cannot-judge, text listing the disagreements)."""
    lines = []
    agree = cannot = 0
    for case in cases:
        found = disagreements(case, qemu[case.id], answers[case.id],
                              advice_result(cache, answers[case.id]))
        if not found:
            agree += 1
            continue
        if answers[case.id]["verdict"] == "cannot judge":
            cannot += 1
        lines.append(f"## {case.id}\n$ {case.command_line}\n"
                     f"QEMU exit {qemu[case.id]['rc']}, stderr:\n"
                     + "".join(f"    {line}\n" for line in qemu_lines(qemu[case.id]["stderr"]))
                     + "".join(f"- {item}\n" for item in found))
    header = (f"# {config_name}: {agree}/{len(cases)} agree, {cannot} cannot judge"
              + (f" (kernel {results.kernel_release}, {results.qemu_runs} QEMU runs,"
                 f" boot {results.guest_seconds:.0f} s)" if results else "") + "\n\n")
    return len(cases), agree, cannot, header + "\n".join(lines)


def replay(config_name: str, full: bool = True) -> tuple[int, int, int, str]:
    """Compare from the cache on the host: QEMU's cached results, kvmppc's answers computed
    here on the probe the guest took.  For working on the model; the tests use :func:`run`."""
    config = harness.CONFIGS[config_name]
    caches = sorted((path for path in (harness.cache_dir() / "kvm-oracle").glob(
                        f"{config_name}-*/probe.json")
                     if re.fullmatch(rf"{re.escape(config_name)}-[0-9a-f]{{16}}",
                                     path.parent.name)),
                    key=lambda path: path.stat().st_mtime)
    if not caches:
        raise harness.MissingPrerequisiteError(f"no cached run of {config_name}: run it first")
    cache = caches[-1].parent
    probe = ProbeResult.from_dict(json.loads(caches[-1].read_text()))
    cases = [case for case in cases_for(config, full) if _cached(cache, case) is not None]
    qemu = {case.id: _cached(cache, case) or {} for case in cases}
    answers = {case.id: kvmppc_answer(list(case.argv), probe) for case in cases}
    return report(None, config_name, answers=answers, qemu=qemu, cases=cases, cache=cache)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.powerguest.kvm_oracle",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("run", "replay"):
        p = sub.add_parser(action)
        p.add_argument("configs", nargs="*", default=list(ORACLE_CONFIGS),
                       choices=list(ORACLE_CONFIGS))
        p.add_argument("--full", action="store_true", help="the whole matrix, not CI's slice")
        p.add_argument("--out", type=Path, help="write each config's report to OUT/<config>.md")
        if action == "run":
            p.add_argument("--echo", action="store_true", help="copy the console to stderr")
    p = sub.add_parser("cases")
    p.add_argument("--full", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.action == "cases":
        for case in load_cases():
            if args.full or case.in_slice:
                print(f"{case.id} [{','.join(sorted(case.kinds))}] {case.command_line}")
        return 0
    total = agreeing = 0
    for name in args.configs:
        try:
            if args.action == "run":
                results = run(name, full=args.full, echo=args.echo)
                count, agree, _cannot, text = report(
                    results, name, answers=results.kvmppc, qemu=results.qemu,
                    cases=results.cases, cache=results.cache)
            else:
                count, agree, _cannot, text = replay(name, args.full)
        except harness.HarnessError as exc:
            harness.progress(f"{name}: {exc}")
            return 2
        total += count
        agreeing += agree
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.md").write_text(text)
        print(text.splitlines()[0] if args.out else text)
    print(f"total: {agreeing}/{total} agree")
    return 0 if agreeing == total else 1


if __name__ == "__main__":
    sys.exit(main())

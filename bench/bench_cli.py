"""Start-up of the ``kvmppc`` command, printed as ratios against baselines from the same run.

    python bench/bench_cli.py            # about a minute on 2 cores
    python bench/bench_cli.py --runs 10  # a smoke run

Two comparisons, each made in one interleaved run so the machine's load falls on both sides:

- ``kvmppc check --host-profile power9-radix-hv --max-page-size 16M`` against QEMU answering
  the same question itself: ``qemu-system-ppc64 -M pseries,cap-hpt-max-page-size=16M,
  dumpdtb=FILE`` under TCG (QEMU builds the machine, writes the device tree and exits; the
  check would start no guest either).  Target: the check no slower than QEMU.
- ``kvmppc --help`` against ``python -c pass`` with the same interpreter and site set-up
  (the editable install's import hook included).  Target: within 2x.

Timed with hyperfine (Debian's ``hyperfine``) when it is installed, else with a loop of
subprocess runs (interleaved, with CPU time from getrusage); medians of the wall time either
way, after warm-up runs, and the CPU time (user + system), which the machine's load moves
less.  The commands run without
PYTHONDONTWRITEBYTECODE, so the warm-up leaves the bytecode an installed kvmppc would have
(without it every run compiles each module from source, which is what such an environment
pays).  Prints the load average before and after: the ratios move with it.  Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
KVMPPC = str(Path(PYTHON).with_name("kvmppc"))  # the console script beside the interpreter


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def commands(dtb: str) -> dict[str, list[str]]:
    return {
        "python -c pass": [PYTHON, "-c", "pass"],
        "kvmppc --help": [KVMPPC, "--help"],
        "qemu dumpdtb": ["qemu-system-ppc64", "-M",
                         f"pseries,cap-hpt-max-page-size=16M,dumpdtb={dtb}"],
        "kvmppc check": [KVMPPC, "check", "--host-profile", "power9-radix-hv",
                         "--max-page-size", "16M"],
    }


Timing = dict[str, tuple[float, float]]  # name -> (median wall seconds, CPU seconds)


def with_hyperfine(cmds: dict[str, list[str]], runs: int) -> Timing:
    """Median wall time per command and its mean CPU time (user + system); hyperfine runs
    the commands one after another, each with warm-up runs."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = ["hyperfine", "--shell=none", "--ignore-failure", "--warmup", "3",
                "--runs", str(runs), "--style", "none", "--export-json", out.name]
        for name, cmd in cmds.items():
            argv += ["--command-name", name, " ".join(cmd)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=_env())
        results = json.loads(Path(out.name).read_text())["results"]
    return {r["command"]: (r["median"], r["user"] + r["system"]) for r in results}


def with_a_loop(cmds: dict[str, list[str]], runs: int) -> Timing:
    """Median wall and CPU time per command, the commands interleaved round by round."""
    wall: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for round_ in range(runs + 3):
        for name, cmd in cmds.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False, env=_env())
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_ >= 3:  # the first rounds warm the page cache and write bytecode
                wall[name].append(elapsed)
                cpu[name].append(after.ru_utime - before.ru_utime
                                 + after.ru_stime - before.ru_stime)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]))
            for name in cmds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--loop", action="store_true",
                        help="time with a Python loop even when hyperfine is installed")
    args = parser.parse_args()
    missing = [tool for tool in ("qemu-system-ppc64", KVMPPC) if not shutil.which(tool)]
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(str(Path(tmp) / "guest.dtb"))
        timer = "hyperfine" if shutil.which("hyperfine") and not args.loop else "loop"
        timings = (with_hyperfine if timer == "hyperfine" else with_a_loop)(cmds, args.runs)
    after = os.getloadavg()[0]
    print(f"timed with {timer}, {args.runs} runs each; load average {before:.2f} before,"
          f" {after:.2f} after")
    for name, (wall, cpu) in timings.items():
        print(f"  {name:16} wall median {wall * 1000:7.1f} ms   CPU {cpu * 1000:7.1f} ms")
    for label, name, base, target in (
        ("kvmppc check / qemu dumpdtb", "kvmppc check", "qemu dumpdtb", 1.0),
        ("kvmppc --help / python -c pass", "kvmppc --help", "python -c pass", 2.0),
    ):
        wall_ratio = timings[name][0] / timings[base][0]
        cpu_ratio = timings[name][1] / timings[base][1]
        print(f"{label:31} = {wall_ratio:.2f} wall, {cpu_ratio:.2f} CPU"
              f"  (target: at most {target:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

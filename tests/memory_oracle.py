"""Guest-RAM cases run through a real QEMU and through kvmppc on the same host.

Used by tests/test_policy_memory_qemu.py, in the test's own process for cases without
hugetlbfs, and as a script (``python tests/memory_oracle.py CASES.json``) inside a private mount
namespace (``unshare --mount``) where the test has mounted hugetlbfs: the live probe then sees
the mounts QEMU sees, and no other process on the host does.

Each case is QEMU arguments (``-accel tcg`` is added).  QEMU runs stopped (``-S``) with a QMP
``quit``: a machine that gets through its init and first reset exits 0, which is when it would
start; else it exits 1 with its error.  kvmppc reads the same arguments with the argv form and
answers on this host's live probe, for the release of the QEMU that ran.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qemu_oracle import Qemu, qemu10, qemu72

from kvmppc.inputs import translate_argv
from kvmppc.model import ProbeResult
from kvmppc.policy import check

PREFIX = "qemu-system-ppc64: "


@dataclass(frozen=True)
class Outcome:
    """Exit (True: QEMU starts) and the lines printed, QEMU's or kvmppc's."""

    starts: bool
    lines: tuple[str, ...]


def qemu_outcome(qemu: Qemu, args: Sequence[str]) -> Outcome:
    run = qemu.run(["-display", "none", "-nodefaults", "-accel", "tcg", *args, "-S", "-qmp",
                    "stdio"], qmp=[{"execute": "quit"}], timeout=120)
    # Every line, the caps' TCG warnings too (kvmppc/policy/caps.py models them).
    lines = tuple(line.removeprefix(PREFIX) for line in run.stderr.splitlines() if line.strip())
    return Outcome(run.returncode == 0, lines)


def kvmppc_outcome(probe: ProbeResult, args: Sequence[str], release: str) -> Outcome:
    translation = translate_argv(["qemu-system-ppc64", "-accel", "tcg", *args])
    assert translation.request is not None, translation.cannot_judge
    result = check(probe, replace(translation.request, qemu_version=release))
    return Outcome(result.ok, tuple(result.qemu_output))


def main(cases_file: str, release: str) -> None:
    """Inside the namespace: both outcomes for each case, on one QEMU release, as JSON."""
    from kvmppc.probe import probe as live_probe  # noqa: PLC0415 - the live host, here

    qemu = qemu72() if release == "7.2" else qemu10()
    assert isinstance(qemu, Qemu), qemu
    probe = live_probe()
    cases = json.loads(Path(cases_file).read_text())
    out = []
    for args in cases:
        ours, theirs = kvmppc_outcome(probe, args, release), qemu_outcome(qemu, args)
        out.append({"args": args, "kvmppc": [ours.starts, list(ours.lines)],
                    "qemu": [theirs.starts, list(theirs.lines)]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

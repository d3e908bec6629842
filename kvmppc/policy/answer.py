"""``kvmppc check``'s question, answered: QEMU's start-up replayed, then advice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from kvmppc.model import ProbeResult
from kvmppc.policy.advice import advise
from kvmppc.policy.backing import Backing
from kvmppc.policy.request import CheckRequest
from kvmppc.policy.result import CheckResult
from kvmppc.policy.startup import replay


def check(
    probe: ProbeResult, request: CheckRequest, backings: Sequence[Backing] | None = None, *,
    resolve: Callable[[str], Backing] | None = None,
) -> CheckResult:
    """Would QEMU 7.2 start this guest on the probed host?  With QEMU's errors, the guest's
    page-size table and, under ``advice``, what to change (each suggestion re-checked).

    ``backings`` are the RAM backends' page sizes when the caller read them itself (statfs
    on the live host); without them each mem-path is found in the probe's mount table.
    ``resolve`` does the same for the memory backends' mem-paths.
    """
    result = replay(probe, request, backings, resolve=resolve)
    return replace(result, advice=advise(probe, result))

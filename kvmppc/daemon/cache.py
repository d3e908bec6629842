"""The cached probe: what answers are built from, when to probe again, and what failed.

The KVM part (VM creation and ioctls) is probed at start, on request, on SIGHUP, on an
interval, and whenever the device node changes (module unloaded or loaded again).  Probes
run in a thread so the event loop keeps answering.  A probe that *fails* (it raised, the
device could not be opened, the host could not be read) does not replace the last good
answer: that one keeps being served, marked stale, and the failure is kept for health and
metrics.  The hugepage counts are read again for answers (answers of one loop iteration, or
of ``hugepages_max_age`` seconds, share a read).

Clients cannot make the daemon probe faster than ``min_refresh_interval``: a ``POST
/v1/refresh`` during a probe shares that probe, and one too soon after the last probe started
waits for the next, which every such request shares (one probe, many answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kvmppc.model import ProbeResult

log = logging.getLogger("kvmppc.daemon")

T = TypeVar("T")

DeviceSignature = tuple[int, int, int, int, int] | None


def device_signature(path: str) -> DeviceSignature:
    """Identity and access of the device node (inode, rdev, mode, owner, group), or ``None``
    when absent; a change means the module was reloaded or the node re-created."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # absent or not reachable: both are "changed" once it comes back
    return (st.st_ino, st.st_rdev, st.st_mode, st.st_uid, st.st_gid)


def probe_failure(result: ProbeResult) -> str | None:
    """Why a probe cannot stand in for the last good one, or ``None`` if it can.

    KVM present but not PowerPC, or a VM type whose PPC ioctls fail, is an answer (degraded),
    not a failure: it is what QEMU itself would find.  An unopenable device or an unreadable
    host is a failure: it says nothing about the guests that could run.
    """
    problems = [part for part in (result.kvm.error, result.host.error) if part]
    return "; ".join(problems) or None


def degradations(result: ProbeResult) -> list[str]:
    """The parts of an answer that carry errors, one line each, for health and STATUS."""
    lines = []
    if result.host.error:
        lines.append(f"host: {result.host.error}")
    if result.hugepages.error:
        lines.append(f"hugepages: {result.hugepages.error}")
    if result.kvm.error:
        lines.append(f"kvm: {result.kvm.error}")
    elif result.kvm.present:
        for vm in result.kvm.vm_types.values():
            if vm.available and vm.smmu is None:
                lines.append(f"kvm {vm.name}: {vm.smmu_error}")
    return lines


@dataclass(frozen=True)
class ProbeOutcome:
    """One probe attempt."""

    at: float  # wall clock, when it started
    duration_s: float
    failure: str | None
    number: int = 0  # 1 for the first probe of this process, then counting up
    reason: str = ""


class ProbeCache:
    """Holds the answer; probes through ``take_probe`` in a thread, one probe at a time.

    ``take_probe`` is :func:`kvmppc.probe.probe` (or a profile loader) with its paths bound;
    ``fresh_hugepages`` is :func:`kvmppc.probe.refresh_hugepages` likewise.
    """

    def __init__(
        self,
        take_probe: Callable[[], ProbeResult],
        fresh_hugepages: Callable[[ProbeResult], ProbeResult],
        *,
        device: str | None,
        refresh_interval: float,
        retry_interval: float,
        hugepages_max_age: float = 0.0,
        min_refresh_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        stat_device: Callable[[str], DeviceSignature] = device_signature,
    ) -> None:
        self._take_probe = take_probe
        self._fresh_hugepages = fresh_hugepages
        self.device = device  # None: nothing to watch (a replayed profile)
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.hugepages_max_age = hugepages_max_age
        self.min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._monotonic = monotonic
        self._stat_device = stat_device
        self.result: ProbeResult | None = None  # the answer served: last good, or the only one
        self.good = False  # whether self.result came from a probe that did not fail
        self.last: ProbeOutcome | None = None
        self.attempts = 0
        self.failures = 0
        self.generation = 0  # changes whenever anything an answer reports may have changed
        self._fresh: ProbeResult | None = None  # self.result with hugepages read at _fresh_at
        self._fresh_at = 0.0
        self._fresh_this_iteration = False
        self._last_attempt_mono = 0.0
        self._device_seen: DeviceSignature = None
        self._inflight: asyncio.Future[ProbeOutcome] | None = None
        self._inflight_started = 0.0
        self._started_any = False
        # Client refreshes waiting for the next probe (too soon after the last one).
        self._next: asyncio.Future[ProbeOutcome] | None = None
        self._next_timer: asyncio.TimerHandle | None = None
        self.hugepages_serial = 0  # changes whenever the hugepage part answers use changes
        self._served: ProbeResult | None = None
        self._memo: dict[str, Any] = {}
        self._memo_generation = -1

    # ----------------------------------------------------------------------------------------
    # answers

    @property
    def stale(self) -> bool:
        """The last attempt failed and an older good answer is being served."""
        return self.good and self.last is not None and self.last.failure is not None

    def answer(self) -> ProbeResult:
        """The cached probe with its hugepage part read now.

        Answers computed in the same event-loop iteration (requests that arrived together)
        share one read: they are answered at the same instant.  ``hugepages_max_age`` > 0
        lets later answers share it too, for at most that many seconds.
        """
        assert self.result is not None, "answer() before the first probe"
        fresh = self._fresh
        if fresh is not None and (self._fresh_this_iteration or (
                self.hugepages_max_age > 0
                and self._monotonic() - self._fresh_at < self.hugepages_max_age)):
            return fresh
        fresh = self._fresh_hugepages(self.result)
        self._fresh, self._fresh_at = fresh, self._monotonic()
        if fresh is not self._served:  # refresh_hugepages returns its input when unchanged
            self._served = fresh
            self.hugepages_serial += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return fresh  # no loop (a scrape in a test): nothing to share the read with
        self._fresh_this_iteration = True
        loop.call_soon(self._end_iteration)  # runs at the start of the next iteration
        return fresh

    def memo(self, name: str, build: Callable[[], T]) -> T:
        """``build()``'s value, kept until the probe generation changes (what is derived
        from the probe alone: the fleet answer, STATUS=)."""
        if self._memo_generation != self.generation:
            self._memo.clear()
            self._memo_generation = self.generation
        if name not in self._memo:
            self._memo[name] = build()
        value: T = self._memo[name]
        return value

    def _end_iteration(self) -> None:
        self._fresh_this_iteration = False

    def status(self) -> str:
        """``ok``, ``degraded`` (an answer with failing parts) or ``stale``."""
        if self.stale:
            return "stale"
        if self.result is None or not self.good or degradations(self.result):
            return "degraded"
        return "ok"

    def probe_running_s(self) -> float | None:
        if self._inflight is None:
            return None
        return self._monotonic() - self._inflight_started

    # ----------------------------------------------------------------------------------------
    # probing

    def due(self) -> str | None:
        """Why a probe should start now, or ``None``."""
        if self._inflight is not None:
            return None
        if self.result is None:
            return "start"
        if self.device is not None and self._stat_device(self.device) != self._device_seen:
            return f"{self.device} changed"
        since = self._monotonic() - self._last_attempt_mono
        if self.last is not None and self.last.failure is not None:
            return "retry after failure" if since >= self.retry_interval else None
        return "interval" if since >= self.refresh_interval else None

    def refresh(self, reason: str) -> asyncio.Future[ProbeOutcome]:
        """Probe again unless a probe is already running; either way, its outcome.

        Callers that stop waiting (a client that hangs up) do not cancel the probe.
        """
        if self._inflight is None:
            self._inflight = self._start(reason)
            self._inflight_started = self._monotonic()
            self._started_any = True
            if self._next is not None:
                # Refreshes waiting for the next probe get this one.
                if self._next_timer is not None:
                    self._next_timer.cancel()
                _chain(self._inflight, self._next)
                self._next = self._next_timer = None
        return asyncio.shield(self._inflight)

    def request_refresh(self, reason: str) -> asyncio.Future[ProbeOutcome]:
        """A client's refresh: the running probe, else a new one, but never sooner than
        ``min_refresh_interval`` after the last one started; the outcome of the probe that
        answers it.  Concurrent and too-early requests share one probe."""
        if self._inflight is not None:
            return asyncio.shield(self._inflight)
        if self._next is None:
            wait = (self._inflight_started + self.min_refresh_interval - self._monotonic()
                    if self._started_any else 0.0)
            if wait <= 0:
                return self.refresh(reason)
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            self._next_timer = loop.call_later(wait, self.refresh, reason)
        return asyncio.shield(self._next)

    def close(self) -> None:
        """Cancel a refresh waiting for its time (the daemon is stopping)."""
        if self._next_timer is not None:
            self._next_timer.cancel()
        if self._next is not None and not self._next.done():
            self._next.cancel()
        self._next = self._next_timer = None

    def _start(self, reason: str) -> asyncio.Future[ProbeOutcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ProbeOutcome] = loop.create_future()
        device_before = self._stat_device(self.device) if self.device is not None else None
        started_at, started = self._clock(), self._monotonic()

        def deliver(result: ProbeResult | None, error: BaseException | None) -> None:
            self._inflight = None
            outcome = self._record(result, error, started_at, started, device_before, reason=reason)
            log.log(
                logging.WARNING if outcome.failure else logging.INFO,
                "probe (%s) %s in %.1f ms%s", reason,
                "failed" if outcome.failure else "done", outcome.duration_s * 1000,
                f": {outcome.failure}" if outcome.failure else "",
                extra={"KVMPPC_PROBE_REASON": reason,
                       "KVMPPC_PROBE_DURATION_S": f"{outcome.duration_s:.6f}",
                       "KVMPPC_PROBE_FAILURE": outcome.failure or ""},
            )
            if not future.cancelled():
                future.set_result(outcome)

        def work() -> None:
            # The daemon's one thread besides the loop: the probe may block in the kernel
            # (VM creation), and the loop must keep answering meanwhile.
            try:
                result, error = self._take_probe(), None
            except Exception as exc:  # any bug in a probe becomes a failed probe, never a dead loop
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is exiting
                loop.call_soon_threadsafe(deliver, result, error)

        threading.Thread(target=work, name="kvmppc-probe", daemon=True).start()
        return future

    def _record(self, result: ProbeResult | None, error: BaseException | None,
                started_at: float, started: float,
                device_before: DeviceSignature, *, reason: str = "") -> ProbeOutcome:
        self.attempts += 1
        self.generation += 1
        self._last_attempt_mono = self._monotonic()
        self._device_seen = device_before
        failure = (probe_failure(result) if result is not None
                   else f"probe raised {type(error).__name__}: {error}")
        outcome = ProbeOutcome(started_at, self._monotonic() - started, failure,
                               number=self.attempts, reason=reason)
        self.last = outcome
        if failure is not None:
            self.failures += 1
        if result is not None and (failure is None or not self.good):
            # A failed probe replaces only an answer that was no better (or none at all).
            self.result = result
            self.good = failure is None
            self._fresh = None
        return outcome


def _chain(source: asyncio.Future[T], target: asyncio.Future[T]) -> None:
    """``target`` gets ``source``'s outcome."""
    def done(future: asyncio.Future[T]) -> None:
        if target.done():
            return
        if future.cancelled():
            target.cancel()
        elif (exc := future.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(future.result())
    source.add_done_callback(done)

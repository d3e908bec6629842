"""The daemon: routes, the loop that does the work, signals, notifications, shutdown.

Signal handlers only set flags.  The supervisor coroutine, on the same loop that answers the
requests, acts on them, starts re-probes when due, closes idle connections and sends the
watchdog ping, so a wedged loop stops the pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kvmppc import __version__
from kvmppc.daemon.cache import ProbeCache, degradations
from kvmppc.daemon.config import DaemonConfig
from kvmppc.daemon.http import (
    HttpServer,
    Limits,
    Request,
    Response,
    error_response,
    json_response,
)
from kvmppc.daemon.listeners import Listeners, describe, open_listeners
from kvmppc.daemon.metrics import (
    KvmppcCollector,
    ListenerStats,
    RequestMetrics,
    cached_fleet_answer,
)
from kvmppc.daemon.sd import Notifier, watchdog_interval
from kvmppc.errors import KvmppcError, UsageError
from kvmppc.model import ProbeResult
from kvmppc.policy import CheckRequest, check, format_size
from kvmppc.probe import ProbePaths, probe, refresh_hugepages
from kvmppc.profiles import load_profile
from kvmppc.render import cache_line, check_json, render_check

log = logging.getLogger("kvmppc.daemon")

_GET = ("GET", "HEAD")
_ANSWER_CACHE_SIZE = 512  # distinct answers kept; each a few KiB
_QUERY_CACHE_SIZE = 1024  # query strings kept with what they parse to


class App:
    """The HTTP routes over the cache.  ``api`` routes on the unix socket, ``/metrics`` on both.

    Answers are kept, keyed by what they are computed from: the probe generation, the
    hugepage part answers share (:attr:`ProbeCache.hugepages_serial`), and for checks the
    parsed :class:`CheckRequest` (so parameter order, defaults and spellings the request
    normalises share one answer).  The common questions, each backing x each KVM type x each
    page size the host offers, are computed ahead for each probe generation; any other
    question the first time is computed in a worker thread, so the loop goes on answering
    (and waiting clients of the same question share one computation).  A check takes ~4 ms
    on a POWER9 profile; a kept one costs a dictionary lookup.
    """

    def __init__(self, cache: ProbeCache, registry: CollectorRegistry,
                 started: float, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.registry = registry
        self.started = started
        self.clock = clock
        self.connections: Callable[[], int] = lambda: 0
        self.listeners: Callable[[], list[ListenerStats]] = list
        self._answers: OrderedDict[Hashable, Response] = OrderedDict()
        self._answers_generation = -1
        self._queries: OrderedDict[str, CheckRequest | Response] = OrderedDict()
        # query string, text? -> (generation, hugepage serial, answer): the fast path
        self._seen: dict[tuple[str, bool], tuple[int, int, Response]] = {}
        self._computing: dict[Hashable, asyncio.Future[Response]] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvmppc-answers")
        self._prepared: tuple[int, int] | None = None
        self._api: dict[str, tuple[tuple[str, ...], Callable[[Request], Any]]] = {
            "/v1/host": (_GET, self.host),
            "/v1/check": ((*_GET, "POST"), self.check),
            "/v1/refresh": (("POST",), self.refresh),
            "/v1/health": (_GET, self.health),
            "/metrics": (_GET, self.metrics),
        }
        self._metrics_only = {"/metrics": self._api["/metrics"]}

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def api(self, request: Request) -> Response | Awaitable[Response]:
        return self._route(self._api, request)

    def metrics_only(self, request: Request) -> Response | Awaitable[Response]:
        return self._route(self._metrics_only, request)

    @staticmethod
    def _route(routes: Mapping[str, tuple[tuple[str, ...], Callable[[Request], Any]]],
               request: Request) -> Response | Awaitable[Response]:
        route = routes.get(request.path)
        if route is None:
            return error_response(404, f"no {request.path} here; try {', '.join(routes)}")
        methods, handler = route
        if request.method not in methods:
            allowed = ", ".join(methods)
            return error_response(405, f"{request.path} takes {allowed}", [("Allow", allowed)])
        if request.query and request.path not in ("/v1/check", "/metrics"):
            return error_response(400, f"{request.path} takes no parameters")
        answer: Response | Awaitable[Response] = handler(request)
        return answer

    # -----------------------------------------------------------------------------------------

    def cache_meta(self) -> dict[str, Any]:
        """What the answer was built from; changes only when ``cache.generation`` does."""
        cache = self.cache
        assert cache.result is not None
        last = cache.last
        return {
            "status": cache.status(),
            "stale": cache.stale,
            "source": cache.result.source,
            "probed_at": cache.result.probed_at,
            "probe_duration_s": cache.result.duration_s,
            "last_attempt_at": last.at if last else None,
            "last_error": last.failure if last else None,
        }

    def _state(self) -> tuple[ProbeResult, int, int]:
        """The answer to build from, and what identifies it: (generation, hugepage serial)."""
        answer = self.cache.answer()
        generation, serial = self.cache.generation, self.cache.hugepages_serial
        if generation != self._answers_generation:
            self._answers.clear()  # nothing kept can be asked for again
            self._answers_generation = generation
        if self._prepared != (generation, serial):
            self._prepared = (generation, serial)
            self._prepare(answer, generation, serial)
        return answer, generation, serial

    def _keep(self, key: Hashable, response: Response) -> None:
        if response.status == 200 and key[0] == self._answers_generation:  # type: ignore[index]
            self._answers[key] = response
            if len(self._answers) > _ANSWER_CACHE_SIZE:
                self._answers.popitem(last=False)

    def _remember(self, query: str, text: bool, key: tuple[int, int, CheckRequest, bool],
                  response: Response) -> None:
        if response.status == 200:
            self._seen[query, text] = (key[0], key[1], response)
            if len(self._seen) > _QUERY_CACHE_SIZE:
                del self._seen[next(iter(self._seen))]  # the oldest: insertion order

    def _cached(self, key: Hashable, build: Callable[[], Response]) -> Response:
        response = self._answers.get(key)
        if response is None:
            response = build()
            self._keep(key, response)
        else:
            self._answers.move_to_end(key)
        return response

    def prepare(self) -> None:
        """Compute the common answers ahead if the probe or the hugepage part changed."""
        if self.cache.result is not None:
            self._state()

    async def prepared(self) -> None:
        """The common answers of the current probe, computed (before READY=1)."""
        self.prepare()
        with contextlib.suppress(RuntimeError):  # shut down: nothing to wait for
            await asyncio.wrap_future(self._worker.submit(lambda: None))  # after _prepare's

    def _prepare(self, answer: ProbeResult, generation: int, serial: int) -> None:
        meta = self.cache_meta()
        loop = asyncio.get_running_loop()
        requests = common_requests(answer)

        def work() -> None:
            for request in requests:
                key = (generation, serial, request, False)
                if self._answers.get(key) is not None:  # a plain get: safe from this thread
                    continue
                try:
                    response = _build_check(answer, request, False, meta)
                except Exception:  # a policy bug: these are then computed when asked (a 500)
                    log.exception("computing the common answer to %s", request)
                    return
                loop.call_soon_threadsafe(self._keep, key, response)

        with contextlib.suppress(RuntimeError):  # shutting down: nothing to prepare for
            self._worker.submit(work)

    def host(self, request: Request) -> Response:
        answer, generation, serial = self._state()
        return self._cached(
            (generation, serial, "host"),
            lambda: json_response(200, {"probe": answer.to_dict(), "cache": self.cache_meta()}),
        )

    def _parse(self, query: str) -> CheckRequest | Response:
        """The query string as a :class:`CheckRequest`, or the 400 saying what is wrong;
        kept per query string (parsing costs more than the lookup of a kept answer)."""
        parsed = self._queries.get(query)
        if parsed is not None:
            return parsed
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=True,
                              errors="strict", max_num_fields=64)
            parsed = CheckRequest.from_params(params)
        except (ValueError, UnicodeDecodeError) as exc:
            parsed = error_response(400, f"the query string is malformed ({exc}): use"
                                    " name=value pairs joined by &, percent-encoded UTF-8")
        except UsageError as exc:
            parsed = error_response(400, str(exc))
        self._queries[query] = parsed
        if len(self._queries) > _QUERY_CACHE_SIZE:
            self._queries.popitem(last=False)
        return parsed

    def check(self, request: Request) -> Response | Awaitable[Response]:
        """``kvmppc check --json``'s answer; with ``Accept: text/plain``, its text.  POST: the
        guest as a QEMU command line (``{"argv": [...]}``) or a libvirt domain (XML)."""
        text = "text/plain" in request.headers.get("accept", "")
        answer, generation, serial = self._state()
        if request.method == "POST":
            if request.query:
                return error_response(400, "POST /v1/check takes the guest in its body only")
            # Not cached: bodies vary more than questions; the worker keeps the loop free.
            return asyncio.get_running_loop().run_in_executor(
                self._worker, _build_input_check, answer, request.headers.get("content-type", ""),
                request.body, text, self.cache_meta())
        # The same query string as before: its answer without parsing or hashing a request.
        seen = self._seen.get((request.query, text))
        if seen is not None and seen[0] == generation and seen[1] == serial:
            return seen[2]
        parsed = self._parse(request.query)
        if isinstance(parsed, Response):
            return parsed
        key = (generation, serial, parsed, text)
        response = self._answers.get(key)
        if response is not None:
            self._answers.move_to_end(key)
            self._remember(request.query, text, key, response)
            return response
        future = self._computing.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(
                self._worker, _build_check, answer, parsed, text, self.cache_meta())
            self._computing[key] = future

            def done(finished: asyncio.Future[Response]) -> None:
                self._computing.pop(key, None)
                if not finished.cancelled() and finished.exception() is None:
                    self._keep(key, finished.result())
                    self._remember(request.query, text, key, finished.result())

            future.add_done_callback(done)
        return asyncio.shield(future)

    async def refresh(self, request: Request) -> Response:
        """A probe, the running one, or the next one: never sooner than min_refresh_interval
        after the last (requests in between share it); which probe answered is in the body."""
        outcome = await self.cache.request_refresh(f"POST /v1/refresh from {request.peer}")
        body = {"refreshed": outcome.failure is None, "error": outcome.failure,
                "probe": {"number": outcome.number, "reason": outcome.reason,
                          "started_at": outcome.at, "duration_s": outcome.duration_s},
                "cache": self.cache_meta()}
        return json_response(200 if outcome.failure is None else 503, body)

    def health(self, request: Request) -> Response:
        """200 while the answers reflect the last probe (``ok``, or ``degraded``: answers
        with failing parts, as QEMU itself would find them); 503 when ``stale`` (the last
        probe failed and an older answer is served), so a monitor reading only the code is
        right."""
        cache = self.cache
        assert cache.result is not None
        status = cache.status()
        return json_response(503 if status == "stale" else 200, {
            "status": status,
            "version": __version__,
            "uptime_s": round(self.clock() - self.started, 3),
            "problems": degradations(cache.result),
            "probe_running_s": cache.probe_running_s(),
            "probes": cache.attempts,
            "probe_failures": cache.failures,
            "connections": self.connections(),
            "listeners": {stats.name: {"connections": stats.open, "refused": stats.refused,
                                       "evicted": stats.evicted, "timed_out": stats.timed_out}
                          for stats in self.listeners()},
            "cache": self.cache_meta(),
        })

    def metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


def _build_input_check(answer: ProbeResult, content_type: str, body: bytes, text: bool,
                       meta: dict[str, Any]) -> Response:
    """A QEMU command line's or a libvirt domain's answer (kvmppc.inputs), in the worker."""
    from kvmppc.inputs.answer import judge, request_from_body  # noqa: PLC0415 - POST only
    from kvmppc.inputs.domain_xml import host_memory_from_probe  # noqa: PLC0415 - same
    from kvmppc.qemu_versions import choose  # noqa: PLC0415 - same

    # read as the QEMU the answer is for reads it (the installed one, else the newest)
    release = choose(None, answer.host.qemu_version).version
    try:
        verdict = judge(request_from_body(content_type, body, host_memory_from_probe(answer),
                                          release), answer)
    except UsageError as exc:
        return error_response(400, str(exc))
    headers = (("Kvmppc-Answer", verdict.verdict),)
    if text:
        return Response(200, f"{verdict.render()}\n{cache_line(meta)}\n".encode(),
                        "text/plain; charset=utf-8", headers)
    return json_response(200, {**verdict.to_dict(), "cache": meta}, headers)


def _build_check(answer: ProbeResult, request: CheckRequest, text: bool,
                 meta: dict[str, Any]) -> Response:
    """One check's answer; runs in the worker thread (pure: the probe is frozen)."""
    try:
        result = check(answer, request)
    except UsageError as exc:
        return error_response(400, str(exc))
    if text:
        body = f"{render_check(result)}\n{cache_line(meta)}\n".encode()
        return Response(200, body, "text/plain; charset=utf-8",
                        (("Kvmppc-Answer", "yes" if result.ok else "no"),))
    return json_response(200, {**check_json(result), "cache": meta})


def common_requests(answer: ProbeResult) -> list[CheckRequest]:
    """The questions asked most, computed ahead per probe generation: each backing
    (anonymous, each hugetlbfs mount) x each KVM type x each ``cap-hpt-max-page-size`` the
    host offers (the page sizes KVM_PPC_GET_SMMU_INFO lists, spelt as people write them for
    QEMU: 64K and 64k), and the machine's default."""
    kvm_types: list[str | None] = [None]
    sizes: set[int] = set()
    for vm in answer.kvm.usable_vm_types:
        if vm.name != "default":
            kvm_types.append(vm.name.upper())
        assert vm.smmu is not None
        sizes.update(1 << page.page_shift for segment in vm.smmu.segments
                     for page in segment.pages)
    spellings: list[str | None] = [None]
    for size in sorted(sizes):
        written = format_size(size)
        spellings += sorted({written, written.lower()})
    backings = [()] + [(mount.path,) for mount in answer.hugepages.mounts]
    return [CheckRequest(max_page_size=max_page_size, mem_paths=mem_paths, kvm_type=kvm_type)
            for mem_paths in backings for kvm_type in kvm_types for max_page_size in spellings]


def status_line(cache: ProbeCache) -> str:
    """The one-line ``STATUS=`` for ``systemctl status``."""
    result = cache.result
    if result is None:
        return "probing"
    kvm = result.kvm
    if not kvm.present or kvm.api_version is None:
        what = f"no usable KVM ({kvm.error})" if kvm.error else "no KVM"
    elif not kvm.powerpc:
        what = f"KVM on {result.host.arch} is not PowerPC: pseries guests run under TCG"
    else:
        usable = ", ".join(vm.name for vm in kvm.usable_vm_types) or "none"
        try:
            largest = cached_fleet_answer(cache, result)
        except Exception:  # the status line must not stop the loop; the log says what broke
            log.exception("computing the largest cap-hpt-max-page-size for STATUS=")
            largest = {}
        sizes = ", ".join(f"{kvm_type} {backing} {size >> 10}K"
                          for (kvm_type, backing), size in largest.items())
        what = f"PowerPC KVM, VM types with SMMU info: {usable}" + (
            f"; largest cap-hpt-max-page-size: {sizes}" if sizes else "")
    when = time.strftime("%H:%M:%S", time.localtime(result.probed_at))
    stale = f"; STALE, last probe failed: {cache.last.failure}" if (
        cache.stale and cache.last) else ""
    return f"{cache.status()}: {what}; probed {when} in {result.duration_s * 1000:.0f} ms{stale}"


class Daemon:
    """``kvmppc serve``.  The environment (NOTIFY_SOCKET, LISTEN_FDS, WATCHDOG_USEC) and the
    probe's paths are parameters with the real ones as defaults."""

    def __init__(self, config: DaemonConfig, environ: Mapping[str, str] = os.environ,
                 probe_paths: ProbePaths | None = None) -> None:
        self.config = config
        self.environ = environ
        self.paths = probe_paths or ProbePaths(kvm_device=config.device)
        self._stop = False
        self._reload = False
        self._wake: asyncio.Event | None = None
        self.notifier = Notifier(environ)

    def run(self) -> int:
        return asyncio.run(self._main())

    def _flag(self, name: str) -> None:
        # Signal handler: set a flag and wake the supervisor, nothing else.
        if name == "reload":
            self._reload = True
        else:
            self._stop = True
        if self._wake is not None:
            self._wake.set()

    def _make_cache(self) -> ProbeCache:
        config, paths = self.config, self.paths
        if config.host_profile:
            profile = config.host_profile
            return ProbeCache(lambda: load_profile(profile), lambda result: result, device=None,
                              refresh_interval=config.refresh_interval,
                              retry_interval=config.retry_interval,
                              min_refresh_interval=config.min_refresh_interval)
        return ProbeCache(partial(probe, paths), partial(refresh_hugepages, paths=paths),
                          device=paths.kvm_device, refresh_interval=config.refresh_interval,
                          retry_interval=config.retry_interval,
                          hugepages_max_age=config.hugepages_max_age,
                          min_refresh_interval=config.min_refresh_interval)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for signum, name in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"),
                             (signal.SIGHUP, "reload")):
            loop.add_signal_handler(signum, self._flag, name)
        self.notifier.send("STATUS=opening sockets")
        listeners = open_listeners(self.config, self.environ)
        try:
            return await self._serve(listeners)
        finally:
            listeners.close()
            self.notifier.close()

    async def _serve(self, listeners: Listeners) -> int:
        loop = asyncio.get_running_loop()
        cache = self._make_cache()
        self.notifier.send("STATUS=probing the host")
        outcome = await cache.refresh("start")
        if cache.result is None:
            raise KvmppcError(f"the first probe gave nothing to serve: {outcome.failure}")

        registry = CollectorRegistry(auto_describe=True)
        requests = RequestMetrics(registry)
        config = self.config
        limits = Limits(max_request_bytes=config.max_request_bytes,
                        max_headers=config.max_headers,
                        max_connections=config.max_connections,
                        idle_timeout=config.idle_timeout,
                        write_timeout=config.write_timeout)
        # One connection budget per listener: no number of scrapers (TCP, maybe from other
        # hosts) can lock out the local API, and a full API cannot block a scrape.
        api_http = HttpServer(limits, "api", observer=requests.observe)
        metrics_http = HttpServer(
            dataclasses.replace(limits, max_connections=config.metrics_max_connections),
            "metrics", observer=requests.observe)
        https = (api_http, metrics_http)
        app = App(cache, registry, started=time.time())
        app.connections = lambda: sum(len(h.connections) for h in https)
        app.listeners = lambda: [ListenerStats(h.name, len(h.connections), h.refused,
                                               h.evicted, h.timed_out) for h in https]
        registry.register(KvmppcCollector(cache, connections=app.connections,
                                          refused=lambda: sum(h.refused for h in https),
                                          listeners=app.listeners))
        servers = [await loop.create_unix_server(api_http.protocol_factory(app.api),
                                                 sock=listeners.api)]
        if listeners.metrics is not None:
            servers.append(await loop.create_server(
                metrics_http.protocol_factory(app.metrics_only), sock=listeners.metrics))
        self.notifier.send("STATUS=computing the common answers")
        await app.prepared()
        where = ", ".join(describe(s) for s in (listeners.api, listeners.metrics) if s is not None)
        log.info("kvmppc %s serving on %s%s", __version__, where,
                 " (sockets from systemd)" if listeners.activated else "")
        status = status_line(cache)
        self.notifier.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

        watchdog = watchdog_interval(self.environ)
        tick = self.config.device_poll_interval
        if watchdog:
            tick = min(tick, watchdog / 2)  # sd_watchdog_enabled(3): ping at half the timeout
        last_ping = 0.0
        reload_task: asyncio.Task[None] | None = None
        assert self._wake is not None
        while not self._stop:
            with contextlib.suppress(TimeoutError):  # a tick: do the periodic work below
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            self._wake.clear()
            if self._stop:
                break
            if reload_task is not None and reload_task.done():
                reload_task = None
            if self._reload and reload_task is None:
                self._reload = False
                reload_task = asyncio.create_task(self._reload_probe(cache))
            reason = cache.due()
            if reason is not None:
                cache.refresh(reason)
            for http in https:
                http.sweep()
            app.prepare()
            new_status = status_line(cache)
            if new_status != status:
                status = new_status
                self.notifier.send(f"STATUS={status}")
            now = time.monotonic()
            if watchdog and now - last_ping >= watchdog / 2:
                self.notifier.send("WATCHDOG=1")
                last_ping = now

        log.info("stopping")
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        for server in servers:
            server.close()
        for http in https:
            http.close_all()
        for server in servers:
            await server.wait_closed()
        if reload_task is not None:
            reload_task.cancel()
        cache.close()
        app.close()
        return 0

    async def _reload_probe(self, cache: ProbeCache) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}",
                           "STATUS=reloading: probing again (SIGHUP)")
        await cache.refresh("SIGHUP")
        self.notifier.send("READY=1", f"STATUS={status_line(cache)}")

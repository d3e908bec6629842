"""The daemon: routes, the loop that does the work, signals, notifications, shutdown.

Signal handlers only set flags.  The supervisor coroutine, on the same loop that answers the
requests, acts on them, starts re-probes when due, closes idle connections and sends the
watchdog ping, so a wedged loop stops the pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
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
from kvmppc.daemon.metrics import KvmppcCollector, RequestMetrics, fleet_answer
from kvmppc.daemon.sd import Notifier, watchdog_interval
from kvmppc.errors import KvmppcError, UsageError
from kvmppc.model import ProbeResult, jsonable
from kvmppc.policy import CheckRequest, check
from kvmppc.probe import ProbePaths, probe, refresh_hugepages
from kvmppc.profiles import load_profile
from kvmppc.render import cache_line, check_json, render_check

log = logging.getLogger("kvmppc.daemon")

_GET = ("GET", "HEAD")
_ANSWER_CACHE_SIZE = 256  # distinct answers kept; each a few KiB


class App:
    """The HTTP routes over the cache.  ``api`` routes on the unix socket, ``/metrics`` on both.

    Answers are kept, keyed by what they are computed from: the probe generation, the
    hugepage part just read, and (for checks) the query.  A policy check on a POWER host
    takes milliseconds; a repeated one costs a dictionary lookup.
    """

    def __init__(self, cache: ProbeCache, registry: CollectorRegistry,
                 started: float, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.registry = registry
        self.started = started
        self.clock = clock
        self.connections: Callable[[], int] = lambda: 0
        self._answers: OrderedDict[Hashable, Response] = OrderedDict()
        self._api: dict[str, tuple[tuple[str, ...], Callable[[Request], Any]]] = {
            "/v1/host": (_GET, self.host),
            "/v1/check": (_GET, self.check),
            "/v1/refresh": (("POST",), self.refresh),
            "/v1/health": (_GET, self.health),
            "/metrics": (_GET, self.metrics),
        }
        self._metrics_only = {"/metrics": self._api["/metrics"]}

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

    def _cached(self, key: Hashable, build: Callable[[], Response]) -> Response:
        response = self._answers.get(key)
        if response is None:
            response = build()
            if response.status == 200:
                self._answers[key] = response
                if len(self._answers) > _ANSWER_CACHE_SIZE:
                    self._answers.popitem(last=False)
        else:
            self._answers.move_to_end(key)
        return response

    def host(self, request: Request) -> Response:
        answer = self.cache.answer()
        return self._cached(
            ("host", self.cache.generation, answer.hugepages),
            lambda: json_response(200, {"probe": jsonable(answer), "cache": self.cache_meta()}),
        )

    def check(self, request: Request) -> Response:
        """``kvmppc check --json``'s answer; with ``Accept: text/plain``, its text."""
        answer = self.cache.answer()
        text = "text/plain" in request.headers.get("accept", "")
        key = ("check", self.cache.generation, answer.hugepages, request.query, text)
        return self._cached(key, lambda: self._check(answer, request.query, text))

    def _check(self, answer: ProbeResult, query: str, text: bool) -> Response:
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=True,
                              errors="strict", max_num_fields=64)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, f"the query string is malformed ({exc}): use"
                                  " name=value pairs joined by &, percent-encoded UTF-8")
        try:
            result = check(answer, CheckRequest.from_params(params))
        except UsageError as exc:
            return error_response(400, str(exc))
        meta = self.cache_meta()
        if text:
            body = f"{render_check(result)}\n{cache_line(meta)}\n".encode()
            return Response(200, body, "text/plain; charset=utf-8",
                            (("Kvmppc-Answer", "yes" if result.ok else "no"),))
        return json_response(200, {**check_json(result), "cache": meta})

    async def refresh(self, request: Request) -> Response:
        outcome = await self.cache.refresh(f"POST /v1/refresh from {request.peer}")
        body = {"refreshed": outcome.failure is None, "error": outcome.failure,
                "cache": self.cache_meta()}
        return json_response(200 if outcome.failure is None else 503, body)

    def health(self, request: Request) -> Response:
        cache = self.cache
        assert cache.result is not None
        return json_response(200, {
            "status": cache.status(),
            "version": __version__,
            "uptime_s": round(self.clock() - self.started, 3),
            "problems": degradations(cache.result),
            "probe_running_s": cache.probe_running_s(),
            "probes": cache.attempts,
            "probe_failures": cache.failures,
            "connections": self.connections(),
            "cache": self.cache_meta(),
        })

    def metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


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
            largest = fleet_answer(result)
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
                              retry_interval=config.retry_interval)
        return ProbeCache(partial(probe, paths), partial(refresh_hugepages, paths=paths),
                          device=paths.kvm_device, refresh_interval=config.refresh_interval,
                          retry_interval=config.retry_interval,
                          hugepages_max_age=config.hugepages_max_age)

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
        limits = Limits(max_request_bytes=self.config.max_request_bytes,
                        max_headers=self.config.max_headers,
                        max_connections=self.config.max_connections,
                        idle_timeout=self.config.idle_timeout)
        http = HttpServer(limits, observer=requests.observe)
        app = App(cache, registry, started=time.time())
        app.connections = lambda: len(http.connections)
        registry.register(KvmppcCollector(cache, connections=app.connections,
                                          refused=lambda: http.refused))
        servers = [await loop.create_unix_server(http.protocol_factory(app.api),
                                                 sock=listeners.api)]
        if listeners.metrics is not None:
            servers.append(await loop.create_server(http.protocol_factory(app.metrics_only),
                                                    sock=listeners.metrics))
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
            http.sweep()
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
        http.close_all()
        for server in servers:
            await server.wait_closed()
        if reload_task is not None:
            reload_task.cancel()
        return 0

    async def _reload_probe(self, cache: ProbeCache) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}",
                           "STATUS=reloading: probing again (SIGHUP)")
        await cache.refresh("SIGHUP")
        self.notifier.send("READY=1", f"STATUS={status_line(cache)}")

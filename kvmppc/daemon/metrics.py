"""Prometheus metrics: a collector over the cached probe, and the daemon's own request stats.

The collector builds fresh families from the cache each scrape (nothing carries over), in
the daemon's own registry.  Series per host stay small: a few dozen on a POWER host (see the
README), most of them the supported (segment, page) size pairs and the hugepage pools.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from kvmppc import __version__
from kvmppc.daemon.cache import ProbeCache
from kvmppc.daemon.http import Request
from kvmppc.model import ProbeResult
from kvmppc.policy import CheckRequest, check
from kvmppc.qemu_versions import choose

ENDPOINTS = ("host", "check", "refresh", "health", "metrics")
_ENDPOINT_OF_PATH = {
    "/v1/host": "host", "/v1/check": "check", "/v1/refresh": "refresh",
    "/v1/health": "health", "/metrics": "metrics",
}
# Answers take tens of microseconds when cached; a re-probe (POST /v1/refresh) milliseconds.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0)


def endpoint_of(request: Request | None) -> str:
    """A bounded label value: a known endpoint, ``other`` for any other path, ``invalid``
    for a request that could not be parsed."""
    if request is None:
        return "invalid"
    return _ENDPOINT_OF_PATH.get(request.path, "other")


class RequestMetrics:
    """The daemon's own behaviour, instrumented directly in its registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # No *_created series: a fleet pays for each (issue 14's budget), and nothing reads
        # them.  prometheus_client's switch is per process, and this process is the daemon.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client 0.2x
        self.requests = Counter(
            "kvmppc_http_requests", "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"], registry=registry)
        self.latency = Histogram(
            "kvmppc_http_request_duration_seconds",
            "Time from a whole request received to its answer written",
            buckets=_LATENCY_BUCKETS, registry=registry)
        # The usual series exist from the start; children are kept to skip labels() per
        # request (a lock and a tuple of strings each time).
        self._children = {(endpoint, 200): self.requests.labels(endpoint, "200")
                          for endpoint in ENDPOINTS}

    def observe(self, request: Request | None, status: int, seconds: float) -> None:
        key = (endpoint_of(request), status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(key[0], str(status))
        child.inc()
        if request is not None:
            self.latency.observe(seconds)


def fleet_answer(result: ProbeResult) -> dict[tuple[str, str], int]:
    """The largest ``cap-hpt-max-page-size`` this host can run, per KVM type and backing.

    Keys are ``(kvm_type, backing)``: the default VM type and, on PowerPC, each other usable
    one; backing ``anonymous`` (no mem-path: base pages) or a hugetlbfs mount.  The policy
    answers it (``advice.largest_max_page_size`` of a check, 0 when none works).  It depends
    on the KVM part and the mount table only, which change only with a probe: callers keep it
    per probe generation (:meth:`ProbeCache.memo`), nothing here keeps it.
    """
    kvm_types = ["default"]
    if result.kvm.powerpc:
        kvm_types += [vm.name for vm in result.kvm.usable_vm_types if vm.name != "default"]
    backings = [("anonymous", ())] + [(m.path, (m.path,)) for m in result.hugepages.mounts]
    answer: dict[tuple[str, str], int] = {}
    for kvm_type in kvm_types:
        for label, mem_paths in backings:
            request = CheckRequest(mem_paths=mem_paths,
                                   kvm_type=None if kvm_type == "default" else kvm_type.upper())
            advice = check(result, request).advice
            largest = advice.largest_max_page_size if advice else None
            answer[kvm_type, label] = largest.size if largest else 0
    return answer


def cached_fleet_answer(cache: ProbeCache, result: ProbeResult) -> dict[tuple[str, str], int]:
    """:func:`fleet_answer` of the cached probe, computed once per probe generation."""
    return cache.memo("fleet_answer", lambda: fleet_answer(result))


@dataclass(frozen=True)
class ListenerStats:
    """One listener's connections, for the metrics."""

    name: str  # "api" or "metrics"
    open: int  # file descriptors open
    refused: int
    evicted: int
    timed_out: int


class KvmppcCollector:
    """Families built from the cached probe at each scrape."""

    def __init__(self, cache: ProbeCache, connections: Callable[[], int] = lambda: 0,
                 refused: Callable[[], int] = lambda: 0,
                 listeners: Callable[[], Iterable[ListenerStats]] = lambda: ()) -> None:
        self._cache = cache
        self._connections = connections
        self._refused = refused
        self._listeners = listeners

    def describe(self) -> Iterable[Metric]:
        # Names only, no samples: registering must not probe or read anything.
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        if self._cache.result is None:
            return []
        families = self._families()
        self._fill(families, self._cache.answer())
        return list(families.values())

    def _families(self) -> dict[str, Metric]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        # How old what a scrape reports may be, in the HELP text (the exposition format has
        # no per-sample age): the probe-derived families are as of the probe, the hugepage
        # counts are shared by answers for at most hugepages_max_age seconds.
        probed = " (as of the cached probe, kvmppc_probe_timestamp_seconds)"
        max_age = self._cache.hugepages_max_age
        counted = (f" (read at most {max_age:g} s before the scrape)" if max_age
                   else " (read at the scrape)")
        families: list[Metric] = [
            g("kvmppc_build_info", "The daemon's version and Python; the value is 1",
              labels=["version", "python_version", "python_implementation"]),
            g("kvmppc_host_info", "The probed host; the value is 1",
              labels=["arch", "kernel_release", "cpu_model", "platform", "mmu", "source"]),
            # The QEMU release the answers are for, once per host rather than a label on each
            # answer family: 7.2 and 10.0 give the same caps wherever both start the guest
            # (the differential tests), so a label there would only multiply series.
            g("kvmppc_qemu_info", "The qemu-system-ppc64 the probe found (installed, empty"
              " when none) and the QEMU release the answers model (modelled: the installed"
              " one, the nearest modelled to it, or the newest); the value is 1" + probed,
              labels=["installed", "modelled"]),
            g("kvmppc_probe_success", "Whether the last probe succeeded (device opened, host"
              " read)"),
            g("kvmppc_probe_stale", "1 when the last probe failed and an older answer is served"),
            g("kvmppc_probe_timestamp_seconds", "When the answer being served was probed"),
            g("kvmppc_probe_duration_seconds", "How long the last probe took"),
            c("kvmppc_probes", "Probes taken (start, interval, refresh, SIGHUP, device change)"),
            c("kvmppc_probe_failures", "Probes that failed"),
            g("kvmppc_kvm_present", "Whether the KVM device exists" + probed),
            g("kvmppc_kvm_powerpc",
              "Whether KVM is PowerPC (else pseries guests run under TCG)" + probed),
            g("kvmppc_vm_type_available", "Whether KVM_CREATE_VM of this type succeeds" + probed,
              labels=["vm_type"]),
            g("kvmppc_vm_type_needs_host_contiguous_pages",
              "KVM_PPC_PAGE_SIZES_REAL: guest pages must be backed by host pages at least as"
              " large" + probed, labels=["vm_type"]),
            g("kvmppc_vm_type_slb_entries", "SLB size from KVM_PPC_GET_SMMU_INFO" + probed,
              labels=["vm_type"]),
            g("kvmppc_vm_type_hpt_page_size_info",
              "A (segment base page, actual page) size pair KVM_PPC_GET_SMMU_INFO supports, as"
              " page shifts; the value is 1" + probed,
              labels=["vm_type", "segment_page_shift", "page_shift"]),
            g("kvmppc_base_page_size_bytes", "The host's base page size (getpagesize)"),
            g("kvmppc_hugepages_pages", "Hugepage pool size (nr_hugepages)" + counted,
              labels=["page_size"]),
            g("kvmppc_hugepages_free_pages", "Free hugepages in the pool" + counted,
              labels=["page_size"]),
            g("kvmppc_hugepages_reserved_pages", "Hugepages reserved for mappings not yet"
              " faulted in" + counted, labels=["page_size"]),
            g("kvmppc_hugepages_surplus_pages",
              "Hugepages above nr_hugepages (overcommit)" + counted,
              labels=["page_size"]),
            g("kvmppc_hugetlbfs_mount_page_size_bytes",
              "A hugetlbfs mount and the page size QEMU reads through statfs" + probed,
              labels=["path"]),
            g("kvmppc_hpt_max_page_size_bytes",
              "The largest cap-hpt-max-page-size a pseries guest can start with, per KVM type"
              " and memory backing (0: none)" + probed, labels=["kvm_type", "backing"]),
            # Fleet-side joins (service/prometheus/kvmppc-rules.yml): the answer keyed by the
            # backing's page size instead of its path, and pool page sizes as values, since
            # PromQL cannot turn a label into a number.
            g("kvmppc_backing_hpt_max_page_size_bytes",
              "The largest cap-hpt-max-page-size per KVM type and kind of backing (anonymous:"
              " base pages; hugetlbfs: any mount), keyed by the backing page size (0: none)"
              + probed,
              labels=["kvm_type", "backing", "page_size"]),
            g("kvmppc_hugepages_page_size_bytes",
              "A hugepage pool's page size, as a value" + probed,
              labels=["page_size"]),
            g("kvmppc_http_connections", "Open client connections (file descriptors), all"
              " listeners"),
            c("kvmppc_http_connections_refused", "Connections turned away at the limit, all"
              " listeners"),
            g("kvmppc_http_listener_connections", "Open client connections (file descriptors)"
              " of a listener", labels=["listener"]),
            c("kvmppc_http_listener_connections_refused", "Connections a listener turned away"
              " at its limit", labels=["listener"]),
            c("kvmppc_http_listener_connections_evicted", "Connections dropped at the limit,"
              " having waited longest for a request, to make room", labels=["listener"]),
            c("kvmppc_http_listener_connections_timed_out", "Connections cut off: a request"
              " slower than idle_timeout, or answers unread for write_timeout",
              labels=["listener"]),
        ]
        return {family.name: family for family in families}

    def _fill(self, families: dict[str, Metric], result: ProbeResult) -> None:
        cache = self._cache

        def gauge(name: str, value: float, labels: Iterable[str] = ()) -> None:
            family = families[name]
            assert isinstance(family, GaugeMetricFamily)
            family.add_metric(list(labels), value)

        def counter(name: str, value: float) -> None:
            family = families[name]
            assert isinstance(family, CounterMetricFamily)
            family.add_metric([], value)

        def labelled_counter(name: str, value: float, labels: Iterable[str]) -> None:
            family = families[name]
            assert isinstance(family, CounterMetricFamily)
            family.add_metric(list(labels), value)

        gauge("kvmppc_build_info", 1, [__version__, platform.python_version(),
                                       platform.python_implementation()])
        host, kvm = result.host, result.kvm
        gauge("kvmppc_host_info", 1, [host.arch, host.kernel_release or "",
                                      host.cpu_model or "", host.platform or "",
                                      host.mmu or "", result.source])
        installed = host.qemu_version
        gauge("kvmppc_qemu_info", 1, [installed or "", choose(None, installed).version])
        last = cache.last
        gauge("kvmppc_probe_success", float(last is not None and last.failure is None))
        gauge("kvmppc_probe_stale", float(cache.stale))
        gauge("kvmppc_probe_timestamp_seconds", result.probed_at)
        gauge("kvmppc_probe_duration_seconds", last.duration_s if last else result.duration_s)
        counter("kvmppc_probes", cache.attempts)
        counter("kvmppc_probe_failures", cache.failures)
        gauge("kvmppc_kvm_present", float(kvm.present))
        gauge("kvmppc_kvm_powerpc", float(kvm.powerpc))
        for vm in kvm.vm_types.values():
            gauge("kvmppc_vm_type_available", float(vm.available), [vm.name])
            if vm.smmu is None:
                continue
            gauge("kvmppc_vm_type_needs_host_contiguous_pages",
                  float(vm.smmu.page_sizes_real), [vm.name])
            gauge("kvmppc_vm_type_slb_entries", vm.smmu.slb_size, [vm.name])
            for segment in vm.smmu.segments:
                for page in segment.pages:
                    gauge("kvmppc_vm_type_hpt_page_size_info", 1,
                          [vm.name, str(segment.page_shift), str(page.page_shift)])
        gauge("kvmppc_base_page_size_bytes", host.base_page_size)
        for pool in result.hugepages.pools:
            page_size = [str(pool.page_size)]
            gauge("kvmppc_hugepages_pages", pool.total, page_size)
            gauge("kvmppc_hugepages_free_pages", pool.free, page_size)
            gauge("kvmppc_hugepages_reserved_pages", pool.reserved, page_size)
            gauge("kvmppc_hugepages_surplus_pages", pool.surplus, page_size)
        for mount in result.hugepages.mounts:
            gauge("kvmppc_hugetlbfs_mount_page_size_bytes", mount.page_size, [mount.path])
        answer = cached_fleet_answer(cache, result)
        for (kvm_type, backing), size in answer.items():
            gauge("kvmppc_hpt_max_page_size_bytes", size, [kvm_type, backing])
        # QEMU reads a backing's page size from the mount (qemu_mempath_getpagesize: statfs
        # f_bsize on hugetlbfs) or getpagesize() for anonymous RAM, and the policy answers
        # from that size alone, so mounts of one page size share an answer: one series each.
        by_page_size: dict[tuple[str, str, int], int] = {}
        mount_page_size = {mount.path: mount.page_size for mount in result.hugepages.mounts}
        for (kvm_type, backing), size in answer.items():
            key = ((kvm_type, "anonymous", host.base_page_size) if backing == "anonymous"
                   else (kvm_type, "hugetlbfs", mount_page_size[backing]))
            by_page_size[key] = max(size, by_page_size.get(key, 0))
        for (kvm_type, kind, backing_page_size), size in by_page_size.items():
            gauge("kvmppc_backing_hpt_max_page_size_bytes", size,
                  [kvm_type, kind, str(backing_page_size)])
        for pool in result.hugepages.pools:
            gauge("kvmppc_hugepages_page_size_bytes", pool.page_size, [str(pool.page_size)])
        gauge("kvmppc_http_connections", self._connections())
        counter("kvmppc_http_connections_refused", self._refused())
        for stats in self._listeners():
            gauge("kvmppc_http_listener_connections", stats.open, [stats.name])
            labelled_counter("kvmppc_http_listener_connections_refused", stats.refused,
                             [stats.name])
            labelled_counter("kvmppc_http_listener_connections_evicted", stats.evicted,
                             [stats.name])
            labelled_counter("kvmppc_http_listener_connections_timed_out", stats.timed_out,
                             [stats.name])


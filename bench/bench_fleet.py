"""The fleet rules at fleet scale: 10,000 hosts' series in a real Prometheus, measured.

Each host's series are what the daemon's own collector (kvmppc.daemon.metrics) exports for a
host profile: the shipped POWER8/9/10 profiles, each also with 4 KiB base pages, with
hugetlbfs mounts of none, one or both of their pool sizes, and per host varied pool counts,
probe times and a few stale or old probes.  A generator serves all hosts on one loopback
target that a real Prometheus scrapes with honor_labels (so each host keeps its own
``instance``); Prometheus evaluates service/prometheus/kvmppc-rules.yml and kvmppc-alerts.yml
in one group after two baseline rules, so each rule runs alone.  Printed: series, scrape
time, resident memory (and per series, against Prometheus's own before the fleet arrives),
every rule's evaluation time (median and worst over the rounds, and as a ratio to the
baseline: one plain aggregation over the same 10,000 hosts), the README's fleet query
answered through the HTTP API, and the load average.

    python bench/bench_fleet.py              # 10,000 hosts, about 7 minutes
    python bench/bench_fleet.py --hosts 300 --rounds 2 --interval 3 --scrape-interval 20

Nothing asserts on the figures.  Scratch data go to a temporary directory under /var/tmp,
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry, generate_latest

from kvmppc.daemon.metrics import KvmppcCollector, RequestMetrics
from kvmppc.model import ProbeResult
from kvmppc.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("power8-hash-pr", "power9-radix-hv", "power10-radix-hv")
# Hugepage sizes a POWER kernel offers: hash MMU 16 MiB and 16 GiB; radix 2 MiB and 1 GiB
# (arch/powerpc/mm/hugetlbpage.c, add_huge_page_size()).
HASH_POOLS = (16 << 20, 16 << 30)
RADIX_POOLS = (2 << 20, 1 << 30)
README_QUERY_START = "<!-- fleet-query -->\n```promql\n"
# Evaluated first, in the same group: one plain aggregation over the same hosts.
BASELINE_RULES = """      - record: bench:hosts:count
        expr: count(kvmppc_probe_timestamp_seconds)
      - record: bench:hugepages_pages:sum
        expr: sum by (page_size) (kvmppc_hugepages_pages)
"""


def one_group(*rule_files: Path) -> str:
    """The rules of each file (one group each) as a single group, baseline first.

    Prometheus evaluates groups concurrently; in one group the rules run one after another,
    so each rule's time is its own rather than shared with the other groups'."""
    rules = [BASELINE_RULES]
    for path in rule_files:
        text = path.read_text()
        _, _, body = text.partition("\n    rules:\n")
        if not body or text.count("  - name:") != 1:
            raise SystemExit(f"bench_fleet: expected one group in {path}")
        rules.append(body)
    return "groups:\n  - name: bench\n    rules:\n" + "".join(rules)


@dataclass
class _ReplayedCache:
    """What KvmppcCollector reads from the daemon's ProbeCache, for one replayed profile
    (the real cache probes in a thread under asyncio; here the answer is fixed)."""

    result: ProbeResult
    last: None = None
    stale: bool = False
    attempts: int = 1
    failures: int = 0
    hugepages_max_age: float = 1.0  # the daemon's default, for the HELP text

    def answer(self) -> ProbeResult:
        return self.result

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        return compute()  # one answer per replayed host: nothing to keep


def _variant(profile: str, base_page_size: int, mounted: tuple[int, ...],
             scratch: Path) -> list[tuple[str, str, str]]:
    """One kind of host's scrape from the real collector, as (name, labels, value)."""
    data = json.loads((REPO / "kvmppc/profiles" / f"{profile}.json").read_text())
    data["host"]["base_page_size"] = base_page_size
    sizes = HASH_POOLS if data["host"]["mmu"] == "hash" else RADIX_POOLS
    data["hugepages"]["pools"] = [
        {"page_size": size, "total": 0, "free": 0, "reserved": 0, "surplus": 0}
        for size in sizes]
    data["hugepages"]["mounts"] = [
        {"path": f"/dev/hugepages-{size >> 20}M", "page_size": size, "page_size_from": "statfs"}
        for size in mounted]
    path = scratch / f"{profile}-{base_page_size}-{'-'.join(map(str, mounted))}.json"
    path.write_text(json.dumps(data))
    registry = CollectorRegistry(auto_describe=False)
    RequestMetrics(registry)  # the daemon's own request series, as its registry has them
    registry.register(KvmppcCollector(_ReplayedCache(load_profile(str(path)))))  # type: ignore[arg-type]
    samples = []
    for line in generate_latest(registry).decode().splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        samples.append((name, labels.rstrip("}"), value))
    return samples


def variants(scratch: Path) -> list[list[tuple[str, str, str]]]:
    kinds = []
    for profile in PROFILES:
        hashed = "hash" in profile
        sizes = HASH_POOLS if hashed else RADIX_POOLS
        for base in (65536, 4096):
            for mounted in ((), sizes[:1], sizes[1:], sizes):
                kinds.append(_variant(profile, base, mounted, scratch))
    return kinds


def render(hosts: int, kinds: list[list[tuple[str, str, str]]], now: float,
           seed: int = 14) -> bytes:
    """All hosts' series, each with its own ``instance``; pools, probe times and staleness
    varied per host (1% stale after failed re-probes, 1% old, 1% a mount lost)."""
    rng = random.Random(seed)
    out: list[str] = []
    for index in range(hosts):
        kind = kinds[index % len(kinds)]
        instance = f'instance="power-host-{index:05d}:19641"'
        roll = rng.random()
        stale = roll < 0.01
        probed_at = now - (1200 if roll < 0.02 else rng.uniform(0, 300))
        pools: dict[str, tuple[int, int, int]] = {}
        values = {
            "kvmppc_probe_stale": "1" if stale else "0",
            "kvmppc_probe_success": "0" if stale else "1",
            "kvmppc_probe_timestamp_seconds": f"{probed_at:.3f}",
        }
        mounted = {f'page_size="{float(value):.0f}"' for name, _, value in kind
                   if name == "kvmppc_hugetlbfs_mount_page_size_bytes"}
        lost_mount = rng.random() < 0.01
        for name, labels, exported in kind:
            value = values.get(name, exported)
            if name.startswith("kvmppc_hugepages_") and name != "kvmppc_hugepages_page_size_bytes":
                if labels not in pools:
                    # Pools are sized where a mount uses them; 1% of hosts have lost a mount
                    # with pages still in use (KvmppcGuestsLostBacking).
                    usable = labels in mounted or lost_mount
                    total = rng.choice((8, 16, 64, 256, 1024, 4096)) if usable else 0
                    free = rng.randint(0, total)
                    pools[labels] = (total, free, rng.randint(0, free // 4))
                total, free, reserved = pools[labels]
                value = str({"kvmppc_hugepages_pages": total,
                             "kvmppc_hugepages_free_pages": free,
                             "kvmppc_hugepages_reserved_pages": reserved}.get(name, 0))
            both = f"{instance},{labels}" if labels else instance
            out.append(f"{name}{{{both}}} {value}\n")
    return "".join(out).encode()



def serve(body: bytes) -> tuple[ThreadingHTTPServer, int]:
    """The fleet's series on one loopback target (a generator, named so: not a daemon)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}" + (f"?{urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=120) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{url}: {error}: {error.read()[:500]!r}") from None
        if body["status"] != "success":
            raise RuntimeError(body)
        return body["data"]

    def scalar(self, query: str) -> float:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else float("nan")

    def own(self) -> dict[str, float]:
        """Prometheus's own gauges from its /metrics (no labels)."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=60) as answer:
            text = answer.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, RuntimeError):
            pass  # not listening yet, or 503 while it starts
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_fleet: {what} not within {timeout:.0f} s")
        time.sleep(1)


ACTIVE_ALERTS: dict[str, int] = {}


def rule_rounds(prom: Prometheus, rounds: int, interval: float) -> dict[str, list[float]]:
    """Each rule's evaluationTime over ``rounds`` evaluations of its group, read after each
    one (the evaluation already done when called may predate the fleet, so it is skipped)."""
    times: dict[str, list[float]] = {}
    last = {group["name"]: group.get("lastEvaluation") for group in prom.api("rules")["groups"]}
    counted = dict.fromkeys(last, 0)
    deadline = time.monotonic() + (rounds + 4) * interval * 3
    while min(counted.values()) < rounds and time.monotonic() < deadline:
        for group in prom.api("rules")["groups"]:
            if group.get("lastEvaluation") == last[group["name"]]:
                continue
            last[group["name"]] = group.get("lastEvaluation")
            counted[group["name"]] += 1
            times.setdefault(f"[group {group['name']}]", []).append(group["evaluationTime"])
            for rule in group["rules"]:
                if rule["health"] != "ok":
                    raise SystemExit(f"bench_fleet: rule {rule['name']}: {rule}")
                key = f"{rule['name']}{_labels(rule)}"
                times.setdefault(key, []).append(rule["evaluationTime"])
                if rule["type"] == "alerting":  # instances pending or firing
                    ACTIVE_ALERTS[key] = len(rule.get("alerts", []))
        time.sleep(interval / 5)
    return times


def _labels(rule: dict[str, Any]) -> str:
    labels = rule.get("labels") or {}
    shown = {k: v for k, v in labels.items() if k == "cap"}
    return "{" + ",".join(f'{k}="{v}"' for k, v in shown.items()) + "}" if shown else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="rule evaluations measured")
    parser.add_argument("--interval", type=int, default=45,
                        help="rule evaluation interval, seconds")
    parser.add_argument("--scrape-interval", type=int, default=240,
                        help="scrape interval, seconds (under the 5-minute lookback); long, so"
                        " most evaluations run between the fleet's scrapes, as they would"
                        " between 10,000 small scrapes spread over the interval")
    args = parser.parse_args(argv)
    binary = shutil.which("prometheus")
    if binary is None:
        print("bench_fleet: prometheus is not installed (Debian package prometheus)",
              file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kvmppc-bench-fleet-", dir="/var/tmp") as name:
        scratch = Path(name)
        started = time.perf_counter()
        kinds = variants(scratch)
        body = render(args.hosts, kinds, time.time())
        render_s = time.perf_counter() - started
        per_host = [len(kind) for kind in kinds]
        server, port = serve(body)
        rules = scratch / "rules"
        rules.mkdir()
        (rules / "bench.yml").write_text(one_group(
            *(REPO / "service/prometheus" / name for name in ("kvmppc-rules.yml",
                                                               "kvmppc-alerts.yml"))))
        config = scratch / "prometheus.yml"
        interval = f"{args.interval}s"
        config.write_text(
            f"global:\n  scrape_interval: {args.scrape_interval}s\n"
            f"  evaluation_interval: {interval}\n"
            f"  scrape_timeout: {min(args.scrape_interval, 120)}s\n"
            f"rule_files: ['{rules}/*.yml']\n"
            "scrape_configs:\n"
            "  - job_name: kvmppc\n"
            "    honor_labels: true\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
        web = _free_port()
        log = open(scratch / "prometheus.log", "wb")  # noqa: SIM115 - for the server's life
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={scratch / 'data'}",
             f"--web.listen-address=127.0.0.1:{web}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        prom = Prometheus(f"http://127.0.0.1:{web}")
        try:
            wait(lambda: prom.api("query", query="1"), 60, "Prometheus ready")
            empty = prom.own()
            wait(lambda: prom.scalar("count(kvmppc_probe_timestamp_seconds)") == args.hosts,
                 max(args.scrape_interval * 2, 300), "the whole fleet scraped")
            cpu_before, wall_before = prom.own()["process_cpu_seconds_total"], time.time()
            times = rule_rounds(prom, args.rounds, args.interval)
            full = prom.own()
            window = time.time() - wall_before
            scraped = prom.scalar(  # one sample of the scrape before the window
                f'count_over_time(scrape_duration_seconds{{job="kvmppc"}}[{int(window)}s])')
            scrapes_in_window = 0 if math.isnan(scraped) else max(0, scraped - 1)
            scrape = prom.scalar('scrape_duration_seconds{job="kvmppc"}')
            readme = (REPO / "README.md").read_text()
            query = readme.split(README_QUERY_START, 1)[1].split("```", 1)[0]
            query_s = []
            for _ in range(5):
                begun = time.perf_counter()
                answer = prom.api("query", query=query)["result"]
                query_s.append(time.perf_counter() - begun)
            recorded = {name: prom.scalar(f"count({name})")
                        for name in {rule.split("{")[0] for rule in times}
                        if ":" in name and not name.startswith("[")}
        except SystemExit:
            log.flush()
            print((scratch / "prometheus.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(60)
            log.close()
            server.shutdown()
    load_after = os.getloadavg()

    rss_delta = full["process_resident_memory_bytes"] - empty["process_resident_memory_bytes"]
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=False).stdout.split()[2]
    print(f"kvmppc fleet bench: {args.hosts} hosts from {len(kinds)} kinds of host "
          f"({min(per_host)}-{max(per_host)} series each), Prometheus {version}, "
          f"scrape interval {args.scrape_interval}s, rule interval {interval}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} ({os.cpu_count()} CPUs, shared with"
          " other work)")
    print(f"generator: {len(body) / 1e6:.1f} MB per scrape, rendered in {render_s:.1f} s; "
          f"Prometheus scrape {scrape:.2f} s")
    families = Counter(line.split(b"{", 1)[0].decode() for line in body.splitlines())
    fleet_series = sum(families.values())
    print(f"series: {fleet_series:,.0f} from the fleet ({fleet_series / args.hosts:.1f} per host); "
          f"head series {full['prometheus_tsdb_head_series']:,.0f} with the rules' output")
    print(f"resident memory: {empty['process_resident_memory_bytes'] / 2**20:.0f} MiB empty, "
          f"{full['process_resident_memory_bytes'] / 2**20:.0f} MiB with the fleet: "
          f"+{rss_delta / 2**20:.0f} MiB, {rss_delta / full['prometheus_tsdb_head_series']:.0f} "
          f"bytes per head series; Go heap in use "
          f"{full['go_memstats_heap_inuse_bytes'] / 2**20:.0f} MiB")
    cpu = full["process_cpu_seconds_total"] - cpu_before
    evaluations = len(times["[group bench]"])
    print(f"Prometheus CPU while the rules were measured: {cpu:.1f} s in {window:.0f} s "
          f"({cpu / window:.0%} of one CPU; it got no more under this load), "
          f"{scrapes_in_window:.0f} scrapes of the fleet in that time; "
          f"{evaluations} evaluations of the rules")
    baseline = statistics.median(times["bench:hosts:count"])
    print(f"\nrule evaluation over {len(times['bench:hosts:count'])} rounds: median / worst, "
          f"and median as a ratio to the baseline (count over {args.hosts} hosts, "
          f"{baseline * 1e3:.1f} ms)")
    for rule, observed in times.items():
        median = statistics.median(observed)
        active = (f"  {ACTIVE_ALERTS[rule]:,} alerts pending or firing"
                  if rule in ACTIVE_ALERTS else "")
        print(f"  {rule:56s} {median * 1e3:8.1f} / {max(observed) * 1e3:8.1f} ms "
              f"{median / baseline:6.1f}x{active}")
    recording = {rule: observed for rule, observed in times.items()
                 if not rule.startswith("[") and rule not in ACTIVE_ALERTS}
    slowest = max(recording, key=lambda rule: statistics.median(recording[rule]))
    worst = max(recording, key=lambda rule: max(recording[rule]))
    print(f"recording rules (goal: each under 1000 ms): slowest median "
          f"{statistics.median(recording[slowest]) * 1e3:.0f} ms ({slowest}); worst round "
          f"{max(recording[worst]) * 1e3:.0f} ms ({worst})")
    print(f"\nREADME fleet query (16 MiB cap, 4 GiB guest, 1 GiB pages): {len(answer)} hosts, "
          f"median {statistics.median(query_s) * 1e3:.0f} ms through the HTTP API")
    print("\nseries per family across the fleet, and what the rules record:")
    for family, count in sorted((*families.items(), *recorded.items()), key=lambda f: -f[1]):
        print(f"  {family:52s} {count:9,.0f} ({count / args.hosts:.2f} per host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The metrics as real Prometheus tools see them: promtool's lint of a scrape, and a real
Prometheus server (Debian's package) on loopback scraping two daemons, this host and a
replayed POWER9 profile, with the values read back through its HTTP API and the fleet rules
(service/prometheus/kvmppc-rules.yml) and alerts evaluated over them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from kvmppc.probe import read_hugepage_pools
from tests.daemon_support import REPO, Daemon, request, run_daemon
from tests.helpers import free_port
from tests.test_daemon import _profile_with_mounts, wait_until


def _scrape(daemon: Daemon) -> bytes:
    status, headers, body = request(("127.0.0.1", daemon.metrics_port),
                                    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    return body


GIB, MIB = 1 << 30, 1 << 20
# The POWER9 host's pools in this scenario: 1 GiB pages 16 total, 10 free, 2 reserved (8 a new
# guest can take); 2 MiB pages 1024, all free.
POWER9_POOLS = [
    {"page_size": 2 * MIB, "total": 1024, "free": 1024, "reserved": 0, "surplus": 0},
    {"page_size": GIB, "total": 16, "free": 10, "reserved": 2, "surplus": 0},
]


def _power9_profile(tmp: Path) -> Path:
    """The POWER9 profile with 2 MiB and 1 GiB mounts, the pools above, probed just now (a
    shipped profile's capture time is long past, which the rules rightly call old)."""
    path = _profile_with_mounts(tmp)
    data = json.loads(path.read_text())
    data["probed_at"] = time.time()
    data["hugepages"]["pools"] = POWER9_POOLS
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    tmp = tmp_path_factory.mktemp("prom")
    profile = _power9_profile(tmp)
    with run_daemon(tmp / "live") as live, \
            run_daemon(tmp / "power9", "--host-profile", str(profile)) as power9:
        yield live, power9


def test_promtool_check_metrics_is_clean(daemons: tuple[Daemon, Daemon]) -> None:
    """Names, types, units and help follow Prometheus's conventions (promtool's linter)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    for daemon in daemons:
        done = subprocess.run([promtool, "check", "metrics"], input=_scrape(daemon),
                              capture_output=True, check=False, timeout=60)
        assert done.returncode == 0 and not done.stdout and not done.stderr, done


def test_series_per_host_stay_few(daemons: tuple[Daemon, Daemon]) -> None:
    """The README's count: a POWER host with two hugetlbfs mounts stays under 100 series."""
    for daemon in daemons:
        series = [line for line in _scrape(daemon).decode().splitlines()
                  if line and not line.startswith("#")]
        assert len(series) < 100


class _Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}" + (f"?{urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture(scope="module")
def prometheus(daemons: tuple[Daemon, Daemon],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus;"
                    " scripts/setup-system.sh installs it)")
    tmp = tmp_path_factory.mktemp("prometheus")
    live, power9 = daemons
    for name in ("kvmppc-rules.yml", "kvmppc-alerts.yml"):
        shutil.copy(REPO / "service/prometheus" / name, tmp / name)
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{tmp / 'kvmppc-rules.yml'}, {tmp / 'kvmppc-alerts.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: kvmppc\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{live.metrics_port}']\n"
        "        labels: {host: live}\n"
        f"      - targets: ['127.0.0.1:{power9.metrics_port}']\n"
        "        labels: {host: power9}\n"
    )
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = _Prometheus(f"http://127.0.0.1:{port}")
    try:
        def both_scraped() -> bool:
            try:
                return len(server.api("query", query="kvmppc_probe_success")["result"]) == 2
            except OSError:
                return False  # not listening yet

        wait_until(both_scraped, timeout=60)
        yield server
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_prometheus_reads_this_host(prometheus: _Prometheus) -> None:
    """This x86 machine: KVM present, not PowerPC, so the TCG answer: any cap up to 16 GiB."""
    value = prometheus.value
    assert value('up{host="live"}') == 1
    assert value('kvmppc_probe_success{host="live"}') == 1
    assert value('kvmppc_kvm_present{host="live"}') == 1
    assert value('kvmppc_kvm_powerpc{host="live"}') == 0
    assert value('kvmppc_base_page_size_bytes{host="live"}') == os.sysconf("SC_PAGE_SIZE")
    assert value('kvmppc_hpt_max_page_size_bytes{host="live",kvm_type="default",'
                 'backing="anonymous"}') == 16 << 30
    for pool in read_hugepage_pools("/sys"):
        assert value(f'kvmppc_hugepages_pages{{host="live",page_size="{pool.page_size}"}}'
                     ) == pool.total
    assert value('kvmppc_http_requests_total{host="live",endpoint="metrics",code="200"}')


def test_prometheus_reads_the_power9_profile(prometheus: _Prometheus) -> None:
    """Nested KVM-HV on POWER9: host-contiguous pages needed, a 32-entry SLB, and the fleet
    answer per backing: 64 KiB on anonymous memory, the mount's page size on hugetlbfs."""
    value = prometheus.value
    assert value('kvmppc_kvm_powerpc{host="power9"}') == 1
    assert value('kvmppc_vm_type_available{host="power9",vm_type="pr"}') == 0
    assert value('kvmppc_vm_type_needs_host_contiguous_pages{host="power9",vm_type="hv"}') == 1
    assert value('kvmppc_vm_type_slb_entries{host="power9",vm_type="hv"}') == 32
    assert value('kvmppc_vm_type_hpt_page_size_info{host="power9",vm_type="hv",'
                 'segment_page_shift="16",page_shift="24"}') == 1
    assert value('count(kvmppc_vm_type_hpt_page_size_info{host="power9",vm_type="hv"})') == 5
    largest = 'kvmppc_hpt_max_page_size_bytes{{host="power9",kvm_type="{}",backing="{}"}}'
    assert value(largest.format("default", "anonymous")) == 64 << 10
    assert value(largest.format("hv", "/dev/hugepages")) == 2 << 20
    assert value(largest.format("hv", "/mnt/huge1g")) == 1 << 30
    assert value('kvmppc_hugetlbfs_mount_page_size_bytes{host="power9",path="/mnt/huge1g"}'
                 ) == 1 << 30


def test_prometheus_reads_the_qemu_release(prometheus: _Prometheus) -> None:
    """kvmppc_qemu_info: this host's qemu-system-ppc64 (as its --version says) and the release
    answered for; the POWER9 profile records no QEMU (Prometheus drops the empty label), so
    its answers are the newest modelled release's."""
    binary = shutil.which("qemu-system-ppc64")
    if binary is None:
        pytest.skip("qemu-system-ppc64 is not installed (Debian package qemu-system-ppc)")
    line = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True,
                          timeout=60).stdout.splitlines()[0]
    found = re.search(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)", line)
    assert found is not None, line
    result = prometheus.api("query", query="kvmppc_qemu_info")["result"]
    labels = {r["metric"]["host"]: r["metric"] for r in result}
    assert {k: v for k, v in labels["live"].items() if k in ("installed", "modelled")} == {
        "installed": ".".join(found.groups()), "modelled": f"{found[1]}.{found[2]}"}
    assert "installed" not in labels["power9"]
    assert labels["power9"]["modelled"] == "10.0"
    assert all(float(r["value"][1]) == 1 for r in result) and len(result) == 2


def test_prometheus_loads_the_alerting_rules(prometheus: _Prometheus) -> None:
    """service/prometheus/kvmppc-alerts.yml loads and every rule evaluates without error."""

    def rules() -> list[dict[str, Any]]:
        return [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]

    assert {rule["name"] for rule in rules() if rule["type"] == "alerting"} == {
        "KvmppcDown", "KvmppcProbeFailing", "KvmppcProbeOld", "KvmppcNo64kGuestPages",
        "KvmppcHugepagesExhausted", "KvmppcGuestsLostBacking",
        "KvmppcHugepagesCannotHoldGuest"}
    wait_until(lambda: all(rule["health"] == "ok" and rule.get("lastEvaluation", "0001")
                           > "0001" for rule in rules()), timeout=30)


def _settles_to(prometheus: _Prometheus, query: str, expected: dict[str, float]) -> bool:
    """Whether ``query``'s samples, by their ``host`` label, become ``expected`` within 30 s
    (rules are evaluated each second, on their own schedule after the scrapes); the last
    answer is in the assertion's message when they do not."""
    seen: list[dict[str, float]] = []

    def samples() -> bool:
        result = prometheus.api("query", query=query)["result"]
        seen.append({sample["metric"].get("host", ""): float(sample["value"][1])
                     for sample in result})
        return seen[-1] == expected

    try:
        wait_until(samples, timeout=30)
    except AssertionError:
        raise AssertionError(f"{query}: {seen[-1]} != {expected}") from None
    return True


def test_fleet_rules_answer_for_the_two_daemons(prometheus: _Prometheus) -> None:
    """The recording rules over two real daemons: this x86 host (TCG: no backing check, any
    cap up to 16 GiB on its base pages) and the POWER9 profile (64 KiB pages; 2 MiB and 1 GiB
    mounts; its pools above).  Expected values follow from those two hosts, worked by hand."""
    base = str(os.sysconf("SC_PAGE_SIZE"))
    assert _settles_to(prometheus, "kvmppc:hosts:count", {"": 2})
    assert _settles_to(prometheus, "kvmppc:hosts_stale:count", {"": 0})
    assert _settles_to(prometheus, "instance:kvmppc_probe_fresh:bool",
                       {"live": 1, "power9": 1})

    def able(cap: str, backing: str, page_size: int | str, hosts: int) -> bool:
        return _settles_to(prometheus, f'kvmppc:hosts_able:count{{cap="{cap}",'
                           f'backing="{backing}",page_size="{page_size}"}}', {"": hosts})

    assert able("16M", "hugetlbfs", GIB, 1)  # POWER9 only
    assert able("16M", "hugetlbfs", 2 * MIB, 0)  # 2 MiB pages allow a 2 MiB cap at most
    assert able("64K", "anonymous", 64 << 10, 1)  # POWER9 on its 64 KiB base pages
    assert able("16M", "anonymous", 64 << 10, 0)
    assert able("16G", "anonymous", base, 1)  # this host, under TCG
    # 4 GiB guests (the rules' common size) in the POWER9 1 GiB pool: (10 - 2) / 4 = 2; in the
    # 2 MiB pool 1024 pages of the 2048 a guest needs: none.
    fit = 'instance:kvmppc_hugepages_guests_fit:floor{{host="power9",page_size="{}"}}'
    assert _settles_to(prometheus, fit.format(GIB), {"power9": 2})
    assert _settles_to(prometheus, fit.format(2 * MIB), {"power9": 0})
    # This host's 1 GiB pool counts only if a 1 GiB hugetlbfs mount makes it usable.
    live_gib = sum(pool.free - pool.reserved for pool in read_hugepage_pools("/sys")
                   if pool.page_size == GIB)
    mounts = Path("/proc/mounts").read_text().splitlines()
    live_1g_mount = any(" hugetlbfs " in line and ("pagesize=1G" in line or
                                                   "pagesize=1024M" in line) for line in mounts)
    assert _settles_to(prometheus, f'kvmppc:hugepages_guests_fit:sum{{page_size="{GIB}"}}',
                       {"": 2 + (live_gib // 4 if live_1g_mount else 0)})
    assert _settles_to(prometheus,
                       f'kvmppc:hugepages_available_bytes:sum{{page_size="{GIB}"}}',
                       {"": (8 + live_gib) * GIB})


def test_readme_fleet_query_names_the_power9_host(prometheus: _Prometheus) -> None:
    """The README's "which hosts can take a 16 MiB guest on 1 GiB pages" query."""
    readme = (REPO / "README.md").read_text()
    query = readme.split("<!-- fleet-query -->\n```promql\n", 1)[1].split("```", 1)[0]
    assert _settles_to(prometheus, query, {"power9": GIB})


def test_alerts_evaluate_over_the_two_daemons(prometheus: _Prometheus) -> None:
    """POWER9's 2 MiB pool (1024 pages, a 2 MiB mount) cannot hold a 4 GiB guest: that alert
    is pending (its `for:` is 15 minutes); its 1 GiB pages in use have their mount, so no
    KvmppcGuestsLostBacking; nothing about this host's pools (no pages configured here)."""
    assert _settles_to(prometheus, 'ALERTS{alertname="KvmppcHugepagesCannotHoldGuest",'
                       f'alertstate="pending",page_size="{2 * MIB}"}}', {"power9": 1})
    assert prometheus.api("query", query='ALERTS{alertname=~"KvmppcGuestsLostBacking|'
                          'KvmppcHugepagesCannotHoldGuest",page_size!="2097152"}')["result"] == []


def test_every_dashboard_query_answers(prometheus: _Prometheus) -> None:
    """Each query of service/grafana/kvmppc-fleet.json returns data from the two daemons
    through a real Prometheus (no Grafana installs here; its schema is checked in
    tests/test_grafana_dashboard.py)."""
    from tests.test_grafana_dashboard import as_promql, dashboard, queries  # noqa: PLC0415

    def answers(expr: str) -> bool:
        return bool(prometheus.api("query", query=as_promql(expr))["result"])

    exprs = queries(dashboard())
    assert len(exprs) >= 15
    for expr in exprs:
        try:
            wait_until(partial(answers, expr), timeout=30)
        except AssertionError:
            raise AssertionError(f"no answer to the dashboard's {expr!r}") from None

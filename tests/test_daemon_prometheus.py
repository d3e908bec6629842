"""The metrics as real Prometheus tools see them: promtool's lint of a scrape, and a real
Prometheus server (Debian's package) on loopback scraping two daemons, this host and a
replayed POWER9 profile, with the values read back through its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    tmp = tmp_path_factory.mktemp("prom")
    profile = _profile_with_mounts(tmp)
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
    rules = tmp / "kvmppc-alerts.yml"
    shutil.copy(REPO / "service/prometheus/kvmppc-alerts.yml", rules)
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{rules}]\n"
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


def test_prometheus_loads_the_alerting_rules(prometheus: _Prometheus) -> None:
    """service/prometheus/kvmppc-alerts.yml loads and every rule evaluates without error."""

    def rules() -> list[dict[str, Any]]:
        return [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]

    assert {rule["name"] for rule in rules()} == {
        "KvmppcDown", "KvmppcProbeFailing", "KvmppcProbeOld", "KvmppcNo64kGuestPages",
        "KvmppcHugepagesExhausted"}
    wait_until(lambda: all(rule["health"] == "ok" for rule in rules()), timeout=30)

"""The files in service/, checked by the tools that will read them: systemd-analyze (verify,
security) for the units, promtool for the Prometheus configuration and alerting rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_support import REPO

SERVICE = REPO / "service"
UNITS = ("kvmppc.service", "kvmppc.socket", "kvmppc-metrics.socket")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units with ExecStart= pointing at this checkout's interpreter, since verify checks
    that the binary exists (/usr/local/bin/kvmppc is where `pip install` puts it)."""
    for name in UNITS:
        text = (SERVICE / name).read_text()
        text = text.replace("ExecStart=/usr/local/bin/kvmppc serve",
                            f"ExecStart={sys.executable} -m kvmppc serve")
        (tmp_path / name).write_text(text)
    return tmp_path


def test_units_verify_clean(units: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    # --man=no: verify otherwise runs man(1) for every Documentation=man:... line, and a
    # machine without man-db (a minimal install, the CI root) fails with "Command 'man
    # systemd.socket(5)' failed" (src/analyze/analyze-verify-util.c, verify_documentation()).
    done = subprocess.run([analyze, "verify", "--man=no", *UNITS], cwd=units,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done


def test_service_exposure_at_most_2(units: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    done = subprocess.run([analyze, "security", "--offline=yes", "--no-pager",
                           "kvmppc.service"], cwd=units, capture_output=True, text=True,
                          check=False, timeout=120)
    match = re.search(r"Overall exposure level for kvmppc\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


def test_units_pass_sockets_by_the_names_the_daemon_expects() -> None:
    """FileDescriptorName= names every socket of a unit, so each listener has its own unit."""
    api = (SERVICE / "kvmppc.socket").read_text()
    metrics = (SERVICE / "kvmppc-metrics.socket").read_text()
    assert "FileDescriptorName=api" in api and "ListenStream=/run/kvmppc/kvmppc.sock" in api
    assert "FileDescriptorName=metrics" in metrics and "ListenStream=19641" in metrics
    service = (SERVICE / "kvmppc.service").read_text()
    assert "Type=notify" in service and "WatchdogSec=" in service
    assert "DeviceAllow=/dev/kvm rw" in service


def test_prometheus_example_config_and_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    for args in (["check", "rules", "kvmppc-alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *args], cwd=SERVICE / "prometheus",
                              capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

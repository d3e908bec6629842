"""The fleet rules (service/prometheus/kvmppc-rules.yml) and the alerts, run by the real
promtool on the synthetic fleet in tests/prometheus/kvmppc-rules-test.yml: a host losing its
1 GiB mount, a kernel moving to 4 KiB pages, a stale probe, an old probe, a full pool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon_support import REPO

RULES = REPO / "service/prometheus/kvmppc-rules.yml"
ALERTS = REPO / "service/prometheus/kvmppc-alerts.yml"
UNIT_TESTS = REPO / "tests/prometheus/kvmppc-rules-test.yml"


def promtool() -> str:
    """promtool, or a skip (a failure in CI, where scripts/setup-system.sh installs it)."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian package prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _test_rules(unit_tests: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "test", "rules", str(unit_tests)], capture_output=True,
                          text=True, check=False, timeout=120)


def test_rules_and_alerts_pass_promtool_check() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES), str(ALERTS)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([promtool(), "check", "config",
                           str(REPO / "service/prometheus/prometheus.yml")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_give_the_answers_worked_out_by_hand() -> None:
    """Every expected sample and alert in the scenario file matches what promtool computes."""
    done = _test_rules(UNIT_TESTS)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_rule_has_a_scenario() -> None:
    """Each recording rule is queried and each alert is expected (or expected silent) in
    the scenarios, so no rule ships untested."""
    scenarios = UNIT_TESTS.read_text()
    records = set(re.findall(r"^\s*- record: (\S+)", RULES.read_text(), re.MULTILINE))
    alerts = set(re.findall(r"^\s*- alert: (\S+)", ALERTS.read_text(), re.MULTILINE))
    assert len(records) >= 10 and len(alerts) >= 7
    queried = set(re.findall(r"^\s*- expr: (\S+?)(?:\{|$)", scenarios, re.MULTILINE))
    # kvmppc:fleet_guest_memory_bytes is a constant read by the guests-fit rules, tested there.
    assert records - queried == {"kvmppc:fleet_guest_memory_bytes"}
    expected = set(re.findall(r"^\s*- alertname: (\S+)", scenarios, re.MULTILINE))
    assert alerts - expected == {"KvmppcDown"}  # `up` is Prometheus's own: the live test


@pytest.mark.parametrize(("correct", "mistake"), [
    # available pages without subtracting reserved ones
    ("kvmppc_hugepages_free_pages - kvmppc_hugepages_reserved_pages",
     "kvmppc_hugepages_free_pages"),
    # a stale answer counted as fresh
    ("kvmppc_probe_stale == bool 0", "kvmppc_probe_stale >= bool 0"),
])
def test_scenarios_catch_a_wrong_rule(tmp_path: Path, correct: str, mistake: str) -> None:
    """The same scenarios against a rules file with one deliberate mistake fail."""
    (tmp_path / "service/prometheus").mkdir(parents=True)
    (tmp_path / "tests/prometheus").mkdir(parents=True)
    text = RULES.read_text()
    assert correct in text
    (tmp_path / "service/prometheus/kvmppc-rules.yml").write_text(text.replace(correct, mistake))
    shutil.copy(ALERTS, tmp_path / "service/prometheus/kvmppc-alerts.yml")
    shutil.copy(UNIT_TESTS, tmp_path / "tests/prometheus/kvmppc-rules-test.yml")
    done = _test_rules(tmp_path / "tests/prometheus/kvmppc-rules-test.yml")
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr, done

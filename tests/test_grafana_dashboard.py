"""service/grafana/kvmppc-fleet.json: valid against Grafana's published dashboard schema
(no Grafana server installs from Debian, PyPI or npm: Grafana is not packaged in Debian and
the registries carry only client libraries), every query parsed by the real promtool, every
series it names exported by a real daemon or recorded by the rules.  That each query answers
from a real Prometheus is in tests/test_daemon_prometheus.py."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import REPO, request, run_daemon
from tests.test_daemon import _profile_with_mounts

DASHBOARD = REPO / "service/grafana/kvmppc-fleet.json"
SCHEMAS = REPO / "tests/grafana"
RULES = REPO / "service/prometheus/kvmppc-rules.yml"
PANEL_OPTIONS = ("table", "stat", "timeseries")  # the panel types the dashboard uses


def _need(module_or_binary: str, found: object, package: str) -> None:
    if found is None:
        reason = f"{module_or_binary} is not installed ({package})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _jsonschema() -> Any:
    try:
        import jsonschema  # noqa: PLC0415 - only these tests need it
    except ImportError:
        jsonschema = None
    _need("jsonschema", jsonschema, "PyPI package jsonschema")
    return jsonschema


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _schema(name: str, definition: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    if definition:
        schema["$ref"] = f"#/definitions/{definition}"
    if name == "dashboard":
        # Grafana's CUE source types a field override's matcher options and property value
        # as `_` (anything: "byName" takes the field's name as a string); the generated JSON
        # schema turned `_` into "object".  Only those two are relaxed, to what the CUE says.
        definitions = schema["definitions"]
        definitions["MatcherConfig"]["properties"]["options"] = {}
        definitions["DynamicConfigValue"]["properties"]["value"] = {}
    return schema


def schema_errors(data: dict[str, Any]) -> list[str]:
    """Every way ``data`` departs from Grafana's dashboard, panel-options and Prometheus
    query schemas."""
    jsonschema = _jsonschema()
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in
              jsonschema.Draft7Validator(_schema("dashboard")).iter_errors(data)]
    options = {kind: jsonschema.Draft7Validator(_schema(kind, "Options"))
               for kind in PANEL_OPTIONS}
    query = jsonschema.Draft7Validator(_schema("prometheus"))
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} ({panel['title']})"
        if panel["type"] not in options:
            errors.append(f"{where}: no schema here for panel type {panel['type']}")
            continue
        errors += [f"{where} options: {error.message}"
                   for error in options[panel["type"]].iter_errors(panel["options"])]
        for target in panel["targets"]:
            errors += [f"{where} {target['refId']}: {error.message}"
                       for error in query.iter_errors(target)]
    return errors


def queries(data: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard (panels and the host variable)."""
    exprs = [target["expr"] for panel in data["panels"] for target in panel.get("targets", [])]
    for variable in data["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *\w+\)", str(variable.get("query", "")))
        if match:
            exprs.append(match.group(1))
    return exprs


def as_promql(expr: str) -> str:
    """A Grafana query as plain PromQL: the host variable becomes any host."""
    return expr.replace("$instance", ".+")


def test_dashboard_matches_grafanas_schemas() -> None:
    assert schema_errors(dashboard()) == []


def test_schema_check_catches_a_broken_dashboard() -> None:
    broken = copy.deepcopy(dashboard())
    del broken["panels"][1]["gridPos"]["h"]
    broken["panels"][2]["options"]["showHeader"] = "yes"
    broken["panels"][3]["targets"][0]["expr"] = 1
    broken["refreshEvery"] = "1m"
    errors = schema_errors(broken)
    assert len(errors) == 4, errors


def test_panels_are_laid_out_without_overlap() -> None:
    """Unique ids, 24 columns, no two panels on the same cells."""
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[x, y] = panel["title"]


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each query, given as a recording rule."""
    promtool = shutil.which("promtool")
    _need("promtool", promtool, "Debian package prometheus")
    assert promtool is not None
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": as_promql(expr)}
        for index, expr in enumerate(queries(dashboard()))]}]}))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_series_named_is_exported_or_recorded(tmp_path: Path) -> None:
    """Each series a query names is in a real daemon's scrape (the POWER9 profile with two
    mounts) or is one of the recording rules."""
    with run_daemon(tmp_path / "d", "--host-profile", str(_profile_with_mounts(tmp_path))) as d:
        body = request(("127.0.0.1", d.metrics_port),
                       b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")[2].decode()
    exported = {line.split("{")[0].split(" ")[0] for line in body.splitlines()
                if line and not line.startswith("#")}
    recorded = set(re.findall(r"^\s*- record: (\S+)", RULES.read_text(), re.MULTILINE))
    named = {name for expr in queries(dashboard())
             for name in re.findall(r"\b((?:instance:|kvmppc:)?kvmppc[\w:]*)", expr)}
    assert len(named) >= 10
    assert named - exported - recorded == set()

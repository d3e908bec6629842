"""The doors between kvmppc's rooms, as the imports have them.

Only the kernel door (kvmppc._kvm) may load the compiled cffi module, and only the commands
that look at this host's kernel go through it: the policy, the daemon's metrics and the CLI's
``query`` and profile-based ``check`` run without it.  Each case runs in a fresh interpreter,
since this test process has long since imported everything.  And no module of kvmppc imports
one that imports it back.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import kvmppc

PACKAGE = Path(kvmppc.__file__).parent
CFFI_MODULE = "kvmppc._kvmppc_cffi"


def _modules_after(code: str) -> set[str]:
    """The modules loaded after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("code", [
    "import kvmppc.policy",
    "import kvmppc.daemon.metrics",
    "import kvmppc.render",
    "import kvmppc.profiles",
    # kvmppc query: the daemon is not running, so it answers 2 with a message; what matters is
    # what it loaded to get there.
    "from kvmppc.cli import main\n"
    "assert main(['query', 'health', '--socket', '/nonexistent/kvmppc.sock']) == 2",
    "from kvmppc.cli import main\n"
    "assert main(['check', '--host-profile', 'power9-radix-hv', '--max-page-size', '16M']) == 1",
    "import kvmppc.inputs, kvmppc.inputs.answer, kvmppc.audit, kvmppc.libvirt_hook",
    "from kvmppc.cli import main\n"
    "assert main(['check', '--host-profile', 'power9-radix-hv', '--', 'qemu-system-ppc64',"
    " '-M', 'pseries,cap-hpt-max-page-size=16M', '-accel', 'kvm', '-m', '4G']) == 1",
])
def test_cffi_module_stays_behind_the_kernel_door(code: str) -> None:
    """Neither the compiled cffi module nor the cffi runtime is loaded."""
    loaded = _modules_after(code)
    assert CFFI_MODULE not in loaded
    assert "_cffi_backend" not in loaded
    assert "kvmppc._kvm" not in loaded


def test_the_live_probe_does_go_through_the_door() -> None:
    """The check above would pass for a wrong module name; the live probe proves it right."""
    assert CFFI_MODULE in _modules_after("import kvmppc.probe")


def test_help_imports_no_command() -> None:
    """``kvmppc --help`` builds the parser without the daemon, its client or the policy."""
    loaded = _modules_after(
        "from kvmppc.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    for heavy in ("kvmppc.policy", "kvmppc.probe", "kvmppc.daemon.server",
                  "kvmppc.daemon.client", "kvmppc.daemon.config", "http.client", "asyncio",
                  "prometheus_client", "dataclasses"):
        assert heavy not in loaded, heavy


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the kvmppc modules it names in an import statement, at any depth (an import
    inside a function is still a door).  ``from P import N`` leads to P.N when that is a
    module, else to P.  A package's implicit import of its parents is not an edge."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {edge for edge in edges if edge in files and edge != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No module of kvmppc imports one that imports it back, directly or around a loop."""
    graph = _import_graph()
    assert "kvmppc.policy.startup" in graph["kvmppc.policy.advice"]  # the graph is read
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The finder itself: a loop of three, and a module importing itself is no cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("script", sorted(p.name for p in (PACKAGE.parent / "bench").glob("*.py")))
def test_bench_scripts_still_import_what_they_use(script: str) -> None:
    """The benchmarks live outside the package (no mypy there): ``--help`` runs each one's
    imports, so a name moved between rooms fails here rather than in the next bench run."""
    done = subprocess.run([sys.executable, str(PACKAGE.parent / "bench" / script), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

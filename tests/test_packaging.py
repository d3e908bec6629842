"""The built wheel: it carries every module and shipped profile, and works once installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _source_files() -> list[str]:
    """The checkout's files as a fresh clone would have them (no build/, .venv, *.so)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy: setuptools reuses an in-tree build/ directory, whose leftovers
    # would hide a package missing from the configuration.
    tree = tmp_path_factory.mktemp("source")
    for name in _source_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(tree)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("pip is not available to this interpreter")
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("kvmppc-*.whl")
    return built


def test_wheel_has_every_module_profile_and_the_extension(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {
        str(path.relative_to(ROOT))
        for pattern in ("kvmppc/**/*.py", "kvmppc/profiles/*.json")
        for path in ROOT.glob(pattern)
        if "__pycache__" not in path.parts
    }
    assert source - names == set()
    assert any(name.startswith("kvmppc/_kvmppc_cffi") and name.endswith(".so")
               for name in names)
    # PEP 561: the package says it is typed, and the compiled module has its stub.
    assert {"kvmppc/py.typed", "kvmppc/_kvmppc_cffi.pyi"} <= names


def test_the_cffi_stub_declares_everything_the_builder_exports() -> None:
    """kvmppc/_kvmppc_cffi.pyi is written by hand from _ioctl_build.CDEF: every #define and
    every function there must be in the stub, and nothing else may be (mypy trusts it)."""
    from kvmppc import _ioctl_build  # noqa: PLC0415 - imports cffi, only for this test

    exported = set(re.findall(r"^#define (\w+) \.\.\.$", _ioctl_build.CDEF, re.MULTILINE))
    exported |= set(re.findall(r"^int (\w+)\(", _ioctl_build.CDEF, re.MULTILINE))
    stub = (ROOT / "kvmppc" / "_kvmppc_cffi.pyi").read_text()
    lib_part = stub.split("class _Lib:", 1)[1].split("\nlib: _Lib", 1)[0]
    declared = set(re.findall(r"^    (\w+): int$", lib_part, re.MULTILINE))
    declared |= set(re.findall(r"^    def (\w+)\(", lib_part, re.MULTILINE))
    assert len(exported) > 30  # the pattern still finds the CDEF's names
    assert declared == exported


def test_installed_wheel_runs_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The runtime dependencies (cffi's _cffi_backend, ioctl_opt, prometheus_client) come from
    # the test runner's environment (.venv), appended to the new venv's sys.path by a .pth
    # file: plain paths, so .venv's own .pth files (its editable kvmppc) are not processed and
    # the only kvmppc found is the wheel's. The base interpreter's site-packages, which
    # system_site_packages would give, lack them on a fresh machine.
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(subprocess.run([str(python), "-c", where], capture_output=True,
                                        text=True, check=True).stdout.strip())
    runner_paths = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))
    (site_packages / "zz-test-runner-deps.pth").write_text("\n".join(runner_paths) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)], capture_output=True, text=True, check=False,
    )
    if install.returncode != 0 and "no such option: --python" in install.stderr:
        pytest.skip("this pip cannot install into another interpreter (needs pip >= 22.3)")
    assert install.returncode == 0, install.stderr
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    located = subprocess.run(
        [str(python), "-c", "import kvmppc.policy, kvmppc.daemon; print(kvmppc.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False,
    )
    assert located.returncode == 0, located.stderr
    assert str(env_dir) in located.stdout  # the installed copy, not the checkout
    checked = subprocess.run(
        [str(env_dir / "bin" / "kvmppc"), "check", "--host-profile", "power9-radix-hv",
         "--max-page-size", "16M"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False,
    )
    assert checked.returncode == 1, checked.stderr
    assert "Can't support 16384 kiB guest pages with 64 kiB host pages" in checked.stdout

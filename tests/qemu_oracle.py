"""The real QEMUs the differential tests compare kvmppc with.

* QEMU 7.2: the host's ``qemu-system-ppc64`` (Debian 12's package qemu-system-ppc).
* QEMU 10.0: Debian 13's ``qemu-system-ppc64``, run in a Debian 13 root bootstrapped by
  tests/debian13-qemu-root.sh.  The root is cached as a tarball in ``$KVMPPC_QEMU_ROOT_CACHE``
  (default /var/tmp/kvmppc-debian13-qemu) under the sha256 of that script, so a changed recipe
  makes a new root; the tests build it when it is missing (within :data:`BUILD_TIMEOUT`) and
  skip with the reason when it cannot be built (with CI=true they fail instead).  Each run of
  QEMU gets its own mount namespace (``unshare --mount``) with the host's /dev and a fresh
  /proc, and chroots into the unpacked root.

QEMU 10.0 no longer honours ``-M ...,dumpdtb=FILE`` at start-up (the machine property is
applied before the pseries machine has built its tree: "This machine doesn't have an FDT"), so
:meth:`Qemu.run` can take the tree the QMP way instead: ``-S -qmp stdio``, then
``qmp_capabilities``, ``dumpdtb`` (QEMU 8.2 and later, qapi/machine.json) and ``quit``.  The
machine has been through its first reset by the time the monitor answers
(qmp_x_exit_preconfig -> qemu_machine_creation_done), which is where 7.2's ``dumpdtb=`` wrote
the same tree.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT_SCRIPT = TESTS / "debian13-qemu-root.sh"
BUILD_TIMEOUT = 1800  # seconds; a cold bootstrap took about 6 minutes on a loaded 2-core host
QEMU_IN_ROOT = "/usr/bin/qemu-system-ppc64"


class OracleMissingError(Exception):
    """A real QEMU the test needs cannot be had here; the message says why."""


def need(oracle: Qemu | OracleMissingError) -> Qemu:
    """The oracle, or skip the test (fail with CI=true) with the reason it is missing."""
    if isinstance(oracle, OracleMissingError):
        if os.environ.get("CI") == "true":
            pytest.fail(str(oracle))
        pytest.skip(str(oracle))
    return oracle


def cache_dir() -> Path:
    return Path(os.environ.get("KVMPPC_QEMU_ROOT_CACHE", "/var/tmp/kvmppc-debian13-qemu"))


def root_key() -> str:
    """The cache key: the recipe's content."""
    return hashlib.sha256(ROOT_SCRIPT.read_bytes()).hexdigest()[:16]


def _build_tarball(tarball: Path) -> None:
    if os.geteuid() != 0:
        raise OracleMissingError(f"{tarball} is missing and building it needs root")
    if shutil.which("mmdebstrap") is None or shutil.which("unshare") is None:
        raise OracleMissingError(f"{tarball} is missing and building it needs mmdebstrap"
                                 " and unshare (Debian packages mmdebstrap, util-linux)")
    log = tarball.with_suffix(".log")
    try:
        with log.open("w") as out:
            subprocess.run(["bash", str(ROOT_SCRIPT), str(tarball)], stdout=out,
                           stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT, check=True)
    except subprocess.TimeoutExpired as exc:
        raise OracleMissingError(f"building the Debian 13 QEMU root took more than"
                                 f" {BUILD_TIMEOUT} s (log: {log})") from exc
    except subprocess.CalledProcessError as exc:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise OracleMissingError(f"building the Debian 13 QEMU root failed ({exc.returncode}),"
                                 f" log {log}: " + " | ".join(tail)) from exc


def debian13_root() -> Path:
    """The unpacked Debian 13 root for the current recipe, built and unpacked once."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = root_key()
    tarball = cache / f"debian13-qemu-{key}.tar"
    root = cache / f"debian13-qemu-{key}.root"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time, across processes
        if not (root / ".kvmppc-complete").exists():
            if not tarball.exists():
                _build_tarball(tarball)
            staging = Path(tempfile.mkdtemp(dir=cache, prefix=".unpack-"))
            # tar(1), not tarfile: device nodes and owners as they are, on any Python 3.11
            subprocess.run(["tar", "-C", str(staging), "-xf", str(tarball)], check=True,
                           timeout=600)
            (staging / ".kvmppc-complete").touch()
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
    return root


@dataclass(frozen=True)
class QemuRun:
    """What one QEMU run printed: exit status, stderr lines, QMP replies, the device tree."""

    returncode: int
    stderr: str
    replies: tuple[dict[str, object], ...]
    dtb: bytes | None


@dataclass(frozen=True)
class Qemu:
    """One runnable ``qemu-system-ppc64``."""

    name: str  # "7.2" or "10.0": the version the tests model it as
    version_line: str  # the first line of --version
    root: Path | None  # None: the host's binary

    @property
    def version(self) -> tuple[int, int, int]:
        found = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", self.version_line)
        assert found is not None, self.version_line
        return int(found[1]), int(found[2]), int(found[3] or 0)

    def argv(self, args: Sequence[str]) -> list[str]:
        if self.root is None:
            return [shutil.which("qemu-system-ppc64") or "qemu-system-ppc64", *args]
        script = ('set -e; mount --make-rprivate /; mount --rbind /dev "$0/dev";'
                  ' mount -t proc proc "$0/proc"; exec chroot "$0" "$@"')
        return ["unshare", "--mount", "--fork", "sh", "-c", script, str(self.root),
                "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "LC_ALL=C", QEMU_IN_ROOT, *args]

    def scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A directory QEMU can write to: (host path, path QEMU sees) via :meth:`seen`."""
        base = None if self.root is None else str(self.root / "tmp")
        return tempfile.TemporaryDirectory(prefix="kvmppc-qemu-", dir=base)

    def seen(self, host_path: Path) -> str:
        """``host_path`` as QEMU sees it (inside the root)."""
        if self.root is None:
            return str(host_path)
        return "/" + str(host_path.relative_to(self.root))

    def run(self, args: Sequence[str], *, qmp: Sequence[dict[str, object]] = (),
            timeout: float = 120) -> QemuRun:
        """Run QEMU with ``args`` (stdin closed, or feeding ``qmp`` commands after the
        capabilities handshake when given; add ``-S -qmp stdio`` yourself)."""
        env = {**os.environ, "LC_ALL": "C"}
        stdin = ""
        if qmp:
            stdin = "".join(json.dumps(c) + "\n" for c in
                            [{"execute": "qmp_capabilities"}, *qmp])
        proc = subprocess.run(self.argv(args), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False, env=env)
        replies = tuple(json.loads(line) for line in proc.stdout.splitlines()
                        if line.startswith("{"))
        return QemuRun(proc.returncode, proc.stderr, replies, None)

    def run_dtb(self, args: Sequence[str], *, timeout: float = 120) -> QemuRun:
        """Start the machine stopped, take its device tree over QMP, quit.  ``dtb`` is None
        when QEMU refused to start (its messages are in ``stderr``)."""
        with self.scratch() as tmp:
            dtb = Path(tmp, "tree.dtb")
            run = self.run([*args, "-S", "-qmp", "stdio"], timeout=timeout, qmp=[
                {"execute": "dumpdtb", "arguments": {"filename": self.seen(dtb)}},
                {"execute": "quit"},
            ])
            blob = dtb.read_bytes() if dtb.exists() else None
        for reply in run.replies:
            if "error" in reply:
                raise AssertionError(f"QMP error from {self.name}: {reply} ({run.stderr})")
        return QemuRun(run.returncode, run.stderr, run.replies, blob)


def _version_line(qemu: Qemu) -> str:
    proc = subprocess.run(qemu.argv(["--version"]), capture_output=True, text=True,
                          timeout=60, check=True)
    return proc.stdout.splitlines()[0]


@functools.cache
def qemu72() -> Qemu | OracleMissingError:
    """The host's qemu-system-ppc64, which must be 7.2."""
    if shutil.which("qemu-system-ppc64") is None:
        return OracleMissingError("qemu-system-ppc64 is not installed (Debian package"
                                  " qemu-system-ppc, see scripts/setup-system.sh)")
    qemu = Qemu("7.2", "", None)
    qemu = Qemu("7.2", _version_line(qemu), None)
    if qemu.version[:2] != (7, 2):
        return OracleMissingError(f"the host's qemu-system-ppc64 is not 7.2: {qemu.version_line}")
    return qemu


@functools.cache
def qemu10() -> Qemu | OracleMissingError:
    """Debian 13's qemu-system-ppc64 (10.0) in its Debian 13 root, built when missing."""
    try:
        root = debian13_root()
    except OracleMissingError as exc:
        return exc
    except (OSError, subprocess.SubprocessError) as exc:
        return OracleMissingError(f"cannot make the Debian 13 QEMU root in {cache_dir()}: {exc}")
    qemu = Qemu("10.0", "", root)
    try:
        qemu = Qemu("10.0", _version_line(qemu), root)
    except (subprocess.SubprocessError, OSError) as exc:
        return OracleMissingError(f"QEMU in the Debian 13 root {root} does not run: {exc}")
    if qemu.version[:2] != (10, 0):
        return OracleMissingError(f"Debian 13's qemu-system-ppc64 is not 10.0 any more:"
                                  f" {qemu.version_line}")
    return qemu


def packages(qemu: Qemu) -> str:
    """What the root holds (recorded by the bootstrap), for messages."""
    if qemu.root is None:
        return "host"
    return (qemu.root / "kvmppc-root-packages").read_text().strip().replace("\n", ", ")

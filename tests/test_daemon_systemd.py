"""The shipped units under a real systemd PID 1: ``systemd-nspawn --boot`` of a Debian 12 root.

``systemd-analyze verify`` and ``security`` read the units; ``systemd-socket-activate`` passes
one socket.  Only a booted systemd shows the rest: both socket units activating the
service, ``Type=notify`` (READY=1) and the watchdog, ``systemctl reload`` re-probing, the
sandbox (``DynamicUser=``, ``DevicePolicy=closed`` + ``DeviceAllow=/dev/kvm``) still letting
the daemon open /dev/kvm and nothing else, the API socket's owner and mode, journald's
structured fields, and ``Restart=`` after a crash.

The root is bootstrapped once with mmdebstrap (minbase + systemd, python3, python3-systemd)
and cached as a tarball under /var/tmp/kvmppc-nspawn; each run unpacks a fresh copy,
installs a wheel built from this checkout (its dependencies from PyPI, through the host's
pip configuration and certificate authorities), copies the units in unchanged, and boots
it with a private network.  Commands run inside with ``nsenter`` into the container's PID 1
(this machine's own PID 1 may not be systemd, so there may be no machined to ask).  It also
runs inside a chroot such as CI's (seen booting in one made like ../shared/tools/fresh-root.sh,
given systemd-container, mmdebstrap and util-linux there).

/dev/kvm: the container gets a device node of its own (same major:minor, made in the
container's directory, group kvm) rather than the host's node, whose mode systemd's
tmpfiles in the container would otherwise change on the host.  /dev/net/tun is bound the
same way as the "other device" the service must not open.

A test drop-in adds only what the checks need: ``WatchdogSec=3`` (so pings are seen in
seconds) and an ``ExecStartPre=`` that tries both devices inside the service's sandbox and
logs what it could open.  Needs root, systemd-nspawn (Debian: systemd-container),
mmdebstrap and /dev/kvm; skips saying which is missing, and fails instead with CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import REPO, wait_until

CACHE = Path(os.environ.get("KVMPPC_NSPAWN_CACHE", "/var/tmp/kvmppc-nspawn"))
TARBALL = CACHE / "bookworm-systemd.tar"
PACKAGES = ("systemd,systemd-sysv,dbus,python3,python3-venv,python3-systemd,"
            "ca-certificates,procps")
# This machine's PID 1 may not be systemd (no system bus, no machined): run the container in
# the caller's own cgroup and register it nowhere.  Under a systemd host these work too.
# No --link-journal: a bootstrapped root (CI's chroot) may have no machine ID of its own.
NSPAWN_HOSTLESS = ("--keep-unit", "--register=no", "--link-journal=no")
# systemd-nspawn makes / a slave mount: in a chroot whose / is no mount point (CI runs the
# tests in one, ../shared/tools/fresh-root.sh) that fails with EINVAL.  There, run it in a
# mount namespace of its own whose root is a bind mount of this one (same paths).
_SELF_ROOT = ('mkdir -p /mnt/kvmppc-self && mount --rbind / /mnt/kvmppc-self'
              ' && cd /mnt/kvmppc-self && exec chroot . "$@"')


def nspawn(*args: str) -> list[str]:
    """The systemd-nspawn command line, wrapped when / is not a mount point (a chroot)."""
    argv = ["systemd-nspawn", "-q", *NSPAWN_HOSTLESS, *args]
    if os.path.ismount("/"):
        return argv
    return ["unshare", "--mount", "--propagation", "unchanged", "--fork", "sh", "-c",
            _SELF_ROOT, "sh", *argv]
KVM_GID = 995  # the group kvm made in the root before its first boot (sysusers keeps it)
DEVICE_CHECK = r'''
import errno, os
seen = []
for name, path in (("kvm", "/dev/kvm"), ("net_tun", "/dev/net/tun")):
    try:
        os.close(os.open(path, os.O_RDWR))
        seen.append(f"{name}=ok")
    except OSError as exc:
        seen.append(f"{name}={errno.errorcode.get(exc.errno, exc.errno)}")
print("device-check " + " ".join(seen), flush=True)
'''
DROP_IN = """[Service]
WatchdogSec=3
ExecStartPre=/opt/kvmppc/bin/python3 /usr/local/lib/kvmppc-device-check.py
"""
CLIENT = r'''
import socket, sys
target, path = sys.argv[1], sys.argv[2]
method = sys.argv[3] if len(sys.argv) > 3 else "GET"
if target.startswith("/"):
    sock = socket.socket(socket.AF_UNIX); sock.connect(target)
else:
    host, port = target.rsplit(":", 1); sock = socket.create_connection((host, int(port)))
sock.settimeout(30)
sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
data = b""
while chunk := sock.recv(65536):
    data += chunk
sys.stdout.write(data.decode())
'''


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the systemd test cannot run: {reason}")
    pytest.skip(reason)


def _run(*argv: str, timeout: float = 120, check: bool = True,
         **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}"
                             f"\n{done.stderr}")
    return done


def _bootstrap() -> None:
    if TARBALL.is_file():
        return
    if shutil.which("mmdebstrap") is None:
        _unavailable("mmdebstrap is not installed (Debian package mmdebstrap) and no cached"
                     f" root at {TARBALL}")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / "tmp-root.tar"
    _run("mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(partial),
         "/etc/apt/sources.list.d/debian.sources", timeout=1800)
    partial.rename(TARBALL)


def _wheel(out: Path) -> Path:
    """A wheel built from a copy of the checkout's files, as tests/test_packaging.py does."""
    listed = _run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    tree = out / "source"
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(tree), timeout=600)
    (built,) = out.glob("kvmppc-*.whl")
    return built


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _container_init(nspawn: int) -> int | None:
    """The container's PID 1 (systemd), as a host pid: a descendant whose NSpid ends in 1."""
    todo = [nspawn]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            todo += _children(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1" and pid != nspawn:
                return pid
    return None


@dataclass
class Machine:
    root: Path
    proc: subprocess.Popen[bytes]
    init: int
    log: Path

    def run(self, *argv: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # --root and --wd: the init's own root; in a chroot (CI's fresh root) the mount
        # namespace's root is not the container's, and systemctl there finds no systemd.
        return _run("nsenter", f"--target={self.init}", "--all", "--root", "--wd", "--", *argv,
                    check=check, timeout=timeout)

    def systemctl_show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def http(self, target: str, path: str, method: str = "GET") -> tuple[int, str]:
        out = self.run("/opt/kvmppc/bin/python3", "/usr/local/lib/kvmppc-client.py", target,
                       path, method).stdout
        assert out.startswith("HTTP/1.1 "), f"{out!r}\n{self.journal()}"
        head, _, body = out.partition("\n\n")  # text mode: CRLF arrive as \n
        return int(head.split(" ")[1]), body

    def journal(self) -> str:
        return self.run("journalctl", "-u", "kvmppc.service", "-o", "cat", "--no-pager",
                        check=False).stdout

    def health(self) -> dict[str, Any]:
        status, body = self.http("/run/kvmppc/kvmppc.sock", "/v1/health")
        assert status in (200, 503) and body, f"{status} {body!r}\n{self.journal()}"
        result: dict[str, Any] = json.loads(body)
        return result

    def wait(self, condition: Any, timeout: float = 60, what: Any = "") -> Any:
        """``what``: a text, or a callable giving one when the wait fails."""
        return wait_until(condition, timeout, 0.3, lambda: (
            f"{what() if callable(what) else what}\n{self.log.read_text()}"))


def _mknod(path: Path, like: str, gid: int, mode: int) -> None:
    rdev = os.stat(like).st_rdev
    os.mknod(path, stat.S_IFCHR | mode, rdev)
    os.chown(path, 0, gid)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    if os.geteuid() != 0:
        _unavailable("systemd-nspawn needs root")
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        _unavailable("systemd-nspawn (Debian package systemd-container) or nsenter is missing")
    for device in ("/dev/kvm", "/dev/net/tun"):
        if not os.path.exists(device):
            _unavailable(f"{device} is missing")
    _bootstrap()
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="machine.", dir=CACHE))
    root = work / "root"
    root.mkdir()
    proc: subprocess.Popen[bytes] | None = None
    init: int | None = None
    try:
        _run("tar", "-C", str(root), "-xf", str(TARBALL))
        # The package registries as the host reaches them, no more (as fresh-root.sh).
        if os.path.exists("/etc/pip.conf"):
            shutil.copy("/etc/pip.conf", root / "etc/pip.conf")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt",
                    root / "etc/ssl/certs/ca-certificates.crt")
        wheel = _wheel(work)
        shutil.copy(wheel, root / "root" / wheel.name)
        _run("chroot", str(root), "groupadd", "--system", "--gid", str(KVM_GID), "kvm")
        install = (f"python3 -m venv --system-site-packages /opt/kvmppc"
                   f" && /opt/kvmppc/bin/pip install -q --no-cache-dir /root/{wheel.name}"
                   " && ln -sf /opt/kvmppc/bin/kvmppc /usr/local/bin/kvmppc")
        done = _run(*nspawn("-D", str(root), "--pipe", "/bin/sh", "-c", install),
                    timeout=900, check=False)
        if done.returncode != 0:
            _unavailable(f"systemd-nspawn cannot run a command here, or pip failed:"
                         f" {done.stderr.strip()[-800:]}")
        for unit in ("kvmppc.service", "kvmppc.socket", "kvmppc-metrics.socket"):
            shutil.copy(REPO / "service" / unit, root / "etc/systemd/system" / unit)
        (root / "etc/systemd/system/kvmppc.service.d").mkdir()
        (root / "etc/systemd/system/kvmppc.service.d/test.conf").write_text(DROP_IN)
        (root / "usr/local/lib/kvmppc-device-check.py").write_text(DEVICE_CHECK)
        (root / "usr/local/lib/kvmppc-client.py").write_text(CLIENT)
        _mknod(work / "kvm", "/dev/kvm", KVM_GID, 0o660)
        _mknod(work / "tun", "/dev/net/tun", 0, 0o666)
        log = work / "console.log"
        with open(log, "wb") as console:
            proc = subprocess.Popen(
                nspawn("--boot", "--private-network", "-D", str(root),
                       f"--machine=kvmppc-t{os.getpid()}", f"--bind={work / 'kvm'}:/dev/kvm",
                       f"--bind={work / 'tun'}:/dev/net/tun"),
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while init is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            init = _container_init(proc.pid)
        if init is None:
            _unavailable(f"systemd-nspawn --boot did not start a container:\n{log.read_text()}")
        box = Machine(root, proc, init, log)
        seen: list[str] = []

        def booted() -> bool:
            done = box.run("systemctl", "is-system-running", check=False)
            seen[:] = [f"is-system-running: {done.stdout.strip()!r} {done.stderr.strip()!r}"]
            return done.stdout.strip() in ("running", "degraded")

        box.wait(booted, 120, lambda: "boot finished; last " + "".join(seen))
        box.run("systemctl", "enable", "--now", "kvmppc.socket", "kvmppc-metrics.socket")
        yield box
    finally:
        if proc is not None and proc.poll() is None:
            # systemd(1): SIGRTMIN+4 is "poweroff"; nspawn exits when its PID 1 does.
            if init is not None:
                os.kill(init, signal.SIGRTMIN + 4)
            else:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def test_sockets_listen_with_their_owner_and_mode_before_the_service_runs(
        machine: Machine) -> None:
    assert machine.run("systemctl", "is-active", "kvmppc.service",
                       check=False).stdout.strip() == "inactive"
    owner = machine.run("stat", "-c", "%U %G %a %F", "/run/kvmppc/kvmppc.sock").stdout.split()
    assert owner == ["root", "kvm", "660", "socket"]
    listening = machine.systemctl_show("kvmppc-metrics.socket", "ActiveState", "Listen")
    assert listening["ActiveState"] == "active" and "19641" in listening["Listen"]


def test_the_api_socket_starts_the_service_which_reports_ready(machine: Machine) -> None:
    health = machine.health()  # this first connection activates kvmppc.service
    assert health["status"] in ("ok", "degraded")
    shown = machine.systemctl_show("kvmppc.service", "ActiveState", "SubState", "StatusText",
                                   "Type")
    # Type=notify: "active (running)" only once READY=1 arrived; STATUS= is the daemon's.
    assert (shown["Type"], shown["ActiveState"], shown["SubState"]) == (
        "notify", "active", "running")
    assert shown["StatusText"].startswith(health["status"])


def test_the_watchdog_is_pinged(machine: Machine) -> None:
    machine.health()

    def pinged() -> str:
        return machine.systemctl_show("kvmppc.service", "WatchdogTimestampMonotonic")[
            "WatchdogTimestampMonotonic"]

    first = pinged()
    assert first not in ("", "0")
    machine.wait(lambda: pinged() != first, 10, "a second watchdog ping")


def test_the_hardened_service_opens_dev_kvm_and_no_other_device(machine: Machine) -> None:
    status, body = machine.http("/run/kvmppc/kvmppc.sock", "/v1/host")
    assert status == 200
    kvm = json.loads(body)["probe"]["kvm"]
    assert kvm["present"] is True and kvm["error"] is None, kvm
    logged = machine.run("journalctl", "-u", "kvmppc.service", "-o", "cat",
                         "--grep", "device-check").stdout
    assert "device-check kvm=ok" in logged, logged
    # Outside the service the same node opens: EPERM in the service is its DevicePolicy=.
    control = machine.run("python3", "/usr/local/lib/kvmppc-device-check.py").stdout
    assert "net_tun=ok" in control, control
    if "net_tun=ok" in logged:
        # systemd enforces DeviceAllow= through the devices cgroup controller (v1) or a BPF
        # program (v2); a container in a cgroup it may not manage cannot do either.
        # Not a missing package (which CI=true turns into a failure) but what this host's
        # kernel set-up allows, so a skip in CI too; /dev/kvm opening was asserted above.
        pytest.skip("DevicePolicy= is not enforced in this container (no devices cgroup it"
                    " may manage: cgroup v1 without delegation here): /dev/kvm opened, but"
                    " 'nothing else' cannot be checked")
    assert "net_tun=EPERM" in logged, logged


def test_journald_gets_the_structured_fields(machine: Machine) -> None:
    machine.health()
    lines = machine.run("journalctl", "-u", "kvmppc.service", "-o", "json",
                        "SYSLOG_IDENTIFIER=kvmppc").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    probes = [r for r in records if "KVMPPC_PROBE_REASON" in r]
    assert probes, f"no KVMPPC_PROBE_REASON field in {len(records)} records"
    assert "KVMPPC_PROBE_DURATION_S" in probes[0]


def test_reload_probes_again(machine: Machine) -> None:
    before = machine.health()["probes"]
    machine.run("systemctl", "reload", "kvmppc.service")  # returns after RELOADING=1 / READY=1
    machine.wait(lambda: machine.health()["probes"] > before, 20, "a probe after reload")


def test_the_metrics_socket_starts_the_service(machine: Machine) -> None:
    machine.run("systemctl", "stop", "kvmppc.service")
    assert machine.run("systemctl", "is-active", "kvmppc.service",
                       check=False).stdout.strip() == "inactive"
    status, body = machine.http("127.0.0.1:19641", "/metrics")
    assert status == 200 and "kvmppc_build_info{" in body
    assert machine.run("systemctl", "is-active", "kvmppc.service").stdout.strip() == "active"


def test_a_crash_is_restarted(machine: Machine) -> None:
    machine.health()
    before = machine.systemctl_show("kvmppc.service", "MainPID", "NRestarts")
    machine.run("systemctl", "kill", "--signal=SIGKILL", "kvmppc.service")

    def restarted() -> bool:
        now = machine.systemctl_show("kvmppc.service", "MainPID", "NRestarts", "ActiveState")
        return (now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])
                and int(now["NRestarts"]) > int(before["NRestarts"]))

    machine.wait(restarted, 30, "Restart=on-failure after SIGKILL")
    assert machine.health()["status"] in ("ok", "degraded")

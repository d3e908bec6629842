"""``kvmppc serve`` end to end: a real subprocess on a temporary socket, real clients (curl,
``kvmppc query``), notifications on a real datagram socket, socket activation through the
real ``systemd-socket-activate``, and the faults it must survive."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from kvmppc.model import ProbeResult
from tests.daemon_support import (
    REPO,
    Daemon,
    fd_count,
    read_response,
    request,
    rss_kib,
    run_daemon,
    serve_command,
    traceback_free,
    wait_until,
)
from tests.helpers import free_port

FAST = "device_poll_interval = 0.2\nretry_interval = 0.5\n"


def kvmppc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmppc", *args], capture_output=True,
                          text=True, check=False, cwd=REPO, timeout=60)


# --------------------------------------------------------------------------------------------
# serving


def test_curl_gets_host_health_and_metrics(tmp_path: Path) -> None:
    """The README's curl commands work: JSON on the unix socket, metrics on TCP too."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (scripts/setup-system.sh installs it)")
    with run_daemon(tmp_path) as daemon:
        def curl(*args: str) -> str:
            return subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True,
                                  text=True, check=True, timeout=30).stdout

        host = json.loads(curl("--unix-socket", daemon.socket_path, "http://localhost/v1/host"))
        assert host["probe"]["host"]["arch"] == os.uname().machine
        assert host["probe"]["schema_version"] == 1
        assert host["cache"]["source"] == "live" and host["cache"]["stale"] is False
        health = json.loads(curl("--unix-socket", daemon.socket_path,
                                 "http://localhost/v1/health"))
        assert health["status"] in ("ok", "degraded")
        text = curl(f"http://127.0.0.1:{daemon.metrics_port}/metrics")
        assert "kvmppc_probe_success 1.0" in text
        # The TCP listener serves metrics only: the host's details stay on the unix socket.
        status, _, _ = request(("127.0.0.1", daemon.metrics_port),
                               b"GET /v1/host HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404


def test_host_answer_is_the_probe_json_with_fresh_hugepages(tmp_path: Path) -> None:
    """GET /v1/host's "probe" reads back as a ProbeResult, like `kvmppc probe --json`."""
    with run_daemon(tmp_path) as daemon:
        status, body = daemon.get("/v1/host")
        assert status == 200
        result = ProbeResult.from_dict(body["probe"])
        direct = json.loads(kvmppc("probe", "--json").stdout)
        assert body["probe"]["kvm"] == direct["kvm"]
        assert body["probe"]["hugepages"]["pools"] == direct["hugepages"]["pools"]
        assert result.kvm.present and not result.kvm.powerpc  # this x86 machine's answer


def test_keep_alive_and_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as daemon, socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(daemon.socket_path)
        reader = sock.makefile("rb")
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                     b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses = [read_response(reader)[0] for _ in range(3)]
        assert statuses == [200, 200, 404]
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert reader.read() == b""


@pytest.mark.parametrize(("raw", "status", "says"), [
    (b"GET /v1/host HTTP/1.1\r\n\r\n", 400, "Host header"),
    (b"BREW /v1/host HTTP/1.1\r\nHost: x\r\n\r\n", 405, "takes GET, HEAD"),
    (b"GET /v1/refresh HTTP/1.1\r\nHost: x\r\n\r\n", 405, "takes POST"),
    (b"GET /v1/host?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "takes no parameters"),
    (b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no /etc/passwd here"),
    (b"GET /v1/host HTTP/1.1\nHost: x\n\n", 400, "CRLF"),
    (b"POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", 413, "over"),
    (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n", 414, "over 32768"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n", 417, "100-continue"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 40000 + b"\r\n\r\n", 431, "head is"),
], ids=lambda value: str(value)[:40] if isinstance(value, bytes) else None)
def test_bad_requests_get_a_4xx_saying_what_was_wrong(tmp_path: Path, raw: bytes, status: int,
                                                      says: str) -> None:
    with run_daemon(tmp_path) as daemon:
        got, headers, body = request(daemon.socket_path, raw)
        assert got == status
        assert headers["content-type"] == "application/json"
        assert says in json.loads(body)["error"]
        assert daemon.get("/v1/health")[0] == 200


def _profile_with_mounts(tmp_path: Path) -> Path:
    """The POWER9 profile with hugetlbfs mounts of 2 MiB and 1 GiB pages added."""
    data = json.loads((REPO / "kvmppc/profiles/power9-radix-hv.json").read_text())
    data["hugepages"]["mounts"] = [
        {"path": "/dev/hugepages", "page_size": 2 << 20, "page_size_from": "statfs"},
        {"path": "/mnt/huge1g", "page_size": 1 << 30, "page_size_from": "statfs"},
    ]
    # Pools with room for these guests: QEMU reserves a backend's hugepages when it maps it.
    for pool in data["hugepages"]["pools"]:
        pool["total"] = pool["free"] = 4096 if pool["page_size"] == 2 << 20 else 8
    path = tmp_path / "power9-mounts.json"
    path.write_text(json.dumps(data))
    return path


CANT_16M_ON_64K = ("Can't support 16384 kiB guest pages with 64 kiB host pages with this KVM"
                   " implementation")

# Each query on the POWER9 nested KVM-HV profile (64 KiB base pages, PAGE_SIZES_REAL, radix
# without KVM_CAP_PPC_MMU_HASH_V3) plus 2 MiB and 1 GiB mounts, and QEMU 7.2's answer written
# by hand from its rules: (errors in QEMU's order, cap in bytes, smallest backing page).
# spapr_check_pagesize: the cap may not exceed the RAM backing page under PAGE_SIZES_REAL;
# spapr_check_mmu_mode: a hash-only model (POWER8) is refused on a radix-only KVM; before
# that KVM-HV refuses a PVR not the host's (target/ppc/kvm.c kvm_arch_init_vcpu, as QEMU 7.2
# printed it in the real POWER9 nested guest) and nested KVM-HV allocates no HPT.
CHECKS_ON_THE_PROFILE = [
    ({}, [], 64 << 10, 64 << 10),  # pseries-7.2's default cap, 64K, on 64 KiB pages
    ({"max_page_size": "16M"}, [CANT_16M_ON_64K], 16 << 20, 64 << 10),
    ({"max_page_size": "64k", "mem_path": "/dev/hugepages/guest1"}, [], 64 << 10, 2 << 20),
    ({"max_page_size": "1G", "mem_path": "/mnt/huge1g/g", "kvm_type": "HV", "memory": "4G"},
     [], 1 << 30, 1 << 30),
    ({"max_page_size": "16M", "cpu": "POWER8", "machine": "pseries-4.2"},
     ['Register sync failed... If you\'re using kvm-hv.ko, only "-cpu host" is possible',
      CANT_16M_ON_64K, "HPT not supported in nested guests",
      "Guest requested unavailable MMU mode (hash)."], 16 << 20, 64 << 10),
]


@pytest.mark.parametrize(("params", "errors", "cap", "backing"), CHECKS_ON_THE_PROFILE,
                         ids=["&".join(f"{k}={v}" for k, v in params.items()) or "defaults"
                              for params, *_expected in CHECKS_ON_THE_PROFILE])
def test_check_answers_as_kvmppc_check_does(tmp_path: Path, params: dict[str, str],
                                            errors: list[str], cap: int, backing: int) -> None:
    """GET /v1/check is `kvmppc check --json` from the cache, plus the cache's metadata.

    Both run the same policy, so their equality tests the transport (query string, cache,
    JSON); the answer itself is held against QEMU's rules, written out above."""
    profile = _profile_with_mounts(tmp_path)
    flags = {"max_page_size": "--max-page-size", "mem_path": "--mem-path", "cpu": "--cpu",
             "kvm_type": "--kvm-type", "memory": "--memory", "machine": "--machine"}
    cli = kvmppc("check", "--json", "--host-profile", str(profile),
                 *(item for key, value in params.items() for item in (flags[key], value)))
    with run_daemon(tmp_path / "d", "--host-profile", str(profile)) as daemon:
        status, body = daemon.get("/v1/check?" + urlencode(params))
    assert status == 200
    assert body.pop("cache")["source"] == f"profile:{profile}"
    assert body == json.loads(cli.stdout)
    assert (body["ok"], body["errors"]) == (not errors, errors)
    assert (body["max_page_size"], body["backing_page_size"]) == (cap, backing)
    assert body["accel"] == "kvm" and body["needs_host_contiguous_pages"] is True


def test_check_mem_path_is_resolved_against_the_probe_mount_table(tmp_path: Path) -> None:
    """A client's path is only compared with the mounts the probe saw, never opened or
    statfs'd: a path that does not exist is simply not on hugetlbfs."""
    profile = _profile_with_mounts(tmp_path)
    with run_daemon(tmp_path / "d", "--host-profile", str(profile)) as daemon:
        backing = daemon.get("/v1/check?mem_path=/dev/hugepages/a/b")[1]["backings"][0]
        assert (backing["page_size"], backing["mount"]) == (2 << 20, "/dev/hugepages")
        backing = daemon.get("/v1/check?mem_path=/no/such/path")[1]["backings"][0]
        assert (backing["page_size"], backing["source"], backing["error"]) == (
            65536, "base-page-size", None)


def test_check_on_this_host_matches_kvmppc_check(tmp_path: Path) -> None:
    """Here KVM is not PowerPC: the TCG answer, the same as `kvmppc check` gives (the
    transport), and what QEMU does under TCG: no host-contiguity, so 16M starts."""
    cli = json.loads(kvmppc("check", "--json", "--max-page-size", "16M").stdout)
    with run_daemon(tmp_path) as daemon:
        status, body = daemon.get("/v1/check?max_page_size=16M")
    body.pop("cache")
    assert status == 200 and body == cli and body["accel"] == "tcg"
    assert body["ok"] is True and body["errors"] == [] and body["kvm"] is None
    assert body["needs_host_contiguous_pages"] is False and body["max_page_size"] == 16 << 20


@pytest.mark.parametrize(("query", "says"), [
    ("max_page_size=64k&color=blue", "unknown parameter(s) 'color'"),
    ("max_page_size=64k&max_page_size=16M", "'max_page_size' given 2 times"),
    ("accel=xen", "accel must be 'kvm' or 'tcg'"),
    ("kvm_type=BOTH", "Unknown kvm-type specified 'BOTH'"),
    ("mem_path=relative/path", "must be an absolute path"),
    ("max_page_size", "malformed"),
    ("a=%ff", "malformed"),
])
def test_bad_check_parameters_get_400_with_the_reason(tmp_path: Path, query: str,
                                                      says: str) -> None:
    with run_daemon(tmp_path) as daemon:
        status, body = daemon.get(f"/v1/check?{query}")
        assert status == 400 and says in body["error"]


def test_kvmppc_query_check_takes_check_flags(tmp_path: Path) -> None:
    profile = _profile_with_mounts(tmp_path)
    with run_daemon(tmp_path / "d", "--host-profile", str(profile)) as daemon:
        sock = ("--socket", daemon.socket_path)
        yes = kvmppc("query", "check", "--max-page-size", "2M", "--mem-path",
                     "/dev/hugepages/vm", "--qemu-version", "7.2", *sock)
        assert yes.returncode == 0, yes.stderr
        assert "QEMU 7.2 would start this guest" in yes.stdout
        # The profile records no QEMU: the newest modelled release answers.
        newest = kvmppc("query", "check", "--max-page-size", "2M", "--mem-path",
                        "/dev/hugepages/vm", *sock)
        assert "QEMU 10.0 would start this guest" in newest.stdout, newest.stderr
        no = kvmppc("query", "check", "--max-page-size", "16M", *sock)
        assert no.returncode == 1
        assert "Can't support 16384 kiB guest pages with 64 kiB host pages" in no.stdout
        as_json = json.loads(kvmppc("query", "check", "--json", "--max-page-size", "16M",
                                    *sock).stdout)
        assert as_json["ok"] is False and as_json["cache"]["stale"] is False
        # Refused by the daemon (400), relayed as check's exit 2 with the daemon's words.
        bad = kvmppc("query", "check", "--kvm-type", "XX", *sock)
        assert bad.returncode == 2 and "Unknown kvm-type specified 'XX'" in bad.stderr
        bad = kvmppc("query", "check", "--qemu-version", "8.0", *sock)
        assert bad.returncode == 2 and "QEMU 8.0 is not modelled" in bad.stderr
        # Refused before asking, by the flags query shares with check.
        bad = kvmppc("query", "check", "--accel", "xen", *sock)
        assert bad.returncode == 2 and "invalid choice: 'xen'" in bad.stderr


def test_query_check_takes_caps_and_compat(tmp_path: Path) -> None:
    """--cap and --max-cpu-compat reach the daemon (query keys cap, max_cpu_compat).  The real
    POWER8 KVM-PR runs (power8-pr.md): FWNMI refused unless cap-fwnmi=off; max-cpu-compat
    needs KVM_REG_PPC_ARCH_COMPAT, which KVM-PR lacks."""
    with run_daemon(tmp_path, "--host-profile", "power8-hash-pr") as daemon:
        sock = ("--socket", daemon.socket_path)
        base = ("query", "check", "--json", "--qemu-version", "7.2", "--cpu", "power8", *sock)
        no = json.loads(kvmppc(*base).stdout)
        assert no["qemu_output"] == [
            "Firmware Assisted Non-Maskable Interrupts(FWNMI) not supported by KVM.",
            "Try appending -machine cap-fwnmi=off"]
        yes = kvmppc(*base, "--cap", "fwnmi=off")
        assert yes.returncode == 0, yes.stdout
        compat = json.loads(kvmppc(*base, "--cap", "cap-fwnmi=off", "--max-cpu-compat",
                                   "power8").stdout)
        assert compat["qemu_output"] == [
            "Unable to set CPU compatibility mode in KVM: Invalid argument"]
        status, body = daemon.get("/v1/check?cap=htm&qemu_version=7.2")
        assert status == 400 and "give NAME=VALUE" in body["error"]


def test_kvmppc_query_host_and_health(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as daemon:
        host = kvmppc("query", "host", "--socket", daemon.socket_path)
        assert host.returncode == 0, host.stderr
        assert "not PowerPC" in host.stdout and "answered by the kvmppc daemon" in host.stdout
        as_json = json.loads(kvmppc("query", "host", "--json", "--socket",
                                    daemon.socket_path).stdout)
        assert set(as_json) == {"probe", "cache"}
        health = kvmppc("query", "health", "--socket", daemon.socket_path)
        assert health.returncode == 0 and "probes" in health.stdout
        refreshed = kvmppc("query", "refresh", "--json", "--socket", daemon.socket_path)
        assert json.loads(refreshed.stdout)["refreshed"] is True
    gone = kvmppc("query", "host", "--socket", daemon.socket_path)
    assert gone.returncode == 2
    assert "Start it with 'kvmppc serve'" in gone.stderr


def test_serve_refuses_a_socket_path_it_cannot_create(tmp_path: Path) -> None:
    """Errors at start say what to change, and the exit status says it failed."""
    (tmp_path / "file").write_text("")
    done = subprocess.run(serve_command("--socket", str(tmp_path / "file"),
                                        "--metrics-address", ""),
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 2
    assert "is not a socket: remove it or give another --socket" in done.stderr


# --------------------------------------------------------------------------------------------
# systemd: notify, signals, watchdog, socket activation


def test_ready_only_once_probed_and_serving_then_reload_and_stop(tmp_path: Path) -> None:
    """READY=1 comes with a STATUS= line after the first probe, when a request is answered
    at once; SIGHUP gives RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a new probe;
    SIGTERM gives STOPPING=1 and a clean exit that removes the socket it created."""
    with run_daemon(tmp_path, wait_ready=False) as daemon:
        before_ready = daemon.notes.wait_for("STATUS=probing the host")
        assert "READY=1" not in before_ready
        ready = daemon.notes.wait_for("READY=1")
        status, health = daemon.get("/v1/health")  # no retry: it must answer right now
        assert status == 200 and health["probes"] == 1
        assert any(item.startswith("STATUS=") and "probed" in item for item in ready)
        assert f"MAINPID={daemon.proc.pid}" in ready

        daemon.proc.send_signal(signal.SIGHUP)
        reloading = daemon.notes.wait_for("RELOADING=1")
        assert any(item.startswith("MONOTONIC_USEC=") for item in reloading)
        daemon.notes.wait_for("READY=1")
        assert daemon.get("/v1/health")[1]["probes"] == 2

        daemon.proc.send_signal(signal.SIGTERM)
        daemon.notes.wait_for("STOPPING=1")
        assert daemon.proc.wait(10) == 0
        assert not os.path.exists(daemon.socket_path)


def test_watchdog_pings_at_half_the_timeout(tmp_path: Path) -> None:
    with run_daemon(tmp_path, env={"WATCHDOG_USEC": "400000"}) as daemon:
        for _ in range(3):
            daemon.notes.wait_for("WATCHDOG=1", timeout=10)
    with run_daemon(tmp_path / "other", env={"WATCHDOG_USEC": "400000",
                                             "WATCHDOG_PID": "1"}) as daemon:
        time.sleep(0.5)
        assert not any("WATCHDOG=1" in m for m in daemon.notes.drain())  # meant for pid 1


def _connect(address: tuple[str, int]) -> socket.socket | None:
    sock = socket.socket()
    try:
        sock.connect(address)
    except ConnectionRefusedError:
        sock.close()
        return None
    return sock


def _socket_activate(tmp_path: Path, listen: list[str], names: str
                     ) -> tuple[subprocess.Popen[bytes], socket.socket, Path]:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (package systemd)")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log = tmp_path / "daemon.log"
    argv = [tool, *(f"--listen={item}" for item in listen), f"--fdname={names}",
            f"--setenv=NOTIFY_SOCKET={notify_path}",
            *serve_command("--config", str(tmp_path / "none.conf"))]
    (tmp_path / "none.conf").write_text("")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    return proc, notify, log


def test_socket_activation_takes_both_named_listeners(tmp_path: Path) -> None:
    """systemd-socket-activate passes the unix and TCP sockets named api:metrics; the daemon
    serves on them, binds nothing itself, and leaves the socket file to its owner."""
    api, port = str(tmp_path / "api.sock"), free_port()
    proc, notify, log = _socket_activate(tmp_path, [api, f"127.0.0.1:{port}"], "api:metrics")
    try:
        # The tool starts the daemon on the first connection, which then waits in the backlog.
        wait_until(lambda: os.path.exists(api))
        status, _, body = request(api, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 30)
        assert status == 200 and json.loads(body)["probes"] == 1
        notify.settimeout(10)
        while b"READY=1" not in notify.recv(4096).split(b"\n"):
            pass
        status, _, body = request(("127.0.0.1", port), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and b"kvmppc_probe_success" in body
        assert "(sockets from systemd)" in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        notify.close()
    assert os.path.exists(api)  # systemd's socket, not ours to remove


def test_socket_activation_refuses_a_socket_that_is_not_what_its_name_says(
        tmp_path: Path) -> None:
    port = free_port()
    proc, notify, log = _socket_activate(tmp_path, [f"127.0.0.1:{port}"], "api")
    try:
        connection = wait_until(lambda: _connect(("127.0.0.1", port)))
        assert proc.wait(30) == 2
        connection.close()
        assert "as 'api', which should be a unix stream socket" in log.read_text()
    finally:
        notify.close()


# --------------------------------------------------------------------------------------------
# faults


def test_ppc_ioctl_failing_is_served_degraded_not_stale(tmp_path: Path) -> None:
    """This x86 machine's real answer: KVM present, the PPC ioctls ENOTTY."""
    with run_daemon(tmp_path) as daemon:
        status, health = daemon.get("/v1/health")
        assert status == 200
        assert health["status"] == "degraded" and health["cache"]["stale"] is False
        assert any("Inappropriate ioctl" in p for p in health["problems"])
        assert health["probe_failures"] == 0


def test_device_missing_then_loaded_then_unloaded_then_back(tmp_path: Path) -> None:
    """No device at start is served as it is (degraded); the node appearing is noticed
    without a request; the node vanishing keeps the last good answer, marked stale; and the
    daemon recovers by itself when it comes back."""
    device = tmp_path / "kvm"
    with run_daemon(tmp_path / "d", "--device", str(device), config=FAST) as daemon:
        health = daemon.get("/v1/health")[1]
        assert health["status"] == "degraded" and health["probe_failures"] == 1
        host = daemon.get("/v1/host")[1]
        assert host["probe"]["kvm"]["present"] is False
        assert "modprobe kvm_hv" in host["probe"]["kvm"]["error"]

        device.symlink_to("/dev/kvm")  # "modprobe": the node appears
        wait_until(lambda: daemon.get("/v1/host")[1]["probe"]["kvm"]["present"])
        assert daemon.get("/v1/health")[1]["cache"]["stale"] is False

        device.unlink()  # "rmmod": the node goes
        health = wait_until(lambda: (h := daemon.get("/v1/health")[1])["status"] == "stale"
                            and h)
        assert "No KVM module is loaded" in health["cache"]["last_error"]
        host = daemon.get("/v1/host")[1]
        assert host["probe"]["kvm"]["present"] is True  # the last good answer, kept
        assert host["cache"]["stale"] is True

        device.symlink_to("/dev/kvm")
        wait_until(lambda: daemon.get("/v1/health")[1]["cache"]["stale"] is False)
        assert daemon.alive()


def test_permission_denied_unprivileged_is_degraded_with_the_fix(tmp_path: Path) -> None:
    """Run without capabilities against a mode-000 KVM node: EACCES says to join group kvm."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to make and drop into the unprivileged"
                    " case")
    node = tmp_path / "kvm"
    try:
        os.mknod(node, 0o020000, os.makedev(10, 232))  # S_IFCHR: the misc device KVM uses
    except PermissionError:
        pytest.skip("mknod is not allowed here (a container without CAP_MKNOD)")
    os.chmod(node, 0)
    with run_daemon(tmp_path / "d", "--device", str(node), config=FAST,
                    prefix=["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]
                    ) as daemon:
        host = daemon.get("/v1/host")[1]
        assert "Permission denied" in host["probe"]["kvm"]["error"]
        assert "'kvm' group" in host["probe"]["kvm"]["error"]
        assert daemon.get("/v1/health")[1]["status"] == "degraded"
        os.chmod(node, 0o666)  # fixed by the administrator: noticed without a restart
        wait_until(lambda: daemon.get("/v1/host")[1]["probe"]["kvm"]["present"]
                   and daemon.get("/v1/host")[1]["probe"]["kvm"]["error"] is None)


def test_a_replayed_profile_that_breaks_on_reload_is_served_stale(tmp_path: Path) -> None:
    profile = tmp_path / "host.json"
    shutil.copy(REPO / "kvmppc/profiles/power9-radix-hv.json", profile)
    with run_daemon(tmp_path / "d", "--host-profile", str(profile)) as daemon:
        host = daemon.get("/v1/host")[1]
        assert host["probe"]["host"]["arch"] == "ppc64le"
        assert host["cache"]["source"] == f"profile:{profile}"
        profile.write_text("{ not json")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.notes.wait_for("RELOADING=1")
        daemon.notes.wait_for("READY=1")
        health = daemon.get("/v1/health")[1]
        assert health["status"] == "stale"
        assert "is not JSON" in health["cache"]["last_error"]
        assert daemon.get("/v1/host")[1]["probe"]["host"]["arch"] == "ppc64le"
        status, body = daemon.get("/v1/refresh", "POST")
        assert status == 503 and "is not JSON" in body["error"]


def test_unknown_host_profile_stops_the_daemon_with_the_choices(tmp_path: Path) -> None:
    with run_daemon(tmp_path, "--host-profile", "power99", wait_ready=False) as daemon:
        assert daemon.proc.wait(30) == 2
        assert "no host profile 'power99'" in daemon.log
        assert "power9-radix-hv" in daemon.log


def test_no_fd_or_memory_growth_over_thousands_of_refreshes(tmp_path: Path) -> None:
    """2000 re-probes of the real /dev/kvm (each a VM created and closed, in a thread)."""
    with run_daemon(tmp_path, config="min_refresh_interval = 0\n") as daemon, \
            socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(daemon.socket_path)
        reader = sock.makefile("rb")
        refresh = b"POST /v1/refresh HTTP/1.1\r\nHost: x\r\n\r\n"

        def refreshes(count: int) -> None:
            for _ in range(count):
                sock.sendall(refresh)
                assert read_response(reader)[0] == 200

        refreshes(200)  # warm up: allocator arenas, thread stacks, caches
        fds, rss = fd_count(daemon.proc.pid), rss_kib(daemon.proc.pid)
        refreshes(2000)
        assert fd_count(daemon.proc.pid) == fds
        assert rss_kib(daemon.proc.pid) - rss < 2048, "resident memory grew by over 2 MiB"
        assert daemon.get("/v1/health")[1]["probes"] == 2201


# --------------------------------------------------------------------------------------------
# slow, idle and too many clients


def test_slow_and_idle_clients_do_not_block_others(tmp_path: Path) -> None:
    """A client trickling a request and many idle ones do not hold up an honest client; the
    trickler is cut off at the idle timeout with a 408."""
    config = "idle_timeout = 1.5\nmax_connections = 20\n"
    with run_daemon(tmp_path, config=config) as daemon:
        idle = []
        for _ in range(15):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(daemon.socket_path)
            idle.append(sock)
        slow = socket.socket(socket.AF_UNIX)
        slow.settimeout(10)
        slow.connect(daemon.socket_path)
        started = time.monotonic()
        for byte in b"GET /v1/health HTTP/1.1\r\nHost":
            slow.sendall(bytes([byte]))
            assert daemon.get("/v1/health")[0] == 200  # answered meanwhile, every time
            if time.monotonic() - started > 1.0:
                break
        status, _, body = read_response(slow.makefile("rb"))
        assert status == 408 and b"longer than 1.5 s" in body
        for sock in idle:  # idle ones are closed without a word
            sock.settimeout(10)
            assert sock.recv(10) == b""
            sock.close()
        slow.close()


def test_connections_beyond_the_limit_are_turned_away(tmp_path: Path) -> None:
    with run_daemon(tmp_path, config="max_connections = 4\n") as daemon:
        held = []
        for _ in range(4):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(daemon.socket_path)
            held.append(sock)
        status, headers, body = request(daemon.socket_path, b"")
        assert status == 503 and headers["retry-after"] == "1"
        assert b"more than 4 connections" in body
        for sock in held:
            sock.close()
        wait_until(lambda: request(daemon.socket_path,
                                   b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200)


_KVM_DOMAIN_16M = b"""<domain type='kvm'>
  <name>big-pages</name>
  <memory unit='GiB'>4</memory>
  <vcpu>1</vcpu>
  <os><type arch='ppc64' machine='pseries'>hvm</type></os>
  <features><hpt resizing='enabled'><maxpagesize unit='MiB'>16</maxpagesize></hpt></features>
</domain>
"""


def _post_argv(daemon: Daemon, argv: list[str]) -> tuple[int, dict[str, str], bytes]:
    return _post(daemon, "application/json", json.dumps({"argv": argv}).encode())


def _post(daemon: Daemon, content_type: str, body: bytes,
          accept: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    head = (f"POST /v1/check HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return request(daemon.socket_path, head + body)


def test_post_check_takes_a_qemu_command_line_and_a_libvirt_domain(tmp_path: Path) -> None:
    """POST /v1/check: the guest as QEMU's argv or as domain XML, answered on the cached
    POWER9 probe with QEMU's words (a 16 MiB cap on 64 KiB anonymous pages under KVM-HV)."""
    argv = ["qemu-system-ppc64", "-M", "pseries,cap-hpt-max-page-size=16M", "-accel", "kvm",
            "-m", "4G"]
    fine = ["qemu-system-ppc64", "-M", "pseries", "-accel", "kvm", "-m", "4G"]
    with run_daemon(tmp_path / "d", "--host-profile", "power9-radix-hv") as daemon:
        status, headers, body = _post_argv(daemon, argv)
        assert status == 200 and headers["kvmppc-answer"] == "no", body
        answer = json.loads(body)
        assert answer["answer"] == "no"
        assert answer["check"]["errors"][0] == CANT_16M_ON_64K
        status, headers, body = _post_argv(daemon, fine)
        assert (status, headers["kvmppc-answer"]) == (200, "yes")
        status, headers, body = _post(daemon, "application/xml", _KVM_DOMAIN_16M, "text/plain")
        assert (status, headers["kvmppc-answer"]) == (200, "no")
        assert CANT_16M_ON_64K in body.decode()
        # What kvmppc cannot model is said, not guessed; bad input is a 400 naming the problem.
        resize = ["qemu-system-ppc64", "-M", "pseries,resize-hpt=required", "-accel", "kvm"]
        status, headers, body = _post_argv(daemon, resize)
        assert (status, json.loads(body)["answer"]) == (200, "cannot judge")
        # max-cpu-compat is judged: nested KVM-HV has no HPT for POWER8 mode
        compat = ["qemu-system-ppc64", "-M", "pseries,max-cpu-compat=power8", "-accel", "kvm"]
        status, headers, body = _post_argv(daemon, compat)
        assert json.loads(body)["check"]["errors"][0] == "HPT not supported in nested guests"
        assert _post(daemon, "text/csv", b"a,b")[0] == 400
        status, _headers, body = _post(daemon, "application/json", b'{"argv": "qemu"}')
        assert status == 400 and "list of strings" in json.loads(body)["error"]
        assert _post(daemon, "application/xml", b"<domain")[0] == 400
        assert daemon.alive()
    traceback_free(daemon.log)

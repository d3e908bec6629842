"""``kvmppc serve`` under abuse: clients that send and never read, try to exhaust file
descriptors, trickle requests (slowloris), crowd one listener, storm POST /v1/refresh,
half-close, or send heads that RFC 9112 says to reject.

Each test is bounded in time and count, on a unix socket or loopback only, against the real
daemon as a subprocess.  The only clocks asserted on are liveness bounds the issue asks for
("a fresh client answered within 100 ms", as the median of a few tries); throughput and
latency targets live in bench/.  Every test ends with the daemon's log free of tracebacks.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import (
    Daemon,
    non_reader,
    read_response,
    request,
    rss_kib,
    run_daemon,
    socket_fds,
    traceback_free,
    wait_until,
)

HOST_REQUEST = b"GET /v1/host HTTP/1.1\r\nHost: x\r\n\r\n"  # ~35 bytes in, ~5 KB out
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
MIB = 1024


def _connect(address: str | tuple[str, int]) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address)
    return sock


def _answered_ms(address: str | tuple[str, int], raw: bytes = HEALTH) -> float:
    """Milliseconds for a fresh client to get a 200 (a generous 5 s bound on each)."""
    started = time.perf_counter()
    status, _headers, _body = request(address, raw, timeout=5)
    assert status == 200, f"a well-behaved client got {status}"
    return (time.perf_counter() - started) * 1000


def _fresh_client_answered_fast(address: str | tuple[str, int], raw: bytes = HEALTH) -> None:
    """The issue's liveness bound: a fresh client is answered within 100 ms (the median of
    five, so one scheduling hiccup on a shared machine does not decide it)."""
    times = [_answered_ms(address, raw) for _ in range(5)]
    assert statistics.median(times) < 100, f"fresh clients waited {times} ms"


def _health(daemon: Daemon, sock: socket.socket) -> dict[str, Any]:
    sock.sendall(HEALTH)
    status, _headers, body = read_response(sock.makefile("rb"))
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result


@contextmanager
def _closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


# --------------------------------------------------------------------------------------------
# clients that do not read


def test_non_reading_pipelining_clients_are_bounded_and_cut_off(tmp_path: Path) -> None:
    """10 clients pipelining 1 MiB of requests each and reading nothing: the daemon stops
    reading them, stays under 64 MiB, answers a fresh client within 100 ms, cuts them off
    after write_timeout, and its connection count is the sockets it really has open."""
    config = "write_timeout = 1\n"
    with run_daemon(tmp_path, config=config) as daemon:
        pid = daemon.proc.pid
        idle_sockets = socket_fds(pid)
        with _closing([non_reader(daemon.socket_path, 1024 * MIB) for _ in range(10)]):
            assert rss_kib(pid) < 64 * MIB, f"RSS {rss_kib(pid)} KiB"
            _fresh_client_answered_fast(daemon.socket_path)
            with _connect(daemon.socket_path) as sock:
                health = _health(daemon, sock)
                assert health["connections"] == socket_fds(pid) - idle_sockets
                # write_timeout: the ten are cut off, and their fds closed, not just uncounted.
                wait_until(lambda: _health(daemon, sock)["connections"] == 1, timeout=15)
                assert socket_fds(pid) - idle_sockets == 1
                assert _health(daemon, sock)["listeners"]["api"]["timed_out"] >= 10
            assert rss_kib(pid) < 64 * MIB
        traceback_free(daemon.log)


def test_fd_exhaustion_by_rounds_of_non_readers_stays_under_the_limit(tmp_path: Path) -> None:
    """Rounds of 64 non-reading clients, kept open, under a 256-fd limit: the daemon never
    runs out of file descriptors (no EMFILE from accept), and still answers."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    config = ("max_connections = 64\nmetrics_max_connections = 16\nidle_timeout = 1\n"
              "write_timeout = 1\n")
    limit = 256
    with run_daemon(tmp_path, config=config,
                    prefix=["prlimit", f"--nofile={limit}:{limit}", "--"]) as daemon, \
            ExitStack() as stack:
        pid = daemon.proc.pid
        most = 0
        for _round in range(5):
            try:
                socks = [non_reader(daemon.socket_path, 64 * MIB) for _ in range(64)]
            except BlockingIOError:
                pytest.fail("the daemon stopped accepting: its listen backlog is full")
            stack.enter_context(_closing(socks))
            most = max(most, len(list(Path(f"/proc/{pid}/fd").iterdir())))
            time.sleep(1.2)
        assert most < limit - 32, f"{most} fds open of {limit}"
        _fresh_client_answered_fast(daemon.socket_path)
        assert "out of system resource" not in daemon.log
        assert "Too many open files" not in daemon.log
        traceback_free(daemon.log)


# --------------------------------------------------------------------------------------------
# slowloris, and one listener crowded


def _slowloris(address: str | tuple[str, int], count: int, stop: Any) -> None:
    """``count`` clients sending a request one byte at a time, reconnecting when dropped;
    run in a process of its own, and on TCP from another loopback address (127.0.0.2): an
    attacker is another process or host than the client it would lock out."""
    text = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
    conns: list[tuple[socket.socket, int]] = []
    try:
        while not stop.is_set():
            while len(conns) < count:
                try:
                    if isinstance(address, str):
                        sock = _connect(address)
                    else:
                        sock = socket.create_connection(address, 5, ("127.0.0.2", 0))
                    conns.append((sock, 0))
                except OSError:
                    break
            kept = []
            for sock, at in conns:
                try:
                    sock.send(text[at:at + 1])
                    kept.append((sock, at + 1))
                except OSError:
                    sock.close()  # dropped: a new one takes its place next round
            conns = kept
            stop.wait(0.3)
    finally:
        for sock, _at in conns:
            sock.close()


@pytest.mark.parametrize("listener", ["api", "metrics"])
def test_slowloris_does_not_lock_out_a_well_behaved_client(tmp_path: Path,
                                                            listener: str) -> None:
    """3x the listener's budget of clients trickling a byte each 0.3 s from one attacker,
    reconnecting when dropped: a fresh client on that listener is still answered, within
    100 ms."""
    config = "max_connections = 16\nmetrics_max_connections = 8\n"
    with run_daemon(tmp_path, config=config) as daemon:
        address: str | tuple[str, int] = (
            daemon.socket_path if listener == "api" else ("127.0.0.1", daemon.metrics_port))
        raw = HEALTH if listener == "api" else SCRAPE
        fork = multiprocessing.get_context("fork")
        stop = fork.Event()
        attack = fork.Process(target=_slowloris, args=(address, 48, stop))
        attack.start()
        try:
            time.sleep(1.5)  # all slots taken, the attacker reconnecting the dropped ones
            _fresh_client_answered_fast(address, raw)
        finally:
            stop.set()
            attack.join(30)
            if attack.is_alive():
                attack.kill()
        traceback_free(daemon.log)


@pytest.mark.parametrize("crowded", ["metrics", "api"])
def test_one_listener_crowded_does_not_lock_out_the_other(tmp_path: Path,
                                                         crowded: str) -> None:
    """Twice a listener's budget of idle clients on it: the other listener answers at once
    (its budget is its own), no 503."""
    config = "max_connections = 16\nmetrics_max_connections = 8\n"
    with run_daemon(tmp_path, config=config) as daemon:
        metrics = ("127.0.0.1", daemon.metrics_port)
        crowd, other, raw = ((metrics, daemon.socket_path, HEALTH) if crowded == "metrics"
                             else (daemon.socket_path, metrics, SCRAPE))
        with _closing([_connect(crowd) for _ in range(32)]):
            for _ in range(5):  # within the eviction grace: only separate budgets help here
                status, _headers, body = request(other, raw, timeout=5)
                assert status == 200, body
        traceback_free(daemon.log)


# --------------------------------------------------------------------------------------------
# refresh storms


def test_a_refresh_storm_probes_at_most_once_per_min_refresh_interval(tmp_path: Path) -> None:
    """16 clients looping POST /v1/refresh for 4 s with min_refresh_interval = 1: at most
    about 5 probes (not one per request); every request is answered, naming its probe."""
    with run_daemon(tmp_path, config="min_refresh_interval = 1\n") as daemon:
        before = daemon.get("/v1/health")[1]["probes"]
        answers: list[tuple[int, dict[str, Any]]] = []
        stop = time.monotonic() + 4

        def storm() -> None:
            with _connect(daemon.socket_path) as sock:
                sock.settimeout(10)
                reader = sock.makefile("rb")
                while time.monotonic() < stop:
                    sock.sendall(b"POST /v1/refresh HTTP/1.1\r\nHost: x\r\n\r\n")
                    status, _headers, body = read_response(reader)
                    answers.append((status, json.loads(body)))

        threads = [threading.Thread(target=storm) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        probes = daemon.get("/v1/health")[1]["probes"] - before
        assert 2 <= probes <= 6, f"{probes} probes for {len(answers)} refreshes in 4 s"
        assert len(answers) >= 16 and all(status == 200 for status, _ in answers)
        numbers = {body["probe"]["number"] for _status, body in answers}
        assert len(numbers) <= probes  # answers name the probe they share
        traceback_free(daemon.log)


# --------------------------------------------------------------------------------------------
# half-close and request heads


def test_half_closed_clients_get_their_answers(tmp_path: Path) -> None:
    """A request then shutdown(SHUT_WR): the answer comes, then the end of the stream."""
    with run_daemon(tmp_path) as daemon:
        for raw, count in ((b"POST /v1/refresh HTTP/1.1\r\nHost: x\r\n\r\n", 1),
                           (HEALTH * 3, 3)):
            with _connect(daemon.socket_path) as sock:
                sock.settimeout(10)
                sock.sendall(raw)
                sock.shutdown(socket.SHUT_WR)
                reader = sock.makefile("rb")
                statuses = [read_response(reader)[0] for _ in range(count)]
                assert statuses == [200] * count
                assert reader.read() == b""  # then the daemon closes
        traceback_free(daemon.log)


@pytest.mark.parametrize(("head", "says"), [
    # str.isdigit() takes SUPERSCRIPT TWO; int() then raised out of the parser.
    ("POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: \u00b2", "decimal"),
    ("POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 1" + "0" * 5000, "decimal"),
    ("GET /v1/health HTTP/1.1\r\nHost: a\r\nHost: b", "more than one Host"),
    ("GET /v1/health HTTP/1.1\r\nHost: a b", "host[:port]"),
    ("GET /v1/health HTTP/1.2", "needs a Host"),
    ("GET http://a b/v1/health HTTP/1.1\r\nHost: x", "request line"),
])
def test_heads_rfc_9112_rejects_get_a_400_and_no_traceback(tmp_path: Path, head: str,
                                                          says: str) -> None:
    with run_daemon(tmp_path) as daemon:
        status, _headers, body = request(daemon.socket_path,
                                         head.encode("latin-1") + b"\r\n\r\n")
        assert status == 400 and says in json.loads(body)["error"], body
        assert daemon.get("/v1/health")[0] == 200
        traceback_free(daemon.log)


def test_absolute_form_target_keeps_its_query(tmp_path: Path) -> None:
    """RFC 9112 3.2.2: ``GET http://host/path?query`` is the path *and* the query."""
    with run_daemon(tmp_path) as daemon:
        status, _headers, body = request(
            daemon.socket_path,
            b"GET http://localhost/v1/check?max_page_size=4k HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        assert json.loads(body)["max_page_size"] == 4096
        default = daemon.get("/v1/check")[1]["max_page_size"]
        assert default != 4096  # the query made the difference
        # No path: the path is "/" (RFC 9112 3.2.1), not a slash found in the query.
        status, _headers, body = request(
            daemon.socket_path, b"GET http://localhost?a=/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404, body

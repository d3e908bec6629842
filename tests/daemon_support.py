"""Running the real daemon for tests: a subprocess on a temporary socket, with its
notifications received on a real datagram socket."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


@dataclass
class Notifications:
    """``sd_notify`` datagrams the daemon sent, in order."""

    sock: socket.socket
    messages: list[list[str]] = field(default_factory=list)

    def wait_for(self, assignment: str, timeout: float = READY_TIMEOUT) -> list[str]:
        """Receive until a message holds ``assignment`` (e.g. ``READY=1``); that message."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if assignment in message:
                    self.messages.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {assignment} within {timeout} s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    def drain(self) -> list[list[str]]:
        self.sock.settimeout(0.05)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            pass
        return self.messages


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket_path: str
    log_path: Path
    notes: Notifications

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def metrics_port(self) -> int:
        match = re.search(r"tcp [\d.]+:(\d+)", self.log)
        assert match, f"no metrics listener in the log:\n{self.log}"
        return int(match.group(1))

    def get(self, path: str, method: str = "GET") -> tuple[int, Any]:
        status, _headers, body = request(self.socket_path,
                                         f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return status, json.loads(body)

    def alive(self) -> bool:
        return self.proc.poll() is None


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmppc", "serve", *args]


@contextmanager
def run_daemon(tmp: Path, *args: str, env: dict[str, str] | None = None,
               prefix: Sequence[str] = (), wait_ready: bool = True,
               config: str | None = None) -> Iterator[Daemon]:
    """``kvmppc serve`` on ``tmp/kvmppc.sock``; metrics on an ephemeral loopback port."""
    tmp.mkdir(parents=True, exist_ok=True)
    socket_path = str(tmp / "kvmppc.sock")
    notify_path = str(tmp / "notify.sock")
    log_path = tmp / "daemon.log"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    conf = tmp / "kvmppc.conf"
    conf.write_text(config or "")
    argv = [*prefix, *serve_command("--config", str(conf), "--socket", socket_path,
                                    "--metrics-address", "127.0.0.1:0", *args)]
    environment = {**os.environ, "NOTIFY_SOCKET": notify_path, **(env or {})}
    environment.pop("INVOCATION_ID", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO)
    daemon = Daemon(proc, socket_path, log_path, Notifications(notify))
    try:
        if wait_ready:
            daemon.notes.wait_for("READY=1")
        yield daemon
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()


def request(address: str | tuple[str, int], raw: bytes,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection; the first answer (status, headers, body).

    Status 0 when the daemon closed the connection without answering.
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(raw)
        with sock.makefile("rb") as reader:
            return read_response(reader)


def read_response(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One answer from a connection's reader (``sock.makefile("rb")``, which keeps what a
    recv brought beyond this answer for the next one); status 0 at end of stream."""
    status_line = reader.readline()
    if not status_line:
        return 0, {}, b""
    status = int(status_line.split(b" ")[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return status, headers, body


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
               what: Callable[[], str] = lambda: "condition not met") -> Any:
    """Poll until ``condition()`` is truthy; its value.  A bound, not a timing assertion;
    ``what()`` says what did not happen (called only then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what()}")
        time.sleep(interval)


def socket_fds(pid: int) -> int:
    """The process's open file descriptors that are sockets."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            continue  # closed while listing
    return count


def traceback_free(log: str) -> None:
    """The daemon's log holds no Python traceback (every bad input answered, not raised)."""
    assert "Traceback" not in log, f"a traceback in the daemon's log:\n{log[-4000:]}"


def non_reader(address: str | tuple[str, int], total: int,
               raw: bytes = b"GET /v1/host HTTP/1.1\r\nHost: x\r\n\r\n") -> socket.socket:
    """A client that pipelines up to ``total`` bytes of ``raw`` requests and never reads an
    answer; it stops sending once the daemon stops taking its requests (the abuse tests and
    bench/bench_daemon.py)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    sock.setblocking(False)
    payload = raw * (65536 // len(raw))
    sent, stalls = 0, 0
    while sent < total and stalls < 5:
        try:
            sent += sock.send(payload[:total - sent])
            stalls = 0
        except BlockingIOError:
            stalls += 1
            time.sleep(0.02)
        except OSError:
            break  # cut off already
    return sock

"""Benchmarks of ``kvmppc serve``, printed as ratios measured in the same run.

    python bench/bench_daemon.py            # about a minute on 2 cores
    python bench/bench_daemon.py --quick    # fewer requests, for a smoke run

Starts the daemon and the floor responder (bench/floor_server.py) as subprocesses on
temporary unix sockets and drives both with the same asyncio keep-alive client, so the
ratios measure what the daemon adds to a request, not the client or the machine.  Prints:
latency p50/p99 of a cached /v1/check at 1, 16 and 64 clients against the floor;
throughput at 16 clients; a cold probe against a cached answer; start-up to READY=1;
resident memory over 100k requests; the size of a scrape.  Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmppc.probe import probe, refresh_hugepages

HERE = Path(__file__).resolve().parent
CHECK = "/v1/check?max_page_size=64k"


# ------------------------------------------------------------------------------------------
# the client


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        length = 0
        for line in self.buffer[:end].lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buffer) >= end + 4 + length:
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.waiter.set_result(body)
            self.waiter = None

    async def get(self, request: bytes) -> bytes:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def _load(path: str, target: str, clients: int, per_client: int) -> tuple[list[float], float]:
    loop = asyncio.get_running_loop()
    request = f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    conns = []
    for _ in range(clients):
        _transport, conn = await loop.create_unix_connection(_Conn, path)
        conns.append(conn)
    for conn in conns:  # warm up: one request each
        await conn.get(request)
    latencies: list[float] = []

    async def client(conn: _Conn) -> None:
        clock = time.perf_counter
        for _ in range(per_client):
            start = clock()
            await conn.get(request)
            latencies.append(clock() - start)

    started = time.perf_counter()
    await asyncio.gather(*(client(conn) for conn in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    return latencies, elapsed


def load(path: str, target: str, clients: int, total: int) -> tuple[list[float], float]:
    return asyncio.run(_load(path, target, clients, max(total // clients, 1)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# ------------------------------------------------------------------------------------------
# the servers


def _recv_until(sock: socket.socket, word: bytes, timeout: float) -> float:
    sock.settimeout(timeout)
    while True:
        if word in sock.recv(4096).split(b"\n"):
            return time.perf_counter()


@contextmanager
def daemon(tmp: str, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    """A daemon on a fresh socket; yields (process, socket path, seconds to READY=1)."""
    path = tempfile.mktemp(prefix="kvmppc-", suffix=".sock", dir=tmp)
    notify_path = path + ".notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmppc", "serve", "--socket", path, "--metrics-address", "",
         "--log-level", "warning", *extra],
        env=env,
    )
    try:
        ready = _recv_until(notify, b"READY=1", 30) - started
        yield proc, path, ready
    finally:
        proc.terminate()
        proc.wait(10)
        notify.close()
        os.unlink(notify_path)


@contextmanager
def floor(tmp: str) -> Iterator[str]:
    path = os.path.join(tmp, "floor.sock")
    proc = subprocess.Popen([sys.executable, str(HERE / "floor_server.py"), path],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield path
    finally:
        proc.terminate()
        proc.wait(10)


def _config(tmp: str, text: str) -> str:
    path = os.path.join(tmp, f"kvmppc-{abs(hash(text))}.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def http_get(path: str, target: str, method: str = "GET") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).partition(b"\r\n\r\n")[2]


# ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    per_level = int(30000 * scale)
    print(f"kvmppc daemon benchmark; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp, floor(tmp) as floor_path, \
            daemon(tmp) as (proc, path, _ready), \
            daemon(tmp, "--config", _config(tmp, "hugepages_max_age = 0.1")) as (
                _proc, shared_path, _r):
        print(f"\n== cached {CHECK} over the unix socket, keep-alive, against the floor")
        print("   (medians of 3 interleaved rounds; 'shared' is hugepages_max_age = 0.1, where"
              " answers share a hugepage read up to 0.1 s old)")
        print(f"{'clients':>8} {'floor p50/p99':>15} {'daemon p50/p99':>16} {'ratio':>12}"
              f" {'shared p50/p99':>16} {'ratio':>12}")
        throughput: dict[str, float] = {}
        for clients in (1, 16, 64):
            rounds: dict[str, list[tuple[float, float, float]]] = {}
            for _round in range(3):
                for name, target in (("floor", floor_path), ("daemon", path),
                                     ("shared", shared_path)):
                    latencies, seconds = load(target, CHECK, clients, per_level // 3)
                    rounds.setdefault(name, []).append(
                        (pct(latencies, 0.5), pct(latencies, 0.99), len(latencies) / seconds))
            summary = {name: tuple(statistics.median(r[i] for r in runs) for i in range(3))
                       for name, runs in rounds.items()}
            f50, f99, _ = summary["floor"]
            cells = [f"{f50 * 1e6:>6.0f}/{f99 * 1e6:<6.0f}us"]
            for name in ("daemon", "shared"):
                d50, d99, _ = summary[name]
                ratio = f"{d50 / f50:.2f}x/{d99 / f99:.2f}x"
                cells.append(f"{d50 * 1e6:>7.0f}/{d99 * 1e6:<6.0f}us {ratio:>12}")
            print(f"{clients:>8} {cells[0]:>15} {cells[1]:>29} {cells[2]:>29}")
            if clients == 16:
                throughput = {name: summary[name][2] for name in summary}
        print(f"\n== throughput at 16 clients: floor {throughput['floor']:.0f} req/s, daemon"
              f" {throughput['daemon']:.0f} req/s"
              f" ({throughput['daemon'] / throughput['floor']:.2f} of the floor), shared"
              f" {throughput['shared']:.0f} req/s"
              f" ({throughput['shared'] / throughput['floor']:.2f})")

        print("\n== cold probe vs cached answer")
        samples = int(200 * scale) or 20
        cold = []
        for _ in range(samples):
            start = time.perf_counter()
            http_get(path, "/v1/refresh", "POST")
            cold.append(time.perf_counter() - start)
        direct = []
        for _ in range(samples):
            start = time.perf_counter()
            result = probe()
            direct.append(time.perf_counter() - start)
        hugepages = []
        for _ in range(samples * 10):
            start = time.perf_counter()
            refresh_hugepages(result)
            hugepages.append(time.perf_counter() - start)
        cached, _ = load(path, CHECK, 1, int(5000 * scale))
        c50 = statistics.median(cached)
        print(f"POST /v1/refresh (a whole re-probe) median {statistics.median(cold) * 1e3:.2f} ms;"
              f" probe() in-process {statistics.median(direct) * 1e3:.2f} ms;"
              f" cached /v1/check median {c50 * 1e6:.0f} us:"
              f" cold/cached = {statistics.median(cold) / c50:.0f}x")
        print(f"hugepage re-read per answer (refresh_hugepages) median"
              f" {statistics.median(hugepages) * 1e6:.0f} us = "
              f"{statistics.median(hugepages) / c50:.0%} of a cached answer at 1 client")

        print("\n== resident memory over cached /v1/check requests (16 clients)")
        step = int(25_000 * scale)
        marks = []
        for _ in range(12):
            load(path, CHECK, 16, step)
            marks.append(rss_kib(proc.pid))
        print(f"RSS KiB after each {step} requests: " + " ".join(str(m) for m in marks))
        print(f"{marks[3] / 1024:.1f} MiB after {4 * step} requests; growth over the last"
              f" {8 * step}: {marks[-1] - marks[3]} KiB, over the last {4 * step}:"
              f" {marks[-1] - marks[7]} KiB")

        scrape = http_get(path, "/metrics")
        series = [line for line in scrape.decode().splitlines() if line and line[0] != "#"]
        print(f"\n== scrape size: this host {len(scrape)} bytes, {len(series)} series")
    with tempfile.TemporaryDirectory() as tmp, \
            daemon(tmp, "--host-profile", "power9-radix-hv") as (_p, path, _r):
        scrape = http_get(path, "/metrics")
        series = [line for line in scrape.decode().splitlines() if line and line[0] != "#"]
        print(f"   power9-radix-hv profile: {len(scrape)} bytes, {len(series)} series")

    with tempfile.TemporaryDirectory() as tmp:
        readies = []
        for _ in range(5 if not args.quick else 2):
            with daemon(tmp) as (_p, _path, ready):
                readies.append(ready)
        print(f"\n== start-up to READY=1 (interpreter, imports, first probe, sockets):"
              f" median {statistics.median(readies) * 1e3:.0f} ms over {len(readies)} starts")


if __name__ == "__main__":
    main()

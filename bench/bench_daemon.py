"""Benchmarks of ``kvmppc serve``, printed as ratios measured in the same run.

    python bench/bench_daemon.py            # a few minutes on 2 cores
    python bench/bench_daemon.py --quick    # fewer requests, for a smoke run

Starts the daemon and the floor responder (bench/floor_server.py) as subprocesses on
temporary unix sockets and drives both with the same asyncio keep-alive client, so the
ratios measure what the daemon adds to a request, not the client or the machine.  Prints:
latency p50/p99 of a cached /v1/check at 1, 16 and 64 clients against the floor, with the
default configuration and with a hugepage read for every answer; the HTTP candidates'
floors (httptools, aiohttp) against the asyncio one, with their memory and how they take
non-reading clients; 64 clients with distinct queries on the POWER9 profile; non-reading
clients against the daemon; throughput at 16 clients; a cold probe against a cached answer;
start-up to READY=1; resident memory over many requests; the size of a scrape.  Nothing
here asserts a time; the targets of issue 12 are printed as ratios and verdicts.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's tests/
from tests.daemon_support import non_reader, rss_kib

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


async def _load(path: str, target: str | list[str], clients: int, per_client: int,
                warm: bool = True) -> tuple[list[float], float]:
    """``clients`` keep-alive clients, each asking its target ``per_client`` times; a list
    gives client i the target i (modulo its length)."""
    loop = asyncio.get_running_loop()
    targets = [target] if isinstance(target, str) else target
    requests = [f"GET {t} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode() for t in targets]
    conns = []
    for _ in range(clients):
        _transport, conn = await loop.create_unix_connection(_Conn, path)
        conns.append(conn)
    if warm:
        for i, conn in enumerate(conns):  # warm up: one request each
            await conn.get(requests[i % len(requests)])
    latencies: list[float] = []

    async def client(conn: _Conn, request: bytes) -> None:
        clock = time.perf_counter
        for _ in range(per_client):
            start = clock()
            await conn.get(request)
            latencies.append(clock() - start)

    started = time.perf_counter()
    await asyncio.gather(*(client(conn, requests[i % len(requests)])
                           for i, conn in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    return latencies, elapsed


def load(path: str, target: str | list[str], clients: int, total: int,
         warm: bool = True) -> tuple[list[float], float]:
    return asyncio.run(_load(path, target, clients, max(total // clients, 1), warm))


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
def floor(tmp: str, impl: str = "asyncio") -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    path = os.path.join(tmp, f"floor-{impl}.sock")
    proc = subprocess.Popen([sys.executable, str(HERE / "floor_server.py"), "--impl", impl,
                             path], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield proc, path
    finally:
        proc.terminate()
        proc.wait(10)


def _config(tmp: str, text: str) -> str:
    path = os.path.join(tmp, f"kvmppc-{abs(hash(text))}.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return path


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


def non_readers(path: str, clients: int = 10, each: int = 1 << 20) -> list[socket.socket]:
    """Clients that pipeline up to ``each`` bytes of GET /v1/host and never read."""
    return [non_reader(path, each) for _ in range(clients)]


def fresh_client_ms(path: str, target: str = "/v1/health", timeout: float = 5.0) -> float:
    """Median of 5 fresh clients' time to an answer, ms (inf when one got none in time)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(path)
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if not sock.recv(65536).startswith(b"HTTP/1.1 200"):
                    raise OSError("no 200")
        except OSError:
            times.append(float("inf"))
            continue
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def under_non_readers(proc: subprocess.Popen[bytes], path: str, target: str) -> str:
    before = rss_kib(proc.pid)
    socks = non_readers(path)
    time.sleep(0.5)
    after = rss_kib(proc.pid)
    fresh = fresh_client_ms(path, target)
    fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    for sock in socks:
        sock.close()
    return (f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, fresh client"
            f" {fresh:.1f} ms (median of 5), {fds} fds open")


def power9_queries() -> list[str]:
    """64 distinct query strings asking 8 questions (4 page sizes x the default and the HV
    VM type), spelt 8 ways each: parameter order, case, defaults written out."""
    queries: list[str] = []
    for size in ("", "4k", "64K", "16M"):
        sizes = [size, size.swapcase()] if size else ["", ""]
        for kvms in (["", "kvm_type=auto"], ["kvm_type=hv", "kvm_type=HV"]):
            for size_text in sizes:
                for kvm in kvms:
                    parts = [p for p in (f"max_page_size={size_text}" if size_text else "",
                                         kvm) if p]
                    for spelling in ("&".join(parts), "&".join(reversed(parts)),
                                     "&".join([*parts, "machine=pseries"]),
                                     "&".join(["machine=pseries", *reversed(parts)])):
                        if f"/v1/check?{spelling}" not in queries:
                            queries.append(f"/v1/check?{spelling}")
    return queries[:64]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    per_level = int(18000 * scale)
    print(f"kvmppc daemon benchmark; python {sys.version.split()[0]}, {os.cpu_count()} CPUs,"
          f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    with tempfile.TemporaryDirectory() as tmp, floor(tmp) as (floor_proc, floor_path), \
            daemon(tmp) as (proc, path, _ready), \
            daemon(tmp, "--config", _config(tmp, "hugepages_max_age = 0")) as (
                _proc, every_path, _r):
        print(f"\n== cached {CHECK} over the unix socket, keep-alive, against the floor")
        print("   (medians of 3 interleaved rounds; 'default' is the default configuration,"
              " 'every' reads the hugepage counts for every answer: hugepages_max_age = 0)")
        print(f"{'clients':>8} {'floor p50/p99':>15} {'default p50/p99':>16} {'ratio':>12}"
              f" {'every p50/p99':>16} {'ratio':>12}")
        throughput: dict[str, float] = {}
        verdict = []
        for clients in (1, 16, 64):
            rounds: dict[str, list[tuple[float, float, float]]] = {}
            for _round in range(3):
                for name, target in (("floor", floor_path), ("default", path),
                                     ("every", every_path)):
                    latencies, seconds = load(target, CHECK, clients, per_level // 3)
                    rounds.setdefault(name, []).append(
                        (pct(latencies, 0.5), pct(latencies, 0.99), len(latencies) / seconds))
            summary = {name: tuple(statistics.median(r[i] for r in runs) for i in range(3))
                       for name, runs in rounds.items()}
            f50, f99, _ = summary["floor"]
            cells = [f"{f50 * 1e6:>6.0f}/{f99 * 1e6:<6.0f}us"]
            for name in ("default", "every"):
                d50, d99, _ = summary[name]
                ratio = f"{d50 / f50:.2f}x/{d99 / f99:.2f}x"
                cells.append(f"{d50 * 1e6:>7.0f}/{d99 * 1e6:<6.0f}us {ratio:>12}")
            print(f"{clients:>8} {cells[0]:>15} {cells[1]:>29} {cells[2]:>29}")
            verdict.append(summary["default"][0] / f50)
            if clients == 16:
                throughput = {name: summary[name][2] for name in summary}
        print("target: cached p50 within 2x of the floor at 1, 16, 64 clients (default"
              f" configuration): {' '.join(f'{v:.2f}x' for v in verdict)} ->"
              f" {'MET' if max(verdict) <= 2 else 'NOT MET'}")
        print(f"\n== throughput at 16 clients: floor {throughput['floor']:.0f} req/s, daemon"
              f" {throughput['default']:.0f} req/s"
              f" ({throughput['default'] / throughput['floor']:.2f} of the floor), every"
              f" {throughput['every']:.0f} req/s"
              f" ({throughput['every'] / throughput['floor']:.2f})")

        print("\n== non-reading clients: 10 clients each pipelining up to 1 MiB of"
              " GET /v1/host, reading nothing")
        print(f"daemon: {under_non_readers(proc, path, '/v1/health')}")
        print(f"floor (asyncio): {under_non_readers(floor_proc, floor_path, '/')}")

        print("\n== cold probe vs cached answer")
        samples = int(100 * scale) or 20
        cold = []
        for _ in range(3):  # min_refresh_interval (2 s) spaces them: a few are enough
            start = time.perf_counter()
            http_get(every_path, "/v1/refresh", "POST")
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
        print(f"POST /v1/refresh median {statistics.median(cold) * 1e3:.0f} ms (it waits for"
              f" min_refresh_interval after the last probe); probe() in-process"
              f" {statistics.median(direct) * 1e3:.2f} ms; cached /v1/check median"
              f" {c50 * 1e6:.0f} us: probe/cached = {statistics.median(direct) / c50:.0f}x")
        print(f"hugepage re-read (refresh_hugepages) median"
              f" {statistics.median(hugepages) * 1e6:.0f} us = "
              f"{statistics.median(hugepages) / c50:.0%} of a cached answer at 1 client"
              " (by default shared by the answers of 1 s)")

        print("\n== resident memory over cached /v1/check requests (16 clients)")
        step = int(20_000 * scale)
        marks = []
        for _ in range(6):
            load(path, CHECK, 16, step)
            marks.append(rss_kib(proc.pid))
        print(f"RSS KiB after each {step} requests: " + " ".join(str(m) for m in marks))
        print(f"{marks[1] / 1024:.1f} MiB after {2 * step} requests; growth over the last"
              f" {4 * step}: {marks[-1] - marks[1]} KiB")

        scrape = http_get(path, "/metrics")
        series = [line for line in scrape.decode().splitlines() if line and line[0] != "#"]
        print(f"\n== scrape size: this host {len(scrape)} bytes, {len(series)} series")

    with tempfile.TemporaryDirectory() as tmp, \
            daemon(tmp, "--host-profile", "power9-radix-hv") as (_p, path, _r):
        scrape = http_get(path, "/metrics")
        series = [line for line in scrape.decode().splitlines() if line and line[0] != "#"]
        print(f"   power9-radix-hv profile: {len(scrape)} bytes, {len(series)} series")
        queries = power9_queries()
        print(f"\n== POWER9 profile, 64 clients with distinct queries ({len(set(queries))}"
              " query strings, 8 questions), each asking its own over and over")
        latencies, seconds = load(path, queries, 64, int(12800 * scale), warm=False)
        p99 = pct(latencies, 0.99)
        print(f"p50 {pct(latencies, 0.5) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms,"
              f" {len(latencies) / seconds:.0f} req/s (cold start included: no warm-up)")
        print(f"target: p99 under 50 ms -> {'MET' if p99 < 0.05 else 'NOT MET'}")
        never = [f"/v1/check?max_page_size=64k&memory={1024 + i}M" for i in range(64 * 5)]
        latencies, seconds = load(path, never, 64, 64, warm=False)
        print(f"worst case, 64 questions never asked before (each computed once, in the"
              f" worker thread): p50 {pct(latencies, 0.5) * 1e3:.1f} ms,"
              f" p99 {pct(latencies, 0.99) * 1e3:.1f} ms, {len(latencies) / seconds:.0f} req/s")

    print("\n== Which HTTP server: the candidates' floors (a fixed answer, no daemon work)"
          " against the asyncio floor, 1 and 16 clients")
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("httptools", "aiohttp"):
            try:
                __import__(impl)
            except ImportError:
                print(f"{impl}: not installed (pip install {impl}), skipped")
                continue
            with floor(tmp) as (_fp, base), floor(tmp, impl) as (cand_proc, cand):
                cells = []
                for clients in (1, 16):
                    ratios = []
                    for _round in range(3):
                        b, _ = load(base, "/", clients, per_level // 6)
                        c, _ = load(cand, "/", clients, per_level // 6)
                        ratios.append((pct(b, 0.5), pct(c, 0.5)))
                    b50 = statistics.median(r[0] for r in ratios)
                    c50 = statistics.median(r[1] for r in ratios)
                    cells.append(f"{clients} client(s): {c50 * 1e6:.0f} vs {b50 * 1e6:.0f} us"
                                 f" = {c50 / b50:.2f}x")
                print(f"{impl}: p50 {'; '.join(cells)}; RSS {rss_kib(cand_proc.pid) / 1024:.1f}"
                      " MiB")
                print(f"   under non-readers: {under_non_readers(cand_proc, cand, '/')}")

    with tempfile.TemporaryDirectory() as tmp:
        readies = []
        for _ in range(5 if not args.quick else 2):
            with daemon(tmp) as (_p, _path, ready):
                readies.append(ready)
        print(f"\n== start-up to READY=1 (interpreter, imports, first probe, sockets):"
              f" median {statistics.median(readies) * 1e3:.0f} ms over {len(readies)} starts")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

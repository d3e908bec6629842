"""The daemon's parts without a daemon process: systemd protocols, config, HTTP parsing, the
probe cache, the listeners' checks, the collector's families."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kvmppc.daemon import listeners
from kvmppc.daemon.cache import ProbeCache, degradations, probe_failure
from kvmppc.daemon.config import DaemonConfig, config_from_mapping, load_config, parse_address
from kvmppc.daemon.http import HttpError, Limits, Peer, parse_head
from kvmppc.daemon.log import setup_logging
from kvmppc.daemon.metrics import KvmppcCollector
from kvmppc.daemon.sd import Notifier, journal_stream_is_stderr, listen_fds, watchdog_interval
from kvmppc.errors import UsageError
from kvmppc.model import ProbeResult
from kvmppc.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# sd: notify, listen-fds, watchdog


def test_notify_sends_one_datagram_to_a_real_socket(tmp_path: Path) -> None:
    """Assignments go out newline-joined in one datagram, as sd_notify(3) sends them."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.send("READY=1", "STATUS=serving")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"
        notifier.close()


def test_notify_abstract_socket_name() -> None:
    """An @ name is an abstract socket: a leading NUL byte (unix(7))."""
    name = f"kvmppc-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("WATCHDOG=1")
        assert receiver.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_notify_without_socket_does_nothing_and_failures_do_not_raise(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert Notifier({}).send("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).send("READY=1") is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.send("READY=1") is False
    assert isinstance(gone.error, FileNotFoundError)


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, 0.0),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 0.0),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, 0.0),
    ({"WATCHDOG_USEC": "soon"}, 0.0),
])
def test_watchdog_interval_follows_sd_watchdog_enabled(environ: dict[str, str],
                                                       expected: float) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_listen_fds_pairs_names_and_checks_the_pid() -> None:
    environ = {"LISTEN_PID": "77", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "api:metrics"}
    assert [(p.fd, p.name) for p in listen_fds(environ, pid=77)] == [(3, "api"), (4, "metrics")]
    assert listen_fds(environ, pid=78) == []  # passed to another process (a parent)
    assert listen_fds({"LISTEN_PID": "77", "LISTEN_FDS": "x"}, pid=77) == []
    unnamed = listen_fds({"LISTEN_PID": "77", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "api"},
                         pid=77)
    assert [p.name for p in unnamed] == ["api", "unknown"]


def test_journal_stream_must_be_this_stderr(tmp_path: Path) -> None:
    """$JOURNAL_STREAM counts only when it names the socket fd 2 really is."""
    left, right = socket.socketpair()
    with left, right:
        st = os.fstat(left.fileno())
        assert journal_stream_is_stderr({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                                        fd=left.fileno())
        assert not journal_stream_is_stderr({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                                            fd=right.fileno())
        assert not journal_stream_is_stderr({}, fd=left.fileno())


def test_logging_without_systemd_goes_to_stderr_without_timestamps() -> None:
    stream = io.StringIO()
    assert setup_logging("info", environ={}, stream=stream) == "stderr"
    logging.getLogger("kvmppc.daemon").info("probe done")
    assert stream.getvalue() == "kvmppc: INFO: probe done\n"


def test_logging_under_systemd_uses_the_journal_or_priority_prefixes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """INVOCATION_ID means systemd started us: the journal with systemd-python, else
    sd-daemon(3) <N> prefixes on stderr (as where systemd-python is absent)."""
    stream = io.StringIO()
    assert setup_logging("info", environ={"INVOCATION_ID": "x"}, stream=stream) == "journal"
    monkeypatch.setitem(__import__("sys").modules, "systemd.journal", None)  # absent
    assert setup_logging("info", environ={"INVOCATION_ID": "x"}, stream=stream) == "stderr"
    logging.getLogger("kvmppc.daemon").warning("stale")
    assert stream.getvalue() == "<4>stale\n"
    setup_logging("info", environ={}, stream=io.StringIO())


# --------------------------------------------------------------------------------------------
# config


def test_shipped_config_example_is_the_defaults() -> None:
    """service/kvmppc.conf documents every setting with its default value."""
    assert load_config(str(REPO / "service/kvmppc.conf")) == DaemonConfig()


@pytest.mark.parametrize(("data", "message"), [
    ({"sockets": "/x"}, "unknown setting(s) sockets"),
    ({"refresh_interval": "often"}, "refresh_interval must be a float"),
    ({"refresh_interval": 0}, "refresh_interval must be a positive"),
    ({"max_connections": True}, "max_connections must be a int"),
    ({"socket_mode": "rw"}, "not an octal mode"),
    ({"metrics_address": "9641"}, "give HOST:PORT"),
    ({"log_level": "loud"}, "log_level 'loud'"),
])
def test_bad_config_says_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_mapping(data, "test.conf")


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read config file"):
        load_config(str(tmp_path / "absent.conf"))
    bad = tmp_path / "bad.conf"
    bad.write_text("socket = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(str(bad))


@pytest.mark.parametrize(("text", "expected"), [
    (":9641", ("", 9641)),
    ("127.0.0.1:9641", ("127.0.0.1", 9641)),
    ("[::1]:9641", ("::1", 9641)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


# --------------------------------------------------------------------------------------------
# HTTP request heads


def _head(text: str) -> tuple[object, int]:
    return parse_head(text.encode("latin-1"), Limits(), Peer())


def test_parse_head_request_line_headers_and_body_length() -> None:
    request, length = parse_head(
        b"POST /v1/refresh?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2",
        Limits(), Peer())
    assert (request.method, request.path, request.query, length) == (
        "POST", "/v1/refresh", "x=1", 2)
    assert request.headers["x-a"] == "1, 2"


def test_parse_head_absolute_form_target() -> None:
    request, _ = parse_head(b"GET http://localhost/v1/host HTTP/1.1\r\nHost: x", Limits(), Peer())
    assert request.path == "/v1/host"


@pytest.mark.parametrize(("head", "status", "message"), [
    ("GET /v1/host", 400, "request line"),
    ("GET  /v1/host HTTP/1.1", 400, "request line"),
    ("G(T /v1/host HTTP/1.1\r\nHost: x", 400, "method"),
    ("GET /v1/host HTTP/2.0\r\nHost: x", 400, "HTTP/2.0 is not spoken here"),
    ("GET /v1/host HTTQ/1.1", 400, "version"),
    ("GET v1/host HTTP/1.1\r\nHost: x", 400, "target"),
    ("GET /v1/h\x7fost HTTP/1.1\r\nHost: x", 400, "target"),
    ("GET /v1/host HTTP/1.1", 400, "Host"),
    ("GET /v1/host HTTP/1.1\r\nHost: x\r\n folded", 400, "Name: value"),
    ("GET /v1/host HTTP/1.1\r\nHost : x", 400, "Name: value"),
    ("GET /v1/host HTTP/1.1\r\nHost: x\x01", 400, "control character"),
    ("POST /v1/refresh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", 400,
     "Content-Length"),
    ("POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: -1", 400, "decimal"),
    ("POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2", 400,
     "one decimal"),
    ("POST /v1/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 9000", 413, "over 8192"),
    ("GET / HTTP/1.1\r\nHost: x" + "\r\nA: b" * 40, 431, "more than 32 header"),
])
def test_parse_head_rejects_with_a_reason(head: str, status: int, message: str) -> None:
    with pytest.raises(HttpError) as info:
        _head(head)
    assert info.value.status == status
    assert message in info.value.message


def test_http_1_0_needs_no_host() -> None:
    request, _ = parse_head(b"GET /v1/health HTTP/1.0", Limits(), Peer())
    assert request.version == "HTTP/1.0"


# --------------------------------------------------------------------------------------------
# the cache


def _profile() -> ProbeResult:
    return load_profile("power9-radix-hv")


def _failed(result: ProbeResult, error: str) -> ProbeResult:
    return replace(result, kvm=replace(result.kvm, error=error, present=False, vm_types={}))


def test_probe_failure_and_degradations() -> None:
    good = _profile()
    assert probe_failure(good) is None
    assert probe_failure(_failed(good, "open on /dev/kvm: Permission denied")) == (
        "open on /dev/kvm: Permission denied")
    not_ppc = replace(good, kvm=replace(good.kvm, vm_types={
        "default": replace(good.kvm.vm_types["default"], smmu=None,
                           smmu_error="KVM_PPC_GET_SMMU_INFO: ENOTTY")}))
    assert probe_failure(not_ppc) is None  # an answer (QEMU would see the same), not a failure
    assert degradations(not_ppc) == ["kvm default: KVM_PPC_GET_SMMU_INFO: ENOTTY"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_cache(take: list[ProbeResult | Exception],
               device: list[object]) -> tuple[ProbeCache, _Clock]:
    """A cache over a scripted sequence of probes and device-node states, and its clock."""
    outcomes = iter(take)

    def take_probe() -> ProbeResult:
        item = next(outcomes)
        if isinstance(item, Exception):
            raise item
        return item

    clock = _Clock()
    cache = ProbeCache(take_probe, lambda result: result, device="/dev/kvm",
                       refresh_interval=300, retry_interval=10, monotonic=clock,
                       stat_device=lambda _path: device[0])  # type: ignore[arg-type,return-value]
    return cache, clock


def test_cache_keeps_the_last_good_answer_when_a_probe_fails() -> None:
    good = _profile()
    cache, _clock = _run_cache([good, _failed(good, "no module"), RuntimeError("bug"), good],
                               device=[(1, 2, 3, 4, 5)])

    async def scenario() -> None:
        await cache.refresh("start")
        assert (cache.status(), cache.stale, cache.result) == ("ok", False, good)
        outcome = await cache.refresh("test")
        assert outcome.failure == "no module"
        assert (cache.status(), cache.stale, cache.result) == ("stale", True, good)
        outcome = await cache.refresh("test")
        assert outcome.failure == "probe raised RuntimeError: bug"
        assert cache.result is good
        await cache.refresh("test")
        assert (cache.status(), cache.attempts, cache.failures) == ("ok", 4, 2)

    asyncio.run(scenario())


def test_cache_serves_a_failed_first_probe_as_degraded_until_a_good_one() -> None:
    good = _profile()
    missing = _failed(good, "no KVM module loaded")
    cache, _clock = _run_cache([missing, missing, good], device=[None])

    async def scenario() -> None:
        await cache.refresh("start")
        assert (cache.status(), cache.stale, cache.result) == ("degraded", False, missing)
        await cache.refresh("retry")
        assert cache.result is missing
        await cache.refresh("retry")
        assert (cache.status(), cache.result) == ("ok", good)

    asyncio.run(scenario())


def test_cache_schedule_interval_retry_and_device_change() -> None:
    good = _profile()
    device: list[object] = [(1, 2, 3, 4, 5)]
    cache, clock = _run_cache([good, _failed(good, "gone"), good], device=device)

    async def scenario() -> None:
        assert cache.due() == "start"
        await cache.refresh("start")
        assert cache.due() is None
        clock.now += 299
        assert cache.due() is None
        clock.now += 1
        assert cache.due() == "interval"
        device[0] = None  # module unloaded: the node is gone
        assert cache.due() == "/dev/kvm changed"
        await cache.refresh("gone")
        assert cache.stale and cache.due() is None
        clock.now += 10
        assert cache.due() == "retry after failure"
        device[0] = (9, 2, 3, 4, 5)  # loaded again: a new node
        assert cache.due() == "/dev/kvm changed"
        await cache.refresh("back")
        assert not cache.stale and cache.due() is None

    asyncio.run(scenario())


def test_concurrent_refreshes_share_one_probe() -> None:
    good = _profile()
    cache, _clock = _run_cache([good, good], device=[None])

    async def scenario() -> None:
        first, second = cache.refresh("a"), cache.refresh("b")
        assert await first is await second
        assert cache.attempts == 1

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# listeners


def test_a_passed_socket_must_be_what_its_name_says() -> None:
    """systemd handing a TCP socket as 'api' is refused with what was expected."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        with pytest.raises(UsageError, match="should be a unix stream socket"):
            listeners._check_passed(tcp, "api")
        listeners._check_passed(tcp, "metrics")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as not_listening, \
            pytest.raises(UsageError, match="listening state"):
        listeners._check_passed(not_listening, "metrics")


def test_bind_unix_replaces_a_stale_socket_but_not_a_live_one(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "k.sock")
    live = listeners.bind_unix(path, 0o660, "")
    assert oct(os.stat(path).st_mode & 0o777) == "0o660"
    with pytest.raises(UsageError, match="another daemon is answering"):
        listeners.bind_unix(path, 0o660, "")
    live.close()  # the file stays behind, as after a crash
    listeners.bind_unix(path, 0o600, "").close()
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is not a socket"):
        listeners.bind_unix(str(tmp_path / "file"), 0o660, "")


def test_bind_tcp_in_use_says_how_to_move() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match="--metrics-address"):
            listeners.bind_tcp(f"127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------
# the collector


def test_collector_registers_without_probing_and_reports_the_power9_profile() -> None:
    """describe() gives names only; a scrape builds the families from the cached probe."""
    calls: list[str] = []

    def take_probe() -> ProbeResult:
        calls.append("probe")
        return _profile()

    cache = ProbeCache(take_probe, lambda result: result, device=None,
                       refresh_interval=300, retry_interval=10)
    registry = CollectorRegistry()
    registry.register(KvmppcCollector(cache))
    assert calls == []
    assert generate_latest(registry) == b""  # nothing probed yet: nothing to say

    asyncio.run(_refresh(cache))
    value = registry.get_sample_value
    assert value("kvmppc_kvm_powerpc") == 1
    assert value("kvmppc_vm_type_available", {"vm_type": "hv"}) == 1
    assert value("kvmppc_vm_type_needs_host_contiguous_pages", {"vm_type": "hv"}) == 1
    assert value("kvmppc_vm_type_slb_entries", {"vm_type": "hv"}) == 32
    assert value("kvmppc_vm_type_hpt_page_size_info",
                 {"vm_type": "hv", "segment_page_shift": "16", "page_shift": "24"}) == 1
    assert value("kvmppc_probe_success") == 1
    assert value("kvmppc_probes_total") == 1


async def _refresh(cache: ProbeCache) -> None:
    await cache.refresh("test")

"""Bad input thrown at a running daemon (hypothesis): malformed request lines, headers,
parameters and sizes.  Every answer is a 4xx (or a 200 where the input happened to be a
valid request) or a closed connection; never a 5xx, a hang, a dead daemon, or a traceback or
asyncio "Fatal error" in its log (a connection closed after an unhandled exception looks
like a refusal from outside: only the log tells them apart)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmppc.policy.request import QUERY_KEYS
from tests.daemon_support import Daemon, read_response, run_daemon

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# What an unhandled exception leaves in the log: Python's traceback, asyncio's "Fatal error
# on transport" / "Exception in callback" / "Task exception was never retrieved".
LOG_ALARMS = ("Traceback", "Fatal error", "Exception in callback", "exception was never")


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with run_daemon(tmp, config="idle_timeout = 5\nmax_request_bytes = 4096\n") as running:
        yield running


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Iterator[Daemon]:
    """The module's daemon, checked sound after each test whatever order they run in."""
    assert_sound(shared_daemon)
    yield shared_daemon
    assert_sound(shared_daemon)


def assert_sound(daemon: Daemon) -> None:
    """Alive, healthy, answering right, every connection closed, nothing alarming logged."""
    assert daemon.alive(), daemon.log
    status, health = daemon.get("/v1/health")
    assert status == 200 and health["probe_failures"] == 0
    assert health["connections"] == 1  # this one: every fuzzing connection was closed
    status, answer = daemon.get("/v1/check?max_page_size=64k")
    assert status == 200 and answer["ok"] is True and answer["max_page_size"] == 65536
    assert_log_clean(daemon.log)


def assert_log_clean(text: str) -> None:
    for alarm in LOG_ALARMS:
        assert alarm not in text, text


def exchange(daemon: Daemon, raw: bytes) -> list[tuple[int, bytes]]:
    """Send ``raw`` then end the stream; every answer until the daemon closes.  Fails if the
    daemon logged an unhandled exception meanwhile, or died."""
    logged_before = daemon.log_path.stat().st_size
    answers = _exchange(daemon, raw)
    with daemon.log_path.open("rb") as log:
        log.seek(logged_before)
        assert_log_clean(log.read().decode(errors="replace"))
    assert daemon.alive(), daemon.log
    return answers


def _exchange(daemon: Daemon, raw: bytes) -> list[tuple[int, bytes]]:
    answers = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(daemon.socket_path)
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon already answered and closed: read what it said
        with sock.makefile("rb") as reader:
            while True:
                try:
                    status, _headers, body = read_response(reader)
                except ConnectionResetError:
                    break  # closed with data unread, which Linux reports as a reset
                if status == 0:
                    break
                answers.append((status, body))
    return answers


def assert_4xx_or_closed(answers: list[tuple[int, bytes]], *, allow_ok: bool) -> None:
    for status, body in answers:
        if allow_ok and status == 200:
            continue
        assert 400 <= status < 500, (status, body)
        assert "error" in json.loads(body)


VALID = b"GET /v1/health HTTP/1.1\r\nHost: fuzz\r\n\r\n"

_token = st.text(alphabet=st.characters(codec="latin-1"), min_size=0, max_size=12)
_line_end = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b"\n\r"])


@st.composite
def malformed_requests(draw: st.DrawFn) -> bytes:
    """A valid request with one part broken: each result is something a server must refuse."""
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"G\x00T", b"", b"GET GET",
                                   b"\xffGET", b"get /", b"PATCH"]))
    target = draw(st.sampled_from([b"/v1/health", b"/v1/check?max_page_size=64k", b"*",
                                   b"v1/host", b"/v1/\x7fhost", b"/" + b"x" * 5000,
                                   b"/v1/check?%zz=%ff", b"/v1/host#frag", b"//\x01"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x",
                                    b"http/1.1", b"HTTP/1", b"HTTP/11.1", b""]))
    headers = draw(st.lists(st.tuples(_token, _token), max_size=40))
    line_end = draw(_line_end)
    body = draw(st.binary(max_size=64))
    length = draw(st.sampled_from([None, "0", "-1", "1e3", "99999999999", "5, 6", " 3",
                                   str(len(body))]))
    head = [method + b" " + target + b" " + version]
    head += [name.encode("latin-1") + b": " + value.encode("latin-1")
             for name, value in headers]
    if draw(st.booleans()):
        head.append(b"Host: fuzz")
    if length is not None:
        head.append(b"Content-Length: " + length.encode())
    if draw(st.booleans()):
        head.append(b"Transfer-Encoding: chunked")
    return line_end.join(head) + line_end + line_end + body


@given(raw=st.binary(min_size=1, max_size=6000))
@FUZZ
def test_random_bytes(daemon: Daemon, raw: bytes) -> None:
    assert_4xx_or_closed(exchange(daemon, raw), allow_ok=False)


@given(raw=malformed_requests())
@FUZZ
def test_malformed_requests(daemon: Daemon, raw: bytes) -> None:
    # Some draws are well-formed after all (valid method, target, version and headers):
    # those may be answered; none may get a 5xx.
    assert_4xx_or_closed(exchange(daemon, raw), allow_ok=True)


@given(raw=malformed_requests(), prefix_count=st.integers(0, 3))
@FUZZ
def test_bad_requests_after_good_ones_on_one_connection(daemon: Daemon, raw: bytes,
                                                        prefix_count: int) -> None:
    """Pipelined valid requests are answered first, in order, before the bad one is met."""
    answers = exchange(daemon, VALID * prefix_count + raw)
    assert [status for status, _ in answers[:prefix_count]] == [200] * prefix_count
    assert_4xx_or_closed(answers[prefix_count:], allow_ok=True)


_param_value = st.text(max_size=30) | st.sampled_from(
    ["64k", "16M", "0x10000", "1e3", "4096", "-1", "power9", "HV", "pr", "kvm", "tcg",
     "/dev/hugepages/x", "../../etc/passwd", "", "pseries-2.12"])


@given(params=st.lists(st.tuples(st.sampled_from([*QUERY_KEYS, "foo", ""]), _param_value),
                       max_size=8))
@FUZZ
def test_check_parameters(daemon: Daemon, params: list[tuple[str, str]]) -> None:
    """Any parameters: an answer (200, JSON with ok) or a 400 saying what was wrong."""
    query = "&".join(f"{quote(key)}={quote(value)}" for key, value in params)
    raw = f"GET /v1/check?{query} HTTP/1.1\r\nHost: fuzz\r\n\r\n".encode()
    answers = exchange(daemon, raw)
    assert len(answers) == 1
    status, body = answers[0]
    assert status in (200, 400), (status, body)
    assert ("ok" if status == 200 else "error") in json.loads(body)


def test_log_alarms_are_seen() -> None:
    """The log check would catch what an unhandled exception in a handler writes."""
    with pytest.raises(AssertionError):
        assert_log_clean("Traceback (most recent call last):\n  ...\nKeyError: 'x'\n")
    with pytest.raises(AssertionError):
        assert_log_clean("Fatal error on transport\nprotocol: <kvmppc.daemon.http...>\n")
    assert_log_clean("kvmppc: 400 from pid 1: the request line is malformed\n")

"""A small, strict HTTP/1.1 server on asyncio's Protocol API, for AF_UNIX and TCP listeners.

Keep-alive and pipelining (answers go out in request order), ``Content-Length`` bodies only,
and limits on request size, header count, idle time and connections.  Input it cannot use
gets a 4xx with a JSON ``{"error": ...}`` saying what was wrong, then the connection is
closed, since the framing may be lost.  A handler that raises gets a 500 and is logged;
nothing a client sends can end the daemon.

What one client can hold is bounded: each listener has its own connection budget (metrics
scrapers cannot lock out the API, nor the reverse), and when a budget is spent the
connection that has waited longest for a request is dropped for a newcomer (slowloris);
input is read in chunks of at most ``max_request_bytes`` into a buffer of at most twice that,
and reading stops while answers wait (a handler runs, or the peer does not read: at most
``max_output_bytes`` are queued); a peer that reads nothing for ``write_timeout`` is cut off
and its file descriptor closed.  A connection counts until its file descriptor is closed.

The peer of a unix-socket connection is identified by ``SO_PEERCRED`` (pid, uid, gid): the
standard library's ``http.server`` would crash formatting an AF_UNIX peer address.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger("kvmppc.daemon")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
# Visible ASCII except the characters a request target can never hold (RFC 3986, RFC 9112).
_TARGET = re.compile(rb"[!$&'()*+,\-./0-9:;=?@A-Z_a-z~%\[\]]+")
# RFC 9110 7.2: Host = uri-host [ ":" port ]; uri-host is a reg-name, an IPv4 address or an
# IP-literal in brackets (RFC 3986 3.2.2).  Empty is allowed (an authority-less target).
_HOST = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.vV\-._~!$&'()*+,;=]+\])"
                   rb"(?::[0-9]*)?")
# RFC 9110 8.6: Content-Length = 1*DIGIT, ASCII digits only (str.isdigit() takes "²");
# 18 digits is more than any limit here and keeps int() away from its digit limit.
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}
# When a listener's budget is spent, a newcomer from the peer that holds the most connections
# may replace one of that peer's connections only if it has waited this long for its request:
# a burst from one client gets 503 + Retry-After rather than dropping its own connections.
EVICTION_GRACE_S = 0.5


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 8192  # request line + headers + body
    max_headers: int = 32
    max_connections: int = 128  # of one listener
    idle_timeout: float = 30.0  # to send a whole request, counted from connect or last answer
    write_timeout: float = 10.0  # a peer that takes none of its answers this long is cut off
    max_output_bytes: int = 64 * 1024  # answers queued for a peer; beyond, reading stops


@dataclass(frozen=True)
class Peer:
    """Who is on the other end: ``SO_PEERCRED`` on a unix socket, the address on TCP."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    address: str | None = None
    host: str | None = None  # the address without the port

    @property
    def key(self) -> object:
        """Who holds a connection, for sharing a listener fairly: a process or a host."""
        return self.pid if self.address is None else self.host

    def __str__(self) -> str:
        if self.address is not None:
            return self.address
        return f"pid={self.pid} uid={self.uid} gid={self.gid}"


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    peer: Peer


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


Handler = Callable[[Request], Response | Awaitable[Response]]
# Told about each answered request: (request or None when it could not be parsed, status,
# seconds spent answering).
Observer = Callable[[Request | None, int, float], None]


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def json_response(status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, json_body(obj), headers=tuple(headers))


def error_response(status: int, message: str, headers: Iterable[tuple[str, str]] = (),
                   *, close: bool = False) -> Response:
    return Response(status, json_body({"error": message}), headers=tuple(headers), close=close)


class HttpError(Exception):
    """A request that cannot be served; the connection closes after the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _http_date(cache: list[Any] = [0, b""]) -> bytes:  # noqa: B006 - a deliberate one-second cache
    now = int(time.time())
    if cache[0] != now:
        cache[0], cache[1] = now, email.utils.formatdate(now, usegmt=True).encode()
    date: bytes = cache[1]
    return date


def _split_target(target: bytes) -> bytes:
    """The origin-form part of a request target (RFC 9112 3.2): absolute-form
    ``http://authority/path?query`` keeps its path and query; only the path matters here."""
    lower = target[:8].lower()
    if not lower.startswith((b"http://", b"https://")):
        return target
    rest = target[target.index(b"//") + 2:]
    end = len(rest)
    for mark in (b"/", b"?"):
        at = rest.find(mark)
        if 0 <= at < end:
            end = at
    authority, origin = rest[:end], rest[end:]
    if b"@" in authority or not _HOST.fullmatch(authority):
        raise HttpError(400, "the request target's authority is not host[:port]")
    if not origin.startswith(b"/"):
        origin = b"/" + origin  # RFC 9112 3.2.1: an empty path is "/"
    return origin


def parse_head(head: bytes, limits: Limits, peer: Peer) -> tuple[Request, int]:
    """The request line and header fields (RFC 9112 sections 3 and 5); and the body length."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "the request line must be 'METHOD /path HTTP/1.1'")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "the request method is not an HTTP token")
    version_match = _VERSION.fullmatch(version)
    if version_match is None:
        raise HttpError(400, "the request line must end with the version HTTP/1.1")
    if version_match.group(1) != b"1":
        raise HttpError(400, f"{version.decode()} is not spoken here: use HTTP/1.1")
    target = _split_target(target)
    if not target.startswith(b"/") or not _TARGET.fullmatch(target):
        raise HttpError(400, "the request target must be a path such as /v1/check?...")
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, f"more than {limits.max_headers} header fields")
    headers: dict[str, str] = {}
    hosts = 0
    content_lengths: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "a header line is not 'Name: value' (no folding, no space"
                            " before the colon)")
        value = value.strip(b" \t")
        if _BAD_VALUE_CHAR.search(value):
            raise HttpError(400, f"header {name.decode()} holds a control character")
        key, text = name.decode().lower(), value.decode("latin-1")
        if key == "host":
            hosts += 1
            if not _HOST.fullmatch(value):
                raise HttpError(400, "Host must be host[:port] (RFC 9110 7.2)")
        elif key == "content-length":
            for raw_item in value.split(b","):
                item = raw_item.strip(b" \t")
                if not _CONTENT_LENGTH.fullmatch(item):
                    raise HttpError(400, "Content-Length must be one decimal number")
                content_lengths.add(item.lstrip(b"0") or b"0")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly one Host;
    # a later 1.x minor version is handled as 1.1 (RFC 9110 2.5).
    if hosts > 1:
        raise HttpError(400, "more than one Host header (RFC 9112 3.2)")
    if version_match.group(2) != b"0" and hosts == 0:
        raise HttpError(400, "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)")
    if "transfer-encoding" in headers:
        raise HttpError(400, "Transfer-Encoding is not accepted: send Content-Length")
    if len(content_lengths) > 1:
        raise HttpError(400, "Content-Length must be one decimal number")
    body_length = int(content_lengths.pop()) if content_lengths else 0
    if len(head) + 4 + body_length > limits.max_request_bytes:
        raise HttpError(413, f"the request is over {limits.max_request_bytes} bytes")
    path, _, query = target.decode("ascii").partition("?")
    return Request(method.decode("ascii"), path, query, version.decode("ascii"), headers,
                   b"", peer), body_length


def _wants_close(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


@dataclass
class HttpServer:
    """The connections of one listener: their budget, their deadlines, the observer."""

    limits: Limits
    name: str = "api"
    observer: Observer | None = None
    monotonic: Callable[[], float] = time.monotonic
    connections: set[HttpProtocol] = field(default_factory=set)  # file descriptors open
    refused: int = 0  # connections turned away at the limit
    evicted: int = 0  # connections dropped for a newcomer at the limit
    timed_out: int = 0  # connections cut off: request too slow, or answers not read
    read_buffer: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        # Every connection reads into this one buffer and copies out what arrived: reads are
        # synchronous in the loop, so one buffer serves all, and no read is ever larger.
        self.read_buffer = bytearray(self.limits.max_request_bytes)
        self._read_view = memoryview(self.read_buffer)

    def protocol_factory(self, handler: Handler) -> Callable[[], HttpProtocol]:
        return lambda: HttpProtocol(self, handler)

    def admit(self, newcomer: HttpProtocol) -> bool:
        """Whether a new connection may stay when the listener's budget is spent.

        It takes the place of a connection waiting for a request (idle, or trickling one:
        slowloris) from the peer holding the most connections, the one that has waited
        longest.  A newcomer from a peer that holds fewer connections than that one gets its
        place at once; one from that same peer (or as big) only if the connection has waited
        past ``EVICTION_GRACE_S``, so a burst from one client is turned away with 503 rather
        than dropping its own connections.  Peers are processes on the unix socket
        (``SO_PEERCRED``), addresses on TCP.
        """
        active = [c for c in self.connections if not c.closing]
        if len(active) < self.limits.max_connections:
            return True
        held: dict[object, int] = {}
        for conn in active:
            held[conn.peer.key] = held.get(conn.peer.key, 0) + 1
        waiting = [c for c in active if c.evictable]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: (-held[c.peer.key], c.waiting_since))
        fairer = held.get(newcomer.peer.key, 0) < held[victim.peer.key]
        if fairer or self.monotonic() - victim.waiting_since >= EVICTION_GRACE_S:
            self.evicted += 1
            victim.abort()
            return True
        return False

    def sweep(self) -> None:
        """Act on connections past their deadline; called about once a second."""
        now = self.monotonic()
        for conn in [c for c in self.connections if c.deadline < now]:
            conn.time_out()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class HttpProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: HttpServer, handler: Handler) -> None:
        self._server = server
        self._handler = handler
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: tuple[Request, int] | None = None  # head parsed, body still coming
        self._busy = False  # a handler is running: later requests wait their turn
        self._read_paused = False
        self._write_paused = False
        self._eof = False  # the peer half-closed: answer what came, then close
        self._task: asyncio.Task[Response] | None = None
        self.closing = False  # closed by us, fd open until the answers are flushed
        self.peer = Peer()
        self.deadline = math.inf
        self.waiting_since = 0.0  # when it started waiting for its next request

    @property
    def evictable(self) -> bool:
        """Waiting for a (whole) request, or for the peer to read its answers; not being
        answered (a handler running) nor already closing."""
        return not (self._busy or self.closing)

    # ---------------------------------------------------------------------------------------
    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peer = _peer_of(transport)
        admitted = self._server.admit(self)
        self._server.connections.add(self)  # counted while its fd is open, refused or not
        transport.set_write_buffer_limits(high=self._limits.max_output_bytes)
        if not admitted:
            self._server.refused += 1
            self._write(None, error_response(
                503, f"more than {self._limits.max_connections} connections; try again",
                [("Retry-After", "1")], close=True), 0.0)
            return
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._buffer = bytearray()
        self.closing = True
        self.deadline = math.inf
        if self._task is not None:
            self._task.cancel()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self._buffer += self._server._read_view[:nbytes]
        self._process()

    def eof_received(self) -> bool:
        # Half-close (shutdown(SHUT_WR)): the requests already sent still get their answers.
        self._eof = True
        self._process()
        return True  # keep the transport open for writing; _process closes when done

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop reading its requests, and give it
        # write_timeout to take some before it is cut off.
        self._write_paused = True
        self._pause_reading()
        self.waiting_since = self._server.monotonic()
        self.deadline = self.waiting_since + self._limits.write_timeout

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.closing:
            return
        if not self._busy:
            self._wait_for_request()
        self._process()

    # ---------------------------------------------------------------------------------------

    def _wait_for_request(self) -> None:
        now = self._server.monotonic()
        self.waiting_since = now
        self.deadline = now + self._limits.idle_timeout

    def time_out(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._server.timed_out += 1
        if self.closing or self._write_paused or transport.get_write_buffer_size():
            self.abort()  # it does not read: drop what it was sent, close the fd now
        elif self._buffer or self._pending:
            self._write(None, error_response(408, "the request took longer than"
                                             f" {self._limits.idle_timeout:g} s", close=True),
                        0.0)
        else:
            self.abort()

    def abort(self) -> None:
        """Close now, dropping unsent answers; the fd closes in the next loop iteration."""
        self.closing = True
        self.deadline = math.inf
        if self._transport is not None:
            self._transport.abort()

    def _close(self) -> None:
        """Close after the answers are flushed, giving the peer write_timeout to take them."""
        transport = self._transport
        if transport is None or self.closing:
            return
        self.closing = True
        transport.close()
        self.deadline = self._server.monotonic() + self._limits.write_timeout

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None and not self.closing:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and not self._write_paused and self._transport is not None \
                and not self.closing:
            self._read_paused = False
            self._transport.resume_reading()

    def _process(self) -> None:
        while not (self._busy or self._write_paused or self.closing
                   or self._transport is None):
            try:
                if not self._take_request():
                    break
            except HttpError as exc:
                self._write(None, error_response(exc.status, exc.message, close=True), 0.0)
                return
            except Exception:  # a bug here must cost this connection only, never the loop
                log.exception("reading a request from %s", self.peer)
                self._write(None, error_response(400, "the request could not be read",
                                                 close=True), 0.0)
                return
        if self.closing or self._transport is None:
            return
        if self._busy or self._write_paused:
            # Answers are waiting: hold further requests in the kernel, not here.
            if len(self._buffer) >= self._limits.max_request_bytes:
                self._pause_reading()
        elif self._eof:
            self._close()  # all it sent before half-closing is answered (a partial is dropped)
        else:
            self._resume_reading()

    def _take_request(self) -> bool:
        """Parse and dispatch one request if a whole one is buffered; ``False`` if not."""
        buf = self._buffer
        limit = self._limits.max_request_bytes
        if self._pending is None:
            while buf[:2] == b"\r\n":
                del buf[:2]  # RFC 9112 2.2: ignore empty lines before a request line
            end = buf.find(b"\r\n\r\n")
            if (len(buf) if end < 0 else end + 4) > limit:
                line_end = buf.find(b"\r\n")
                if line_end < 0 or line_end > limit:
                    raise HttpError(414, f"the request line is over {limit} bytes")
                raise HttpError(431, f"the request head is over {limit} bytes")
            if end < 0:
                if b"\n\n" in buf or b"\n\r\n" in buf:
                    raise HttpError(400, "lines must end with CRLF")
                return False
            head = bytes(buf[:end])
            del buf[:end + 4]
            self._pending = parse_head(head, self._limits, self.peer)
            request, length = self._pending
            expect = request.headers.get("expect")
            if expect is not None:
                if expect.lower() != "100-continue":
                    raise HttpError(417, "the only Expect understood is 100-continue")
                if length and len(buf) < length and self._transport is not None:
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request, length = self._pending
        if len(buf) < length:
            return False
        request.body = bytes(buf[:length])
        del buf[:length]
        self._pending = None
        self._dispatch(request)
        return True

    def _dispatch(self, request: Request) -> None:
        started = time.perf_counter()
        self.deadline = math.inf
        try:
            answer = self._handler(request)
        except Exception:
            log.exception("answering %s %s for %s", request.method, request.path, self.peer)
            answer = error_response(500, "internal error; the daemon's log has the details")
        if isinstance(answer, Response):
            self._write(request, answer, started)
            return
        self._busy = True
        self._task = asyncio.ensure_future(answer)
        self._task.add_done_callback(lambda task: self._finish(request, task, started))

    def _finish(self, request: Request, task: asyncio.Task[Response], started: float) -> None:
        self._task = None
        self._busy = False
        if task.cancelled():
            return  # the connection went away
        exc = task.exception()
        if exc is not None:
            log.error("answering %s %s for %s", request.method, request.path, self.peer,
                      exc_info=exc)
            response = error_response(500, "internal error; the daemon's log has the details")
        else:
            response = task.result()
        self._write(request, response, started)
        self._process()

    def _write(self, request: Request | None, response: Response, started: float) -> None:
        transport = self._transport
        if transport is None or self.closing:
            return
        close = response.close or request is None or _wants_close(request)
        body = response.body
        head = [
            _STATUS_LINES.get(response.status)
            or f"HTTP/1.1 {response.status} Unknown\r\n".encode(),
            b"Content-Type: ", response.content_type.encode(), b"\r\nContent-Length: ",
            str(len(body)).encode(), b"\r\nDate: ", _http_date(), b"\r\n",
        ]
        for name, value in response.headers:
            head.append(f"{name}: {value}\r\n".encode())
        if close:
            head.append(b"Connection: close\r\n")
        elif request is not None and request.version == "HTTP/1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if request is None or request.method != "HEAD":
            head.append(body)
        transport.write(b"".join(head))  # may call pause_writing(), which sets a deadline
        if self._server.observer is not None:
            self._server.observer(request, response.status,
                                  time.perf_counter() - started if started else 0.0)
        if close:
            self._close()
        elif not self._write_paused:
            self._wait_for_request()


def _peer_of(transport: asyncio.BaseTransport) -> Peer:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except OSError:
            return Peer()  # the peer is already gone; the read that follows will say so
        pid, uid, gid = struct.unpack("3i", creds)
        return Peer(pid=pid, uid=uid, gid=gid)
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
        return Peer(address=f"{host}:{name[1]}", host=str(name[0]))
    return Peer()

"""A small, strict HTTP/1.1 server on asyncio's Protocol API, for AF_UNIX and TCP listeners.

Keep-alive and pipelining (answers go out in request order), ``Content-Length`` bodies only,
and limits on request size, header count, idle time and concurrent connections.  Input it
cannot use gets a 4xx with a JSON ``{"error": ...}`` saying what was wrong, then the
connection is closed, since the framing may be lost.  A handler that raises gets a 500 and
is logged; nothing a client sends can end the daemon.

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
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 8192  # request line + headers + body
    max_headers: int = 32
    max_connections: int = 128
    idle_timeout: float = 30.0  # to send a whole request, counted from connect or last answer


@dataclass(frozen=True)
class Peer:
    """Who is on the other end: ``SO_PEERCRED`` on a unix socket, the address on TCP."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    address: str | None = None

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
    if target.startswith((b"http://", b"https://")):
        # absolute-form (RFC 9112 3.2.2): servers must accept it; only the path matters here
        slash = target.find(b"/", target.index(b"//") + 2)
        target = target[slash:] if slash > 0 else b"/"
    if not target.startswith(b"/") or not _TARGET.fullmatch(target):
        raise HttpError(400, "the request target must be a path such as /v1/check?...")
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, f"more than {limits.max_headers} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "a header line is not 'Name: value' (no folding, no space"
                            " before the colon)")
        value = value.strip(b" \t")
        if _BAD_VALUE_CHAR.search(value):
            raise HttpError(400, f"header {name.decode()} holds a control character")
        key, text = name.decode().lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if version == b"HTTP/1.1" and "host" not in headers:
        raise HttpError(400, "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)")
    if "transfer-encoding" in headers:
        raise HttpError(400, "Transfer-Encoding is not accepted: send Content-Length")
    body_length = 0
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise HttpError(400, "Content-Length must be one decimal number")
        body_length = int(values.pop())
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
    """Connections of all listeners: their count, their deadlines, the request observer."""

    limits: Limits
    observer: Observer | None = None
    monotonic: Callable[[], float] = time.monotonic
    connections: set[HttpProtocol] = field(default_factory=set)
    refused: int = 0  # connections turned away at the limit

    def protocol_factory(self, handler: Handler) -> Callable[[], HttpProtocol]:
        return lambda: HttpProtocol(self, handler)

    def sweep(self) -> None:
        """Close connections past their deadline; called about once a second."""
        now = self.monotonic()
        for conn in [c for c in self.connections if c.deadline < now]:
            conn.time_out()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer, handler: Handler) -> None:
        self._server = server
        self._handler = handler
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: tuple[Request, int] | None = None  # head parsed, body still coming
        self._busy = False  # a handler is running (refresh): later requests wait their turn
        self._paused = False
        self._write_paused = False
        self._task: asyncio.Task[Response] | None = None
        self.peer = Peer()
        self.deadline = math.inf

    # ---------------------------------------------------------------------------------------
    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._server.connections) >= self._limits.max_connections:
            self._server.refused += 1
            self._write(None, error_response(
                503, f"more than {self._limits.max_connections} connections; try again",
                [("Retry-After", "1")], close=True), 0.0)
            return
        self._server.connections.add(self)
        self.peer = _peer_of(transport)
        self.deadline = self._server.monotonic() + self._limits.idle_timeout
        transport.set_write_buffer_limits(high=64 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._buffer.clear()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._process()
        if self._busy and len(self._buffer) > self._limits.max_request_bytes:
            self._pause()  # pipelined requests beyond one request's worth wait in the kernel

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop reading its requests.
        self._write_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume()

    # ---------------------------------------------------------------------------------------

    def time_out(self) -> None:
        if self._buffer or self._pending:
            self._write(None, error_response(408, "the request took longer than"
                                             f" {self._limits.idle_timeout:g} s", close=True),
                        0.0)
        else:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._server.connections.discard(self)

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and not self._write_paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _process(self) -> None:
        while not self._busy and self._transport is not None and not self._transport.is_closing():
            try:
                if not self._take_request():
                    return
            except HttpError as exc:
                self._write(None, error_response(exc.status, exc.message, close=True), 0.0)
                return

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
        self._resume()
        self._process()

    def _write(self, request: Request | None, response: Response, started: float) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
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
        transport.write(b"".join(head))
        if self._server.observer is not None:
            self._server.observer(request, response.status,
                                  time.perf_counter() - started if started else 0.0)
        if close:
            transport.close()
            self._server.connections.discard(self)
        else:
            self.deadline = self._server.monotonic() + self._limits.idle_timeout


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
        return Peer(address=f"{host}:{name[1]}")
    return Peer()

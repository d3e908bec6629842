"""The floor: a minimal HTTP/1.1 keep-alive responder on a unix socket, one fixed body.

The same event loop, transport and client as the daemon, and nothing else: no parsing
beyond finding the end of the request head, no routing, no JSON.  The benchmark's latency
ratios are the daemon against this.

``--impl`` serves the same body through a library instead, to see what each would cost the
daemon before any of its own work (bench/README.md, "Which HTTP server"):

* ``asyncio`` (the default): the floor itself;
* ``httptools``: llhttp (Node.js's parser) under an asyncio Protocol, as the daemon's own
  protocol would use it in place of its request-head parser;
* ``aiohttp``: aiohttp's low-level server (``aiohttp.web.Server``) on a passed socket, as it
  would run on the sockets systemd hands over.

    python bench/floor_server.py [--impl asyncio|httptools|aiohttp] /tmp/floor.sock
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from typing import Any

BODY = b'{"ok":true}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


class Floor(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4:]
            self.transport.write(RESPONSE)


class HttptoolsFloor(asyncio.Protocol):
    """llhttp parses; each complete message gets the fixed answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools  # noqa: PLC0415 - only for this variant, a benchmark-only dependency

        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError

    # llhttp's callbacks: what the daemon would collect to build its Request
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.headers = []
        self.transport.write(RESPONSE)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.error:
            self.transport.close()


async def _serve_asyncio(sock: socket.socket, impl: str) -> None:
    factory: Any = HttptoolsFloor if impl == "httptools" else Floor
    server = await asyncio.get_running_loop().create_unix_server(factory, sock=sock)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def _serve_aiohttp(sock: socket.socket) -> None:
    from aiohttp import web  # noqa: PLC0415 - only for this variant

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=BODY, content_type="application/json")

    server = web.Server(handler)
    loop = asyncio.get_running_loop()
    listener = await loop.create_unix_server(server, sock=sock)
    print("ready", flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("asyncio", "httptools", "aiohttp"), default="asyncio")
    parser.add_argument("path")
    args = parser.parse_args()
    if os.path.exists(args.path):
        os.unlink(args.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(args.path)
    sock.listen(128)  # bound here and passed in, as systemd passes the daemon's sockets
    if args.impl == "aiohttp":
        asyncio.run(_serve_aiohttp(sock))
    else:
        asyncio.run(_serve_asyncio(sock, args.impl))


if __name__ == "__main__":
    main()

"""The floor: a minimal HTTP/1.1 keep-alive responder on a unix socket, one fixed body.

The same event loop, transport and client as the daemon, and nothing else: no parsing
beyond finding the end of the request head, no routing, no JSON.  The benchmark's latency
ratios are the daemon against this.

    python bench/floor_server.py /tmp/floor.sock
"""

from __future__ import annotations

import asyncio
import os
import sys

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


async def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.get_running_loop().create_unix_server(Floor, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

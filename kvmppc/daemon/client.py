"""A client for the daemon's unix socket: ``kvmppc query`` and the tests use it."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from kvmppc.errors import KvmppcError


class DaemonUnreachableError(KvmppcError):
    """The daemon's socket could not be reached or did not answer in HTTP."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    """One keep-alive connection to the daemon; answers are ``(status, JSON object)``."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._conn = _UnixConnection(socket_path, timeout)

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def request(self, method: str, path: str,
                params: Mapping[str, str | Sequence[str]] | None = None,
                accept: str = "application/json") -> tuple[int, Any, dict[str, str]]:
        """``(status, body, headers)``: the body decoded from JSON, or text for text/plain."""
        target = f"{path}?{urlencode(params, doseq=True)}" if params else path
        try:
            self._conn.request(method, target, headers={"Accept": accept})
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DaemonUnreachableError(
                f"no answer from the kvmppc daemon on {self.socket_path}: {reason}. Start it"
                " with 'kvmppc serve' (or 'systemctl start kvmppc.socket'), give its --socket,"
                " or join the socket's group (kvm) to be allowed to connect"
            ) from None
        headers = {name.lower(): value for name, value in response.getheaders()}
        try:
            if headers.get("content-type", "").startswith("text/plain"):
                return response.status, body.decode(), headers
            return response.status, json.loads(body), headers
        except ValueError:
            raise DaemonUnreachableError(
                f"the daemon on {self.socket_path} answered {response.status} with a body that"
                " is not JSON: is it a kvmppc daemon?"
            ) from None


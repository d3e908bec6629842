"""The daemon's settings: defaults, then the config file (TOML), then command-line flags."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmppc.daemon.defaults import DEFAULT_CONFIG_FILE, DEFAULT_SOCKET
from kvmppc.errors import UsageError

# Outside every range of Prometheus' default-port registry (its wiki page "Default port
# allocations": 9100-9999 are all taken and new exporters get 10000 upward; 9641 was the CoTURN
# exporter's and MQTT2Prometheus'), as Prometheus' "Writing exporters" advises for exporters not
# in that registry; below Linux's ephemeral ports (32768-60999); not in /etc/services. The old
# 9641 in its last four digits. --metrics-address or metrics_address in the config file move it.
DEFAULT_METRICS_PORT = 19641


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``kvmppc serve`` can be told; field names are the config file's keys."""

    socket: str = DEFAULT_SOCKET
    socket_mode: int = 0o660
    socket_group: str = "kvm"  # "" leaves the group alone
    metrics_address: str = f":{DEFAULT_METRICS_PORT}"  # "" serves /metrics on the socket only
    device: str = "/dev/kvm"
    host_profile: str = ""  # a shipped profile's name or a file: answer for that host instead
    refresh_interval: float = 300.0  # seconds between re-probes of the KVM part
    retry_interval: float = 10.0  # seconds between re-probes while the last one failed
    # Seconds between the starts of probes that clients ask for (POST /v1/refresh): each
    # creates KVM VMs, so a client in a loop must not make the daemon probe in a loop.
    min_refresh_interval: float = 2.0
    device_poll_interval: float = 1.0  # seconds between checks that the device node changed
    # Answers share one read of the hugepage counts for at most this many seconds (answers
    # computed together always share one); 0 reads them for every answer, at about a third
    # of a cached answer's cost (bench/README.md).
    hugepages_max_age: float = 1.0
    idle_timeout: float = 30.0  # seconds a connection may take to send a whole request
    write_timeout: float = 10.0  # seconds a client may leave its answers unread
    max_connections: int = 128  # on the API socket
    metrics_max_connections: int = 32  # on the metrics socket, apart from the API's
    max_request_bytes: int = 32768  # request line, headers and body (a domain XML in a POST)
    max_headers: int = 32
    log_level: str = "info"
    # The libvirt hook's own (the daemon ignores it): answer type='qemu' domains as if they
    # were type='kvm', to try a POWER profile on a machine where libvirt runs pseries under
    # TCG only (kvmppc/libvirt_hook.py).
    hook_assume_kvm: bool = False

    def __post_init__(self) -> None:
        for name in ("refresh_interval", "retry_interval", "device_poll_interval",
                     "idle_timeout", "write_timeout"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be a positive number of seconds")
        if self.hugepages_max_age < 0:
            raise UsageError("hugepages_max_age must be 0 (read for every answer) or more")
        if self.min_refresh_interval < 0:
            raise UsageError("min_refresh_interval must be 0 (no limit) or more seconds")
        for name in ("max_connections", "metrics_max_connections", "max_request_bytes",
                     "max_headers"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if not 0 <= self.socket_mode <= 0o777:
            raise UsageError(f"socket_mode {self.socket_mode:#o} is not a file mode")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise UsageError(
                f"log_level {self.log_level!r}: use debug, info, warning or error"
            )
        if self.metrics_address:
            parse_address(self.metrics_address)

    def replace(self, **changes: Any) -> DaemonConfig:
        return dataclasses.replace(self, **changes)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces) to ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(
            f"metrics address {text!r}: give HOST:PORT, [IPv6]:PORT or :PORT"
            " (all interfaces), or an empty string for none"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _coerce(name: str, value: Any, where: str) -> Any:
    field_type = {f.name: f.type for f in dataclasses.fields(DaemonConfig)}[name]
    if name == "socket_mode" and isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise UsageError(f"{where}: socket_mode {value!r} is not an octal mode") from None
    if field_type == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if field_type == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if field_type == "bool" and isinstance(value, bool):
        return value
    if field_type == "str" and isinstance(value, str):
        return value
    raise UsageError(f"{where}: {name} must be a {field_type}, not {value!r}")


def config_from_mapping(data: Mapping[str, Any], where: str,
                        base: DaemonConfig | None = None) -> DaemonConfig:
    known = {f.name for f in dataclasses.fields(DaemonConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    changes = {name: _coerce(name, value, where) for name, value in data.items()}
    return (base or DaemonConfig()).replace(**changes)


def load_config(path: str | None) -> DaemonConfig:
    """The defaults overlaid with ``path`` (TOML); without a path, the default file if present."""
    if path is None:
        if not Path(DEFAULT_CONFIG_FILE).is_file():
            return DaemonConfig()
        path = DEFAULT_CONFIG_FILE
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_mapping(data, path)

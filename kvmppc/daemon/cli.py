"""``kvmppc serve`` and ``kvmppc query``; :func:`register` adds them to the main parser.

Registering imports neither the server (asyncio, prometheus_client) nor the client
(http.client): each command imports its own when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from kvmppc.cli_policy import add_check_arguments, check_params
from kvmppc.daemon.defaults import DEFAULT_CONFIG_FILE, DEFAULT_SOCKET

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_serve(subparsers)
    _register_query(subparsers)


# --------------------------------------------------------------------------------------------
# serve


def _register_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the probe daemon (unix-socket API, Prometheus metrics)",
        description="Probe the host, keep the answer, and serve it: HTTP/1.1 + JSON on a unix"
        " socket (GET /v1/host, /v1/check?..., /v1/health, /metrics; POST /v1/refresh) and"
        " Prometheus metrics on TCP. Re-probes the KVM part on an interval, on POST"
        " /v1/refresh, on SIGHUP and when the device node changes; reads hugepage counts"
        " fresh for each answer. Under systemd it takes the sockets it is passed"
        " (kvmppc.socket, kvmppc-metrics.socket), notifies readiness and logs to the"
        " journal; otherwise it runs in the foreground and logs to stderr.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help=f"settings file (TOML; default {DEFAULT_CONFIG_FILE} if present)")
    parser.add_argument("--socket", metavar="PATH",
                        help=f"API socket to create (default {DEFAULT_SOCKET})")
    parser.add_argument("--metrics-address", metavar="HOST:PORT",
                        help="where to serve /metrics over TCP (default :19641, all interfaces;"
                        " '' for the unix socket only)")
    parser.add_argument("--host-profile", metavar="NAME|FILE",
                        help="answer for a saved probe (a shipped profile's name or a file"
                        " from 'kvmppc probe --json') instead of this host")
    parser.add_argument("--device", metavar="PATH", help="KVM device (default /dev/kvm)")
    parser.add_argument("--refresh-interval", type=float, metavar="SECONDS",
                        help="re-probe the KVM part this often (default 300)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    # Only serve pays for the server's imports (asyncio, prometheus_client: ~70 ms), not
    # every kvmppc command that builds the argument parser.
    from kvmppc.daemon.config import load_config  # noqa: PLC0415 - see above
    from kvmppc.daemon.log import setup_logging  # noqa: PLC0415 - see above
    from kvmppc.daemon.server import Daemon  # noqa: PLC0415 - see above

    config = load_config(args.config)
    overrides = {
        name: value for name, value in (
            ("socket", args.socket), ("metrics_address", args.metrics_address),
            ("host_profile", args.host_profile), ("device", args.device),
            ("refresh_interval", args.refresh_interval), ("log_level", args.log_level),
        ) if value is not None
    }
    config = config.replace(**overrides)
    setup_logging(config.log_level)
    return Daemon(config).run()


# --------------------------------------------------------------------------------------------
# query

def _socket_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--socket", metavar="PATH",
                        default=os.environ.get("KVMPPC_SOCKET", DEFAULT_SOCKET),
                        help="the daemon's socket (default $KVMPPC_SOCKET or %(default)s)")
    parent.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    return parent


def _register_query(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "query",
        help="ask the running daemon (host facts, a check, health, refresh)",
        description="Ask a running 'kvmppc serve' over its unix socket. 'query check' takes"
        " the same flags as 'kvmppc check' and answers from the daemon's cached probe.",
    )
    sub = parser.add_subparsers(dest="query", metavar="WHAT", required=True)
    parent = _socket_parent()
    sub.add_parser("host", parents=[parent], help="the cached probe and its age"
                   ).set_defaults(func=_cmd_query_host)
    check = sub.add_parser("check", parents=[parent],
                           help="will a pseries guest start with this cap-hpt-max-page-size?")
    add_check_arguments(check)
    check.set_defaults(func=_cmd_query_check)
    sub.add_parser("health", parents=[parent], help="the daemon's health"
                   ).set_defaults(func=_cmd_query_health)
    sub.add_parser("refresh", parents=[parent], help="make the daemon probe again now"
                   ).set_defaults(func=_cmd_query_refresh)


def _ask(args: argparse.Namespace, method: str, path: str,
         params: dict[str, str | list[str]] | None = None,
         accept: str = "application/json") -> tuple[int, Any, dict[str, str]]:
    from kvmppc.daemon.client import DaemonClient  # noqa: PLC0415 - see the docstring

    with DaemonClient(args.socket) as client:
        return client.request(method, path, params, accept=accept)


def _print_json(body: Any) -> None:
    import json  # noqa: PLC0415 - see the docstring

    print(json.dumps(body, indent=2))


def _cache_line(meta: Any) -> str:
    from kvmppc.render import cache_line  # noqa: PLC0415 - see the docstring

    return cache_line(meta)


def _error(status: int, body: Any) -> int:
    message = body.get("error") if isinstance(body, dict) else None
    print(f"kvmppc: the daemon answered {status}: {message or body}", file=sys.stderr)
    return 2


def _cmd_query_host(args: argparse.Namespace) -> int:
    status, body, _headers = _ask(args, "GET", "/v1/host")
    if status != 200:
        return _error(status, body)
    if args.json:
        _print_json(body)
    else:
        from kvmppc.model import ProbeResult  # noqa: PLC0415 - see the docstring
        from kvmppc.render import render_probe  # noqa: PLC0415 - same

        print(render_probe(ProbeResult.from_dict(body["probe"])))
        print(_cache_line(body["cache"]))
    return 0


def _cmd_query_check(args: argparse.Namespace) -> int:
    """Exit as ``kvmppc check`` does: 0 QEMU starts, 1 it does not, 2 bad arguments."""
    # The daemon matches mem_path against the mount table it probed; relative paths would
    # mean the caller's directory, so they are made absolute here as `kvmppc check` does.
    params = check_params(args, absolute_paths=True)
    accept = "application/json" if args.json else "text/plain"
    status, body, headers = _ask(args, "GET", "/v1/check", params, accept=accept)
    if status != 200:
        return _error(status, body)
    if args.json:
        _print_json(body)
        return 0 if body["ok"] else 1
    print(body, end="")
    return 0 if headers.get("kvmppc-answer") == "yes" else 1


def _cmd_query_health(args: argparse.Namespace) -> int:
    """Exit 0 while answers are current (ok or degraded), 1 while they are stale."""
    status, body, _headers = _ask(args, "GET", "/v1/health")
    if status != 200:
        return _error(status, body)
    if args.json:
        _print_json(body)
    else:
        print(f"{body['status']}; {body['probes']} probes, {body['probe_failures']} failed;"
              f" up {body['uptime_s']:.0f} s")
        for problem in body["problems"]:
            print(f"  {problem}")
        print(_cache_line(body["cache"]))
    return 1 if body["status"] == "stale" else 0


def _cmd_query_refresh(args: argparse.Namespace) -> int:
    """Exit 0 when the new probe succeeded, 1 when it failed (the old answer stays)."""
    status, body, _headers = _ask(args, "POST", "/v1/refresh")
    if args.json:
        _print_json(body)
    elif status in (200, 503):
        print(_cache_line(body["cache"]))
    else:
        return _error(status, body)
    return 0 if status == 200 else 1

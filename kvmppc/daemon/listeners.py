"""The daemon's two listening sockets: taken from systemd when it passes them, else bound here.

systemd tells them apart by ``FileDescriptorName=``: ``api`` (the unix socket,
kvmppc.socket) and ``metrics`` (TCP, kvmppc-metrics.socket).  Each one handed over is checked
to be what its name promises, and the daemon says so when it is not.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from kvmppc.daemon.config import DaemonConfig, parse_address
from kvmppc.daemon.sd import listen_fds
from kvmppc.errors import UsageError

log = logging.getLogger("kvmppc.daemon")

API_NAME = "api"
METRICS_NAME = "metrics"
_INET = (socket.AF_INET, socket.AF_INET6)


@dataclass
class Listeners:
    api: socket.socket
    metrics: socket.socket | None
    activated: bool  # handed over by systemd (which then owns the socket file)
    bound_path: str | None = None  # the socket file this process created, removed at exit

    def close(self) -> None:
        for sock in (self.api, self.metrics):
            if sock is not None:
                sock.close()
        if self.bound_path is not None:
            with contextlib.suppress(FileNotFoundError):  # already gone: nothing to remove
                os.unlink(self.bound_path)


def describe(sock: socket.socket) -> str:
    family = {socket.AF_UNIX: "unix", socket.AF_INET: "tcp", socket.AF_INET6: "tcp6"}.get(
        sock.family, str(sock.family))
    try:
        name = sock.getsockname()
    except OSError:
        name = "?"
    if isinstance(name, tuple):
        host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
        return f"{family} {host}:{name[1]}"
    return f"{family} {name or '(unnamed)'}"


def _check_passed(sock: socket.socket, name: str) -> None:
    expected = "a unix stream socket" if name == API_NAME else "a TCP socket"
    family_ok = sock.family == socket.AF_UNIX if name == API_NAME else sock.family in _INET
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    if not (family_ok and sock.type == socket.SOCK_STREAM and listening):
        raise UsageError(
            f"systemd passed {describe(sock)} as {name!r}, which should be {expected} in the"
            f" listening state: check ListenStream= in the socket unit whose"
            f" FileDescriptorName={name}"
        )


def take_passed(environ: Mapping[str, str]) -> dict[str, socket.socket]:
    """The sockets systemd passed, by role; unnamed ones are placed by their family."""
    taken: dict[str, socket.socket] = {}
    for passed in listen_fds(environ):
        sock = socket.socket(fileno=passed.fd)  # not fromfd(), which would duplicate the fd
        os.set_inheritable(passed.fd, False)
        name = passed.name
        if name not in (API_NAME, METRICS_NAME):
            guess = API_NAME if sock.family == socket.AF_UNIX else METRICS_NAME
            log.warning("systemd passed %s named %r; expected FileDescriptorName=%s or %s:"
                        " using it as %r", describe(sock), name, API_NAME, METRICS_NAME, guess)
            name = guess
        _check_passed(sock, name)
        if name in taken:
            raise UsageError(f"systemd passed more than one {name!r} socket: give each socket"
                             " unit one ListenStream=")
        taken[name] = sock
    return taken


def _unlink_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{path} exists and is not a socket: remove it or give another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # a socket file left behind by a daemon that is gone
        return
    finally:
        probe.close()
    raise UsageError(f"another daemon is answering on {path}: stop it or give another --socket")


def bind_unix(path: str, mode: int, group: str) -> socket.socket:
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        _unlink_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which others may connect before the chmod
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(128)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = ("; run as root, under systemd (kvmppc.socket creates it), or give"
                    " --socket PATH in a directory you can write")
        raise UsageError(f"cannot listen on {path}: {exc.strerror}{hint}") from None
    if group:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            log.info("no group %r here: %s keeps this process's group", group, path)
        except PermissionError:
            log.warning("cannot give %s to group %r (not root, not a member): clients need"
                        " this process's group", path, group)
    return sock


def bind_tcp(address: str) -> socket.socket:
    host, port = parse_address(address)
    candidates: list[tuple[socket.AddressFamily, str]]
    if host:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        except socket.gaierror as exc:
            raise UsageError(f"metrics address {address!r}: {exc.strerror}") from None
        candidates = [(info[0], str(info[4][0])) for info in infos]
    else:
        # All interfaces: one dual-stack IPv6 socket, or IPv4 where IPv6 is off.
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    error: OSError | None = None
    for family, bind_host in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((bind_host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    assert error is not None
    hint = "; choose another with --metrics-address" if error.errno == errno.EADDRINUSE else ""
    raise UsageError(f"cannot listen for metrics on {address}: {error.strerror}{hint}")


def open_listeners(config: DaemonConfig, environ: Mapping[str, str]) -> Listeners:
    passed = take_passed(environ)
    if passed:
        if API_NAME not in passed:
            for sock in passed.values():
                sock.close()
            raise UsageError("systemd passed sockets but none for the API: enable kvmppc.socket"
                             f" (FileDescriptorName={API_NAME})")
        if METRICS_NAME not in passed:
            log.info("no metrics socket passed (kvmppc-metrics.socket not enabled): /metrics is"
                     " served on the API socket only")
        return Listeners(passed[API_NAME], passed.get(METRICS_NAME), activated=True)
    api = bind_unix(config.socket, config.socket_mode, config.socket_group)
    bound = Listeners(api, None, activated=False, bound_path=config.socket)
    if config.metrics_address:
        try:
            bound.metrics = bind_tcp(config.metrics_address)
        except UsageError:
            bound.close()
            raise
    return bound

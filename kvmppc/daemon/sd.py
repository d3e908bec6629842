"""systemd's service protocols in pure Python: notify, socket activation, the watchdog.

The protocols are stable (systemd.io PORTABILITY_AND_STABILITY); this follows systemd's own
``man/notify-selfcontained-example.py`` for notify and Twisted's ``ListenFDs`` for
activation.  The environment and the pid are parameters, so tests hand in plain dicts.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass

SD_LISTEN_FDS_START = 3  # sd-daemon.h: the first passed file descriptor


class Notifier:
    """Sends ``sd_notify(3)`` messages to ``$NOTIFY_SOCKET``; does nothing without one.

    A failing notification is reported to the caller (``False``) and never raised: a daemon
    must not die because its service manager went away.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        self.error: OSError | None = None
        if address.startswith("/"):
            self.address = address
        elif address.startswith("@"):
            # An abstract socket: a leading NUL byte instead of the @ (unix(7)).
            self.address = b"\0" + address[1:].encode()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``VAR=value`` assignments as one datagram; ``True`` if it was sent."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            self.error = exc
            return False
        self.error = None
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or 0 when not asked for.

    As sd_watchdog_enabled(3): ``$WATCHDOG_PID``, when set, must be this process.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return 0.0
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return 0.0
    return int(usec) / 1_000_000


@dataclass(frozen=True)
class PassedFd:
    """A file descriptor passed by the service manager, with its ``FileDescriptorName=``."""

    fd: int
    name: str


def listen_fds(environ: Mapping[str, str] = os.environ, pid: int | None = None,
               start: int = SD_LISTEN_FDS_START) -> list[PassedFd]:
    """The sockets passed with ``$LISTEN_FDS``/``$LISTEN_FDNAMES`` (sd_listen_fds_with_names(3)).

    Empty unless ``$LISTEN_PID`` is this process.  A missing or short ``$LISTEN_FDNAMES``
    names the rest ``"unknown"``, as libsystemd does.
    """
    if environ.get("LISTEN_PID", "") != str(os.getpid() if pid is None else pid):
        return []
    count = environ.get("LISTEN_FDS", "")
    if not count.isdigit():
        return []
    names = environ.get("LISTEN_FDNAMES", "")
    name_list = names.split(":") if names else []
    return [
        PassedFd(fd, name_list[i] if i < len(name_list) and name_list[i] else "unknown")
        for i, fd in enumerate(range(start, start + int(count)))
    ]


def journal_stream_is_stderr(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """Whether ``fd`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``device:inode`` of it, systemd.exec(5)), so that output there lands in the journal."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False  # stderr closed: nothing is connected to the journal
    return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (int(device), int(inode))

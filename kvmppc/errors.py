"""kvmppc's exception family.

Only the errnos that mean something specific here are translated; anything else stays an
``OSError`` subclass carrying errno, the operation and the path, so callers that only care
about "did the kernel say no" can catch ``OSError``.
"""

from __future__ import annotations

import errno as _errno
import os


class KvmppcError(Exception):
    """Base of every error kvmppc raises on purpose."""


class KvmOSError(KvmppcError, OSError):
    """A system call failed; carries errno, the operation name and the path."""

    def __init__(self, err: int, operation: str, path: str, hint: str = "") -> None:
        message = f"{operation} on {path}: {os.strerror(err)}"
        if hint:
            message = f"{message}. {hint}"
        OSError.__init__(self, err, message)
        self.operation = operation
        self.path = path
        self.hint = hint

    def __str__(self) -> str:
        return str(self.strerror)


class KvmNotLoadedError(KvmOSError):
    """ENOENT on the KVM device: no KVM module is loaded (or the node was never created)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            _errno.ENOENT,
            "open",
            path,
            "No KVM module is loaded: load kvm_hv (POWER8 and later, bare metal or nested)"
            " or kvm_pr with 'modprobe kvm_hv' / 'modprobe kvm_pr'",
        )


class KvmPermissionError(KvmOSError):
    """EACCES/EPERM on the KVM device: this user may not open it."""

    def __init__(self, err: int, path: str) -> None:
        super().__init__(
            err,
            "open",
            path,
            "This user cannot open the KVM device: add it to the 'kvm' group"
            " ('usermod -aG kvm USER', then log in again) or run as root",
        )


class NotPowerPCKvmError(KvmOSError):
    """ENOTTY/EINVAL on a PowerPC-only ioctl: not a PowerPC KVM, or too old a kernel."""

    def __init__(self, err: int, operation: str, path: str) -> None:
        super().__init__(
            err,
            operation,
            path,
            "This is not a PowerPC KVM (or its kernel is too old for this ioctl):"
            " run kvmppc on a POWER host, or replay a saved probe with --host-profile",
        )


class VmTypeUnavailableError(KvmOSError):
    """KVM_CREATE_VM refused the requested VM type (EINVAL: that implementation is absent)."""


class ProfileError(KvmppcError):
    """A host profile could not be found, read or understood."""


class UsageError(KvmppcError):
    """Bad input from a user or a client: the message says what was wrong."""

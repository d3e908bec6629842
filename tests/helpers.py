"""Small helpers several test modules share, defined once."""

from __future__ import annotations

import os
import socket

import pytest

KVM_DEVICE = "/dev/kvm"

needs_kvm = pytest.mark.skipif(
    not os.access(KVM_DEVICE, os.R_OK | os.W_OK),
    reason=f"{KVM_DEVICE} is missing or not accessible here",
)


def cant(guest_kib: int, host_kib: int) -> str:
    """QEMU's backing-check error (hw/ppc/spapr_caps.c spapr_check_pagesize), word for word."""
    return (f"Can't support {guest_kib} kiB guest pages with {host_kib} kiB host pages with"
            " this KVM implementation")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

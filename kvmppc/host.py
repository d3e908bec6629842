"""This host, or a saved one: the I/O the commands need before they ask the policy.

:func:`load_probe` gives the probe to answer for (a saved host profile, or this host probed
live: only then is the compiled cffi module loaded); :func:`live_backing` resolves a
``-mem-path`` on this host as QEMU does.  Shared by ``check``, its QEMU command-line and
domain-XML forms, ``audit`` and the libvirt hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from kvmppc.model import ProbeResult
    from kvmppc.policy import Backing


def load_probe(host_profile: str | None) -> ProbeResult:
    if host_profile:
        from kvmppc.profiles import load_profile  # noqa: PLC0415 - only what is asked for

        return load_profile(host_profile)
    from kvmppc.probe import probe  # noqa: PLC0415 - only a live probe loads the kernel door

    return probe()


def live_backing(
    probe: ProbeResult,
    mem_path: str,
    statfs: Callable[[str], tuple[int, int]] | None = None,
    hugetlbfs_magic: int | None = None,
) -> Backing:
    """``qemu_mempath_getpagesize(mem_path)`` on this host: statfs ``f_bsize`` on hugetlbfs,
    else the base page size.  QEMU exits with "Couldn't statfs() memory path" when statfs
    fails; that becomes the backing's error.  ``statfs`` and ``hugetlbfs_magic`` default to
    the kernel door's."""
    from kvmppc.policy import Backing  # noqa: PLC0415 - only what is asked for

    if statfs is None or hugetlbfs_magic is None:
        from kvmppc import _kvm  # noqa: PLC0415 - the one door to the kernel: statfs

        statfs = statfs or _kvm.statfs_type_and_block_size
        hugetlbfs_magic = _kvm.HUGETLBFS_MAGIC if hugetlbfs_magic is None else hugetlbfs_magic
    path = os.path.abspath(mem_path)
    try:
        f_type, f_bsize = statfs(path)
    except OSError as exc:
        return Backing(
            path, probe.host.base_page_size, "statfs",
            error=f"Couldn't statfs() memory path: {os.strerror(exc.errno or 0)}",
        )
    if f_type == hugetlbfs_magic:
        return Backing(path, f_bsize, "statfs", path)
    return Backing(path, probe.host.base_page_size, "statfs")

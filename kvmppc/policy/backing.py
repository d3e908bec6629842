"""Where guest RAM comes from: the page size QEMU finds for each RAM backend.

QEMU reads it with ``qemu_mempath_getpagesize`` (util/mmap-alloc.c): ``statfs`` ``f_bsize``
on hugetlbfs, else the host's base page size.  The policy never opens a path; it finds the
page size in the probe's mount table, which is what the daemon does.  ``kvmppc check`` on the
live host statfs's the paths itself and hands the policy :class:`Backing` values.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.model import ProbeResult


@dataclass(frozen=True)
class Backing:
    """The page size QEMU's ``qemu_mempath_getpagesize`` finds for one RAM backend.

    ``mem_path`` None is RAM without a mem-path (the host's base page size).  ``source``:
    "hugetlbfs" (a mount from the probe), "statfs" (read live, as QEMU does), "base-page-size"
    (not on hugetlbfs) or "hugepage-pool" (a pool with no mount yet: a what-if for advice).
    ``error`` is QEMU's message when the path cannot be statfs'd.
    """

    mem_path: str | None
    page_size: int
    source: str
    mount: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mem_path": self.mem_path,
            "page_size": self.page_size,
            "source": self.source,
            "mount": self.mount,
            "error": self.error,
        }


def _under(path: str, mount: str) -> bool:
    mount = mount.rstrip("/") or "/"
    return mount in ("/", path) or path.startswith(mount + "/")


def resolve_backing(probe: ProbeResult, mem_path: str) -> Backing:
    """The backing page size of ``mem_path`` from the probe's mount table.

    The longest hugetlbfs mount containing the path gives its page size (what statfs
    ``f_bsize`` says there); a path on no hugetlbfs mount is backed by the base page size.
    """
    if not mem_path.startswith("/"):
        raise UsageError(f"mem_path {mem_path!r} must be an absolute path")
    path = posixpath.normpath(mem_path)
    mounts = [m for m in probe.hugepages.mounts if _under(path, posixpath.normpath(m.path))]
    if mounts:
        mount = max(mounts, key=lambda m: len(posixpath.normpath(m.path)))
        return Backing(mem_path, mount.page_size, "hugetlbfs", mount.path)
    return Backing(mem_path, probe.host.base_page_size, "base-page-size")


def anonymous_backing(probe: ProbeResult) -> Backing:
    """Main RAM without a mem-path: anonymous memory in base pages."""
    return Backing(None, probe.host.base_page_size, "base-page-size")


def backings_for(probe: ProbeResult, mem_paths: tuple[str, ...]) -> tuple[Backing, ...]:
    """Each mem-path's backing from the mount table; anonymous RAM when there is none."""
    return tuple(resolve_backing(probe, p) for p in mem_paths) or (anonymous_backing(probe),)

"""``kvmppc pagesizes`` and ``kvmppc check``: the policy's two commands.

The main CLI (kvmppc/cli.py) calls :func:`register` with its subparsers.  Each command's
``func`` takes the parsed arguments and returns the exit status: 0 yes (or printed), 1 QEMU
would not start the guest, 2 bad arguments.  I/O lives here, not in :mod:`kvmppc.policy`: the
live probe, and statfs of each ``--mem-path`` the way QEMU's ``qemu_mempath_getpagesize``
does it.

Registering the commands imports nothing but argparse; a command imports the policy when it
runs, and the kernel door (:mod:`kvmppc._kvm`, the compiled cffi module) only when it looks
at this host rather than a saved profile.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmppc.errors import ProfileError, UsageError

if TYPE_CHECKING:
    from kvmppc.model import ProbeResult
    from kvmppc.policy import Backing

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    """Add ``pagesizes`` and ``check`` to an ``argparse`` subparsers object."""
    sizes = subparsers.add_parser(
        "pagesizes",
        help="the hash page sizes a pseries guest will see (ibm,segment-page-sizes)",
        description="Show the page-size table QEMU 7.2 gives a pseries guest: the CPU model's"
        " hash-MMU table filtered by cap-hpt-max-page-size, as the device-tree cells.",
    )
    sizes.add_argument("--cpu", metavar="MODEL",
                       help="QEMU -cpu model (default: the machine type's own)")
    sizes.add_argument("--machine", metavar="TYPE", default="pseries",
                       help="pseries machine type (default: pseries, i.e. pseries-7.2)")
    sizes.add_argument("--max-page-size", metavar="SIZE",
                       help="cap-hpt-max-page-size, in QEMU's size syntax (default: the"
                       " machine's)")
    sizes.add_argument("--json", action="store_true", help="print JSON")
    sizes.set_defaults(func=cmd_pagesizes)

    chk = subparsers.add_parser(
        "check",
        help="would QEMU start this pseries guest on this host? (exit 0 yes, 1 no)",
        description="Replay QEMU 7.2's start-up decisions about cap-hpt-max-page-size on this"
        " host (or a saved host profile): its errors and warnings word for word, the guest's"
        " page sizes, and what to change.  Exit 0: QEMU starts; 1: it does not; 2: bad"
        " arguments.",
    )
    add_check_arguments(chk)
    chk.add_argument("--host-profile", metavar="FILE",
                     help="a saved probe ('kvmppc probe --json') or a shipped profile name,"
                     " instead of probing this host")
    chk.add_argument("--json", action="store_true", help="print JSON")
    chk.set_defaults(func=cmd_check)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The guest-describing flags, shared by ``kvmppc check`` and ``kvmppc query check``."""
    parser.add_argument("--max-page-size", metavar="SIZE",
                        help="cap-hpt-max-page-size, in QEMU's size syntax (default: the"
                        " machine's)")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="QEMU -cpu model (default: the machine type's own)")
    parser.add_argument("--machine", metavar="TYPE", default="pseries",
                        help="pseries machine type (default: pseries)")
    parser.add_argument("--mem-path", metavar="PATH", action="append", default=[],
                        help="mem-path of a RAM backend (repeatable; default: anonymous RAM)")
    parser.add_argument("--memory", metavar="SIZE", help="-m value (default: 512 MiB)")
    parser.add_argument("--accel", choices=("kvm", "tcg"),
                        help="default: kvm when the host has a usable PowerPC KVM, else tcg")
    parser.add_argument("--kvm-type", metavar="HV|PR",
                        help="KVM implementation (default: the kernel's default VM type)")


def check_params(args: argparse.Namespace, *, absolute_paths: bool) -> dict[str, str | list[str]]:
    """The flags of :func:`add_check_arguments` as ``CheckRequest.from_params`` (and the
    daemon's query string) take them."""
    params: dict[str, str | list[str]] = {"machine": args.machine}
    for key, value in (("max_page_size", args.max_page_size), ("cpu", args.cpu),
                       ("memory", args.memory), ("accel", args.accel),
                       ("kvm_type", args.kvm_type)):
        if value is not None:
            params[key] = value
    if args.mem_path:
        params["mem_path"] = [
            os.path.abspath(path) if absolute_paths else path for path in args.mem_path
        ]
    return params


def _fail_usage(message: str) -> int:
    print(f"kvmppc: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_pagesizes(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415 - see the docstring

    from kvmppc.policy import QemuRefusalError, pagesizes  # noqa: PLC0415 - see the docstring
    from kvmppc.render import page_sizes_json, render_page_sizes  # noqa: PLC0415 - same

    try:
        result = pagesizes(args.cpu, args.machine, args.max_page_size)
    except QemuRefusalError as exc:
        return _fail_usage(str(exc))
    if args.json:
        print(json.dumps(page_sizes_json(result), indent=2))
    else:
        print(render_page_sizes(result))
    return EXIT_OK


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
    from kvmppc.policy import Backing  # noqa: PLC0415 - see the docstring

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


def _load_probe(host_profile: str | None) -> ProbeResult:
    if host_profile:
        from kvmppc.profiles import load_profile  # noqa: PLC0415 - see the docstring

        return load_profile(host_profile)
    from kvmppc.probe import probe  # noqa: PLC0415 - see the docstring: loads the cffi module

    return probe()


def cmd_check(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415 - same

    from kvmppc.policy import CheckRequest, check  # noqa: PLC0415 - see the docstring
    from kvmppc.render import check_json, render_check  # noqa: PLC0415 - same

    live = not args.host_profile
    params = check_params(args, absolute_paths=live)
    mem_paths = list(params.get("mem_path", []))
    try:
        request = CheckRequest.from_params(params)
        probe = _load_probe(args.host_profile)
        backings = [live_backing(probe, p) for p in mem_paths] if live and mem_paths else None
        result = check(probe, request, backings)
    except (UsageError, ProfileError) as exc:
        return _fail_usage(str(exc))
    if args.json:
        print(json.dumps(check_json(result), indent=2))
    else:
        print(render_check(result))
    return EXIT_OK if result.ok else EXIT_NO

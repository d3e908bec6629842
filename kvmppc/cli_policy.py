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

from kvmppc import cli_inputs
from kvmppc.errors import ProfileError, UsageError
from kvmppc.host import live_backing, load_probe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    pass

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    """Add ``pagesizes`` and ``check`` to an ``argparse`` subparsers object."""
    sizes = subparsers.add_parser(
        "pagesizes",
        help="the hash page sizes a pseries guest will see (ibm,segment-page-sizes)",
        description="Show the page-size table QEMU gives a pseries guest: the CPU model's"
        " hash-MMU table filtered by cap-hpt-max-page-size, as the device-tree cells.",
    )
    sizes.add_argument("--qemu-version", metavar="7.2|10.0",
                       help="the QEMU release to answer for (default: the installed"
                       " qemu-system-ppc64's, else the newest modelled)")
    sizes.add_argument("--cpu", metavar="MODEL",
                       help="QEMU -cpu model (default: the machine type's own)")
    sizes.add_argument("--machine", metavar="TYPE", default="pseries",
                       help="pseries machine type (default: pseries, the release's newest)")
    sizes.add_argument("--max-page-size", metavar="SIZE",
                       help="cap-hpt-max-page-size, in QEMU's size syntax (default: the"
                       " machine's)")
    sizes.add_argument("--cap", metavar="NAME=VALUE", action="append", default=[],
                       help="another -machine cap-NAME=VALUE, checked for its syntax"
                       " (repeatable; cap-hpt-max-page-size=SIZE sets the page-size cap)")
    sizes.add_argument("--max-cpu-compat", metavar="MODE",
                       help="-machine max-cpu-compat, checked for its syntax")
    sizes.add_argument("--json", action="store_true", help="print JSON")
    sizes.set_defaults(func=cmd_pagesizes)

    chk = subparsers.add_parser(
        "check",
        help="would QEMU start this pseries guest on this host? (exit 0 yes, 1 no)",
        description="Replay QEMU's start-up decisions about cap-hpt-max-page-size on this"
        " host (or a saved host profile): its errors and warnings word for word, the guest's"
        " page sizes, and what to change.  Exit 0: QEMU starts; 1: it does not; 2: bad"
        " arguments; 3: cannot judge (a command line or domain asking for what kvmppc does"
        " not model).",
    )
    add_check_arguments(chk)
    chk.add_argument("--host-profile", metavar="FILE",
                     help="a saved probe ('kvmppc probe --json') or a shipped profile name,"
                     " instead of probing this host")
    chk.add_argument("--json", action="store_true", help="print JSON")
    cli_inputs.add_check_arguments(chk)
    chk.set_defaults(func=cmd_check)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The guest-describing flags, shared by ``kvmppc check`` and ``kvmppc query check``."""
    parser.add_argument("--max-page-size", metavar="SIZE",
                        help="cap-hpt-max-page-size, in QEMU's size syntax (default: the"
                        " machine's)")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="QEMU -cpu model (default: under KVM the host's, as QEMU's"
                        " -cpu host; under TCG the machine type's own)")
    parser.add_argument("--machine", metavar="TYPE", default="pseries",
                        help="pseries machine type (default: pseries)")
    parser.add_argument("--mem-path", metavar="PATH", action="append", default=[],
                        help="mem-path of a RAM backend (repeatable; default: anonymous RAM)")
    parser.add_argument("--memory", metavar="SIZE", help="-m value (default: 512 MiB)")
    parser.add_argument("--accel", choices=("kvm", "tcg"),
                        help="default: kvm when the host has a usable PowerPC KVM, else tcg")
    parser.add_argument("--kvm-type", metavar="HV|PR",
                        help="KVM implementation (default: the kernel's default VM type)")
    parser.add_argument("--qemu-version", metavar="7.2|10.0",
                        help="the QEMU release to answer for (default: the one the probe found"
                        " installed, else the newest modelled)")
    parser.add_argument("--cap", metavar="NAME=VALUE", action="append", default=[],
                        help="another -machine cap-NAME=VALUE (repeatable, e.g. --cap htm=off"
                        " --cap cap-fwnmi=off)")
    parser.add_argument("--max-cpu-compat", metavar="MODE",
                        help="-machine max-cpu-compat (power7, power8, power9, power10...)")
    add_memory_arguments(parser)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Guest RAM beyond -m and -mem-path: memory backends and hotplug (the ``backend``,
    ``maxmem`` and ``slots`` query parameters)."""
    parser.add_argument(
        "--backend", metavar="SPEC", action="append", default=[],
        help="a memory backend as QEMU's -object text (repeatable):"
        " memory-backend-ram|file|memfd,size=SIZE[,mem-path=PATH][,hugetlb=on]"
        "[,hugetlbsize=SIZE][,use=ram|numa|none][,node=N]; one backend is the machine's RAM"
        " (-machine memory-backend=), several are NUMA nodes' memdevs in order; use=none is"
        " created but not mapped")
    parser.add_argument("--maxmem", metavar="SIZE",
                        help="-m maxmem= (hotpluggable memory up to SIZE)")
    parser.add_argument("--slots", metavar="N", help="-m slots= (memory hotplug slots)")


def check_params(args: argparse.Namespace, *, absolute_paths: bool) -> dict[str, str | list[str]]:
    """The flags of :func:`add_check_arguments` as ``CheckRequest.from_params`` (and the
    daemon's query string) take them."""
    params: dict[str, str | list[str]] = {"machine": args.machine}
    for key, value in (("max_page_size", args.max_page_size), ("cpu", args.cpu),
                       ("memory", args.memory), ("accel", args.accel),
                       ("kvm_type", args.kvm_type),
                       ("qemu_version", getattr(args, "qemu_version", None))):
        if value is not None:
            params[key] = value
    if args.mem_path:
        params["mem_path"] = [
            os.path.abspath(path) if absolute_paths else path for path in args.mem_path
        ]
    for key in ("maxmem", "slots"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    if getattr(args, "backend", None):
        params["backend"] = list(args.backend)
    if getattr(args, "cap", None):
        params["cap"] = list(args.cap)
    if getattr(args, "max_cpu_compat", None) is not None:
        params["max_cpu_compat"] = args.max_cpu_compat
    return params


def _fail_usage(message: str) -> int:
    print(f"kvmppc: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_pagesizes(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415 - see the docstring

    from kvmppc.policy import QemuRefusalError, pagesizes  # noqa: PLC0415 - see the docstring
    from kvmppc.policy.caps import check_cap_syntax  # noqa: PLC0415 - same
    from kvmppc.policy.machines import qemu_models  # noqa: PLC0415 - same
    from kvmppc.probe import probe_qemu_version  # noqa: PLC0415 - same
    from kvmppc.qemu_versions import choose  # noqa: PLC0415 - same
    from kvmppc.render import page_sizes_json, render_page_sizes  # noqa: PLC0415 - same

    try:
        installed = None if args.qemu_version else probe_qemu_version("qemu-system-ppc64")
        choice = choose(args.qemu_version, installed)
        models = qemu_models(choice.table)
        max_page_size = check_cap_syntax(args.machine, args.cap, args.max_cpu_compat,
                                         args.max_page_size, models)
        result = pagesizes(args.cpu, args.machine, max_page_size, models)
    except ValueError as exc:
        return _fail_usage(f"--qemu-version: {exc}")
    except (QemuRefusalError, UsageError) as exc:
        return _fail_usage(str(exc))
    for note in choice.notes:
        print(f"kvmppc: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(page_sizes_json(result), indent=2))
    else:
        print(render_page_sizes(result))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    if args.qemu_argv or args.domain:  # a QEMU command line or a libvirt domain (kvmppc.inputs)
        return cli_inputs.cmd_check_inputs(args)
    import json  # noqa: PLC0415 - same

    from kvmppc.policy import CheckRequest, check  # noqa: PLC0415 - see the docstring
    from kvmppc.render import check_json, render_check  # noqa: PLC0415 - same

    live = not args.host_profile
    params = check_params(args, absolute_paths=live)
    mem_paths = list(params.get("mem_path", []))
    try:
        request = CheckRequest.from_params(params)
        probe = load_probe(args.host_profile)
        backings = [live_backing(probe, p) for p in mem_paths] if live and mem_paths else None
        resolve = (lambda path: live_backing(probe, path)) if live else None
        result = check(probe, request, backings, resolve=resolve)
    except (UsageError, ProfileError) as exc:
        return _fail_usage(str(exc))
    if args.json:
        print(json.dumps(check_json(result), indent=2))
    else:
        print(render_check(result))
    return EXIT_OK if result.ok else EXIT_NO

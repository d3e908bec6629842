"""The ``kvmppc`` command: probe, pagesizes, check, serve, query.

Building the argument parser imports no command's machinery: each command imports what it
needs when it runs (the probe and the kernel door for ``probe``, the policy for ``check``,
the HTTP client for ``query``, the server for ``serve``), so ``kvmppc --help`` and a check of
a saved profile start about as fast as Python itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvmppc import __version__, cli_inputs, cli_policy
from kvmppc.daemon import cli as daemon_cli
from kvmppc.errors import KvmppcError


def _cmd_probe(args: argparse.Namespace) -> int:
    from kvmppc.render import render_probe  # noqa: PLC0415 - see the module's docstring

    if args.host_profile:
        from kvmppc.profiles import load_profile  # noqa: PLC0415 - see the module's docstring

        result = load_profile(args.host_profile)
    else:
        # Only here: the live probe loads the compiled cffi module (kvmppc._kvm).
        from kvmppc.probe import ProbePaths, probe  # noqa: PLC0415 - see above

        result = probe(ProbePaths(kvm_device=args.device))
    print(result.to_json() if args.json else render_probe(result))
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from kvmppc.profiles import describe_shipped  # noqa: PLC0415 - see the module's docstring

    for name, text in describe_shipped():
        print(f"{name}: {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmppc",
        description="Answers cap-hpt-max-page-size questions for IBM POWER KVM hosts:"
        " what this host's KVM supports, which guest page sizes QEMU will offer, and"
        " whether a pseries guest will start with a given backing.",
    )
    parser.add_argument("--version", action="version", version=f"kvmppc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    probe_parser = sub.add_parser(
        "probe",
        help="report this host's KVM, MMU and hugepage facts",
        description="Probe the host: CPU, MMU, base page size, hugepage pools and hugetlbfs"
        " mounts, and for each KVM VM type (default, HV, PR) its capabilities, SMMU,"
        " radix MMU and CPU characteristics. Each part reports its own error. On a"
        " non-POWER machine it says so and exits 0.",
    )
    probe_parser.add_argument("--json", action="store_true",
                              help="print the whole result as JSON (a host profile)")
    probe_parser.add_argument("--host-profile", metavar="NAME|FILE",
                              help="replay a saved probe (a file, or a shipped profile name)"
                              " instead of probing")
    probe_parser.add_argument("--device", default="/dev/kvm",
                              help="KVM device (default %(default)s)")
    probe_parser.set_defaults(func=_cmd_probe)

    profiles_parser = sub.add_parser(
        "profiles", help="list the shipped host profiles (captured or derived)",
        description="The host profiles shipped with kvmppc, for --host-profile NAME: each"
        " kernel's host, and whether it was captured from a running kernel or derived from"
        " the kernel's source (a host that cannot run here).")
    profiles_parser.set_defaults(func=_cmd_profiles)

    cli_policy.register(sub)
    daemon_cli.register(sub)
    cli_inputs.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KvmppcError as exc:
        print(f"kvmppc: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # e.g. `kvmppc probe --json | head`
    return code


if __name__ == "__main__":
    sys.exit(main())

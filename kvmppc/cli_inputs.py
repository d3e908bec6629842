"""``kvmppc check -- QEMU-COMMAND-LINE`` / ``check -`` / ``check --domain``, ``kvmppc
libvirt-hook`` and ``kvmppc audit``: the guest in the user's own terms.

kvmppc/cli_policy.py calls :func:`add_check_arguments` on its ``check`` parser and hands
over to :func:`cmd_check_inputs` when :func:`wants_inputs` says a command line or a domain was
given; kvmppc/cli.py calls :func:`register` for the two new commands.  Exit status: 0 QEMU
starts the guest, 1 it does not, 2 bad input, 3 cannot judge.
"""

from __future__ import annotations

import argparse
import sys

from kvmppc.errors import ProfileError, UsageError

EXIT_USAGE = 2  # as kvmppc.inputs.answer.EXIT_USAGE; registering the commands imports no more
LIBVIRT_QEMU_DIR = "/etc/libvirt/qemu"  # where libvirt keeps its domains' XML (audit's default)

# The guest-describing flags of 'kvmppc check'; none of them may be combined with a command
# line or a domain (the command line says it all).
_FLAG_DEFAULTS: dict[str, object] = {
    "max_page_size": None, "cpu": None, "machine": "pseries", "mem_path": [], "memory": None,
    "accel": None, "kvm_type": None,
}


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "qemu_argv", nargs="*", metavar="-- qemu-system-ppc64 ARGS... | -",
        help="a QEMU command line after '--' (program first), or '-' to read one from stdin"
        " (shell quoting and backslash-newlines as in a script; what 'virsh domxml-to-native"
        " qemu-argv' prints works too).  -readconfig files are out of scope.",
    )
    parser.add_argument(
        "--domain", metavar="FILE|-",
        help="a libvirt domain XML file ('-': stdin), turned into the command line libvirt"
        " would build",
    )


def wants_inputs(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "qemu_argv", None)) or getattr(args, "domain", None) is not None


def _fail(message: str) -> int:
    print(f"kvmppc: {message}", file=sys.stderr)
    return EXIT_USAGE


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text: {exc}") from None


def cmd_check_inputs(args: argparse.Namespace) -> int:
    # The commands import their machinery when they run (see kvmppc/cli.py's docstring).
    from kvmppc.host import live_backing, load_probe  # noqa: PLC0415
    from kvmppc.inputs.answer import judge  # noqa: PLC0415
    from kvmppc.inputs.domain_xml import host_memory_from_probe, translate_domain  # noqa: PLC0415
    from kvmppc.inputs.qemu_argv import split_command_line, translate_argv  # noqa: PLC0415

    given = [key for key, default in _FLAG_DEFAULTS.items()
             if getattr(args, key, default) != default]
    if given:
        return _fail(
            "give the guest either with flags or as a command line / domain, not both"
            f" (also given: {', '.join('--' + g.replace('_', '-') for g in given)})"
        )
    if args.qemu_argv and args.domain is not None:
        return _fail("give either a QEMU command line or --domain, not both")
    try:
        probe = load_probe(args.host_profile)
        live = not args.host_profile
        backings = None
        from kvmppc.qemu_versions import choose  # noqa: PLC0415 - see kvmppc/cli.py

        # the release answered for reads the line (its options) and, for a domain, libvirt
        # writes the machine its "pseries" alias stands for
        try:
            release = choose(getattr(args, "qemu_version", None), probe.host.qemu_version)
        except ValueError as exc:
            raise UsageError(f"--qemu-version: {exc}") from None
        if args.domain is not None:
            translation = translate_domain(_read(args.domain), host_memory_from_probe(probe),
                                           qemu_version=release.version)
        else:
            argv = args.qemu_argv
            if argv == ["-"]:
                argv = split_command_line(sys.stdin.read())
            translation = translate_argv(argv, release.version)
            request = translation.request
            if live and request is not None and request.mem_paths:
                # As 'kvmppc check --mem-path' does: statfs each path, as QEMU will.
                backings = [live_backing(probe, path) for path in request.mem_paths]
        if getattr(args, "qemu_version", None) and translation.request is not None:
            # --qemu-version applies to a command line or domain too (read with that
            # release's options; the answer is the release asked for)
            import dataclasses  # noqa: PLC0415 - see kvmppc/cli.py's docstring

            translation = dataclasses.replace(translation, request=dataclasses.replace(
                translation.request, qemu_version=args.qemu_version))
        # The memory backends' mem-paths, statfs'd live too.
        resolve = (lambda path: live_backing(probe, path)) if live else None
        answer = judge(translation, probe, backings, resolve=resolve)
    except (UsageError, ProfileError) as exc:
        return _fail(str(exc))
    if args.json:
        import json  # noqa: PLC0415 - see cmd_check_inputs

        print(json.dumps(answer.to_dict(), indent=2))
    else:
        print(answer.render())
    return answer.exit_code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``libvirt-hook`` and ``audit``."""
    hook = subparsers.add_parser(
        "libvirt-hook",
        help="libvirt's qemu hook: refuse to start a guest QEMU would refuse",
        description="Install as /etc/libvirt/hooks/qemu.d/50-kvmppc (then restart"
        " libvirtd or virtqemud).  libvirt calls it as 'GUEST OPERATION SUBOPERATION EXTRA'"
        " with the domain XML on stdin.  On 'prepare begin' it asks the kvmppc daemon (or"
        " checks directly) and exits 1 with QEMU's words and what to change when QEMU would"
        " refuse the guest; every other operation exits 0, 'migrate' and 'restore' echo the"
        " XML unchanged.  Settings: /etc/kvmppc/kvmppc.conf (socket, host_profile,"
        " hook_assume_kvm), or the file $KVMPPC_CONFIG names.",
    )
    hook.add_argument("hook_args", nargs="*", metavar="ARG",
                      help="GUEST OPERATION SUBOPERATION EXTRA, as libvirt passes them")
    hook.set_defaults(func=_cmd_libvirt_hook)

    aud = subparsers.add_parser(
        "audit",
        help="would each guest on this host start?  And on a what-if host?",
        description="Check every guest defined on this host (libvirt's domain XML files),"
        " or the given --domain files and --qemu-cmdline-file files, against this host (or"
        " --host-profile) and against a what-if host: a table of guest, would start, QEMU's"
        " first error, what to change; or JSON.  Exit 0: all start; 1: some would not; 3:"
        " none fails but some cannot be judged; 2: bad input.",
    )
    aud.add_argument("--domain", metavar="FILE", action="append", default=[],
                     help="a libvirt domain XML file (repeatable)")
    aud.add_argument("--qemu-cmdline-file", metavar="FILE", action="append", default=[],
                     help="a file holding one QEMU command line (repeatable)")
    aud.add_argument("--libvirt-dir", metavar="DIR", default=LIBVIRT_QEMU_DIR,
                     help="where libvirt keeps the domains' XML when neither --domain nor"
                     " --qemu-cmdline-file is given (default %(default)s)")
    aud.add_argument("--what-if", metavar="KEY=VALUE", action="append", default=[],
                     help="a hypothetical host: base-page-size=4K, host-profile=NAME,"
                     " hugepages=SIZE:COUNT (a pool of COUNT pages of SIZE, mounted),"
                     " qemu-version=10.0 (the host runs that QEMU), or debian13 (the host"
                     " upgraded to Debian 13: qemu-version=10.0 and base-page-size=4K, the"
                     " default linux-image-powerpc64le; qemu-version=10.0 alone for the -64k"
                     " kernel); repeatable, all apply to one what-if host, which answers say"
                     " what changed from this host's")
    aud.add_argument("--qemu-version", metavar="VERSION",
                     help="the QEMU release this host runs (7.2 or 10.0; default: the"
                     " installed one the probe found, else the newest modelled)")
    aud.add_argument("--host-profile", metavar="NAME|FILE",
                     help="a saved probe or shipped profile instead of probing this host")
    aud.add_argument("--json", action="store_true", help="print JSON")
    aud.set_defaults(func=_cmd_audit)


def _cmd_libvirt_hook(args: argparse.Namespace) -> int:
    from kvmppc.libvirt_hook import cmd_libvirt_hook  # noqa: PLC0415 - see cmd_check_inputs

    return cmd_libvirt_hook(args)


def _cmd_audit(args: argparse.Namespace) -> int:
    from kvmppc.audit import cmd_audit  # noqa: PLC0415 - see cmd_check_inputs

    return cmd_audit(args)

"""``kvmppc libvirt-hook``: libvirt's qemu hook, refusing before start what QEMU would refuse.

libvirt (src/qemu/qemu_process.c, docs/hooks.rst) runs each executable in
``/etc/libvirt/hooks/qemu.d/`` as ``GUEST OPERATION SUBOPERATION EXTRA`` with the domain XML
on stdin — its own *normalised* XML (``<maxpagesize unit='KiB'>16384``).  A non-zero exit on
``prepare begin`` stops the start and ``virsh start`` prints the hook's stderr.  So:

* ``prepare begin``: translate the domain, ask the kvmppc daemon (its socket from the config),
  or check directly against ``host_profile`` (or a live probe) when no daemon answers; exit 1
  with QEMU's words and what to change when QEMU would refuse the guest, else 0.  Anything
  kvmppc cannot read or judge lets the start go on (exit 0, a line on stderr): the hook never
  blocks a guest on kvmppc's own account;
* ``reconnect``: always 0 (a failure there makes libvirt kill the running guest);
* ``migrate`` and ``restore``: filters — the XML goes back out on stdout unchanged (the
  destination's own ``prepare`` checks a migrating guest);
* everything else: 0.

Settings (TOML): ``socket`` (the daemon to ask), ``host_profile`` (what to answer for when
checking directly; empty: probe this host), ``hook_assume_kvm`` (answer for ``type='qemu'``
domains as if they were ``type='kvm'``: for trying a POWER profile on a machine where
libvirt only accepts TCG pseries guests).  From ``$KVMPPC_CONFIG``, else
``/etc/kvmppc/kvmppc.conf``; other keys there (the daemon's) are left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from kvmppc.daemon.defaults import DEFAULT_SOCKET
from kvmppc.errors import KvmppcError, UsageError
from kvmppc.inputs.answer import Answer, judge
from kvmppc.inputs.domain_xml import host_memory_from_probe, translate_domain
from kvmppc.model import ProbeResult

DAEMON_TIMEOUT_S = 10.0  # libvirt waits for the hook; a hung daemon must not hang starts


@dataclass(frozen=True)
class HookConfig:
    socket: str = DEFAULT_SOCKET
    host_profile: str = ""
    hook_assume_kvm: bool = False


def load_hook_config(environ: dict[str, str] | None = None) -> HookConfig:
    """The settings the hook shares with the daemon (one file, read by the daemon's loader):
    ``$KVMPPC_CONFIG``, else /etc/kvmppc/kvmppc.conf when it exists, else the defaults."""
    from kvmppc.daemon.config import load_config  # noqa: PLC0415 - prepare begin only

    env = os.environ if environ is None else environ
    config = load_config(env.get("KVMPPC_CONFIG") or None)
    return HookConfig(config.socket, config.host_profile, config.hook_assume_kvm)


def _ask_daemon(config: HookConfig, xml: bytes) -> Answer:
    """The daemon's probe (GET /v1/host) places the domain's RAM; its check (GET /v1/check)
    answers.  Raises DaemonUnreachableError when nobody answers on the socket."""
    from kvmppc.daemon.client import DaemonClient  # noqa: PLC0415

    with DaemonClient(config.socket, timeout=DAEMON_TIMEOUT_S) as client:
        status, body, _headers = client.request("GET", "/v1/host")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("probe"),
                                                                          dict):
            raise KvmppcError(f"the daemon answered GET /v1/host with {status}")
        probe = ProbeResult.from_dict(body["probe"])  # {"probe": ..., "cache": ...}
        translation = translate_domain(xml, host_memory_from_probe(probe),
                                       assume_kvm=config.hook_assume_kvm)
        request = translation.request
        if request is None:
            return Answer(translation, None)
        params = {key: value for key, value in request.to_dict().items()
                  if value not in (None, [])}
        if "mem_paths" in params:
            params["mem_path"] = params.pop("mem_paths")
        if "caps" in params:  # the query key is cap (repeatable), as CheckRequest's
            params["cap"] = params.pop("caps")
        status, body, _headers = client.request("GET", "/v1/check", params)
        if status != 200 or not isinstance(body, dict):
            raise KvmppcError(f"the daemon answered GET /v1/check with {status}: {body}")
    # The daemon's JSON is CheckResult.to_dict(); the local check of the same request on the
    # same probe gives the same result, and carries the advice as objects.
    return _DaemonAnswer(translation, None, body)


@dataclass(frozen=True)
class _DaemonAnswer(Answer):
    body: dict[str, Any] | None = None

    @property
    def verdict(self) -> str:
        assert self.body is not None
        return "yes" if self.body.get("ok") else "no"

    @property
    def first_error(self) -> str | None:
        assert self.body is not None
        errors = self.body.get("errors") or []
        return str(errors[0]) if errors else None

    @property
    def changes(self) -> tuple[str, ...]:
        assert self.body is not None
        suggestions = (self.body.get("advice") or {}).get("suggestions") or []
        return tuple(str(s.get("change")) for s in suggestions
                     if isinstance(s, dict) and s.get("ok"))


def _check_directly(config: HookConfig, xml: bytes,
                    load: Callable[[str | None], ProbeResult]) -> Answer:
    probe = load(config.host_profile or None)
    translation = translate_domain(xml, host_memory_from_probe(probe),
                                   assume_kvm=config.hook_assume_kvm)
    return judge(translation, probe)


def refusal_message(guest: str, answer: Answer, where: str) -> str:
    lines = [f"kvmppc: QEMU would not start guest '{guest}' on this host ({where}):",
             f"qemu-system-ppc64: {answer.first_error}"]
    changes = answer.changes
    if changes:
        lines.append("kvmppc: what to change (each re-checked):")
        lines += [f"  - {change}" for change in changes]
    return "\n".join(lines)


def run_hook(hook_args: list[str], stdin: BinaryIO, stdout: BinaryIO, stderr: TextIO, *,
             config_loader: Callable[[], HookConfig] = load_hook_config,
             load: Callable[[str | None], ProbeResult] | None = None) -> int:
    if len(hook_args) < 3:
        print("kvmppc libvirt-hook: expected GUEST OPERATION SUBOPERATION [EXTRA] (as libvirt"
              " calls it)", file=stderr)
        return 0 if len(hook_args) >= 2 and hook_args[1] == "reconnect" else 2
    guest, operation, suboperation = hook_args[:3]
    if operation in ("migrate", "restore"):
        stdout.write(stdin.read())  # filters: libvirt uses what comes out
        stdout.flush()
        return 0
    if operation != "prepare" or suboperation != "begin":
        return 0  # reconnect included: never fail there
    xml = stdin.read()
    try:
        config = config_loader()
    except UsageError as exc:
        print(f"kvmppc: {exc}; not checking guest '{guest}'", file=stderr)
        return 0
    if load is None:
        from kvmppc.host import load_probe  # noqa: PLC0415

        load = load_probe
    try:
        from kvmppc.daemon.client import DaemonUnreachableError  # noqa: PLC0415

        try:
            answer = _ask_daemon(config, xml)
            where = f"the kvmppc daemon on {config.socket}"
        except DaemonUnreachableError:
            answer = _check_directly(config, xml, load)
            where = (f"host profile {config.host_profile}" if config.host_profile
                     else "checked directly: no kvmppc daemon answered")
    except KvmppcError as exc:
        print(f"kvmppc: cannot check guest '{guest}': {exc}; letting it start", file=stderr)
        return 0
    except Exception as exc:  # a kvmppc bug must not stop a guest starting
        print(f"kvmppc: internal error while checking guest '{guest}':"
              f" {type(exc).__name__}: {exc}; letting it start", file=stderr)
        return 0
    if answer.verdict == "no":
        print(refusal_message(guest, answer, where), file=stderr)
        return 1
    if answer.verdict == "cannot judge":
        print(f"kvmppc: cannot judge guest '{guest}': "
              + "; ".join(answer.translation.cannot_judge), file=stderr)
    return 0


def cmd_libvirt_hook(args: argparse.Namespace) -> int:
    return run_hook(list(args.hook_args), sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


__all__ = ["HookConfig", "cmd_libvirt_hook", "load_hook_config", "refusal_message",
           "run_hook"]

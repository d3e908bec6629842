"""The commands every guest boot runs, as data: add a line here to run something more.

Each command is a busybox ``sh`` script run in ``/root`` of the guest, with kvmppc installed
in the guest's Python (``python3 -m kvmppc``, ``kvmppc``) and this directory's ``guest/``
scripts in ``/opt/kvmppc-guest``. Its output (stdout and stderr together) and exit status
come back to the host as :class:`harness.GuestResult`; tests/test_powerguest.py asserts on
them. One boot runs the whole battery, so a command costs seconds, not a boot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuestCommand:
    name: str  # [a-z0-9-]+, the key of its result
    script: str  # busybox sh
    timeout: int = 120  # seconds, enforced in the guest (busybox timeout -s KILL)
    kinds: frozenset[str] = frozenset({"hv", "pr"})  # the guest kinds that run it


BATTERY: tuple[GuestCommand, ...] = (
    GuestCommand("raw-ioctls", "python3 /opt/kvmppc-guest/raw_ioctls.py"),
    GuestCommand(
        "ioctl-table",
        # kvmppc's own table (ioctl_opt-computed, powerpc layout) against what the powerpc
        # compiler encoded, as tests/test_ioctl_table.py does for x86 on the host.
        "python3 -c 'import json, os; from kvmppc import _kvm, ioctls;"
        " print(json.dumps({\"compiled\": _kvm.compiled_ioctl_numbers(),"
        " \"table\": {i.name: i.for_arch(os.uname().machine) for i in ioctls.IOCTLS},"
        " \"sizes\": _kvm.compiled_struct_sizes()}))'",
    ),
    GuestCommand("probe-json", "python3 -m kvmppc probe --json"),
    GuestCommand("fd-leak", "python3 /opt/kvmppc-guest/fd_leak.py 50", timeout=300),
    # kvmppc serve on the guest's real KVM; tests/test_daemon_powerguest.py asserts on it.
    GuestCommand("daemon", "python3 /opt/kvmppc-guest/daemon_answers.py", timeout=180),
    # kvmppc check on the real kernel's answer (tests/test_policy_powerguest.py): the CLI
    # once, then the policy over one live probe for the cases whose outcome is known.
    GuestCommand("check-16m", "python3 -m kvmppc check --max-page-size 16M --json"),
    GuestCommand(
        "policy-checks",
        "python3 -c 'import json; from kvmppc.probe import probe;"
        " from kvmppc.policy import CheckRequest, check; from kvmppc.render import check_json;"
        " p = probe();"
        " cases = {\"default\": {}, \"4k\": {\"max_page_size\": \"4k\"},"
        " \"16m\": {\"max_page_size\": \"16M\"}, \"16g\": {\"max_page_size\": \"16G\"},"
        " \"power8\": {\"cpu\": \"power8\"}, \"970\": {\"cpu\": \"970\"}};"
        # KVM-PR has no FWNMI, which pseries-5.0 and later turn on: the same again without.
        " cases.update({k + \"-nofwnmi\": dict(v, caps=(\"cap-fwnmi=off\",))"
        " for k, v in list(cases.items())});"
        " print(json.dumps({k: check_json(check(p, CheckRequest(**v)))"
        " for k, v in cases.items()}))'",
    ),
)


def commands_for(kind: str) -> tuple[GuestCommand, ...]:
    return tuple(command for command in BATTERY if kind in command.kinds)

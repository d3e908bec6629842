"""The command-line reader's option tables against the real QEMU 7.2 and 10.0.

Every option either table names (and every option either binary's ``-help`` lists) is tried
on the binary: ``-version -OPT`` and ``-version -OPT x`` (QEMU's first pass over the command
line: "invalid option", "requires an argument"), then ``-OPT [x] -version`` (the second pass,
in order: "Option not supported for this target" before ``-version`` exits).  The expected
class of each option comes from the binary; kvmppc's reader must put it in the same class.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import pytest
from qemu_oracle import QEMU_IN_ROOT, Qemu, need, qemu10, qemu72

from kvmppc.host import load_probe
from kvmppc.inputs.answer import request_from_body
from kvmppc.inputs.domain_xml import HostMemory, translate_domain
from kvmppc.inputs.qemu_argv import (
    OPTIONS_WITH_ARG,
    OPTIONS_WITHOUT_ARG,
    CommandLineError,
    option_table,
    translate_argv,
)
from kvmppc.libvirt_hook import HookConfig, _check_directly

PROFILES = files("kvmppc.profiles")


@pytest.fixture(scope="module", params=["7.2", "10.0"])
def qemu(request: pytest.FixtureRequest) -> Qemu:
    return need(qemu72() if request.param == "7.2" else qemu10())


def _stderr(qemu: Qemu, args: list[str]) -> str:
    """QEMU's stderr, run in a scratch directory it can litter: "-pidfile x", "-D x" write
    "x", -jitdump writes jit-PID.dump (inside the Debian 13 root too, so the cached root
    stays clean)."""
    with qemu.scratch() as scratch:
        argv = qemu.argv(args)
        if qemu.root is not None:  # chroot(1) starts in the root's /: cd to the scratch
            at = argv.index(QEMU_IN_ROOT)
            argv[at:at] = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', qemu.seen(Path(scratch))]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL, cwd=scratch)
    return proc.stderr


def _help_options(qemu: Qemu) -> set[str]:
    out = subprocess.run(qemu.argv(["-help"]), capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return {m[1] for m in re.finditer(r"^-([a-zA-Z0-9][a-zA-Z0-9_-]*)", out, re.M)}


def _real_class(qemu: Qemu, name: str) -> str:
    """"invalid", "not for target", "with arg" or "without arg", as the binary says."""
    bare = _stderr(qemu, ["-version", f"-{name}"])
    if "invalid option" in bare:
        return "invalid"
    with_arg = "requires an argument" in bare
    if name == "perfmap":
        # it writes /tmp/perf-PID.map (a fixed path: tcg/perf.c) as soon as it is reached, so
        # its arch check is not tried; qemu-options.hx gives it QEMU_ARCH_ALL
        return "without arg"
    late = _stderr(qemu, [f"-{name}", *(["x"] if with_arg else []), "-version"])
    if "Option not supported for this target" in late:
        return "not for target"
    return "with arg" if with_arg else "without arg"


def _reader_class(version: str, name: str) -> str:
    table = option_table(version)
    args = ["x"] if name in table.with_arg else []
    try:
        translate_argv(["qemu-system-ppc64", f"-{name}", *args], version)
    except CommandLineError as exc:
        if "invalid option" in str(exc):
            return "invalid"
        if "Option not supported for this target" in str(exc):
            return "not for target"
    return "with arg" if args else "without arg"


@pytest.mark.qemu
def test_option_tables_match_the_binary(qemu: Qemu) -> None:
    names = sorted(OPTIONS_WITH_ARG | OPTIONS_WITHOUT_ARG | option_table("10.0").with_arg
                   | option_table("10.0").without_arg | _help_options(qemu))
    with ThreadPoolExecutor(max_workers=2) as pool:
        real = dict(zip(names, pool.map(lambda n: _real_class(qemu, n), names), strict=True))
    # the grid means something: both kinds of refusal, and the releases' differences
    assert real["no-fd-bootchk"] == "not for target" and real["alt-grab"] == "invalid"
    assert real["run-with"] == ("with arg" if qemu.name == "10.0" else "invalid")
    assert real["runas"] == ("invalid" if qemu.name == "10.0" else "with arg")
    ours = {name: _reader_class(qemu.name, name) for name in names}
    assert ours == real


@pytest.mark.qemu
def test_a_removed_option_is_qemus_words() -> None:
    """What Debian 13's QEMU says to a line Debian 12's ran (the reader's words match it)."""
    qemu = need(qemu10())
    argv = ["-M", "pseries", "-accel", "tcg", "-runas", "nobody", "-nodefaults"]
    assert "qemu-system-ppc64: -runas: invalid option" in _stderr(qemu, argv)
    translate_argv(["qemu-system-ppc64", *argv], "7.2")  # 7.2 reads it
    with pytest.raises(CommandLineError, match=r"^-runas: invalid option"):
        translate_argv(["qemu-system-ppc64", *argv], "10.0")


# --------------------------------------------------------------------------------------------
# every reader takes the release (no QEMU run: the expected values are the words)


TCG_DOMAIN = ("<domain type='qemu'><name>g</name><memory unit='GiB'>2</memory><os><type"
              " arch='ppc64le' machine='pseries'>hvm</type></os></domain>")


@pytest.mark.parametrize(("version", "machine", "cpu"), [
    ("7.2", "pseries-7.2", "POWER9"),
    ("10.0", "pseries-10.0", "POWER10"),  # "pseries means pseries-10.0", POWER10 from 9.0
])
def test_a_domain_is_read_for_the_release(version: str, machine: str, cpu: str) -> None:
    translation = translate_domain(TCG_DOMAIN, HostMemory(), qemu_version=version)
    argv = list(translation.argv)
    assert argv[argv.index("-machine") + 1].split(",")[0] == machine
    assert argv[argv.index("-cpu") + 1] == cpu


def test_a_domain_on_an_old_machine_keeps_its_default_cpu() -> None:
    xml = TCG_DOMAIN.replace("machine='pseries'", "machine='pseries-8.2'")
    argv = list(translate_domain(xml, HostMemory(), qemu_version="10.0").argv)
    assert argv[argv.index("-cpu") + 1] == "POWER9"  # "POWER9 up to 8.2"


def test_check_reads_the_line_as_the_release_asked_for() -> None:
    line = ["qemu-system-ppc64", "-M", "pseries", "-accel", "tcg", "-runas", "nobody"]
    run = subprocess.run([sys.executable, "-m", "kvmppc", "check", "--host-profile",
                          "power9-radix-hv", "--qemu-version", "10.0", "--", *line],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "-runas: invalid option" in run.stderr, run
    run = subprocess.run([sys.executable, "-m", "kvmppc", "check", "--host-profile",
                          "power9-radix-hv", "--qemu-version", "7.2", "--json", "--", *line],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["check"]["machine"] == "pseries-7.2"


def test_the_daemon_body_and_the_hook_read_as_the_installed_release(tmp_path: Path) -> None:
    body = json.dumps({"argv": ["qemu-system-ppc64", "-singlestep"]}).encode()
    request_from_body("application/json", body, HostMemory(), "7.2")
    with pytest.raises(CommandLineError, match="-singlestep: invalid option"):
        request_from_body("application/json", body, HostMemory(), "10.0")
    # a host whose probe found Debian 13's QEMU: libvirt's "pseries" is pseries-10.0 there
    profile = json.loads(PROFILES.joinpath("power9-radix-hv.json").read_text())
    profile["host"]["qemu_version"] = "10.0.13"
    (tmp_path / "p.json").write_text(json.dumps(profile))
    answer = _check_directly(HookConfig(socket=str(tmp_path / "nobody.sock"),
                                        host_profile=str(tmp_path / "p.json"),
                                        hook_assume_kvm=False),
                             TCG_DOMAIN.encode(), load_probe)
    assert answer.result is not None and answer.result.machine is not None
    assert (answer.result.machine.name, answer.result.qemu_version) == ("pseries-10.0", "10.0")

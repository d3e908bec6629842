"""``kvmppc libvirt-hook``: its contract with libvirt, the daemon, and a real libvirtd.

The end-to-end test runs Debian's libvirtd on this host inside a private mount namespace
(tests/libvirt/hook-e2e.sh: fresh /etc/libvirt copy, tmpfs run/state/log/cache
directories), with the hook installed as the README says, and starts two pseries guests
under TCG: one refused with kvmppc's message, one started.  The daemons are killed when the
script exits (and the namespace goes with them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import run_daemon

from kvmppc.inputs.answer import request_from_body
from kvmppc.inputs.domain_xml import HostMemory, translate_domain
from kvmppc.libvirt_hook import HookConfig, load_hook_config, run_hook

REPO = Path(__file__).resolve().parent.parent
MSG_16M = ("qemu-system-ppc64: Can't support 16384 kiB guest pages with 64 kiB host pages with"
           " this KVM implementation")


def domain(maxpagesize_kib: int, virt: str = "qemu") -> bytes:
    # libvirt's normalised form, as the hook receives it (libvirt-hook-recipe)
    return (f"<domain type='{virt}'><name>g1</name><memory unit='KiB'>524288</memory>"
            "<os><type arch='ppc64' machine='pseries'>hvm</type></os><features>"
            f"<hpt resizing='enabled'><maxpagesize unit='KiB'>{maxpagesize_kib}</maxpagesize>"
            "</hpt></features></domain>").encode()


def hook(args: list[str], stdin: bytes, config: HookConfig | Exception) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()

    def loader() -> HookConfig:
        if isinstance(config, Exception):
            raise config
        return config

    code = run_hook(args, io.BytesIO(stdin), out, err, config_loader=loader)
    return code, out.getvalue(), err.getvalue()


def direct(tmp_path: Path, assume_kvm: bool = True) -> HookConfig:
    return HookConfig(socket=str(tmp_path / "nobody.sock"), host_profile="power9-radix-hv",
                      hook_assume_kvm=assume_kvm)


def test_prepare_begin_refuses_what_qemu_would_refuse(tmp_path: Path) -> None:
    code, out, err = hook(["g1", "prepare", "begin", "-"], domain(16384), direct(tmp_path))
    assert code == 1
    assert out == b""
    assert MSG_16M in err.splitlines()
    assert "lower cap-hpt-max-page-size to 64K" in err


def test_prepare_begin_lets_a_good_guest_start(tmp_path: Path) -> None:
    assert hook(["g1", "prepare", "begin", "-"], domain(64), direct(tmp_path))[0] == 0
    # type='qemu' is TCG unless told otherwise: no backing check, QEMU starts it
    assert hook(["g1", "prepare", "begin", "-"], domain(16384),
                direct(tmp_path, assume_kvm=False))[0] == 0
    assert hook(["g1", "prepare", "begin", "-"], domain(16384, "kvm"),
                direct(tmp_path, assume_kvm=False))[0] == 1


@pytest.mark.parametrize("operation", [
    ["g1", "reconnect", "begin", "-"], ["g1", "start", "begin", "-"],
    ["g1", "started", "begin", "-"], ["g1", "stopped", "end", "-"],
    ["g1", "release", "end", "-"], ["g1", "attach", "begin", "-"],
])
def test_other_operations_never_fail(operation: list[str], tmp_path: Path) -> None:
    for config in (direct(tmp_path), ValueError("broken config")):
        assert hook(operation, domain(16384), config) == (0, b"", "")


def test_reconnect_with_nothing_else_still_zero() -> None:
    out, err = io.BytesIO(), io.StringIO()
    assert run_hook(["g1", "reconnect"], io.BytesIO(b""), out, err) == 0


@pytest.mark.parametrize("operation", ["migrate", "restore"])
def test_migrate_and_restore_pass_the_xml_through(operation: str, tmp_path: Path) -> None:
    xml = domain(16384) + b"\n<!-- unchanged -->"
    assert hook(["g1", operation, "begin", "-"], xml, direct(tmp_path)) == (0, xml, "")


@pytest.mark.parametrize(("xml", "words"), [
    (b"<domain", "not well-formed XML"),
    (b"<domain type='kvm'><name>g1</name><memory>1</memory><os><type machine='q35'/></os>"
     b"</domain>", "not a pseries guest"),
])
def test_unreadable_domains_are_let_through(xml: bytes, words: str, tmp_path: Path) -> None:
    code, _out, err = hook(["g1", "prepare", "begin", "-"], xml, direct(tmp_path))
    assert code == 0
    assert words in err and "letting it start" in err


def test_a_kvmppc_bug_never_blocks_a_start(tmp_path: Path) -> None:
    def broken_probe(_name: str | None) -> object:
        raise RuntimeError("boom")

    out, err = io.BytesIO(), io.StringIO()
    code = run_hook(["g1", "prepare", "begin", "-"], io.BytesIO(domain(16384)), out, err,
                    config_loader=lambda: direct(tmp_path),
                    load=broken_probe)  # type: ignore[arg-type]
    assert code == 0
    assert "internal error" in err.getvalue() and "RuntimeError: boom" in err.getvalue()


def test_cannot_judge_lets_the_guest_start_and_says_why(tmp_path: Path) -> None:
    xml = domain(64).replace(b"resizing='enabled'", b"resizing='required'")
    code, _out, err = hook(["g1", "prepare", "begin", "-"], xml, direct(tmp_path))
    assert code == 0
    assert "cannot judge" in err and "resize-hpt=required" in err


def test_libvirts_tcg_default_cpu_is_not_asked_of_kvm(tmp_path: Path) -> None:
    """assume_kvm answers for the type='kvm' command line: libvirt's own TCG default model
    (check='none') goes, as it would for KVM; a model the domain names stays (and KVM-HV
    refuses it unless it is the host's: target/ppc/kvm.c kvm_arch_init_vcpu)."""
    default = b"<cpu mode='custom' match='exact' check='none'><model>POWER9</model></cpu>"
    xml = domain(64).replace(b"<features>", default + b"<features>")
    code, _out, err = hook(["g1", "prepare", "begin", "-"], xml, direct(tmp_path))
    assert code == 0, err
    named = b"<cpu mode='custom' match='exact'><model>POWER8</model></cpu>"
    xml = domain(64).replace(b"<features>", named + b"<features>")
    code, _out, err = hook(["g1", "prepare", "begin", "-"], xml, direct(tmp_path))
    assert code == 1 and "Register sync failed" in err
    # pseries-3.1's TCG default is POWER8 (pseries-4.0 moved to POWER9)
    old = (b"<domain type='qemu'><name>g</name><memory unit='MiB'>512</memory><os><type"
           b" arch='ppc64' machine='pseries-3.1'>hvm</type></os><cpu mode='custom'"
           b" match='exact' check='none'><model>POWER8</model></cpu></domain>")
    host = HostMemory((), None, 64 << 10)
    assert "-cpu" not in translate_domain(old, host, assume_kvm=True).argv
    assert "-cpu" in translate_domain(old.replace(b"POWER8", b"POWER9"), host,
                                      assume_kvm=True).argv


def test_config_file_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "kvmppc.conf"
    conf.write_text('socket = "/x.sock"\nhost_profile = "power9-radix-hv"\nlog_level = "info"\n')
    assert load_hook_config({"KVMPPC_CONFIG": str(conf)}) == HookConfig(
        "/x.sock", "power9-radix-hv", False)
    conf.write_text("hook_assume_kvm = 'yes'\n")
    with pytest.raises(Exception, match="hook_assume_kvm must be a bool"):
        load_hook_config({"KVMPPC_CONFIG": str(conf)})
    conf.write_text("socket = [\n")
    with pytest.raises(Exception, match="not valid TOML"):
        load_hook_config({"KVMPPC_CONFIG": str(conf)})
    # a broken config never blocks a guest
    code, _out, err = hook(["g1", "prepare", "begin", "-"], domain(16384), _usage("bad config"))
    assert code == 0 and "bad config" in err


def _usage(message: str) -> Exception:
    from kvmppc.errors import UsageError  # noqa: PLC0415

    return UsageError(message)


def test_hook_asks_the_real_daemon(tmp_path: Path) -> None:
    with run_daemon(tmp_path / "d", "--host-profile", "power9-radix-hv") as daemon:
        config = HookConfig(socket=daemon.socket_path, host_profile="", hook_assume_kvm=True)
        code, _out, err = hook(["g1", "prepare", "begin", "-"], domain(16384), config)
        assert code == 1
        assert f"the kvmppc daemon on {daemon.socket_path}" in err
        assert MSG_16M in err.splitlines()
        assert hook(["g1", "prepare", "begin", "-"], domain(64), config)[0] == 0


def test_the_command_reads_stdin_and_config(tmp_path: Path) -> None:
    conf = tmp_path / "kvmppc.conf"
    conf.write_text(f'socket = "{tmp_path}/none.sock"\nhost_profile = "power9-radix-hv"\n'
                    "hook_assume_kvm = true\n")
    run = subprocess.run([sys.executable, "-m", "kvmppc", "libvirt-hook", "g1", "prepare",
                          "begin", "-"], input=domain(16384), capture_output=True,
                         env={**os.environ, "KVMPPC_CONFIG": str(conf)}, timeout=60,
                         check=False)
    assert run.returncode == 1
    assert MSG_16M in run.stderr.decode().splitlines()


# --- POST /v1/check bodies (the daemon's seam) -----------------------------------------------


def test_post_bodies() -> None:
    host = HostMemory((("/dev/hugepages", 2 << 20),), 2 << 20, 64 << 10)
    t = request_from_body("application/json", json.dumps(
        {"argv": ["kvm", "-M", "pseries,cap-hpt-max-page-size=16M"]}).encode(), host)
    assert t.request is not None and t.request.max_page_size == "16M"
    t = request_from_body("application/xml; charset=utf-8", domain(64, "kvm"), host)
    assert t.request is not None and t.request.max_page_size == "64k"
    t = request_from_body("application/json",
                          b'{"argv": ["kvm", "-M", "pseries,resize-hpt=required"]}', host)
    assert t.request is None and t.cannot_judge
    t = request_from_body("application/json",
                          b'{"argv": ["kvm", "-M", "pseries,max-cpu-compat=power8"]}', host)
    assert t.request is not None and t.request.max_cpu_compat == "power8"


@pytest.mark.parametrize(("content_type", "body", "words"), [
    ("application/json", b"{", "body is not JSON"),
    ("application/json", b"\xff", "body is not JSON"),
    ("application/json", b'{"argv": "kvm"}', "list of strings"),
    ("application/json", b'{"argv": [], "x": 1}', '{"argv":'),
    ("application/json", b'{"argv": []}', "empty command line"),
    ("application/json", b'{"argv": ["kvm", "-M", "pseries,usb"]}', "Expected '='"),
    ("application/xml", b"<nope", "not well-formed"),
    ("text/plain", b"kvm", "Content-Type 'text/plain'"),
    ("application/json", b" " * (2 << 20), "more than"),
])
def test_bad_post_bodies(content_type: str, body: bytes, words: str) -> None:
    from kvmppc.errors import UsageError  # noqa: PLC0415

    with pytest.raises(UsageError) as raised:
        request_from_body(content_type, body, HostMemory())
    assert words in str(raised.value)


# --- a real libvirtd -------------------------------------------------------------------------

NEEDED = ("libvirtd", "virtlogd", "virsh", "qemu-system-ppc64", "unshare")


def test_real_libvirtd_refuses_through_the_hook(tmp_path: Path) -> None:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    reason = None
    if missing:
        reason = f"missing {', '.join(missing)} (libvirt-daemon-system, qemu-system-ppc)"
    elif os.geteuid() != 0:
        reason = "libvirtd's system driver and a private mount namespace need root"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    kvmppc = shutil.which("kvmppc", path=str(Path(sys.executable).parent))
    assert kvmppc is not None
    run = subprocess.run(["unshare", "--mount", "--propagation", "private",
                          str(REPO / "tests" / "libvirt" / "hook-e2e.sh"), str(tmp_path),
                          kvmppc], capture_output=True, text=True, timeout=240, check=False)
    out = run.stdout
    bad, _, rest = out.partition("== start kvmppc-good")
    good, _, rest = rest.partition("== state")
    state, _, calls = rest.partition("== hook calls")
    assert "Hook script execution failed" in bad, out + run.stderr
    assert "50-kvmppc kvmppc-bad prepare begin -) unexpected exit status 1:" in bad
    assert MSG_16M in bad.splitlines()
    assert "rc=1" in bad
    assert "rc=0" in good, out
    assert state.split() == ["shut", "off", "running"]
    assert calls.split("\n")[1:4] == ["kvmppc-bad prepare begin -",
                                      "kvmppc-bad stopped end -", "kvmppc-bad release end -"]
    assert "kvmppc-good started begin -" in calls

"""Which QEMU release answers: the request's, else the installed one, else the newest.

No QEMU runs here (tests/test_qemu_versions.py compares the tables with the binaries).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from policy_hosts import hv_host

from kvmppc.errors import UsageError
from kvmppc.model import ProbeResult
from kvmppc.policy import CheckRequest, check, pagesizes
from kvmppc.policy.machines import qemu_models
from kvmppc.profiles import load_profile
from kvmppc.qemu_versions import NEWEST, choose, parse_version_output


@pytest.mark.parametrize(("requested", "installed", "version", "source", "noted"), [
    (None, None, NEWEST.name, "default", True),  # says it knows no installed QEMU
    ("7.2", "10.0.13", "7.2", "request", False),
    ("10.0", None, "10.0", "request", False),
    (None, "7.2.0", "7.2", "installed", False),
    (None, "10.0.13", "10.0", "installed", False),
    (None, "8.2.2", "7.2", "installed", True),  # Ubuntu 24.04: nearer 7.2 than 10.0
    (None, "9.2.1", "10.0", "installed", True),
    (None, "11.0.0", "10.0", "installed", True),
    (None, "6.2.0", "7.2", "installed", True),
    (None, "garbage", NEWEST.name, "default", True),
])
def test_choose(requested: str | None, installed: str | None, version: str, source: str,
                noted: bool) -> None:
    """Asked for wins; else the installed version or the nearest modelled, saying so."""
    choice = choose(requested, installed)
    assert (choice.version, choice.source, bool(choice.notes)) == (version, source, noted)


@pytest.mark.parametrize("text", ["8.0", "10", "ten", "", "10.0.0.0"])
def test_choose_refuses_unmodelled_request(text: str) -> None:
    with pytest.raises(ValueError, match="not"):
        choose(text)


def test_parse_version_output() -> None:
    assert parse_version_output(
        "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)\nCopyright") == "10.0.13"
    assert parse_version_output("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7)") == "7.2.19"
    assert parse_version_output("qemu-system-ppc64: command not found") is None


def test_old_profile_without_qemu_version_loads() -> None:
    """A profile from before the probe recorded QEMU loads; the newest release answers."""
    data = json.loads(load_profile("power9-radix-hv").to_json())
    del data["host"]["qemu_version"]
    probe = ProbeResult.from_dict(data)
    assert probe.host.qemu_version is None
    assert check(probe, CheckRequest()).qemu_version == NEWEST.name


def test_default_is_the_installed_release_and_the_request_wins() -> None:
    host = hv_host()  # records QEMU 7.2.22
    assert check(host, CheckRequest()).qemu_version == "7.2"
    assert check(host, CheckRequest(qemu_version="10.0")).qemu_version == "10.0"
    debian13 = replace(host, host=replace(host.host, qemu_version="10.0.13"))
    result = check(debian13, CheckRequest(machine="pseries-2.11"))
    assert result.qemu_version == "10.0"
    assert [p.message for p in result.errors] == ['unsupported machine type: "pseries-2.11"']


def test_unmodelled_installed_release_says_which_answers() -> None:
    host = hv_host(qemu_version="8.2.2")
    result = check(host, CheckRequest())
    assert result.qemu_version == "7.2"
    assert any("8.2.2 is not modelled" in note and "QEMU 7.2" in note for note in result.notes)


def test_request_from_params_takes_qemu_version() -> None:
    assert CheckRequest.from_params({"qemu_version": "10.0"}).qemu_version == "10.0"
    with pytest.raises(UsageError, match=r"QEMU 9\.1 is not modelled"):
        CheckRequest.from_params({"qemu_version": "9.1"})


def test_what_changes_from_72_to_100_on_the_default_machine() -> None:
    """The same request, two releases: the default machine and CPU move, the table does not."""
    old, new = pagesizes(qemu=qemu_models("7.2")), pagesizes(qemu=qemu_models("10.0"))
    assert (old.cpu.name, new.cpu.name) == ("power9_v2.0", "power10_v2.0")
    assert (old.qemu_version, new.qemu_version) == ("7.2", "10.0")
    assert old.cells == new.cells


def _kvmppc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmppc", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_qemu_version_flag() -> None:
    """--qemu-version on pagesizes and check (flags and a command line), in text and JSON."""
    sizes = json.loads(_kvmppc("pagesizes", "--qemu-version", "10.0", "--json").stdout)
    assert (sizes["qemu_version"], sizes["cpu"]) == ("10.0", "power10_v2.0")
    old = _kvmppc("check", "--host-profile", "power9-radix-hv", "--qemu-version", "7.2",
                  "--machine", "pseries-2.11", "--json")
    answer = json.loads(old.stdout)
    assert (answer["qemu_version"], answer["machine"]) == ("7.2", "pseries-2.11")
    assert answer["request"]["qemu_version"] == "7.2"
    new = _kvmppc("check", "--host-profile", "power9-radix-hv", "--machine", "pseries-2.11")
    assert new.returncode == 1
    assert 'qemu-system-ppc64: unsupported machine type: "pseries-2.11"' in new.stdout
    argv = _kvmppc("check", "--host-profile", "power9-radix-hv", "--qemu-version", "7.2", "--",
                   "qemu-system-ppc64", "-M", "pseries-2.11", "-accel", "kvm")
    assert "QEMU 7.2 would" in argv.stdout, argv.stderr
    bad = _kvmppc("pagesizes", "--qemu-version", "9.1")
    assert bad.returncode == 2 and "QEMU 9.1 is not modelled" in bad.stderr


def test_cli_domain_pseries_is_the_release_default(tmp_path: Path) -> None:
    """A domain's machine='pseries' is what that release's alias stands for."""
    xml = tmp_path / "g.xml"
    xml.write_text("<domain type='kvm'><name>g</name><memory unit='GiB'>1</memory>"
                   "<os><type arch='ppc64le' machine='pseries'>hvm</type></os></domain>")
    for version, machine in (("7.2", "pseries-7.2"), ("10.0", "pseries-10.0")):
        run = _kvmppc("check", "--host-profile", "power9-radix-hv", "--qemu-version", version,
                      "--domain", str(xml))
        assert f"QEMU {version} would start this guest" in run.stdout, run.stderr
        assert f"machine {machine}," in run.stdout
    bad = _kvmppc("check", "--host-profile", "power9-radix-hv", "--qemu-version", "6.0",
                  "--domain", str(xml))
    assert bad.returncode == 2 and "QEMU 6.0 is not modelled" in bad.stderr

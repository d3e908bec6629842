"""``kvmppc audit``: a host's guests, here and on a what-if host.

"Will my guests still start after the kernel moves to 4 KiB pages?" — the expected answers
are QEMU's words from the user reports (../shared/reference/kvm-ppc-facts.md §7).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmppc.audit import what_if_host
from kvmppc.errors import ProfileError, UsageError
from kvmppc.profiles import load_profile

MSG_4K = "Can't support 64 kiB guest pages with 4 kiB host pages with this KVM implementation"
MSG_16M_64K = ("Can't support 16384 kiB guest pages with 64 kiB host pages with this KVM"
               " implementation")
MSG_16M_2M = ("Can't support 16384 kiB guest pages with 2048 kiB host pages with this KVM"
              " implementation")


def write_domain(directory: Path, name: str, extra: str, memory_gib: int = 2) -> Path:
    path = directory / f"{name}.xml"
    path.write_text(f"<domain type='kvm'><name>{name}</name><memory unit='GiB'>{memory_gib}"
                    "</memory><os><type arch='ppc64le' machine='pseries'>hvm</type></os>"
                    f"{extra}</domain>")
    return path


@pytest.fixture
def guests(tmp_path: Path) -> Path:
    write_domain(tmp_path, "web", "")
    write_domain(tmp_path, "db", "<features><hpt><maxpagesize unit='MiB'>16</maxpagesize>"
                 "</hpt></features><memoryBacking><hugepages><page size='2048' unit='KiB'/>"
                 "</hugepages></memoryBacking>")
    write_domain(tmp_path, "small", "<features><hpt><maxpagesize unit='KiB'>4</maxpagesize>"
                 "</hpt></features>")
    write_domain(tmp_path, "compat", "<cpu mode='host-model'><model>power8</model></cpu>")
    return tmp_path


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmppc", "audit", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def rows(body: dict[str, object], host: int) -> dict[str, dict[str, object]]:
    hosts = body["hosts"]
    assert isinstance(hosts, list)
    return {Path(str(g["guest"])).stem: g for g in hosts[host]["guests"]}


def test_what_if_4k_pages(guests: Path) -> None:
    run = audit("--host-profile", "power9-radix-hv", "--libvirt-dir", str(guests),
                "--what-if", "base-page-size=4K", "--what-if", "hugepages=2M:2048", "--json")
    assert run.returncode == 1, run.stderr
    body = json.loads(run.stdout)
    here, there = rows(body, 0), rows(body, 1)
    # this host: 64 KiB pages, no hugetlbfs mounted — libvirt itself refuses the db guest
    assert {k: v["would_start"] for k, v in here.items()} == {
        "web": "yes", "db": "no", "small": "yes", "compat": "no"}
    assert "hugetlbfs filesystem is not mounted" in str(here["db"]["first_error"])
    # host-model POWER8 is -cpu host,max-cpu-compat=power8: nested KVM-HV has no HPT for
    # POWER8 mode (QEMU 7.2 in the POWER9 nested guest: "HPT not supported in nested guests")
    assert here["compat"]["first_error"] == "HPT not supported in nested guests"
    # the same host with a 4 KiB kernel and a 2 MiB pool
    assert {k: v["would_start"] for k, v in there.items()} == {
        "web": "no", "db": "no", "small": "yes", "compat": "no"}
    assert there["web"]["first_error"] == MSG_4K
    assert there["db"]["first_error"] == MSG_16M_2M
    assert "cap-hpt-max-page-size to 4K" in str(there["web"]["change"])
    assert body["hosts"][1]["host"] == ("what-if base-page-size=4K, hugepages=2M:2048 (QEMU"
                                        " 10.0)")  # the profile names no QEMU: the newest


def test_table_and_other_inputs(guests: Path, tmp_path: Path) -> None:
    cmdline = tmp_path / "script.cmdline"
    cmdline.write_text("kvm \\\n -M pseries,cap-hpt-max-page-size=16M -m 2G\n")
    run = audit("--host-profile", "power9-radix-hv", "--domain", str(guests / "web.xml"),
                "--qemu-cmdline-file", str(cmdline))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0] == "this host (profile:power9-radix-hv, QEMU 10.0):"
    assert lines[1].split() == ["guest", "would", "start", "QEMU's", "first", "error", "what",
                                "to", "change"]
    assert lines[2].split() == ["web.xml", "yes"]
    assert lines[3].startswith("script.cmdline  no")
    assert MSG_16M_64K in lines[3]
    assert "lower cap-hpt-max-page-size to 64K" in lines[3]


def test_prealloc_pool_too_small(tmp_path: Path) -> None:
    write_domain(tmp_path, "big", "<memoryBacking><hugepages><page size='2048' unit='KiB'/>"
                 "</hugepages></memoryBacking>", memory_gib=4)
    run = audit("--host-profile", "power9-radix-hv", "--libvirt-dir", str(tmp_path),
                "--what-if", "hugepages=2M:1024", "--json")
    guest = rows(json.loads(run.stdout), 1)["big"]
    assert guest["would_start"] == "no"
    # QEMU 7.2 maps the backend with reserve=on, so the pool's shortfall stops it at mmap,
    # before any prealloc: its words on this host with a 2 MiB hugetlbfs and an empty pool.
    assert guest["first_error"] == ("unable to map backing store for guest RAM: Cannot"
                                    " allocate memory")
    run = audit("--host-profile", "power9-radix-hv", "--libvirt-dir", str(tmp_path),
                "--what-if", "hugepages=2M:2048", "--json")
    assert rows(json.loads(run.stdout), 1)["big"]["would_start"] == "yes"


def test_what_if_host_profile(guests: Path) -> None:
    run = audit("--host-profile", "power9-radix-hv", "--domain", str(guests / "small.xml"),
                "--what-if", "host-profile=power8-hash-pr", "--json")
    body = json.loads(run.stdout)
    assert body["hosts"][1]["host"] == "what-if host-profile=power8-hash-pr (QEMU 10.0)"
    assert rows(body, 1)["small"]["detail"]["check"]["kvm"]["implementation"] == "PR"


def test_what_if_debian13(tmp_path: Path) -> None:
    """A Debian 12 host (QEMU 7.2, 64 KiB pages) upgraded to Debian 13 (QEMU 10.0, the
    default 4 KiB-page kernel): the issue's words for what QEMU 10.0 says."""
    write_domain(tmp_path, "web", "")
    write_domain(tmp_path, "old", "").write_text(
        (tmp_path / "old.xml").read_text().replace("machine='pseries'", "machine='pseries-2.12'"))
    write_domain(tmp_path, "small", "<features><hpt><maxpagesize unit='KiB'>4</maxpagesize>"
                 "</hpt></features>")
    run = audit("--host-profile", "power9-radix-hv", "--qemu-version", "7.2", "--libvirt-dir",
                str(tmp_path), "--what-if", "debian13", "--json")
    assert run.returncode == 1, run.stderr
    body = json.loads(run.stdout)
    assert [h["host"] for h in body["hosts"]] == [
        "this host (profile:power9-radix-hv, QEMU 7.2)",
        "what-if debian13 (= qemu-version=10.0 + base-page-size=4K) (QEMU 10.0)"]
    assert [h["qemu_version"] for h in body["hosts"]] == ["7.2", "10.0"]
    here, there = rows(body, 0), rows(body, 1)
    assert {k: v["would_start"] for k, v in here.items()} == {
        "web": "yes", "old": "yes", "small": "yes"}
    assert {k: v["would_start"] for k, v in there.items()} == {
        "web": "no", "old": "no", "small": "yes"}
    assert there["web"]["first_error"] == MSG_4K
    assert there["web"]["changed_from_this_host"] == [
        "'pseries' is pseries-10.0 in QEMU 10.0 (pseries-7.2 before)",
        "RAM backing pages 64K -> 4K"]
    assert there["old"]["first_error"] == 'unsupported machine type: "pseries-2.12"'
    assert "machine type pseries-2.12 is gone in QEMU 10.0" in there["old"][
        "changed_from_this_host"]
    assert there["small"]["detail"]["check"]["machine"] == "pseries-10.0"
    # the same answers as 'check --qemu-version 10.0' on a 4 KiB host: the same policy
    assert there["web"]["detail"]["check"]["request"]["qemu_version"] == "10.0"


def test_what_if_qemu_version_text(tmp_path: Path) -> None:
    write_domain(tmp_path, "dep", "").write_text(
        (tmp_path / "dep.xml").read_text().replace("machine='pseries'", "machine='pseries-5.2'"))
    run = audit("--host-profile", "power9-radix-hv", "--qemu-version", "7.2", "--libvirt-dir",
                str(tmp_path), "--what-if", "qemu-version=10.0")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[4] == "what-if qemu-version=10.0 (QEMU 10.0):"
    assert lines[5].endswith("what to change  changed from this host")
    assert lines[6].startswith("dep.xml") and lines[6].endswith(
        "new warning: Machine type 'pseries-5.2' is deprecated: machines more than 3 years old"
        " are subject to deletion after 6 years")


@pytest.mark.parametrize(("what_if", "words"), [
    ("page-size=4K", "give one of base-page-size"),
    ("qemu-version=8.2", "QEMU 8.2 is not modelled (modelled: 7.2, 10.0)"),
    ("qemu-version=ten", "not a QEMU version"),
    ("debian12", "give one of base-page-size"),
    ("base-page-size=8K", "4K or 64K"),
    ("base-page-size=lots", "'lots' is not a size"),
    ("hugepages=2M", "hugepages=SIZE:COUNT"),
    ("hugepages=3M:1", "hugepages=SIZE:COUNT"),
    ("host-profile=nope", "no host profile 'nope'"),
])
def test_bad_what_if(what_if: str, words: str) -> None:
    with pytest.raises((UsageError, ProfileError)) as raised:
        what_if_host(load_profile("power9-radix-hv"), [what_if])
    assert words in str(raised.value)
    run = audit("--host-profile", "power9-radix-hv", "--what-if", what_if, "--libvirt-dir", "/")
    assert run.returncode == 2


def test_bad_inputs(tmp_path: Path) -> None:
    run = audit("--host-profile", "power9-radix-hv", "--libvirt-dir", str(tmp_path))
    assert run.returncode == 2 and "no domain XML files" in run.stderr
    (tmp_path / "broken.xml").write_text("<domain")
    run = audit("--host-profile", "power9-radix-hv", "--libvirt-dir", str(tmp_path), "--json")
    assert run.returncode == 2
    guest = rows(json.loads(run.stdout), 0)["broken"]
    assert guest["would_start"] == "bad input"
    assert "not well-formed XML" in str(guest["first_error"])
    run = audit("--host-profile", "power9-radix-hv", "--domain", str(tmp_path / "missing.xml"))
    assert run.returncode == 2 and "cannot read" in run.stderr

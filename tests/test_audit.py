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
    assert body["hosts"][1]["host"] == "what-if base-page-size=4K, hugepages=2M:2048"


def test_table_and_other_inputs(guests: Path, tmp_path: Path) -> None:
    cmdline = tmp_path / "script.cmdline"
    cmdline.write_text("kvm \\\n -M pseries,cap-hpt-max-page-size=16M -m 2G\n")
    run = audit("--host-profile", "power9-radix-hv", "--domain", str(guests / "web.xml"),
                "--qemu-cmdline-file", str(cmdline))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0] == "this host (profile:power9-radix-hv):"
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
    assert "os_mem_prealloc: Insufficient free host memory pages" in str(guest["first_error"])
    assert "2048 pages of 2M needed, the pool has 1024 free" in str(guest["first_error"])
    run = audit("--host-profile", "power9-radix-hv", "--libvirt-dir", str(tmp_path),
                "--what-if", "hugepages=2M:2048", "--json")
    assert rows(json.loads(run.stdout), 1)["big"]["would_start"] == "yes"


def test_what_if_host_profile(guests: Path) -> None:
    run = audit("--host-profile", "power9-radix-hv", "--domain", str(guests / "small.xml"),
                "--what-if", "host-profile=power8-hash-pr", "--json")
    body = json.loads(run.stdout)
    assert body["hosts"][1]["host"] == "what-if host-profile=power8-hash-pr"
    assert rows(body, 1)["small"]["detail"]["check"]["kvm"]["implementation"] == "PR"


@pytest.mark.parametrize(("what_if", "words"), [
    ("page-size=4K", "give one of base-page-size"),
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

"""``kvmppc pagesizes`` and ``kvmppc check`` as commands: exit codes, JSON, live --mem-path."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from policy_hosts import GiB, KiB, MiB, hv_host

from kvmppc import cli_policy, host
from kvmppc.cli import main as kvmppc_main

HUGETLBFS_MAGIC = 0x958458F6


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvmppc")
    cli_policy.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_pagesizes_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json has the documented keys; POWER8 at 16 GiB gets all four segments."""
    assert run(["pagesizes", "--cpu", "power8", "--max-page-size", "16G", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["max_page_shift"] == 34
    assert [s["page_shift"] for s in data["segments"]] == [12, 16, 24, 34]
    assert data["cells"][-5:] == [34, 0x120, 1, 34, 0x3]
    assert data["ci_large_pages"] is True and data["warnings"] == []


def test_pagesizes_text_and_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pagesizes", "--max-page-size", "4k"]) == 0
    out = capsys.readouterr().out
    assert "ibm,segment-page-sizes = <0xc 0x0 0x1 0xc 0x0>" in out
    assert "Many guests require at least 64kiB hpt-max-page-size" in out


def test_pagesizes_legacy_machine_warns(capsys: pytest.CaptureFixture[str]) -> None:
    """pseries-2.12's default depends on the host: shown without contiguity, and said so."""
    assert run(["pagesizes", "--machine", "pseries-2.12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["max_page_shift"] == 34 and data["cpu"] == "power8_v2.0"
    assert "picks its default" in data["warnings"][0]


@pytest.mark.parametrize("argv", [
    ["pagesizes", "--max-page-size", "3000"],
    ["pagesizes", "--max-page-size", "2k"],
    ["pagesizes", "--cpu", "z80"],
    ["pagesizes", "--machine", "pseries-1.0"],
])
def test_pagesizes_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """QEMU's refusals are exit 2 for pagesizes (there is no guest to describe)."""
    assert run(argv) == 2
    assert capsys.readouterr().err.startswith("kvmppc: ")


def test_check_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """0: QEMU starts; 1: it does not (with QEMU's words); 2: bad arguments."""
    assert run(["check", "--host-profile", "power9-radix-hv"]) == 0
    assert run(["check", "--host-profile", "power9-radix-hv", "--max-page-size", "16M"]) == 1
    out = capsys.readouterr().out
    assert ("Can't support 16384 kiB guest pages with 64 kiB host pages with this KVM"
            " implementation") in out
    assert run(["check", "--host-profile", "power9-radix-hv", "--kvm-type", "XX"]) == 2
    assert run(["check", "--host-profile", "/nonexistent.json"]) == 2
    assert run(["check", "--host-profile", "power9-radix-hv", "--cpu", "power9,x=y"]) == 2


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check", "--host-profile", "power9-radix-hv", "--max-page-size", "3000",
                "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert data["errors"] == ["cap-hpt-max-page-size must be a power of 2"]


def test_check_profile_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--host-profile takes a 'kvmppc probe --json' file too; mem-paths resolve via its
    mount table."""
    probe = hv_host(mounts=(("/dev/hugepages1G", GiB),))
    path = tmp_path / "host.json"
    path.write_text(probe.to_json())
    assert run(["check", "--host-profile", str(path), "--max-page-size", "16M",
                "--mem-path", "/dev/hugepages1G", "--memory", "1G", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backing_page_size"] == GiB
    assert data["backings"][0]["mount"] == "/dev/hugepages1G"


def test_live_backing_statfs(tmp_path: Path) -> None:
    """Live --mem-path: hugetlbfs f_bsize, else the base page size, as QEMU reads it."""
    probe = hv_host(base_page_size=64 * KiB)

    def hugetlbfs(path: str) -> tuple[int, int]:
        return HUGETLBFS_MAGIC, 16 * MiB

    def ext4(path: str) -> tuple[int, int]:
        return 0xEF53, 4096

    def missing(path: str) -> tuple[int, int]:
        raise FileNotFoundError(2, "No such file or directory", path)

    assert host.live_backing(probe, "/h", hugetlbfs, HUGETLBFS_MAGIC).page_size == 16 * MiB
    assert host.live_backing(probe, "/e", ext4, HUGETLBFS_MAGIC).page_size == 64 * KiB
    bad = host.live_backing(probe, "/m", missing, HUGETLBFS_MAGIC)
    assert bad.error == "Couldn't statfs() memory path: No such file or directory"
    # A relative path is taken from the current directory, as QEMU's statfs would.
    assert host.live_backing(probe, "rel", ext4, HUGETLBFS_MAGIC).mem_path == os.path.join(
        os.getcwd(), "rel")


def test_live_check_on_this_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --host-profile the live host is probed; a real directory is statfs'd."""
    code = run(["check", "--mem-path", str(tmp_path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == (0 if data["ok"] else 1)
    assert data["backings"][0]["source"] == "statfs"
    assert data["backings"][0]["mem_path"] == str(tmp_path)


def test_main_cli_has_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """kvmppc's main CLI registers pagesizes and check."""
    assert kvmppc_main(["pagesizes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_page_shift"] == 16
    assert kvmppc_main(["check", "--host-profile", "power9-radix-hv", "--cpu", "power8"]) == 1
    assert "Guest requested unavailable MMU mode (hash)." in capsys.readouterr().out

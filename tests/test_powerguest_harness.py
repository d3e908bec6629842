"""The POWER guest harness's own plumbing, without booting anything (tests/powerguest)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.powerguest.harness import CpioWriter, parse_console, pr_kernel_dir_pattern

MARK = "@@kvmppc-0123456789ab@@"


def test_console_frames_decode_despite_crlf_and_kernel_text_before_the_marker() -> None:
    console = (
        "Linux ppc64le\r\n#1 SMP Debian 6." + MARK + " BEGIN _init\r\n"
        "a3ZtOiBsb2Fk\r\nZWQK\r\n"  # base64 of "kvm: loaded\n", wrapped by the guest
        f"{MARK} END _init rc=0\r\n\r\n{MARK} BEGIN probe\r\n{MARK} END probe rc=2\r\n"
    )
    results, done = parse_console(console, MARK)
    assert results["_init"].output == "kvm: loaded\n"
    assert results["_init"].rc == 0
    assert (results["probe"].output, results["probe"].rc) == ("", 2)
    assert not done  # no DONE line: the guest did not get to the end


def test_console_garbled_output_is_reported_not_raised() -> None:
    console = f"{MARK} BEGIN a\na3Z\n{MARK} END a rc=0\n{MARK} DONE\n"
    results, done = parse_console(console, MARK)
    assert "garbled" in results["a"].output
    assert done


def test_cpio_archive_is_newc_that_cpio_lists(tmp_path: Path) -> None:
    """The initramfs writer's output is what cpio(1) (and so the kernel) reads."""
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed: run scripts/setup-system.sh")
    (tmp_path / "tree/usr/bin").mkdir(parents=True)
    (tmp_path / "tree/usr/bin/tool").write_text("#!/bin/sh\n")
    (tmp_path / "tree/usr/bin/link").symlink_to("tool")
    raw = io.BytesIO()
    writer = CpioWriter(raw)
    writer.char_device("console", 5, 1)
    writer.tree(tmp_path / "tree")
    writer.close()
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=raw.getvalue(),
                             capture_output=True, check=True).stdout.decode()
    assert listing.split() == ["console", "usr", "usr/bin", "usr/bin/link", "usr/bin/tool"]


def test_pr_kernel_cache_key_ignores_comment_lines_as_the_script_does() -> None:
    """harness.py and build-pr-kernel.sh name the PR kernel's cache directory alike."""
    script = Path(__file__).parent / "powerguest/build-pr-kernel.sh"
    expected = subprocess.run(
        ["bash", "-c", f"grep -v '^ *#' {script} | sha256sum | cut -c1-12"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert pr_kernel_dir_pattern() == f"*-64k-{expected}"
    assert pr_kernel_dir_pattern("4k") == f"*-4k-{expected}"

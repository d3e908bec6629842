"""Run kvmppc inside a ppc64le guest under QEMU, on real POWER kernels' KVM.

The guest is a pseries machine under TCG. Debian's ppc64el kernel gets nested KVM-HV with
``-M pseries,cap-nested-hv=on`` on POWER9/POWER10; KVM-PR needs the kernel that
``build-pr-kernel.sh`` builds, on POWER8. The initramfs holds busybox, Debian's ppc64el
python3.11 with python3-cffi-backend, and kvmppc with its cffi extension cross-compiled by
``powerpc64le-linux-gnu-gcc``. One boot runs a list of commands (battery.py) and brings back
each one's exit status and output over the console, framed and base64-encoded.

Everything downloaded or built is cached under ``$KVMPPC_GUEST_CACHE`` (default
/var/tmp/kvmppc-guest): .deb files by their Debian version (it is in the file name), the
guest image as two initramfs layers, Debian's python (by those versions) and the project (by
a hash of its own files), and the PR kernel (by source version and build script).

Library for tests/test_powerguest.py, and a CLI::

    python3 -m tests.powerguest.harness build              # fetch and build, print paths
    python3 -m tests.powerguest.harness run power9-hv      # boot, run the battery, print it
    python3 -m tests.powerguest.harness run power9-hv -c 'cat /proc/cpuinfo'
    python3 -m tests.powerguest.harness shell power8-pr    # battery, then a console shell
    python3 -m tests.powerguest.harness capture-profiles   # rewrite kvmppc/profiles/*.json
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import functools
import gzip
import hashlib
import importlib.metadata
import json
import lzma
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

if __package__ in (None, ""):  # run as a file: make "tests.powerguest" importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.powerguest.battery import BATTERY, GuestCommand, commands_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARCH = "ppc64el"
TRIPLET = "powerpc64le-linux-gnu"
QEMU = "qemu-system-ppc64"
CROSS_GCC = f"{TRIPLET}-gcc"
PR_KERNEL_SCRIPT = HERE / "build-pr-kernel.sh"
DEFAULT_BOOT_TIMEOUT = 600.0  # seconds; a TCG boot plus battery takes well under a minute

# The guest's Python: Debian 12's python3.11 on the host's suite, Debian 13's python3.13.
GUEST_PYTHON = {"host": "3.11", "trixie": "3.13"}


def guest_packages(suite: str) -> tuple[str, ...]:
    """Debian ppc64el packages unpacked into the guest root: busybox for /init and the shell,
    python and what its interpreter and the modules kvmppc imports link against (libssl:
    _ssl and _hashlib, which http.server and prometheus_client import; Debian 13 renamed it
    libssl3t64)."""
    py = GUEST_PYTHON[suite]
    return ("busybox-static", "libc6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8",
            "libssl3" if suite == "host" else "libssl3t64", f"libpython{py}-minimal",
            f"libpython{py}-stdlib", f"python{py}-minimal", "python3-cffi-backend")


def build_packages(suite: str) -> tuple[str, ...]:
    """Headers for cross-compiling the cffi extension. linux-libc-dev's headers come first so
    the request numbers are powerpc's, as the target's own <asm/ioctl.h> encodes them."""
    py = GUEST_PYTHON[suite]
    return ("linux-libc-dev", f"libpython{py}-dev", f"python{py}-dev")


DEBIAN_KERNEL_METAPACKAGE = "linux-image-powerpc64le"

# Not worth a place in the initramfs (the guest runs no tests of CPython itself).
PYTHON_TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/share/binfmts",
    f"usr/lib/{TRIPLET}/gconv",
    "usr/lib/python{py}/test",
    "usr/lib/python{py}/idlelib",
    "usr/lib/python{py}/tkinter",
    "usr/lib/python{py}/turtledemo",
    "usr/lib/python{py}/ensurepip",
    "usr/lib/python{py}/lib2to3",
    "usr/lib/python{py}/pydoc_data",
)
# Host distributions that are not copied into the guest: cffi's backend comes from Debian's
# python3-cffi-backend, and systemd-python is compiled (kvmppc imports it lazily).
NOT_COPIED = {"cffi", "pycparser", "systemd-python"}
DEFAULT_GUEST_DEPENDENCIES = ("ioctl-opt", "prometheus-client")


class HarnessError(Exception):
    """The harness could not build or run the guest."""


class MissingPrerequisiteError(HarnessError):
    """Something the guest needs is absent (a tool, the PR kernel); tests skip on this."""


def progress(message: str) -> None:
    print(f"powerguest: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("KVMPPC_GUEST_CACHE", "/var/tmp/kvmppc-guest"))


def _run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=True, text=True, capture_output=True, **kwargs)
    except FileNotFoundError as exc:
        raise MissingPrerequisiteError(
            f"{argv[0]} not found: run scripts/setup-system.sh as root"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"{' '.join(argv)} failed ({exc.returncode}): {exc.stderr}") from exc


def check_host_tools() -> None:
    """Raise MissingPrerequisiteError naming what to install when a host tool is absent."""
    missing = [tool for tool in (QEMU, CROSS_GCC, "apt-get", "dpkg") if not shutil.which(tool)]
    if missing:
        raise MissingPrerequisiteError(
            f"{', '.join(missing)} not installed: run scripts/setup-system.sh as root"
        )


# --------------------------------------------------------------------------------------------
# Debian packages


_APT = ("-o", "APT::Sandbox::User=root")  # downloads into the cache as root, quietly
HOST_SUITE = "host"  # the host's own apt sources (Debian 12 here)
# Debian 13's ppc64el packages come from a private apt state in the cache (its own sources,
# lists and no dpkg status), so the host's apt is left alone.
SUITE_SOURCES = {
    "trixie": (("{mirror}", "trixie trixie-updates"),
               ("{security}", "trixie-security")),
}


def _host_mirror() -> str:
    """The host's Debian mirror (deb822 or one-line sources), as debian13-qemu-root.sh finds it."""
    texts = [path.read_text(errors="replace")
             for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for text in texts:
        found = re.search(r"^URIs:\s*(\S*/debian)/?\s*$", text, re.MULTILINE)
        if found:
            return found.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        found = re.search(r"^deb\s+(\S*/debian)/?\s", legacy.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


@functools.cache
def apt_options(suite: str = HOST_SUITE) -> tuple[str, ...]:
    """apt options for ``suite``: the host's apt, or a private ppc64el-only state for another
    Debian release, updated once per process (offline: the lists from the last update)."""
    if suite == HOST_SUITE:
        return _APT
    if suite not in SUITE_SOURCES:
        raise HarnessError(f"unknown Debian suite {suite!r}: {sorted(SUITE_SOURCES)}")
    state = cache_dir() / f"apt-{suite}"
    for sub in ("etc/sources.list.d", "etc/preferences.d", "lists/partial",
                "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    mirror = _host_mirror()
    # "Architectures: ppc64el" only: binary-ppc64el lists hold the arch-all packages too, and
    # the registry here serves binary-all indexes that fail apt's size check.
    where = {"mirror": mirror, "security": mirror.removesuffix("/debian") + "/debian-security"}
    stanzas = [
        f"Types: deb\nURIs: {uri.format(**where)}\nSuites: {suites}\nComponents: main\n"
        f"Architectures: {ARCH}\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        for uri, suites in SUITE_SOURCES[suite]
    ]
    (state / "etc/sources.list.d" / f"{suite}.sources").write_text("\n".join(stanzas))
    options = (*_APT, "-o", "Dir::Etc::SourceList=/dev/null",
               "-o", f"Dir::Etc::SourceParts={state / 'etc/sources.list.d'}",
               "-o", "Dir::Etc::Preferences=/dev/null",
               "-o", f"Dir::Etc::PreferencesParts={state / 'etc/preferences.d'}",
               "-o", f"Dir::State::Lists={state / 'lists'}",
               "-o", f"Dir::Cache={state / 'cache'}",
               "-o", "Dir::State::status=/dev/null",
               "-o", f"APT::Architecture={ARCH}", "-o", f"APT::Architectures::={ARCH}")
    try:
        _run(["apt-get", *options, "-q", "update"])
    except MissingPrerequisiteError:
        raise
    except HarnessError as exc:
        if not any((state / "lists").glob("*Packages*")):
            raise MissingPrerequisiteError(
                f"cannot read Debian {suite}'s package lists: {exc}") from None
        progress(f"apt-get update for {suite} failed; using the lists from the last one")
    return options


@functools.cache
def fetch_debs(packages: tuple[str, ...], arch: str = ARCH,
               suite: str = HOST_SUITE) -> dict[str, Path]:
    """The .deb of each package that apt would install now, downloaded into the cache once.

    Debian puts the version in the file name, so a new version is a new file. Without the
    package lists (offline), the newest cached file of each package is used. Resolved once
    per process, so one test session uses one set of packages.
    """
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    specs = [f"{package}:{arch}" for package in packages]
    apt = apt_options(suite)
    try:
        uris = _run(["apt-get", *apt, "download", "--print-uris", *specs]).stdout
    except MissingPrerequisiteError:
        raise
    except HarnessError as exc:
        return {package: _cached_deb(package, arch, exc) for package in packages}
    # One line per package: 'URI' FILENAME SIZE HASH; the file name starts with the package.
    entries = {line.split()[1]: line.split()[0].strip("'") for line in uris.splitlines()
               if line.startswith("'")}
    found: dict[str, Path] = {}
    for package in packages:
        (filename,) = [name for name in entries if name.startswith(f"{package}_")]
        path = debs / filename
        if not path.exists():
            progress(f"downloading {filename}")
            try:
                path = _download(apt, f"{package}:{arch}", debs)
            except HarnessError as exc:
                if "404" not in str(exc):
                    raise
                path = _download_older(apt, package, arch, debs, uri=entries[filename], why=exc)
        found[package] = path
    return found


def _download(apt: Sequence[str], spec: str, debs: Path) -> Path:
    """``apt-get download SPEC`` into ``debs``; the path of the file it wrote."""
    with tempfile.TemporaryDirectory(dir=debs) as scratch:
        _run(["apt-get", *apt, "-q", "download", spec], cwd=scratch)
        (written,) = Path(scratch).glob("*.deb")
        return written.rename(debs / written.name)


def _download_older(apt: Sequence[str], package: str, arch: str, debs: Path, *, uri: str,
                    why: HarnessError) -> Path:
    """The registry's index can name a build it does not serve (404): take an older one.

    First the older versions the lists know; then the earlier stable updates of the named
    version, which the index no longer lists but the pool may still serve (``1.2-3+deb13u5``:
    ``u4`` ... ``u1``, then ``1.2-3``, in this directory and in the main archive's).  Those are
    not in the index, so apt cannot check their hash: the file's own control fields are
    checked instead, and the harness says which build it took.
    """
    madison = _run(["apt-cache", *apt, "madison", f"{package}:{arch}"]).stdout
    versions = list(dict.fromkeys(line.split("|")[1].strip() for line in madison.splitlines()
                                  if line.count("|") >= 2))
    for version in versions[1:]:
        try:
            path = _download(apt, f"{package}:{arch}={version}", debs)
        except HarnessError:
            continue
        progress(f"{package}: the index's newest build is not served; took {version}")
        return path
    for version in _earlier_updates(versions[0] if versions else ""):
        name = f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
        if (debs / name).exists():
            return debs / name
        quoted = version.split(":")[-1].replace("+", "%2b").replace("~", "%7e")
        directory = uri.rsplit("/", 1)[0]
        for base in dict.fromkeys((directory, directory.replace(
                "/debian-security/pool/updates/main/", "/debian/pool/main/"))):
            url = f"{base}/{package}_{quoted}_{arch}.deb"
            with tempfile.TemporaryDirectory(dir=debs) as scratch:
                target = Path(scratch) / name
                if subprocess.call(["curl", "-sfL", "-o", str(target), url]) != 0:
                    continue
                fields = _run(["dpkg-deb", "-f", str(target), "Package", "Version",
                               "Architecture"]).stdout.split()
                if fields[1::2] != [package, version, arch]:
                    raise HarnessError(f"{url} holds {fields}, not {package} {version} {arch}")
                progress(f"{package}: the index's build is not served; took {version} from"
                         f" the pool ({url}), which the index no longer lists")
                return target.rename(debs / name)
    raise HarnessError(f"no version of {package}:{arch} downloads: {why}")


def _earlier_updates(version: str) -> list[str]:
    """``1.2-3+deb13u5`` -> ``1.2-3+deb13u4`` ... ``1.2-3+deb13u1``, then the release's own
    ``1.2-3`` and its binary rebuilds ``1.2-3+b1``, ``1.2-3+b2``."""
    match = re.fullmatch(r"(.+?)([+~]deb\d+u)(\d+)", version)
    if not match:
        return []
    base, tag, number = match.group(1), match.group(2), int(match.group(3))
    return ([f"{base}{tag}{n}" for n in range(number - 1, 0, -1)]
            + [base, f"{base}+b1", f"{base}+b2"])


def _cached_deb(package: str, arch: str, why: HarnessError) -> Path:
    cached = sorted((cache_dir() / "debs").glob(f"{package}_*_{arch}.deb"),
                    key=lambda path: path.stat().st_mtime)
    if not cached:
        raise MissingPrerequisiteError(
            f"cannot fetch {package}:{arch}: {why} (is the {arch} architecture added and"
            " apt-get update run? scripts/setup-system.sh does both)")
    progress(f"apt cannot resolve {package}:{arch}; using cached {cached[-1].name}")
    return cached[-1]


def fetch_deb(package: str, arch: str = ARCH, suite: str = HOST_SUITE) -> Path:
    return fetch_debs((package,), arch, suite)[package]


def fetch_first_available(packages: Sequence[str], suite: str) -> Path:
    """The first of ``packages`` whose .deb downloads: the registry's index can name a newer
    build than it serves (404), so the caller lists candidates newest first."""
    failures = []
    for package in packages:
        try:
            return fetch_deb(package, ARCH, suite)
        except MissingPrerequisiteError:
            raise
        except HarnessError as exc:
            failures.append(f"{package}: {str(exc).strip().splitlines()[-1]}")
            progress(f"{package} cannot be downloaded; trying an older build")
    raise MissingPrerequisiteError("no candidate could be downloaded:\n" + "\n".join(failures))


def unpack_deb(deb: Path, into: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(into)])


def debian_kernel_package() -> str:
    """linux-image-<abi>-powerpc64le, the package Debian's metapackage depends on now."""
    try:
        out = _run(["apt-cache", "depends", f"{DEBIAN_KERNEL_METAPACKAGE}:{ARCH}"]).stdout
    except HarnessError:
        cached = sorted((cache_dir() / "debs").glob(f"linux-image-*-powerpc64le_*_{ARCH}.deb"))
        if cached:
            return cached[-1].name.split("_")[0]
        raise
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+?)(:ppc64el)?$", line)
        if match:
            return match.group(1)
    raise HarnessError(f"no kernel image among the dependencies of {DEBIAN_KERNEL_METAPACKAGE}")


# --------------------------------------------------------------------------------------------
# kernels


@dataclass(frozen=True)
class Kernel:
    name: str  # "debian" or "pr"
    release: str  # uname -r
    vmlinux: Path
    modules: dict[str, Path]  # "kvm-hv" -> kvm-hv.ko (or .ko.xz/.ko.zst as Debian ships it)
    key: str  # what identifies the build: the .deb's name, or the PR build's directory


def debian_kernel() -> Kernel:
    """Debian 12's current ppc64el kernel (64 KiB pages); it has kvm-hv but cannot have kvm-pr."""
    return _unpacked_kernel("debian", fetch_deb(debian_kernel_package()))


# Debian 13's ppc64el kernels: linux-image-powerpc64le has 4 KiB pages (the default since
# Debian 13), linux-image-powerpc64le-64k 64 KiB.
DEBIAN13_FLAVOURS = {"debian13": "powerpc64le", "debian13-64k": "powerpc64le-64k"}


def debian13_kernel(name: str) -> Kernel:
    """The newest Debian 13 build of the flavour that downloads (the index may name newer)."""
    flavour = DEBIAN13_FLAVOURS[name]
    names = _run(["apt-cache", *apt_options("trixie"), "pkgnames", "linux-image-6."]).stdout
    pattern = re.compile(rf"linux-image-(\d+)\.(\d+)\.(\d+)\+deb13(?:\.(\d+))?-{flavour}")
    candidates = sorted(
        (tuple(int(part or 0) for part in match.groups()), package)
        for package in names.split() if (match := pattern.fullmatch(package))
    )
    if not candidates:
        raise MissingPrerequisiteError(f"no linux-image-*-{flavour} in Debian 13's lists")
    deb = fetch_first_available([package for _, package in reversed(candidates)], "trixie")
    return _unpacked_kernel(name, deb)


def _unpacked_kernel(name: str, deb: Path) -> Kernel:
    root = cache_dir() / "kernels" / deb.stem
    if not (root / "DONE").exists():
        progress(f"unpacking {deb.name}")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        unpack_deb(deb, root)
        (root / "DONE").touch()
    # Debian 13 ships modules under /usr (merged /usr), Debian 12 under /lib.
    modules_dir = next(d for d in (root / "lib/modules", root / "usr/lib/modules") if d.is_dir())
    (release,) = [path.name for path in modules_dir.iterdir()]
    kvm_dir = modules_dir / release / "kernel/arch/powerpc/kvm"
    modules = {path.name.split(".ko")[0]: path for path in kvm_dir.iterdir()}
    return Kernel(name, release, root / "boot" / f"vmlinux-{release}", modules, deb.name)


PR_KERNEL_PAGES = {"pr": "64k", "pr4k": "4k"}  # kernel name -> build-pr-kernel.sh --pages


def pr_kernel_dir_pattern(pages: str = "64k") -> str:
    """build-pr-kernel.sh's output directory for its current text, any source version.

    The hash leaves out comment lines, as the script does, so editing its comments does not
    cost a kernel build.
    """
    lines = PR_KERNEL_SCRIPT.read_bytes().splitlines(keepends=True)
    code = b"".join(line for line in lines if not line.lstrip(b" ").startswith(b"#"))
    script_hash = hashlib.sha256(code).hexdigest()[:12]
    return f"*-{pages}-{script_hash}"


def pr_kernel(pages: str = "64k") -> Kernel:
    """The KVM-PR capable kernel build-pr-kernel.sh built, or MissingPrerequisiteError.

    With KVMPPC_BUILD_PR_KERNEL=1 in the environment, a missing kernel is built first.
    """
    built = _built_pr_kernels(pages)
    command = [str(PR_KERNEL_SCRIPT), "--pages", pages]
    if not built and os.environ.get("KVMPPC_BUILD_PR_KERNEL") == "1":
        progress(f"KVMPPC_BUILD_PR_KERNEL=1: building the {pages} KVM-PR kernel (13 min or more"
                 " on 2 idle cores)")
        if subprocess.call(command) != 0:
            raise HarnessError(f"{' '.join(command)} failed; its log is in the output above")
        built = _built_pr_kernels(pages)
    if not built:
        raise MissingPrerequisiteError(
            f"no {pages} KVM-PR kernel built for this version of"
            f" tests/powerguest/build-pr-kernel.sh in {cache_dir() / 'pr-kernel'}: run"
            f" '{' '.join(command)}' (13 min or more on 2 cores), or set"
            " KVMPPC_BUILD_PR_KERNEL=1 for the tests to build it"
        )
    root = built[-1]
    modules = {path.stem: path for path in (root / "modules").glob("*.ko")}
    release = (root / "release").read_text().strip()
    name = next(name for name, size in PR_KERNEL_PAGES.items() if size == pages)
    return Kernel(name, release, root / "vmlinux", modules, root.name)


def _built_pr_kernels(pages: str) -> list[Path]:
    stamps = (cache_dir() / "pr-kernel").glob(f"{pr_kernel_dir_pattern(pages)}/DONE")
    return sorted((done.parent for done in stamps), key=lambda path: path.stat().st_mtime)


KERNELS = ("debian", *DEBIAN13_FLAVOURS, *PR_KERNEL_PAGES)


def kernel_named(name: str) -> Kernel:
    if name == "debian":
        return debian_kernel()
    if name in DEBIAN13_FLAVOURS:
        return debian13_kernel(name)
    if name in PR_KERNEL_PAGES:
        return pr_kernel(PR_KERNEL_PAGES[name])
    raise HarnessError(f"unknown kernel {name!r}: one of {', '.join(KERNELS)}")


# --------------------------------------------------------------------------------------------
# guest configurations


@dataclass(frozen=True)
class GuestConfig:
    name: str
    kind: str  # "hv" or "pr": which KVM the guest's kernel offers, and which commands run
    kernel: str  # one of KERNELS
    cpu: str  # QEMU -cpu
    machine: str  # QEMU -M
    modules: tuple[str, ...]  # loaded in order with insmod
    memory: str = "4G"  # room for kvm_oracle's hugepage pools and QEMU inside
    pages: str = "64k"  # the kernel's base page size; 4k profiles are named <...>-4k
    suite: str = HOST_SUITE  # the Debian release of the guest's userland (python, QEMU)
    profile_suffix: str | None = None  # None: "" for 64 KiB pages, "-4k" for 4 KiB


# Nested KVM-HV needs cap-nested-hv (QEMU refuses it before POWER9); x-vof=on boots with
# QEMU's Virtual Open Firmware instead of SLOF, about 10 s faster a boot. KVM-PR cannot load
# on a radix guest (kvmppc_core_check_processor_compat_pr: -EIO), hence POWER8 (hash).
# The -4k configs run 4 KiB-page kernels: Debian 13's own for HV, a --pages 4k build for PR.
# A hash guest's kernel gets 16 MiB pages (hugetlbfs, and the MMU sizes KVM-PR offers its
# own guests) only when its QEMU allows them: cap-hpt-max-page-size=16M (pseries-3.0 and
# later default to 64K).
PR_MACHINE = "pseries,x-vof=on,cap-hpt-max-page-size=16M"
CONFIGS: dict[str, GuestConfig] = {
    config.name: config
    for config in (
        GuestConfig("power9-hv", "hv", "debian", "POWER9",
                    "pseries,x-vof=on,cap-nested-hv=on", ("kvm", "kvm-hv")),
        GuestConfig("power10-hv", "hv", "debian", "POWER10",
                    "pseries,x-vof=on,cap-nested-hv=on", ("kvm", "kvm-hv")),
        GuestConfig("power8-pr", "pr", "pr", "POWER8", PR_MACHINE, ("kvm", "kvm-pr")),
        GuestConfig("power9-hv-4k", "hv", "debian13", "POWER9",
                    "pseries,x-vof=on,cap-nested-hv=on", ("kvm", "kvm-hv"), pages="4k"),
        GuestConfig("power8-pr-4k", "pr", "pr4k", "POWER8", PR_MACHINE,
                    ("kvm", "kvm-pr"), pages="4k"),
        # A Debian 13 host: its kernel, python3.13 and (in kvm_oracle) QEMU 10.0.
        GuestConfig("power9-hv-debian13", "hv", "debian13", "POWER9",
                    "pseries,x-vof=on,cap-nested-hv=on", ("kvm", "kvm-hv"), pages="4k",
                    suite="trixie"),
        GuestConfig("power9-hv-debian13-64k", "hv", "debian13-64k", "POWER9",
                    "pseries,x-vof=on,cap-nested-hv=on", ("kvm", "kvm-hv"), suite="trixie",
                    profile_suffix="-debian13-64k"),
    )
}


# --------------------------------------------------------------------------------------------
# initramfs


class CpioWriter:
    """A newc ("070701") cpio archive, the format the kernel unpacks into its rootfs.

    Written here rather than with cpio(1) so that entries are owned by root, have mtime 0
    (the image is reproducible from its inputs) and device nodes need no mknod on the host.
    """

    def __init__(self, out: BinaryIO | gzip.GzipFile) -> None:
        self._out = out
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add everything under ``root`` (parents before children, in sorted order)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                path = base / name
                arcname = prefix + str(path.relative_to(root))
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    self.symlink(arcname, os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    self.directory(arcname, stat.S_IMODE(info.st_mode))
                elif stat.S_ISREG(info.st_mode):
                    self.file(arcname, path.read_bytes(), stat.S_IMODE(info.st_mode))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def write_cpio_gz(path: Path, fill: Any) -> None:
    """Write ``path`` atomically as a gzip'd newc archive; ``fill(CpioWriter)`` adds entries."""
    # Per process: two test sessions may build the same layer at once; the last rename wins.
    scratch = path.with_name(f"{path.name}.{os.getpid()}.part")
    with open(scratch, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                    compresslevel=6) as gz:
        writer = CpioWriter(gz)
        fill(writer)
        writer.close()
    scratch.rename(path)


# --------------------------------------------------------------------------------------------
# the guest image: busybox, python, kvmppc


def _project_files() -> list[Path]:
    """The project's files that go into (or decide) the guest's project layer."""
    files = [REPO / name for name in ("pyproject.toml", "setup.py") if (REPO / name).exists()]
    for top in (REPO / "kvmppc", HERE):
        for path in sorted(top.rglob("*")):
            if path.is_file() and not _is_build_output(path):
                files.append(path)
    return files


def _is_build_output(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix in (".so", ".pyc", ".o", ".c")


def guest_dependencies() -> list[str]:
    """Distributions the package needs at run time (pyproject's dependencies), as names."""
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        return list(DEFAULT_GUEST_DEPENDENCIES)
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    names = []
    for requirement in project.get("dependencies", []):
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
        if name.lower() not in NOT_COPIED:
            names.append(name)
    return names


def _host_distribution_files(name: str) -> tuple[str, list[tuple[Path, str]]]:
    """(version, [(file on the host, path under site-packages)]) of a pure-Python dist."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPrerequisiteError(
            f"{name} is not installed on the host; install the project's dependencies"
            " (pip install -e .) so the harness can copy it into the guest"
        ) from None
    files = []
    for entry in dist.files or ():
        relative = str(entry)
        if relative.startswith("..") or "__pycache__" in relative or relative.endswith(".pyc"):
            continue
        if relative.endswith(".so"):
            raise HarnessError(f"{name} has a compiled extension ({relative}): it cannot be"
                               " copied into the ppc64le guest; add it to NOT_COPIED")
        files.append((Path(str(dist.locate_file(entry))), relative))
    return dist.version, files


def _console_scripts() -> dict[str, str]:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        return {"kvmppc": "kvmppc.__main__:main"}
    scripts = tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
    return dict(scripts)


def _cffi_builders() -> list[tuple[Path, str]]:
    """setup.py's ``cffi_modules=["kvmppc/_ioctl_build.py:ffibuilder", ...]``."""
    setup = REPO / "setup.py"
    text = setup.read_text() if setup.exists() else ""
    entries = re.findall(r"[\"']([\w/.-]+\.py):(\w+)[\"']", text)
    return [(REPO / path, var) for path, var in entries] or [
        (REPO / "kvmppc/_ioctl_build.py", "ffibuilder")]


def _cached_image(kind: str, inputs: dict[str, str], build: Any) -> Path:
    """images/<kind>-<hash of inputs>.cpio.gz, made by ``build(root: Path)`` when absent."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    images = cache_dir() / "images"
    image = images / f"{kind}-{key}.cpio.gz"
    if image.exists():
        return image
    images.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress(f"building the guest's {kind} layer {image.name}")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        build(root, Path(scratch))
        write_cpio_gz(image, lambda cpio: cpio.tree(root))
    (images / f"{kind}-{key}.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))
    # Old layers go after a day; not at once, as another test session may be booting one.
    for old in images.glob(f"{kind}-*"):
        if not old.name.startswith(f"{kind}-{key}") and time.time() - old.stat().st_mtime > 86400:
            old.unlink()
    progress(f"{kind} layer built in {time.monotonic() - started:.0f} s:"
             f" {image.stat().st_size / 1e6:.1f} MB")
    return image


@functools.cache
def python_layer(suite: str = HOST_SUITE) -> Path:
    """busybox and Debian's python with python3-cffi-backend: changes with Debian."""
    py = GUEST_PYTHON[suite]
    debs = fetch_debs(guest_packages(suite), ARCH, suite)
    inputs = {f"deb:{name}": path.name for name, path in debs.items()}
    inputs["host-python"] = "{}.{}".format(*sys.version_info[:2])  # the .pyc magic number

    def build(root: Path, _scratch: Path) -> None:
        for deb in debs.values():
            progress(f"unpacking {deb.name}")
            unpack_deb(deb, root)
        for trim in PYTHON_TRIM:
            shutil.rmtree(root / trim.format(py=py), ignore_errors=True)
        (root / "usr/bin/python3").symlink_to(f"python{py}")
        # Merged /usr (Debian 13): the /bin, /lib64 ... links base-files would make; the
        # programs' interpreter is /lib64/ld64.so.2 and /init is /bin/busybox.
        for top in ("bin", "sbin", "lib", "lib64"):
            if not os.path.lexists(root / top) and (root / "usr" / top).is_dir():
                (root / top).symlink_to(f"usr/{top}")
        _precompile(py, root, root / f"usr/lib/python{py}", root / "usr/lib/python3")

    return _cached_image("python" if suite == HOST_SUITE else f"python-{suite}", inputs, build)


# Debian's ppc64el QEMU for the KVM-mode differential harness (kvm_oracle.py): the package,
# the libraries its binary links (found with apt-cache's dependency closure, then cut down to
# the ELF NEEDED closure of qemu-system-ppc64) and the pseries firmware (qemu-system-data).
QEMU_PACKAGE = "qemu-system-ppc"
QEMU_FIRMWARE = ("slof.bin", "vof.bin")
READELF = f"{TRIPLET}-readelf"  # binutils-powerpc64le-linux-gnu, gcc-powerpc64le-linux-gnu's
LIBRARY_DIRS = (f"lib/{TRIPLET}", f"usr/lib/{TRIPLET}", "lib64", "lib", "usr/lib")


def qemu_dependency_packages(suite: str) -> tuple[str, ...]:
    """qemu-system-ppc and the ppc64el library packages it depends on, recursively."""
    out = _run(["apt-cache", *apt_options(suite), "depends", "--recurse", "--no-recommends",
                "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                "--no-enhances", f"{QEMU_PACKAGE}:{ARCH}"]).stdout
    names = set()
    for line in out.splitlines():
        name = line.strip()
        if suite == HOST_SUITE:  # ppc64el is foreign on the host: its packages say so
            if not name.endswith(f":{ARCH}"):
                continue
            name = name.removesuffix(f":{ARCH}")
        if re.fullmatch(r"(lib[\w.+-]+|qemu-system-ppc|qemu-system-common|zlib1g)", name):
            names.add(name)
    return tuple(sorted(names))


def _elf_needed(path: Path) -> tuple[list[str], str | None]:
    out = _run([READELF, "-dlW", str(path)]).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    interpreter = re.search(r"Requesting program interpreter: ([^\]]+)\]", out)
    return needed, interpreter.group(1) if interpreter else None


def _resolve_in(root: Path, relative: str) -> Path:
    """``relative`` under ``root``, following symlinks inside ``root`` (absolute ones too);
    on a merged-/usr release (Debian 13) /lib64/... is /usr/lib64/..."""
    path = root / relative
    if not os.path.lexists(path) and os.path.lexists(root / "usr" / relative):
        path = root / "usr" / relative
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise HarnessError(f"symlink loop at {relative}")


def elf_closure(root: Path, binary: str) -> list[str]:
    """The files (relative to ``root``) that ``binary`` needs to run: its NEEDED libraries,
    theirs, and the program interpreter."""
    todo, seen, missing = [binary], set(), set()
    while todo:
        relative = todo.pop()
        if relative in seen:
            continue
        seen.add(relative)
        needed, interpreter = _elf_needed(_resolve_in(root, relative))
        if interpreter is not None:
            todo.append(interpreter.lstrip("/"))  # copied where the binary asks for it
        for name in needed:
            found = next((f"{d}/{name}" for d in LIBRARY_DIRS
                          if os.path.lexists(root / d / name)
                          or os.path.lexists(root / "usr" / d / name)), None)
            if found is None:
                missing.add(name)
            else:
                todo.append(found)
    if missing:
        raise HarnessError(f"{binary} needs {sorted(missing)}, in none of the unpacked packages")
    return sorted(seen)


@functools.cache
def qemu_layer(suite: str = HOST_SUITE) -> Path:
    """/usr/bin/qemu-system-ppc64 (ppc64el, Debian's) with its libraries and firmware."""
    packages = qemu_dependency_packages(suite)
    debs = {**fetch_debs(packages, ARCH, suite),
            **fetch_debs(("qemu-system-data",), "all", suite)}
    inputs = {f"deb:{name}": path.name for name, path in debs.items()}
    inputs["readelf"] = "closure"

    def build(root: Path, scratch: Path) -> None:
        unpacked = scratch / "unpacked"
        for deb in debs.values():
            unpack_deb(deb, unpacked)
        files = elf_closure(unpacked, "usr/bin/qemu-system-ppc64")
        files += [f"usr/share/qemu/{name}" for name in QEMU_FIRMWARE]
        for relative in files:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(_resolve_in(unpacked, relative), root / relative)
        version = _run(["dpkg-deb", "-f", str(debs[QEMU_PACKAGE]), "Version"]).stdout.strip()
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc/kvmppc-guest-qemu").write_text(f"{QEMU_PACKAGE} {version}\n")
        progress(f"QEMU layer: {len(files)} files from {len(debs)} packages")

    return _cached_image(f"qemu-{suite}", inputs, build)


@functools.cache
def project_layer(suite: str = HOST_SUITE) -> Path:
    """/init, kvmppc (extension cross-compiled), its pure-Python dependencies, guest/."""
    check_host_tools()
    py = GUEST_PYTHON[suite]
    headers_debs = fetch_debs(build_packages(suite), ARCH, suite)
    inputs = {f"deb:{name}": path.name for name, path in headers_debs.items()}
    for name in guest_dependencies():
        inputs[f"dist:{name}"] = _host_distribution_files(name)[0]
    inputs["host-python"] = "{}.{}".format(*sys.version_info[:2])
    inputs["cross-gcc"] = _run([CROSS_GCC, "-dumpfullversion"]).stdout.strip()
    digest = hashlib.sha256()
    for path in _project_files():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    inputs["project"] = digest.hexdigest()

    def build(root: Path, scratch: Path) -> None:
        headers = scratch / "headers"
        for deb in headers_debs.values():
            unpack_deb(deb, headers)
        _install_project(root, headers, py)

    return _cached_image("project" if suite == HOST_SUITE else f"project-{suite}", inputs, build)


def guest_layers(suite: str = HOST_SUITE) -> list[Path]:
    """The guest's initramfs layers, kernel-independent, in the order they are unpacked."""
    return [python_layer(suite), project_layer(suite)]


def _install_project(root: Path, headers: Path, py: str) -> None:
    for directory in ("dev", "proc", "sys", "tmp", "root", "etc/kvmppc-guest", "usr/bin"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    site = root / "usr/lib/python3/dist-packages"  # on Debian python's sys.path
    shutil.copytree(REPO / "kvmppc", site / "kvmppc",
                    ignore=lambda _d, names: [n for n in names if _is_build_output(Path(n))])
    for name in guest_dependencies():
        for source, relative in _host_distribution_files(name)[1]:
            (site / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, site / relative)
    for command, target in _console_scripts().items():
        module, _, function = target.partition(":")
        script = root / "usr/bin" / command
        script.write_text(f"#!/usr/bin/python{py}\nimport sys\nfrom {module} import {function}\n"
                          f"sys.exit({function}())\n")
        script.chmod(0o755)
    shutil.copytree(HERE / "guest", root / "opt/kvmppc-guest",
                    ignore=lambda _d, names: [n for n in names if _is_build_output(Path(n))])
    for builder, variable in _cffi_builders():
        cross_compile_extension(builder, variable, site, headers, py)
    _precompile(py, root, site, root / "opt/kvmppc-guest")


def _precompile(py: str, root: Path, *directories: Path) -> None:
    """Byte-compile, so the guest does not compile every import at every boot under TCG.

    Every 3.11 has the same magic number; unchecked hashes because the cpio's mtimes are 0.
    Only when the host's Python is the guest's (else the guest compiles as it imports).
    """
    if "{}.{}".format(*sys.version_info[:2]) != py:
        return  # another magic number: the guest would ignore the files
    _run([sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode",
          "unchecked-hash", "-s", str(root), "-p", "/", *map(str, directories)])


def cross_compile_extension(builder: Path, variable: str, site: Path, headers: Path,
                            py: str = "3.11") -> Path:
    """Emit the cffi module's C on the host, compile it for ppc64le into ``site``."""
    emit = (
        "import runpy, sys\n"
        "ffi = runpy.run_path(sys.argv[1])[sys.argv[2]]\n"
        "ffi.emit_c_code(sys.argv[3])\n"
        "print(ffi._assigned_source[0])\n"  # the module name given to set_source()
    )
    c_file = headers / f"{builder.stem}.c"
    module = _run([sys.executable, "-c", emit, str(builder), variable, str(c_file)],
                  cwd=REPO).stdout.strip().splitlines()[-1]
    target = site / (module.replace(".", "/") + f".cpython-{py.replace('.', '')}-{TRIPLET}.so")
    progress(f"cross-compiling {module} for ppc64le")
    include = headers / "usr/include"
    _run([CROSS_GCC, "-shared", "-fPIC", "-O2",
          f"-I{include}", f"-I{include / TRIPLET}",
          f"-I{include / f'python{py}'}", f"-I{include / TRIPLET / f'python{py}'}",
          str(c_file), "-o", str(target)])
    return target


def _module_bytes(path: Path) -> bytes:
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-qdc", str(path)], check=True,
                              capture_output=True).stdout
    return path.read_bytes()


# --------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True)
class GuestResult:
    name: str
    rc: int
    output: str

    def json(self) -> Any:
        """The output parsed as JSON (for commands that print one JSON document)."""
        return json.loads(self.output)


@dataclass
class GuestRun:
    config: GuestConfig
    kernel_release: str
    results: dict[str, GuestResult]
    completed: bool  # the guest got through every command and reached poweroff
    timed_out: bool
    seconds: float
    log: Path  # the whole console
    console: str = field(repr=False, default="")

    def result(self, name: str) -> GuestResult:
        if name not in self.results:
            raise HarnessError(
                f"{self.config.name}: no result for {name!r} (guest"
                f" {'timed out' if self.timed_out else 'stopped'}; console in {self.log});"
                f" console ends:\n{self.console_tail()}"
            )
        return self.results[name]

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def _run_overlay(cpio: CpioWriter, *, marker: str, config: GuestConfig, kernel: Kernel,
                 commands: Sequence[GuestCommand], shell_after: bool,
                 files: dict[str, bytes]) -> None:
    cpio.directory("dev")
    # The kernel opens it for /init's stdio before /init can mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    cpio.directory("etc")
    cpio.directory("etc/kvmppc-guest")
    cpio.directory("etc/kvmppc-guest/commands")
    cpio.file("etc/kvmppc-guest/run.conf",
              f"MARKER={marker}\nMODULES='{' '.join(config.modules)}'\n"
              f"SHELL_AFTER={int(shell_after)}\n".encode())
    cpio.file("etc/kvmppc-guest/commands.list",
              "".join(f"{c.name} {c.timeout}\n" for c in commands).encode())
    for command in commands:
        cpio.file(f"etc/kvmppc-guest/commands/{command.name}.sh", command.script.encode() + b"\n")
    for name, data in sorted(files.items()):  # directories other than etc/kvmppc-guest exist
        cpio.file(name.lstrip("/"), data)
    cpio.directory("lib")
    cpio.directory("lib/modules")
    cpio.directory("lib/modules/kvmppc-guest")
    for module in config.modules:
        if module not in kernel.modules:
            raise HarnessError(f"kernel {kernel.release} has no {module} module")
        cpio.file(f"lib/modules/kvmppc-guest/{module}.ko", _module_bytes(kernel.modules[module]))


def parse_console(text: str, marker: str) -> tuple[dict[str, GuestResult], bool]:
    """Results framed by init.sh in the console text, and whether the guest said DONE."""
    results: dict[str, GuestResult] = {}
    current: str | None = None
    body: list[str] = []
    done = False
    for raw in text.splitlines():
        line = raw.strip()
        if marker not in line:
            if current is not None and re.fullmatch(r"[A-Za-z0-9+/=]+", line):
                body.append(line)
            continue
        # The kernel's own console output can precede the marker on its line.
        words = line[line.index(marker) + len(marker):].split()
        if words[:1] == ["BEGIN"] and len(words) == 2:
            current, body = words[1], []
        elif words[:1] == ["END"] and len(words) == 3 and words[1] == current:
            try:
                output = base64.b64decode("".join(body)).decode("utf-8", "replace")
            except binascii.Error as exc:  # a console line lost or cut by kernel messages
                output = f"[powerguest: {current}'s output was garbled on the console: {exc}]"
            results[current] = GuestResult(current, int(words[2].removeprefix("rc=")), output)
            current = None
        elif words == ["DONE"]:
            done = True
    return results, done


def run_in_guest(config: GuestConfig | str, commands: Sequence[GuestCommand] | None = None, *,
                 timeout: float = DEFAULT_BOOT_TIMEOUT, echo: bool = False,
                 shell_after: bool = False, extra_layers: Sequence[Path] = (),
                 files: dict[str, bytes] | None = None,
                 memory: str | None = None) -> GuestRun:
    """Boot ``config``, run ``commands`` (its kind's battery by default), power off.

    QEMU is killed after ``timeout`` seconds whatever the guest is doing. With
    ``shell_after``, the console is this terminal's and a shell follows the commands.
    ``extra_layers`` are more initramfs archives (the QEMU layer), ``files`` more files in
    the run's own layer (path in the guest -> bytes), ``memory`` the guest's -m instead of
    the config's.
    """
    if isinstance(config, str):
        config = CONFIGS[config]
    if commands is None:
        commands = commands_for(config.kind)
    check_host_tools()
    kernel = kernel_named(config.kernel)
    layers = guest_layers(config.suite)
    marker = f"@@kvmppc-{secrets.token_hex(6)}@@"
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
        overlay = Path(scratch) / "run.cpio.gz"
        write_cpio_gz(overlay, lambda cpio: _run_overlay(
            cpio, marker=marker, config=config, kernel=kernel, commands=commands,
            shell_after=shell_after, files=files or {}))
        # The kernel unpacks concatenated archives one after another (Documentation/
        # driver-api/early-userspace/buffer-format.rst), so the cached layers are reused as
        # they are.
        initrd = Path(scratch) / "initrd.cpio.gz"
        with open(initrd, "wb") as out:
            for part in (*layers, *extra_layers, overlay):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        # -nodefaults: no default VGA (whose ROM, vgabios-stdvga.bin, comes from seabios,
        # which a test host need not have; spapr_vga_init() in hw/ppc/spapr.c adds none for
        # VGA_NONE, and with no graphics no USB keyboard either), no default NIC. The console
        # is the machine's own spapr-vty on serial 0 (hvc0), on this process's stdio.
        argv = [QEMU, "-M", config.machine, "-cpu", config.cpu, "-m", memory or config.memory,
                "-smp", "1", "-nodefaults", "-display", "none", "-serial", "mon:stdio",
                "-no-reboot",
                "-kernel", str(kernel.vmlinux), "-initrd", str(initrd),
                # loglevel=1: kernel messages would cut into the framed output lines;
                # panic=-1 with -no-reboot: a dead /init ends QEMU at once.
                "-append", "console=hvc0 loglevel=1 panic=-1"]
        progress(f"booting {config.name} ({config.cpu}, {kernel.release}), at most"
                 f" {timeout:.0f} s; console in {log}")
        console, timed_out, seconds = _boot(argv, log, timeout, echo, interactive=shell_after)
    results, done = parse_console(console, marker)
    outcome = "shell ended" if shell_after else f"{len(results)} results"
    progress(f"{config.name}: {outcome} in {seconds:.1f} s"
             + (" (TIMED OUT, QEMU killed)" if timed_out else ""))
    return GuestRun(config, kernel.release, results, done, timed_out, seconds, log, console)


@functools.cache
def session_run(name: str) -> GuestRun | HarnessError:
    """One boot of config ``name`` with its battery per process, or why there is none.

    Test modules share it through this module, so the suite boots each config once.
    """
    from tests.powerguest import kvm_oracle  # noqa: PLC0415 (it imports this module)

    if name in kvm_oracle.ORACLE_CONFIGS:  # one boot: the battery, then QEMU's cases
        outcome = kvm_oracle.session(name)
        return outcome if isinstance(outcome, HarnessError) else outcome.boot
    try:
        return run_in_guest(name)
    except HarnessError as exc:
        return exc


def _boot(argv: list[str], log: Path, timeout: float, echo: bool,
          interactive: bool) -> tuple[str, bool, float]:
    started = time.monotonic()
    with open(log, "wb") as log_file:
        log_file.write(("$ " + " ".join(argv) + "\n").encode())
        log_file.flush()
        process = subprocess.Popen(
            argv, stdin=None if interactive else subprocess.DEVNULL,
            stdout=None if interactive else subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=not interactive,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):  # it ended just before the kill
                if interactive:
                    process.kill()
                else:
                    os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        chunks = []
        try:
            if process.stdout is not None:
                for line in iter(process.stdout.readline, b""):
                    chunks.append(line)
                    log_file.write(line)
                    if echo:
                        sys.stderr.write(line.decode("utf-8", "replace"))
            process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    console = b"".join(chunks).decode("utf-8", "replace")
    return console, timed_out.is_set(), time.monotonic() - started


# --------------------------------------------------------------------------------------------
# profiles


def profile_name(config: GuestConfig, probe: dict[str, Any]) -> str:
    """<cpu>-<mmu>-<kind>, e.g. power9-radix-hv: the CPU model, MMU mode and VM type; a
    4 KiB-page kernel's ends in -4k (power9-radix-hv-4k)."""
    mmu = probe["host"]["mmu"] or "unknown"
    suffix = config.profile_suffix
    if suffix is None:
        suffix = "" if config.pages == "64k" else f"-{config.pages}"
    return f"{config.cpu.lower()}-{mmu.lower()}-{config.kind}{suffix}"


def capture_profiles(configs: Iterable[str] | None = None) -> list[Path]:
    """Boot each config, save its ``kvmppc probe --json`` as kvmppc/profiles/<name>.json."""
    written: list[Path] = []
    probe_command = next(command for command in BATTERY if command.name == "probe-json")
    for name in configs or CONFIGS:
        config = CONFIGS[name]
        if config.suite != HOST_SUITE and not configs and any(
                c.kernel == config.kernel and c.suite == HOST_SUITE for c in CONFIGS.values()):
            continue  # the same kernel's probe, captured with Debian 12's userland
        try:
            run = run_in_guest(config, [probe_command])
        except MissingPrerequisiteError as exc:
            progress(f"{name}: skipped: {exc}")
            continue
        result = run.result("probe-json")
        if result.rc != 0:
            raise HarnessError(
                f"{name}: kvmppc probe --json failed ({result.rc}):\n{result.output}")
        probe = result.json()
        # The guest's RAM and commit charge are the test VM's, not the kernel's answer: a
        # profile stands for any host with that kernel, so it carries none (the overcommit
        # check then needs a live probe).
        probe["host"].pop("memory", None)
        path = REPO / "kvmppc/profiles" / f"{profile_name(config, probe)}.json"
        path.write_text(json.dumps(probe, indent=2) + "\n")
        progress(f"{name}: wrote {path.relative_to(REPO)} (kernel {run.kernel_release})")
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# CLI


def _print_run(run: GuestRun) -> None:
    for result in run.results.values():
        print(f"=== {result.name} rc={result.rc}")
        print(result.output, end="" if result.output.endswith("\n") else "\n")
    if not run.completed:
        print(f"=== guest did not finish{' (timed out)' if run.timed_out else ''};"
              f" console tail:\n{run.console_tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.powerguest.harness",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("build", help="fetch the packages and build the guest image")
    for action in ("run", "shell"):
        p = sub.add_parser(action, help="boot a guest and run commands"
                           + (", then a shell on the console" if action == "shell" else ""))
        p.add_argument("config", choices=sorted(CONFIGS))
        p.add_argument("-c", "--command", action="append", default=[],
                       help="shell command to run instead of the battery (repeatable)")
        p.add_argument("--timeout", type=float,
                       default=DEFAULT_BOOT_TIMEOUT if action == "run" else 3600.0)
        p.add_argument("--echo", action="store_true", help="copy the console to stderr")
    p = sub.add_parser("capture-profiles", help="rewrite kvmppc/profiles from real kernels")
    p.add_argument("configs", nargs="*", metavar="CONFIG", help=", ".join(sorted(CONFIGS)))
    sub.add_parser("build-pr-kernel", help="run build-pr-kernel.sh (64 KiB pages; 13 min or more)")
    args = parser.parse_args(argv)
    try:
        if args.action == "build":
            for layer in guest_layers():
                print(layer)
            print(debian_kernel().vmlinux)
            try:
                print(pr_kernel().vmlinux)
            except MissingPrerequisiteError as exc:
                print(exc)
        elif args.action in ("run", "shell"):
            commands = None
            if args.command:
                commands = [GuestCommand(f"command-{i}", script)
                            for i, script in enumerate(args.command, 1)]
            run = run_in_guest(args.config, commands, timeout=args.timeout, echo=args.echo,
                               shell_after=args.action == "shell")
            if args.action == "shell":
                return 0 if not run.timed_out else 1
            _print_run(run)
            return 0 if run.completed else 1
        elif args.action == "capture-profiles":
            unknown = set(args.configs) - set(CONFIGS)
            if unknown:
                parser.error(f"unknown configs {sorted(unknown)}: choose from {sorted(CONFIGS)}")
            capture_profiles(args.configs or None)
        elif args.action == "build-pr-kernel":
            return subprocess.call([str(PR_KERNEL_SCRIPT)])
    except HarnessError as exc:
        progress(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

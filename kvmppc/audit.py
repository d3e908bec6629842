"""``kvmppc audit``: would each guest on this host start — here, and on a what-if host?

The guests are libvirt's persistent domain XMLs (``/etc/libvirt/qemu/*.xml``), or
``--domain`` files, or ``--qemu-cmdline-file`` files.  The what-if host is this host's probe
(or ``--host-profile``) changed by ``--what-if``: ``base-page-size=4K`` (the kernel moves to
4 KiB pages, as Debian 13's ppc64el default kernel did), ``host-profile=NAME`` (another
host altogether), ``hugepages=SIZE:COUNT`` (a pool of COUNT pages of SIZE, mounted on
hugetlbfs), ``qemu-version=10.0`` (the host runs that QEMU release: its machine types, CPU
models, default CPUs, messages and option syntax), and ``debian13``, which is
``qemu-version=10.0`` and ``base-page-size=4K`` together (a Debian 12 host upgraded to Debian
13: QEMU 10.0.13 and the default ``linux-image-powerpc64le``, 4 KiB pages; give
``qemu-version=10.0`` alone for the ``-64k`` kernel).  The answer is the policy's, per guest
(the same start-up replay, for the request's ``qemu_version``); on top, a guest whose RAM is
preallocated from a hugepage pool that is too small is flagged (QEMU's prealloc would fail:
"os_mem_prealloc: Insufficient free host memory pages available to allocate guest RAM"), and
each what-if answer says what changed from this host's for that guest: the machine type
``pseries`` stands for, a machine type or CPU model that is gone, a new deprecation warning,
the CPU model the guest gets, the RAM backing's page size, the cap's default.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass, replace
from typing import Any

from kvmppc.errors import ProfileError, UsageError
from kvmppc.inputs.answer import EXIT_CANNOT_JUDGE, EXIT_NO, EXIT_USAGE, EXIT_YES, Answer, judge
from kvmppc.inputs.domain_xml import LibvirtRefusalError, host_memory_from_probe, translate_domain
from kvmppc.inputs.qemu_argv import CommandLineError, split_command_line, translate_argv
from kvmppc.model import HugepagePool, HugetlbfsMount, ProbeResult
from kvmppc.policy import CheckResult, ProblemKind, QemuRefusalError, format_size, parse_size
from kvmppc.profiles import load_profile
from kvmppc.qemu_versions import choose

LIBVIRT_QEMU_DIR = "/etc/libvirt/qemu"
WHAT_IF_KEYS = ("base-page-size", "host-profile", "hugepages", "qemu-version")
# Presets: one word for several what-ifs.  debian13: a POWER host upgraded to Debian 13 gets
# QEMU 10.0 (qemu-system-ppc 1:10.0.13+ds-0+deb13u1) and, from the default
# linux-image-powerpc64le, a 4 KiB-page kernel (linux-image-powerpc64le-64k keeps 64 KiB).
WHAT_IF_PRESETS = {"debian13": ("qemu-version=10.0", "base-page-size=4K")}
PREALLOC_ERROR = ("os_mem_prealloc: Insufficient free host memory pages available to"
                  " allocate guest RAM")


@dataclass(frozen=True)
class Guest:
    label: str
    kind: str  # "domain" or "qemu-cmdline"
    text: str


@dataclass(frozen=True)
class Row:
    guest: Guest
    answer: Answer | None
    error: str | None = None  # the input could not be read / translated
    pool_warning: str | None = None
    libvirt_refuses: bool = False  # the error is libvirt's own refusal to start it
    command_line_refused: bool = False  # the error is about the command line (QEMU's words)
    qemu_refuses: bool = False  # the error is QEMU's refusal of a line this host's QEMU takes
    since_here: tuple[str, ...] = ()  # what-if rows: what changed from this host's answer

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "no" if self.libvirt_refuses or self.qemu_refuses else "bad input"
        assert self.answer is not None
        if self.answer.verdict == "yes" and self.pool_warning:
            return "no"
        return self.answer.verdict

    @property
    def first_error(self) -> str:
        if self.error is not None:
            return self.error
        assert self.answer is not None
        if self.answer.result is None:
            return "cannot judge: " + "; ".join(self.answer.translation.cannot_judge)
        return self.answer.first_error or self.pool_warning or ""

    @property
    def change(self) -> str:
        if self.answer is None or self.verdict == "yes":
            return ""
        changes = self.answer.changes
        if self.pool_warning and not changes:
            return "grow the hugepage pool (see error)"
        return changes[0] if changes else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "guest": self.guest.label,
            "kind": self.guest.kind,
            "would_start": self.verdict,
            "first_error": self.first_error or None,
            "change": self.change or None,
            "changes": list(self.answer.changes) if self.answer else [],
            "hugepage_pool": self.pool_warning,
            "changed_from_this_host": list(self.since_here),
            "detail": self.answer.to_dict() if self.answer else None,
        }


@dataclass(frozen=True)
class WhatIf:
    """The what-if host: its probe, a label, and the QEMU release it runs when one was given
    (``qemu-version=``; every guest's request then asks for that release)."""

    probe: ProbeResult
    label: str
    qemu_version: str | None = None


def what_if_host(probe: ProbeResult, what_ifs: list[str],
                 ) -> tuple[ProbeResult, str]:
    """Apply ``--what-if KEY=VALUE`` changes to a probe; returns it and a label."""
    found = what_if(probe, what_ifs)
    return found.probe, found.label


def what_if(probe: ProbeResult, what_ifs: list[str]) -> WhatIf:
    """Apply ``--what-if KEY=VALUE`` (or a preset's) changes to a probe."""
    labels: list[str] = []
    qemu_version: str | None = None
    expanded: list[str] = []
    for item in what_ifs:
        preset = WHAT_IF_PRESETS.get(item)
        expanded += preset if preset else (item,)
        labels.append(f"{item} (= {' + '.join(preset)})" if preset else item)
    for item in expanded:
        key, eq, value = item.partition("=")
        if not eq or key not in WHAT_IF_KEYS or not value:
            raise UsageError(f"--what-if {item!r}: give one of {', '.join(WHAT_IF_KEYS)} as"
                             " KEY=VALUE (base-page-size=4K, host-profile=NAME,"
                             " hugepages=2M:1024, qemu-version=10.0), or"
                             f" {', '.join(WHAT_IF_PRESETS)}")
        if key == "qemu-version":
            try:
                qemu_version = choose(value).version
            except ValueError as exc:
                raise UsageError(f"--what-if {item!r}: {exc}") from None
        elif key == "host-profile":
            probe = load_profile(value)
        elif key == "base-page-size":
            size = _size(item, value)
            if size not in (4096, 65536):
                raise UsageError(f"--what-if {item!r}: a POWER kernel's base page size is 4K"
                                 " or 64K")
            probe = replace(probe, host=replace(probe.host, base_page_size=size))
        else:
            size_text, colon, count_text = value.partition(":")
            size = _size(item, size_text)
            if not colon or not count_text.isdigit() or size & (size - 1):
                raise UsageError(f"--what-if {item!r}: give hugepages=SIZE:COUNT, e.g."
                                 " hugepages=16M:256")
            count = int(count_text)
            pools = (*(p for p in probe.hugepages.pools if p.page_size != size),
                     HugepagePool(size, count, count, 0, 0))
            mounts = probe.hugepages.mounts
            if not any(m.page_size == size for m in mounts):
                mounts = (*mounts, HugetlbfsMount(f"/dev/hugepages-{format_size(size)}", size,
                                                  "mount-options"))
            probe = replace(probe, hugepages=replace(probe.hugepages, pools=pools,
                                                     mounts=mounts))
    if qemu_version is not None:
        # the host's installed QEMU is that release now (a host-profile= after it included)
        probe = replace(probe, host=replace(probe.host, qemu_version=qemu_version))
    return WhatIf(probe, "what-if " + ", ".join(labels), qemu_version)


def _size(item: str, text: str) -> int:
    try:
        return parse_size(text)
    except QemuRefusalError:
        raise UsageError(f"--what-if {item!r}: {text!r} is not a size") from None


def _pool_warning(answer: Answer, probe: ProbeResult) -> str | None:
    """Prealloc'd hugepage RAM needs that many free pages in the pool of that size."""
    result = answer.result
    if result is None or not result.ok or result.ram_size is None:
        return None
    if len(result.backings) != 1 or "prealloc" not in " ".join(answer.translation.notes):
        return None  # NUMA cells: the size of each cell is not in the result
    backing = result.backings[0]
    if backing.mount is None or backing.page_size <= probe.host.base_page_size:
        return None
    page = backing.page_size
    pages = -(-result.ram_size // page)
    pool = probe.hugepages.pool(page)
    free = pool.free if pool else 0
    if free >= pages:
        return None
    return (f"{PREALLOC_ERROR} (kvmppc: {pages} pages of {format_size(page)} needed, the pool"
            f" has {free} free)")


def audit_guest(guest: Guest, probe: ProbeResult, qemu_version: str | None = None) -> Row:
    """One guest on one host.  ``qemu_version``: the release asked for (else the one the probe
    found installed, else the newest modelled, as ``check`` chooses); it reads the guest's
    command line (options, libvirt's ``pseries``) and answers."""
    try:
        release = choose(qemu_version, probe.host.qemu_version).version
    except ValueError as exc:
        return Row(guest, None, error=str(exc))
    try:
        if guest.kind == "domain":
            translation = translate_domain(guest.text, host_memory_from_probe(probe),
                                           qemu_version=release)
        else:
            translation = translate_argv(split_command_line(guest.text), release)
        if qemu_version is not None and translation.request is not None:
            translation = replace(translation, request=replace(
                translation.request, qemu_version=qemu_version))
        answer = judge(translation, probe)
    except LibvirtRefusalError as exc:
        return Row(guest, None, error=f"libvirt: {exc}", libvirt_refuses=True)
    except CommandLineError as exc:
        return Row(guest, None, error=str(exc), command_line_refused=True)
    except UsageError as exc:
        return Row(guest, None, error=str(exc))
    return Row(guest, answer, pool_warning=_pool_warning(answer, probe))


def compare(here: Row, there: Row) -> Row:
    """``there`` (a what-if answer) with what changed from ``here`` (this host's) for the same
    guest, read off the two results of the same policy."""
    if here.error is None and there.command_line_refused:
        # the what-if QEMU refuses a command line this host's QEMU reads ("-runas: invalid
        # option" on 10.0): the guest stops starting, in QEMU's words
        return replace(there, qemu_refuses=True,
                       since_here=(f"the command line: {there.error}",))
    a = here.answer.result if here.answer else None
    b = there.answer.result if there.answer else None
    if a is None or b is None:
        return there
    return replace(there, since_here=_changes(a, b))


def _changes(a: CheckResult, b: CheckResult) -> tuple[str, ...]:
    changes: list[str] = []
    qemu = f"QEMU {b.qemu_version}"
    if a.machine is not None and b.machine is None and ProblemKind.MACHINE in b.error_kinds:
        changes.append(f"machine type {a.machine.name} is gone in {qemu}")
    elif a.machine is not None and b.machine is not None and a.machine.name != b.machine.name:
        # the same guest, another machine: the "pseries" alias (libvirt resolves it too)
        changes.append(f"'pseries' is {b.machine.name} in {qemu} ({a.machine.name} before)")
    old_warnings = {w.message for w in a.warnings}
    changes += [f"new warning: {w.message}" for w in b.warnings
                if w.kind == ProblemKind.MACHINE and w.message not in old_warnings]
    if a.cpu is not None and b.cpu is None and ProblemKind.CPU in b.error_kinds:
        changes.append(f"CPU model {b.request.cpu or a.cpu.name} is gone in {qemu}")
    elif a.cpu is not None and b.cpu is not None and (a.cpu.name, a.cpu.pvr) != (
            b.cpu.name, b.cpu.pvr):
        # libvirt writes the machine's default CPU for a TCG guest without <cpu>
        default = b.request.cpu is None or a.request.cpu != b.request.cpu
        asked = "the default CPU" if default else f"-cpu {b.request.cpu}"
        changes.append(f"{asked} is {b.cpu.name} ({b.cpu.family}, PVR {b.cpu.pvr:#010x}) in"
                       f" {qemu}, was {a.cpu.name} (PVR {a.cpu.pvr:#010x})")
    if a.backing_page_size != b.backing_page_size and b.backing_page_size is not None:
        before = format_size(a.backing_page_size) if a.backing_page_size else "?"
        changes.append(f"RAM backing pages {before} -> {format_size(b.backing_page_size)}")
    if (a.max_page_shift is not None and b.max_page_shift is not None
            and a.max_page_shift != b.max_page_shift):
        changes.append(f"cap-hpt-max-page-size {format_size(1 << a.max_page_shift)} ->"
                       f" {format_size(1 << b.max_page_shift)} ({b.max_page_size_source})")
    return tuple(changes)


def collect_guests(args: argparse.Namespace) -> list[Guest]:
    guests: list[Guest] = []
    paths = [(p, "domain") for p in args.domain] + [(p, "qemu-cmdline")
                                                     for p in args.qemu_cmdline_file]
    if not paths:
        found = sorted(glob.glob(os.path.join(args.libvirt_dir, "*.xml")))
        if not found:
            raise UsageError(f"no domain XML files in {args.libvirt_dir}: give --domain or"
                             " --qemu-cmdline-file, or --libvirt-dir")
        paths = [(p, "domain") for p in found]
    for path, kind in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        guests.append(Guest(path, kind, text))
    return guests


def _table(title: str, rows: list[Row], compared: bool = False) -> str:
    header: tuple[str, ...] = ("guest", "would start", "QEMU's first error", "what to change")
    cells: list[tuple[str, ...]] = [
        (os.path.basename(r.guest.label), r.verdict, r.first_error, r.change) for r in rows]
    if compared:
        header += ("changed from this host",)
        cells = [(*c, "; ".join(r.since_here)) for c, r in zip(cells, rows, strict=True)]
    widths = [min(60, max(len(h), *(len(c[i]) for c in cells))) for i, h in enumerate(header)]
    lines = [title]
    for row in (header, *cells):
        lines.append("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip())
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    from kvmppc.host import load_probe  # noqa: PLC0415

    own = getattr(args, "qemu_version", None)
    try:
        guests = collect_guests(args)
        here = load_probe(args.host_profile)
        if own is not None:
            try:
                own = choose(own).version
            except ValueError as exc:
                raise UsageError(f"--qemu-version: {exc}") from None
        release = choose(own, here.host.qemu_version)
        hosts = [(f"this host ({here.source}, QEMU {release.version})", here, own,
                  release.version)]
        if args.what_if:
            there = what_if(here, list(args.what_if))
            there_qemu = there.qemu_version or own
            there_release = choose(there_qemu, there.probe.host.qemu_version).version
            hosts.append((f"{there.label} (QEMU {there_release})", there.probe, there_qemu,
                          there_release))
    except (UsageError, ProfileError) as exc:
        print(f"kvmppc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report: list[tuple[str, str, list[Row]]] = []
    for label, probe, qemu_version, answered in hosts:
        rows = [audit_guest(g, probe, qemu_version) for g in guests]
        if report:
            rows = [compare(h, t) for h, t in zip(report[0][2], rows, strict=True)]
        report.append((label, answered, rows))
    if args.json:
        print(json.dumps({"hosts": [{"host": label, "qemu_version": answered,
                                     "guests": [r.to_dict() for r in rows]}
                                    for label, answered, rows in report]}, indent=2))
    else:
        print("\n\n".join(_table(label + ":", rows, compared=index > 0)
                           for index, (label, _answered, rows) in enumerate(report)))
    verdicts = {r.verdict for _label, _answered, rows in report for r in rows}
    if "no" in verdicts:
        return EXIT_NO
    if "bad input" in verdicts:
        return EXIT_USAGE
    if "cannot judge" in verdicts:
        return EXIT_CANNOT_JUDGE
    return EXIT_YES

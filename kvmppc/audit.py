"""``kvmppc audit``: would each guest on this host start — here, and on a what-if host?

The guests are libvirt's persistent domain XMLs (``/etc/libvirt/qemu/*.xml``), or
``--domain`` files, or ``--qemu-cmdline-file`` files.  The what-if host is this host's probe
(or ``--host-profile``) changed by ``--what-if``: ``base-page-size=4K`` (the kernel moves to
4 KiB pages, as Debian 13's ppc64el default kernel did), ``host-profile=NAME`` (another
host altogether), ``hugepages=SIZE:COUNT`` (a pool of COUNT pages of SIZE, mounted on
hugetlbfs).  The answer is the policy's, per guest; on top, a guest whose RAM is
preallocated from a hugepage pool that is too small is flagged (QEMU's prealloc would fail:
"os_mem_prealloc: Insufficient free host memory pages available to allocate guest RAM").
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
from kvmppc.inputs.qemu_argv import split_command_line, translate_argv
from kvmppc.model import HugepagePool, HugetlbfsMount, ProbeResult
from kvmppc.policy import QemuRefusalError, format_size, parse_size
from kvmppc.profiles import load_profile

LIBVIRT_QEMU_DIR = "/etc/libvirt/qemu"
WHAT_IF_KEYS = ("base-page-size", "host-profile", "hugepages")
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

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "no" if self.libvirt_refuses else "bad input"
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
            "detail": self.answer.to_dict() if self.answer else None,
        }


def what_if_host(probe: ProbeResult, what_ifs: list[str],
                 ) -> tuple[ProbeResult, str]:
    """Apply ``--what-if KEY=VALUE`` changes to a probe; returns it and a label."""
    labels: list[str] = []
    for item in what_ifs:
        key, eq, value = item.partition("=")
        if not eq or key not in WHAT_IF_KEYS or not value:
            raise UsageError(f"--what-if {item!r}: give one of {', '.join(WHAT_IF_KEYS)} as"
                             " KEY=VALUE (base-page-size=4K, host-profile=NAME,"
                             " hugepages=2M:1024)")
        if key == "host-profile":
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
        labels.append(item)
    return probe, "what-if " + ", ".join(labels)


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


def audit_guest(guest: Guest, probe: ProbeResult) -> Row:
    try:
        if guest.kind == "domain":
            translation = translate_domain(guest.text, host_memory_from_probe(probe))
        else:
            translation = translate_argv(split_command_line(guest.text))
        answer = judge(translation, probe)
    except LibvirtRefusalError as exc:
        return Row(guest, None, error=f"libvirt: {exc}", libvirt_refuses=True)
    except UsageError as exc:
        return Row(guest, None, error=str(exc))
    return Row(guest, answer, pool_warning=_pool_warning(answer, probe))


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


def _table(title: str, rows: list[Row]) -> str:
    header = ("guest", "would start", "QEMU's first error", "what to change")
    cells = [(os.path.basename(r.guest.label), r.verdict, r.first_error, r.change)
             for r in rows]
    widths = [min(60, max(len(h), *(len(c[i]) for c in cells))) for i, h in enumerate(header)]
    lines = [title]
    for row in (header, *cells):
        lines.append("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip())
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    from kvmppc.host import load_probe  # noqa: PLC0415

    try:
        guests = collect_guests(args)
        here = load_probe(args.host_profile)
        hosts = [(f"this host ({here.source})", here)]
        if args.what_if:
            what_if, what_if_label = what_if_host(here, list(args.what_if))
            hosts.append((what_if_label, what_if))
    except (UsageError, ProfileError) as exc:
        print(f"kvmppc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = []
    for label, probe in hosts:
        rows = [audit_guest(g, probe) for g in guests]
        report.append((label, rows))
    if args.json:
        print(json.dumps({"hosts": [{"host": label, "guests": [r.to_dict() for r in rows]}
                                    for label, rows in report]}, indent=2))
    else:
        print("\n\n".join(_table(label + ":", rows) for label, rows in report))
    verdicts = {r.verdict for _label, rows in report for r in rows}
    if "no" in verdicts:
        return EXIT_NO
    if "bad input" in verdicts:
        return EXIT_USAGE
    if "cannot judge" in verdicts:
        return EXIT_CANNOT_JUDGE
    return EXIT_YES

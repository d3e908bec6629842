"""Every answer kvmppc gives, as people and programs read it: text, JSON, QEMU arguments and
libvirt XML.  The CLI and the daemon both print from here, so ``kvmppc check`` and
``GET /v1/check`` say the same thing in the same words.

Reads :mod:`kvmppc.model` (the probe) and the policy's typed answers; decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kvmppc import __version__
from kvmppc.model import VM_TYPES, ProbeResult, VmTypeInfo, smmu_flag_names
from kvmppc.policy.backing import Backing
from kvmppc.policy.guest_pages import PageSizes
from kvmppc.policy.problems import Problem
from kvmppc.policy.request import CheckRequest
from kvmppc.policy.result import Advice, CapAdvice, CheckResult, HugepageOption, Suggestion
from kvmppc.policy.sizes import format_bytes, format_size

# --------------------------------------------------------------------------------------------
# the probe (kvmppc probe, kvmppc query host)


def _size(value: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return f"{value} B"


def _shift(page_shift: int) -> str:
    return _size(1 << page_shift).replace(" ", "")


def _vm_type_lines(vm: VmTypeInfo) -> list[str]:
    label = {"default": "default", "hv": "HV", "pr": "PR"}[vm.name]
    label += f" (type {VM_TYPES[vm.name]})"
    if not vm.available:
        return [f"  {label}: not available: {vm.error}"]
    lines = [f"  {label}: VM created" + (f", lands on KVM-{vm.kind}" if vm.kind else "")]
    smmu = vm.smmu
    if smmu is None:
        lines.append(f"    SMMU info: {vm.smmu_error}")
    else:
        guessed = " (guessed as QEMU 3.0 does: no KVM_CAP_PPC_GET_SMMU_INFO)" if (
            smmu.source.value == "guessed") else ""
        flags = "|".join(smmu.flag_names) or "none"
        lines.append(
            f"    SMMU: flags {smmu.flags:#x} ({flags}), SLB {smmu.slb_size} entries,"
            f" keys {smmu.data_keys} data / {smmu.instr_keys} instr{guessed}"
        )
        for seg in smmu.segments:
            pages = ", ".join(f"{_shift(p.page_shift)} pte_enc {p.pte_enc:#x}" for p in seg.pages)
            lines.append(
                f"      {_shift(seg.page_shift)} segment (slb_enc {seg.slb_enc:#x}): {pages}"
            )
        if smmu.page_sizes_real:
            lines.append(
                "    guest pages must be backed by host-contiguous pages at least as large"
            )
        if vm.is_pr and not smmu.one_t_segments:
            # arch/powerpc/kvm/book3s_pr.c kvm_vm_ioctl_get_smmu_info_pr: without vCPU 0
            # it reports "the minimum capability, i.e., no 64k pages".
            lines.append(
                "    (asked before any vCPU exists: once vCPU 0 has a POWER7 or later PVR,"
                " KVM-PR adds 64KiB pages and 1T segments; 'kvmppc check' accounts for it)"
            )
    if vm.rmmu is not None:
        sizes = ", ".join(_shift(shift) for shift in vm.rmmu.page_shifts)
        lines.append(f"    radix page sizes: {sizes}")
    caps = ", ".join(name for name, value in vm.caps.items() if value and name.startswith("PPC_"))
    if caps:
        lines.append(f"    caps: {caps}")
    return lines


def _ram_kind(backing: Backing) -> str:
    """RAM without a mem-path: anonymous, or a memory backend's own kind (memfd, hugepages)."""
    return backing.source if backing.source.startswith(("memfd", "anonymous")) else (
        "anonymous RAM")


def derived_text(probe: ProbeResult) -> str:
    """One line saying a profile was derived from the kernel's source, from what, and why."""
    prov = probe.provenance
    assert prov is not None
    base = f"from the captured profile {prov.derived_from}" if prov.derived_from else ""
    return f"written from kernel source {base}: {prov.why}".replace("  ", " ")


def render_probe(result: ProbeResult) -> str:
    """``kvmppc probe``'s text."""
    host, kvm, huge = result.host, result.kvm, result.hugepages
    lines = [f"kvmppc {result.kvmppc_version or __version__} probe ({result.source})"]
    if result.provenance is not None and result.provenance.derived:
        lines.append(f"DERIVED, not captured: {derived_text(result)}")
    cpu = host.cpu_model or "unknown CPU"
    if host.pvr is not None:
        cpu += f", PVR {host.pvr:#010x}"
    details = ", ".join(part for part in (host.platform, f"{host.mmu} MMU" if host.mmu else None)
                        if part)
    lines.append(f"host: {host.arch}, kernel {host.kernel_release}, {cpu}"
                 + (f", {details}" if details else ""))
    lines.append(f"  base page size {_size(host.base_page_size)}")
    # What `check` answers for by default (kvmppc.qemu_versions.choose): the installed QEMU.
    lines.append(f"  qemu-system-ppc64: {host.qemu_version}" if host.qemu_version
                 else "  qemu-system-ppc64: none found (checks answer for the newest modelled"
                 " QEMU unless given --qemu-version)")
    if host.error:
        lines.append(f"  error: {host.error}")
    pools = ", ".join(
        f"{_size(p.page_size)}: {p.free}/{p.total} free" + (f" ({p.reserved} reserved)"
                                                            if p.reserved else "")
        for p in huge.pools
    ) or "none"
    lines.append(f"hugepage pools: {pools}")
    mounts = ", ".join(f"{m.path} ({_size(m.page_size)})" for m in huge.mounts) or "none"
    lines.append(f"hugetlbfs mounts: {mounts}")
    if huge.error:
        lines.append(f"  error: {huge.error}")
    if not kvm.present or kvm.api_version is None:
        lines.append(f"KVM: not usable: {kvm.error}")
    elif not kvm.powerpc:
        lines.append(
            f"KVM: present ({kvm.device}, API {kvm.api_version}), but not PowerPC: this is"
            f" {host.arch}; a pseries guest here runs under TCG, where no backing check applies"
        )
    else:
        modules = ", ".join(kvm.modules) or "none"
        lines.append(f"KVM: {kvm.device}, API {kvm.api_version}, modules {modules}")
        if kvm.error:
            lines.append(f"  error: {kvm.error}")
        for vm in kvm.vm_types.values():
            lines.extend(_vm_type_lines(vm))
    lines.append(f"probed in {result.duration_s * 1000:.1f} ms")
    return "\n".join(lines)


def cache_line(meta: Mapping[str, Any]) -> str:
    """One line saying how old and how good the daemon's cached answer is."""
    probed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta["probed_at"]))
    line = f"answered by the kvmppc daemon from its probe of {probed} ({meta['status']})"
    if meta["stale"]:
        line += f"; STALE: the last probe failed: {meta['last_error']}"
    return line


# --------------------------------------------------------------------------------------------
# the guest's page sizes (kvmppc pagesizes, and inside kvmppc check)


def page_sizes_json(sizes: PageSizes) -> dict[str, Any]:
    return {
        "qemu_version": sizes.qemu_version,
        "cpu": sizes.cpu.name,
        "cpu_family": sizes.cpu.family,
        "hash_table": sizes.cpu.hash64.value,
        "max_page_shift": sizes.max_page_shift,
        "max_page_size": 1 << sizes.max_page_shift,
        "segments": [
            {
                "page_shift": seg.page_shift,
                "slb_enc": seg.slb_enc,
                "pages": [
                    {"page_shift": page.page_shift, "pte_enc": page.pte_enc}
                    for page in seg.pages
                ],
            }
            for seg in sizes.table.segments
        ],
        "cells": sizes.cells,
        "ci_large_pages": sizes.table.ci_large_pages,
        "one_t_segments": sizes.table.one_t_segments,
        "slb_size": sizes.table.slb_size,
        "warnings": list(sizes.warnings),
    }


def render_page_sizes(sizes: PageSizes) -> str:
    table = sizes.table
    lines = [
        f"guest page sizes for {sizes.cpu.name} ({sizes.cpu.family}, {sizes.cpu.hash64.value}"
        f" hash table), cap-hpt-max-page-size {format_bytes(1 << sizes.max_page_shift)}:",
    ]
    for seg in table.segments:
        pages = ", ".join(
            f"{format_bytes(1 << p.page_shift)} (pte_enc {p.pte_enc:#x})" for p in seg.pages
        )
        lines.append(
            f"  {format_bytes(1 << seg.page_shift)} segment (slb_enc {seg.slb_enc:#x}): {pages}"
        )
    if not table.segments:
        lines.append("  (none)")
    lines.append(
        f"  1T segments: {'yes' if table.one_t_segments else 'no'};"
        f" 64 KiB cache-inhibited pages (pa-features byte 3 bit 0x20):"
        f" {'yes' if table.ci_large_pages else 'no'}; SLB {table.slb_size} entries"
    )
    lines.append("  ibm,segment-page-sizes = <" + " ".join(f"{c:#x}" for c in sizes.cells) + ">")
    lines += [f"warning: {w}" for w in sizes.warnings]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# QEMU arguments and libvirt XML for a checked guest


def qemu_args(request: CheckRequest, result: CheckResult) -> tuple[str, ...]:
    """The QEMU command-line arguments for this request, the cap written out explicitly."""
    options = [request.machine]
    if result.max_page_shift is not None:
        options.append(f"cap-hpt-max-page-size={format_size(1 << result.max_page_shift)}")
    if result.accel == "kvm" and request.kvm_type:
        options.append(f"kvm-type={request.kvm_type}")
    options += [cap if cap.startswith("cap-") else f"cap-{cap}" for cap in request.caps]
    if request.max_cpu_compat is not None:
        options.append(f"max-cpu-compat={request.max_cpu_compat}")
    if request.backends:
        return _qemu_args_with_backends(request, result, options)
    if len(request.mem_paths) == 1:
        options.append("memory-backend=ram0")
    args = ["-machine", ",".join(options), "-accel", result.accel]
    if request.cpu is not None:
        args += ["-cpu", request.cpu]
    size = format_size(result.ram_size) if result.ram_size else request.memory
    if request.memory is not None or request.mem_paths:
        args += ["-m", (size or "") + _hotplug_options(request)]
    elif request.maxmem is not None or request.slots is not None:
        args += ["-m", "512M" + _hotplug_options(request)]
    for index, path in enumerate(request.mem_paths):
        args += [
            "-object",
            f"memory-backend-file,id=ram{index},size={size},mem-path={path},prealloc=on",
        ]
    return tuple(args)


def _hotplug_options(request: CheckRequest) -> str:
    return "".join(f",{key}={value}" for key, value in (
        ("slots", request.slots), ("maxmem", request.maxmem)) if value is not None)


def _qemu_args_with_backends(request: CheckRequest, result: CheckResult,
                             options: list[str]) -> tuple[str, ...]:
    """Backends as ``-object``s, the machine's as ``memory-backend=``, the others as NUMA
    nodes' memdevs (ids mem0, mem1, ... where none was given)."""
    ids = [b.id or f"mem{i}" for i, b in enumerate(request.backends)]
    options += [f"memory-backend={ids[i]}" for i, b in enumerate(request.backends)
                if b.use == "ram"]
    args = ["-machine", ",".join(options), "-accel", result.accel]
    if request.cpu is not None:
        args += ["-cpu", request.cpu]
    if request.memory is not None or request.maxmem is not None or request.slots is not None:
        size = format_size(result.ram_size) if result.ram_size else (request.memory or "512M")
        args += ["-m", size + _hotplug_options(request)]
    if request.mem_paths:
        args += ["-mem-path", request.mem_paths[0]]
    for i, backend in enumerate(request.backends):
        spec = backend.to_spec().rsplit(",use=", 1)[0]
        kind, _, rest = spec.partition(",")
        if backend.id is None:
            rest = f"id={ids[i]},{rest}"
        args += ["-object", f"{kind},{rest}"]
    args += [item for i, b in enumerate(request.backends) if b.use == "numa"
             for item in ("-numa", f"node,memdev={ids[i]}")]
    return tuple(args)


def libvirt_xml(max_page_shift: int | None, hugepage_size: int | None) -> str | None:
    """The libvirt domain XML for the cap (``<hpt><maxpagesize>``) and hugepage backing."""
    lines = []
    if max_page_shift is not None:
        lines += [
            "<features>",
            "  <hpt>",
            f"    <maxpagesize unit='KiB'>{(1 << max_page_shift) >> 10}</maxpagesize>",
            "  </hpt>",
            "</features>",
        ]
    if hugepage_size is not None:
        lines += [
            "<memoryBacking>",
            "  <hugepages>",
            f"    <page size='{hugepage_size >> 10}' unit='KiB'/>",
            "  </hugepages>",
            "</memoryBacking>",
        ]
    return "\n".join(lines) or None


def _suggestion_qemu_args(suggestion: Suggestion) -> tuple[str, ...]:
    return qemu_args(suggestion.request, suggestion.result)


def _suggestion_xml(suggestion: Suggestion) -> str | None:
    return libvirt_xml(suggestion.result.max_page_shift, suggestion.hugepage_size)


# --------------------------------------------------------------------------------------------
# kvmppc check (and GET /v1/check)


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "kind": problem.kind.value,
        "message": problem.message,
        "when": problem.when.value,
        "detail": problem.detail,
        "qemu_text": problem.qemu,
        "more": list(problem.more),
    }


def _cap_json(cap: CapAdvice | None) -> dict[str, Any] | None:
    if cap is None:
        return None
    return {"shift": cap.shift, "bytes": cap.size, "qemu": format_size(cap.size),
            "note": cap.note}


def _hugepage_json(option: HugepageOption) -> dict[str, Any]:
    pool = option.pool
    return {
        "page_size": option.page_size,
        "mounts": list(option.mounts),
        "pool": None if pool is None else {
            "total": pool.total, "free": pool.free, "reserved": pool.reserved,
            "available": pool.available,
        },
        "pages_needed": option.pages_needed,
        "enough_free_pages": option.enough_free_pages,
        "backs_requested_max_page_size": option.backs_requested_max_page_size,
        "largest_max_page_size": option.largest_max_page_size,
        "steps": list(option.steps),
    }


def _suggestion_json(suggestion: Suggestion) -> dict[str, Any]:
    return {
        "change": suggestion.change,
        "ok": suggestion.ok,
        "fixes": list(suggestion.fixes),
        "remaining_errors": list(suggestion.remaining),
        "steps": list(suggestion.steps),
        "qemu_args": list(_suggestion_qemu_args(suggestion)),
        "libvirt_xml": _suggestion_xml(suggestion),
    }


def _advice_json(advice: Advice | None) -> dict[str, Any]:
    if advice is None:
        return {}
    out: dict[str, Any] = {
        "largest_max_page_size": _cap_json(advice.largest_max_page_size),
        "recommended_max_page_size": _cap_json(advice.recommended_max_page_size),
        "hugepages": [_hugepage_json(option) for option in advice.hugepages],
    }
    if advice.host_kernel:
        out["host_kernel"] = advice.host_kernel
    if advice.machine_options:
        out["machine_options"] = list(advice.machine_options)
    out["suggestions"] = [_suggestion_json(s) for s in advice.suggestions]
    return out


def check_json(result: CheckResult) -> dict[str, Any]:
    """``kvmppc check --json``'s answer (and the daemon's, before its ``cache``)."""
    mmu = result.mmu
    return {
        "ok": result.ok,
        "answer": "yes" if result.ok else "no",
        "qemu_version": result.qemu_version,
        "qemu_version_modelled": result.qemu_version,  # the older name, kept for readers
        "request": result.request.to_dict(),
        "errors": [p.message for p in result.errors],
        "error_details": [_problem_json(p) for p in result.errors],
        "warnings": [p.message for p in result.warnings],
        "warning_details": [_problem_json(p) for p in result.warnings],
        "qemu_output": list(result.qemu_output),
        "notes": list(result.notes),
        "machine": result.machine.name if result.machine else None,
        "cpu": result.cpu.name if result.cpu else None,
        "cpu_family": result.cpu.family if result.cpu else None,
        "accel": result.accel,
        "kvm": None
        if result.accel != "kvm"
        else {
            "vm_type": result.vm_type,
            "implementation": result.kvm_kind,
            "smmu_flags": smmu_flag_names(result.smmu.flags) if result.smmu else None,
        },
        "max_page_shift": result.max_page_shift,
        "max_page_size": None if result.max_page_shift is None else 1 << result.max_page_shift,
        "max_page_size_source": result.max_page_size_source,
        "needs_host_contiguous_pages": result.needs_host_contiguous_pages,
        "backing_page_size": result.backing_page_size,
        "backings": [b.to_dict() for b in result.backings],
        "ram_size": result.ram_size,
        "guest": page_sizes_json(result.guest) if result.guest else None,
        "mmu": {} if mmu is None else {
            "hash": mmu.hash,
            "radix": mmu.radix,
            "hpt_allocated_at_reset": mmu.hpt_allocated_at_reset,
            "radix_limited_by_cap": mmu.radix_limited_by_cap,
        },
        "advice": _advice_json(result.advice),
    }


def _problem_line(problem: Problem) -> str:
    text = f"  qemu-system-ppc64: {problem.message}" if problem.qemu else f"  {problem.message}"
    text += "".join(f"\n  qemu-system-ppc64: {line}" for line in problem.more)
    if problem.detail:
        text += f"\n      ({problem.detail})"
    return text


def render_check(result: CheckResult) -> str:
    """``kvmppc check``'s text."""
    lines = [
        f"kvmppc check: QEMU {result.qemu_version} would " + ("start this guest" if result.ok else
                                           "NOT start this guest")
    ]
    desc = []
    if result.machine:
        desc.append(f"machine {result.machine.name}")
    if result.cpu:
        desc.append(f"cpu {result.cpu.name} ({result.cpu.family})")
    accel = result.accel
    if result.accel == "kvm" and result.vm_type:
        accel += f" ({result.kvm_kind or '?'}, VM type {result.vm_type})"
    desc.append(f"accel {accel}")
    lines.append("  " + ", ".join(desc))
    if result.max_page_shift is not None:
        lines.append(
            f"  cap-hpt-max-page-size: {format_bytes(1 << result.max_page_shift)}"
            f" ({result.max_page_size_source})"
        )
    backing = ", ".join(
        f"{format_bytes(b.page_size)} ({b.mem_path or _ram_kind(b)}"
        + (f" on hugetlbfs {b.mount}" if b.mount else "") + ")"
        for b in result.backings
    )
    lines.append(f"  RAM backing: {backing}")
    if result.ram_size is not None:
        lines.append(f"  RAM: {format_bytes(result.ram_size)}")
    lines.append(
        "  host-contiguous pages needed: "
        + ("yes (KVM_PPC_PAGE_SIZES_REAL)" if result.needs_host_contiguous_pages else "no")
    )
    if result.guest:
        lines += ["  " + line for line in render_page_sizes(result.guest).splitlines()
                  if not line.startswith("warning: ")]
    if result.errors:
        lines.append("errors (QEMU's words; QEMU stops at the first):")
        lines += [_problem_line(p) for p in result.errors]
    if result.warnings:
        lines.append("warnings:")
        lines += [_problem_line(p) for p in result.warnings]
    for note in result.notes:
        lines.append(f"note: {note}")
    if result.advice is not None:
        lines += _advice_lines(result, result.advice)
    return "\n".join(lines)


def _advice_lines(result: CheckResult, advice: Advice) -> list[str]:
    lines = []
    largest, recommended = advice.largest_max_page_size, advice.recommended_max_page_size
    if largest is not None:
        same = ""
        if recommended is not None and recommended.shift != largest.shift:
            same = f" (same guest table as {format_size(recommended.size)})"
        limit = "" if result.needs_host_contiguous_pages else ", no host-contiguity limit"
        lines.append(
            f"largest cap-hpt-max-page-size this RAM backing allows: {format_size(largest.size)}"
            f"{same}{limit}"
        )
    else:
        lines.append("no cap-hpt-max-page-size works with this RAM backing")
    if advice.host_kernel:
        lines.append(f"note: {advice.host_kernel}")
    if advice.machine_options:
        lines.append("add to -machine: " + ",".join(advice.machine_options))
    if advice.suggestions:
        lines.append("what to change:" if not result.ok else "as QEMU arguments / libvirt XML:")
    for suggestion in advice.suggestions:
        if suggestion.ok:
            status = "starts" + (" (after the steps below)" if suggestion.steps else "")
        else:
            status = "still fails: " + "; ".join(suggestion.remaining)
        lines.append(f"  - {suggestion.change} -> {status}")
        for step in suggestion.steps:
            lines.append(f"      {step}")
        lines.append("      qemu-system-ppc64 " + " ".join(_suggestion_qemu_args(suggestion)))
        xml = _suggestion_xml(suggestion)
        if xml:
            lines += ["      " + line for line in xml.splitlines()]
    return lines

"""The ``kvmppc`` command: probe, pagesizes, check, serve, query."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvmppc import __version__
from kvmppc.errors import KvmppcError
from kvmppc.probe import ProbePaths, ProbeResult, VmTypeInfo, load_profile, probe


def _size(value: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return f"{value} B"


def _shift(page_shift: int) -> str:
    return _size(1 << page_shift).replace(" ", "")


def _vm_type_lines(vm: VmTypeInfo) -> list[str]:
    label = {"default": "default (type 0)", "hv": "HV (type 1)", "pr": "PR (type 2)"}[vm.name]
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


def render_probe(result: ProbeResult) -> str:
    host, kvm, huge = result.host, result.kvm, result.hugepages
    lines = [f"kvmppc {result.kvmppc_version or __version__} probe ({result.source})"]
    cpu = host.cpu_model or "unknown CPU"
    if host.pvr is not None:
        cpu += f", PVR {host.pvr:#010x}"
    details = ", ".join(part for part in (host.platform, f"{host.mmu} MMU" if host.mmu else None)
                        if part)
    lines.append(f"host: {host.arch}, kernel {host.kernel_release}, {cpu}"
                 + (f", {details}" if details else ""))
    lines.append(f"  base page size {_size(host.base_page_size)}")
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


def _cmd_probe(args: argparse.Namespace) -> int:
    if args.host_profile:
        result = load_profile(args.host_profile)
    else:
        result = probe(ProbePaths(kvm_device=args.device))
    print(result.to_json() if args.json else render_probe(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmppc",
        description="Answers cap-hpt-max-page-size questions for IBM POWER KVM hosts:"
        " what this host's KVM supports, which guest page sizes QEMU will offer, and"
        " whether a pseries guest will start with a given backing.",
    )
    parser.add_argument("--version", action="version", version=f"kvmppc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    probe_parser = sub.add_parser(
        "probe",
        help="report this host's KVM, MMU and hugepage facts",
        description="Probe the host: CPU, MMU, base page size, hugepage pools and hugetlbfs"
        " mounts, and for each KVM VM type (default, HV, PR) its capabilities, SMMU,"
        " radix MMU and CPU characteristics. Each part reports its own error. On a"
        " non-POWER machine it says so and exits 0.",
    )
    probe_parser.add_argument("--json", action="store_true",
                              help="print the whole result as JSON (a host profile)")
    probe_parser.add_argument("--host-profile", metavar="NAME|FILE",
                              help="replay a saved probe (a file, or a shipped profile name)"
                              " instead of probing")
    probe_parser.add_argument("--device", default="/dev/kvm",
                              help="KVM device (default %(default)s)")
    probe_parser.set_defaults(func=_cmd_probe)

    # Imported here, not at the top: both import render_probe from this module.
    from kvmppc import cli_policy  # noqa: PLC0415
    from kvmppc.daemon import cli as daemon_cli  # noqa: PLC0415

    cli_policy.register(sub)
    daemon_cli.register(sub)
    from kvmppc import cli_inputs  # noqa: PLC0415  (issue 11: libvirt-hook, audit)

    cli_inputs.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KvmppcError as exc:
        print(f"kvmppc: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # e.g. `kvmppc probe --json | head`
    return code


if __name__ == "__main__":
    sys.exit(main())

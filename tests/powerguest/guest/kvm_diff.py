"""In the guest: run real QEMU with -accel kvm on each case, and kvmppc on the same command line.

Reads /etc/kvmppc-guest/kvm-cases.json (written by tests/powerguest/kvm_oracle.py):
  {"hugepages": {"2048kB": 600, ...}, "timeout": 60, "dtb": "machine" | "qmp",
   "cases": [{"id": ..., "argv": [...], "qemu": true, "qom": true}, ...]}
Reserves the hugepage pools and mounts hugetlbfs at /mnt/hp-<size>, probes the guest's KVM
once, then for each case runs ``qemu-system-ppc64 ARGV`` (when "qemu" is true: the host has
no cached result for it) and kvmppc's answer for the same argv on that probe.  Prints one
JSON document, gzip'd and base64'd (the console is slow): {"probe": ..., "cases": [...]}.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.inputs.answer import judge
from kvmppc.inputs.qemu_argv import translate_argv
from kvmppc.model import jsonable
from kvmppc.probe import probe as live_probe
from kvmppc.qemu_versions import choose
from kvmppc.render import qemu_args

QEMU = "/usr/bin/qemu-system-ppc64"
PREFIX = "qemu-system-ppc64: "
CASES = "/etc/kvmppc-guest/kvm-cases.json"


def reserve_hugepages(pools: dict[str, int]) -> dict[str, Any]:
    done = {}
    for size, count in pools.items():
        base = f"/sys/kernel/mm/hugepages/hugepages-{size}"
        if not os.path.isdir(base):
            done[size] = "no such size"
            continue
        with open(f"{base}/nr_hugepages", "w") as f:
            f.write(str(count))
        with open(f"{base}/nr_hugepages") as f:
            got = int(f.read())
        mount = f"/mnt/hp-{size}"
        os.makedirs(mount, exist_ok=True)
        rc = subprocess.call(["mount", "-t", "hugetlbfs", "-o",
                              "pagesize=" + size.replace("kB", "K"), "none", mount])
        done[size] = {"requested": count, "got": got, "mount_rc": rc}
    return done


def fdt_cpu0(blob: bytes) -> dict[str, bytes]:
    """The properties of /cpus/<name>@0 in a flattened device tree."""
    magic, _size, off_struct, off_strings = struct.unpack_from(">IIII", blob, 0)
    if magic != 0xD00DFEED:
        raise ValueError("not a dtb")
    pos, path = off_struct, []
    found: dict[str, bytes] = {}
    while True:
        (token,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == 1:  # FDT_BEGIN_NODE
            end = blob.index(b"\0", pos)
            path.append(blob[pos:end].decode())
            pos = (end + 4) & ~3
        elif token == 2:  # FDT_END_NODE
            path.pop()
        elif token == 3:  # FDT_PROP
            length, name_off = struct.unpack_from(">II", blob, pos)
            pos += 8
            value = blob[pos:pos + length]
            pos = (pos + length + 3) & ~3
            if len(path) == 3 and path[1] == "cpus" and path[2].endswith("@0"):
                name_end = blob.index(b"\0", off_strings + name_off)
                found[blob[off_strings + name_off:name_end].decode()] = value
        elif token == 4:  # FDT_NOP
            continue
        elif token == 9:  # FDT_END
            return found
        else:
            raise ValueError(f"bad FDT token {token}")


def cells(value: bytes) -> list[int]:
    return list(struct.unpack(f">{len(value) // 4}I", value))


def run_qemu(argv: list[str], dtb_mode: str, qom: bool, timeout: float) -> dict[str, Any]:
    dtb = "/tmp/kvm-diff.dtb"
    if os.path.exists(dtb):
        os.unlink(dtb)
    qmp: list[dict[str, Any]] = []
    if dtb_mode == "machine":  # QEMU 7.2: write the tree after the first reset, then exit
        command = [QEMU, *argv, "-machine", f"dumpdtb={dtb}"]
    else:  # QEMU 8.2 and later: the QMP command, after start-up
        command = [QEMU, *argv, "-S", "-qmp", "stdio"]
        qmp = [{"execute": "dumpdtb", "arguments": {"filename": dtb}}]
        if qom:
            qmp.append({"execute": "qom-get", "arguments": {
                "path": "/machine", "property": "cap-hpt-max-page-size"}})
        qmp.append({"execute": "quit"})
    started = time.monotonic()
    out = _run(command, qmp, timeout)
    result: dict[str, Any] = {"rc": out["rc"], "stderr": out["stderr"],
                              "seconds": round(time.monotonic() - started, 2)}
    if out["rc"] == 0 and os.path.exists(dtb):
        with open(dtb, "rb") as f:
            node = fdt_cpu0(f.read())
        result["cells"] = cells(node.get("ibm,segment-page-sizes", b""))
        result["pvr"] = cells(node.get("cpu-version", b"\0\0\0\0"))[0]
        pa = node.get("ibm,pa-features", b"")
        result["ci_large_pages"] = bool(pa[3] & 0x20) if len(pa) > 3 else False
    replies = out["replies"]
    if qom and dtb_mode == "machine" and out["rc"] == 0:
        # 7.2 exits after dumpdtb=, so the cap's value needs a second, stopped, start-up.
        replies = _run([QEMU, *argv, "-S", "-qmp", "stdio"], [
            {"execute": "qom-get", "arguments": {
                "path": "/machine", "property": "cap-hpt-max-page-size"}},
            {"execute": "quit"}], timeout)["replies"]
    for reply in replies:
        if isinstance(reply.get("return"), int):
            result["cap"] = reply["return"]
    return result


def _run(command: list[str], qmp: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    stdin = "".join(json.dumps(c) + "\n" for c in [{"execute": "qmp_capabilities"}, *qmp]
                    ) if qmp else ""
    try:
        proc = subprocess.run(command, input=stdin, capture_output=True, text=True,
                              timeout=timeout, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                              check=False)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"rc": "timeout", "stderr": stderr, "replies": []}
    replies = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                replies.append(json.loads(line))
    return {"rc": proc.returncode, "stderr": proc.stderr, "replies": replies}


def kvmppc_answer(argv: list[str], probe: Any) -> dict[str, Any]:
    # As `kvmppc check -- qemu-system-ppc64 ...` does: read as the installed QEMU's release.
    release = choose(None, probe.host.qemu_version).version
    try:
        answer = judge(translate_argv(["qemu-system-ppc64", *argv], release), probe)
    except UsageError as exc:
        return {"verdict": "usage error", "usage_error": str(exc)}
    out: dict[str, Any] = {"verdict": answer.verdict,
                           "cannot_judge": list(answer.translation.cannot_judge)}
    result = answer.result
    if result is not None:
        out["qemu_output"] = list(result.qemu_output)
        out["errors"] = [p.message for p in result.errors]
        out["warnings"] = [p.message for p in result.warnings]
        out["cells"] = list(result.guest.cells) if result.guest is not None else None
        out["cap"] = (1 << result.max_page_shift) if result.max_page_shift is not None else None
        out["pvr"] = result.cpu.pvr if result.cpu is not None else None
        out["changes"] = list(answer.changes)
        # The advice QEMU can be asked about as it is: suggestions that start the guest
        # (re-checked by the policy) with no host set-up steps (mounts, pools) before them.
        advice = result.advice.suggestions if result.advice is not None else ()
        out["advice"] = [{"change": suggestion.change,
                          "argv": [*qemu_args(suggestion.request, suggestion.result),
                                   "-nodefaults", "-display", "none"]}
                         for suggestion in advice if suggestion.ok and not suggestion.steps]
    return out


def argv_key(argv: list[str]) -> str:
    """The cache key of a command line (kvm_oracle.py computes the same)."""
    return hashlib.sha256("\0".join(argv).encode()).hexdigest()[:10]


def progress(line: str) -> None:
    """A line on the console as the cases go (stdout carries the result only)."""
    try:
        with open("/dev/console", "w") as console:
            console.write(line + "\n")
    except OSError:
        pass


def main() -> int:
    with open(CASES) as f:
        spec = json.load(f)
    started = time.monotonic()
    pools = reserve_hugepages(spec.get("hugepages", {}))
    probe = live_probe()
    results = []
    for case in spec["cases"]:
        entry: dict[str, Any] = {"id": case["id"]}
        if case.get("qemu"):
            entry["qemu"] = run_qemu(case["argv"], spec["dtb"], case.get("qom", False),
                                     spec.get("timeout", 60))
        entry["kvmppc"] = kvmppc_answer(case["argv"], probe)
        # Re-check kvmppc's first piece of advice with QEMU itself (unless the host has it).
        advice = entry["kvmppc"].get("advice") or []
        if entry["kvmppc"]["verdict"] == "no" and advice:
            argv = advice[0]["argv"]
            if argv_key(argv) not in spec.get("advice_cached", ()):
                entry["advice_qemu"] = {"argv": argv, **run_qemu(
                    argv, spec["dtb"], False, spec.get("timeout", 60))}
        results.append(entry)
        progress(f"kvm-diff: {case['id']} qemu={entry.get('qemu', {}).get('rc', 'cached')}"
                 f" kvmppc={entry['kvmppc']['verdict']}")
    document = {"probe": jsonable(probe), "hugepages": pools, "cases": results,
                "seconds": round(time.monotonic() - started, 1), "uname": os.uname().release}
    blob = gzip.compress(json.dumps(document).encode(), 9)
    sys.stdout.write(base64.b64encode(blob).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run in the POWER guest: probe many times through kvmppc's API and count open fds.

Prints JSON {"probes": N, "fds_before": [...], "fds_after": [...], "errors": [...]}; the
host test asserts the two fd lists are equal, i.e. every /dev/kvm and VM fd was closed.
"""

from __future__ import annotations

import json
import os
import sys

from kvmppc.probe import probe


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    probe()  # first probe outside the count: imports and lazily opened files settle
    before = open_fds()
    errors: set[str] = set()
    for _ in range(count):
        result = probe()
        errors.update(vm.error for vm in result.kvm.vm_types.values() if vm.error)
    after = open_fds()
    print(json.dumps({"probes": count, "fds_before": before, "fds_after": after,
                      "errors": sorted(errors)}))


if __name__ == "__main__":
    main()

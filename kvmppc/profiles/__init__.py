"""Host profiles: saved probes (``kvmppc probe --json``), shipped here or in a file.

The shipped ones are real POWER kernels' answers, captured by the POWER guest harness
(tests/powerguest).  Loading one reads JSON only: no device is opened and the kernel door
(:mod:`kvmppc._kvm`) is not imported, so ``kvmppc check --host-profile`` runs anywhere, fast.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from kvmppc.errors import ProfileError
from kvmppc.model import ProbeResult

# The profiles are package data beside this file (a wheel installs them as files);
# importlib.resources would find them too, at the cost of importing its readers.
_SHIPPED = Path(__file__).parent


def shipped_profiles() -> list[str]:
    """Names of the host profiles shipped in ``kvmppc/profiles`` (real kernels' answers, and
    those derived from kernel source where no such host can run here: see ``provenance``)."""
    return sorted(entry.stem for entry in _SHIPPED.glob("*.json"))


def describe_shipped() -> list[tuple[str, str]]:
    """Each shipped profile and what it is: its host, captured or derived (and from what)."""
    out = []
    for name in shipped_profiles():
        probe = load_profile(name)
        prov = probe.provenance
        kind = (f"DERIVED from {prov.derived_from} (kernel source, not captured)"
                if prov is not None and prov.derived else "captured")
        host = probe.host
        out.append((name, f"{host.cpu_model}, {host.platform}, {host.mmu} MMU,"
                          f" {host.base_page_size >> 10} KiB pages, kernel"
                          f" {host.kernel_release}: {kind}"))
    return out


def load_profile(name_or_path: str) -> ProbeResult:
    """A saved probe: a file path, or the name of a shipped profile."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        label = str(path)
    elif "/" not in name_or_path and (_SHIPPED / f"{name_or_path}.json").is_file():
        text = (_SHIPPED / f"{name_or_path}.json").read_text(encoding="utf-8")
        label = name_or_path
    else:
        raise ProfileError(
            f"no host profile {name_or_path!r}: give a file written by"
            f" 'kvmppc probe --json' or one of the shipped profiles:"
            f" {', '.join(shipped_profiles()) or '(none)'}"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"host profile {label} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"host profile {label} is not a JSON object")
    return replace(ProbeResult.from_dict(data), source=f"profile:{label}")

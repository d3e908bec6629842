"""The guest a caller asks about, as QEMU would be asked for it.

A :class:`CheckRequest` holds the command-line text (``-machine``, ``-cpu``, ``-m``,
``cap-hpt-max-page-size``, ``mem-path``, ``-accel``, ``kvm-type``) before QEMU parses it; the
start-up replay (:mod:`kvmppc.policy.startup`) parses it as QEMU does.  Only what kvmppc
itself cannot take is refused here, with :class:`UsageError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.policy.memory import (
    MemoryBackend,
    backends_from_specs,
    parse_slots,
    validate_layout,
)
from kvmppc.qemu_versions import choose

QUERY_KEYS = (
    "max_page_size", "cpu", "machine", "mem_path", "memory", "accel", "kvm_type", "qemu_version",
    "backend", "maxmem", "slots",
    "cap", "max_cpu_compat",
)
# hw/ppc/spapr.c spapr_kvm_type: no kvm-type is the kernel's default VM type.
VM_TYPE_BY_KVM_TYPE = {None: "default", "HV": "hv", "PR": "pr"}


def _single(params: Mapping[str, str | Sequence[str]], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    values = list(value)
    if len(values) != 1:
        raise UsageError(f"'{key}' given {len(values)} times; give it once")
    return values[0]


def _normalise_kvm_type(value: str | None) -> str | None:
    """hw/ppc/spapr.c ``spapr_kvm_type``: "auto" (or nothing), or HV / PR in any case."""
    if value is None or value == "auto":
        return None
    if value.lower() in ("hv", "pr"):
        return value.upper()
    raise UsageError(f"Unknown kvm-type specified '{value}' (give HV, PR or auto)")


@dataclass(frozen=True)
class CheckRequest:
    """A guest as QEMU would be asked for it.

    ``max_page_size`` is the ``cap-hpt-max-page-size`` text exactly as it would be written on
    the command line (None: the machine's default).  ``cpu`` is a ``-cpu`` model name (None:
    the machine type's default model, power9_v2.0 for pseries-4.0 and later).  ``mem_paths``
    are the ``mem-path`` of each RAM backend (none: anonymous RAM).  ``memory`` is ``-m``'s
    text (None: 512 MiB).  ``accel`` None means KVM when the probe found a usable PowerPC
    KVM, else TCG — what libvirt and the ``kvm`` wrapper do; plain ``qemu-system-ppc64``
    without ``-accel`` would pick TCG.  ``kvm_type`` "HV", "PR" or None (the default VM
    type: HV when kvm_hv is loaded).  ``qemu_version`` "7.2" or "10.0" (a modelled release;
    None: the version the probe found installed, else the newest modelled).

    ``backends`` are ``-object memory-backend-*`` with their sizes and how each is used
    (:class:`kvmppc.policy.memory.MemoryBackend`: the machine's RAM, a NUMA node's memdev, or
    none); with them ``mem_paths`` may hold one path, ``-mem-path`` (which QEMU ignores when
    NUMA nodes have memdevs).  ``maxmem`` and ``slots`` are ``-m``'s hotplug options, as text.
    None: the version the probe found installed, else the newest modelled).  ``caps`` are
    the other ``-machine cap-NAME=VALUE`` properties as written ("cap-htm=off" or
    "htm=off"; hpt-max-page-size goes in ``max_page_size``), in command-line order.
    ``max_cpu_compat`` is ``-machine max-cpu-compat``'s text (None: not given).
    """

    max_page_size: str | None = None
    cpu: str | None = None
    machine: str = "pseries"
    mem_paths: tuple[str, ...] = ()
    memory: str | None = None
    accel: str | None = None
    kvm_type: str | None = None
    qemu_version: str | None = None
    backends: tuple[MemoryBackend, ...] = ()
    maxmem: str | None = None
    slots: str | None = None
    caps: tuple[str, ...] = ()
    max_cpu_compat: str | None = None

    def __post_init__(self) -> None:
        if self.qemu_version is not None:
            try:
                choose(self.qemu_version)
            except ValueError as exc:
                raise UsageError(f"qemu_version: {exc}") from None
        if self.accel not in (None, "kvm", "tcg"):
            raise UsageError(f"accel must be 'kvm' or 'tcg', not {self.accel!r}")
        if self.kvm_type not in (None, "HV", "PR"):
            raise UsageError(f"kvm_type must be 'HV', 'PR' or None, not {self.kvm_type!r}")
        if "," in self.machine:
            raise UsageError(
                f"machine {self.machine!r}: give only the machine type (e.g. pseries-7.2);"
                " the page size goes in max_page_size"
            )
        if self.cpu is not None and "," in self.cpu:
            raise UsageError(
                f"cpu {self.cpu!r}: give only the model name; CPU properties are not modelled"
            )
        for path in self.mem_paths:
            if not path.startswith("/") or "\0" in path:
                raise UsageError(f"mem_path {path!r} must be an absolute path")
        for cap in self.caps:
            name, eq, _value = cap.partition("=")
            if not eq or name in ("", "cap-"):
                raise UsageError(f"cap {cap!r}: give NAME=VALUE (e.g. htm=off or cap-htm=off)")
            if name.removeprefix("cap-") == "hpt-max-page-size":
                raise UsageError(f"cap {cap!r}: give cap-hpt-max-page-size as max_page_size")
        self._check_memory_options()

    def _check_memory_options(self) -> None:
        validate_layout(self.backends)
        if self.backends and len(self.mem_paths) > 1:
            raise UsageError("with backends, mem_path is -mem-path: give it at most once")
        if self.mem_paths and any(b.use == "ram" for b in self.backends):
            # softmmu/vl.c qemu_apply_legacy_machine_options, QEMU's words (sic).
            raise UsageError("'-mem-path' can't be used together with'-machine"
                             " memory-backend'")
        if self.slots is not None:
            parse_slots(self.slots)

    @classmethod
    def from_params(cls, params: Mapping[str, str | Sequence[str]]) -> CheckRequest:
        """From a query string (``urllib.parse.parse_qs`` output or a plain mapping).

        Keys: max_page_size, cpu, machine, mem_path (repeatable), memory, accel, kvm_type,
        qemu_version, backend (repeatable: ``-object`` text with ``use=``, see
        :class:`MemoryBackend`), maxmem, slots.
        qemu_version, cap (repeatable, NAME=VALUE), max_cpu_compat.  A cap
        hpt-max-page-size=SIZE is taken as max_page_size when that is not given too.
        """
        unknown = sorted(set(params) - set(QUERY_KEYS))
        if unknown:
            raise UsageError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))};"
                f" known: {', '.join(QUERY_KEYS)}"
            )
        mem_path = params.get("mem_path", ())
        mem_paths = (mem_path,) if isinstance(mem_path, str) else tuple(mem_path)
        backend = params.get("backend", ())
        backends = backends_from_specs((backend,) if isinstance(backend, str) else tuple(backend))
        accel = _single(params, "accel")
        if accel is not None and accel not in ("kvm", "tcg"):
            raise UsageError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
        cap = params.get("cap", ())
        caps = [cap] if isinstance(cap, str) else list(cap)
        max_page_size = _single(params, "max_page_size")
        for text in list(caps):
            name, eq, value = text.partition("=")
            if eq and name.removeprefix("cap-") == "hpt-max-page-size" and max_page_size is None:
                max_page_size = value
                caps.remove(text)
        return cls(
            max_page_size=max_page_size,
            cpu=_single(params, "cpu"),
            machine=_single(params, "machine") or "pseries",
            mem_paths=mem_paths,
            memory=_single(params, "memory"),
            accel=accel,
            kvm_type=_normalise_kvm_type(_single(params, "kvm_type")),
            qemu_version=_single(params, "qemu_version"),
            backends=backends,
            maxmem=_single(params, "maxmem"),
            slots=_single(params, "slots"),
            caps=tuple(caps),
            max_cpu_compat=_single(params, "max_cpu_compat"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_page_size": self.max_page_size,
            "cpu": self.cpu,
            "machine": self.machine,
            "mem_paths": list(self.mem_paths),
            "memory": self.memory,
            "accel": self.accel,
            "kvm_type": self.kvm_type,
            "qemu_version": self.qemu_version,
            "backends": [backend.to_dict() for backend in self.backends],
            "maxmem": self.maxmem,
            "slots": self.slots,
            "caps": list(self.caps),
            "max_cpu_compat": self.max_cpu_compat,
        }

    def to_params(self) -> dict[str, str | list[str]]:
        """The request as :meth:`from_params` takes it (the ``/v1/check`` query string)."""
        params: dict[str, str | list[str]] = {"machine": self.machine}
        for key in ("max_page_size", "cpu", "memory", "accel", "kvm_type", "qemu_version",
                    "maxmem", "slots", "max_cpu_compat"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        if self.mem_paths:
            params["mem_path"] = list(self.mem_paths)
        if self.caps:  # the query key is cap (repeatable)
            params["cap"] = list(self.caps)
        if self.backends:
            params["backend"] = [backend.to_spec() for backend in self.backends]
        return params

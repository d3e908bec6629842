"""A ``qemu-system-ppc64`` command line, read the way QEMU 7.2 reads it, as a CheckRequest.

QEMU has two option syntaxes and this module follows each where QEMU uses it
(softmmu/vl.c ``qemu_init``):

* **keyval** (util/keyval.c ``keyval_parse``) for ``-machine``/``-M`` and ``-object``: a
  comma-separated list of ``key=value``, ``,,`` standing for a literal comma, the first
  element may omit its key (``-M pseries`` is ``type=pseries``, ``-object
  memory-backend-ram,...`` is ``qom-type=...``), every other element needs its ``=``
  ("Expected '=' after parameter 'usb'").  ``-object`` also takes JSON (``{"qom-type": ...}``),
  which is what libvirt 9.0 writes.  ``-enable-kvm`` is ``-machine accel=kvm``.
* **QemuOpts** (util/qemu-option.c ``opts_do_parse``) for ``-m``, ``-smp``, ``-numa`` and
  ``-accel``: the same comma rules, but an element without ``=`` is a boolean (``x`` is
  ``x=on``, ``nox`` is ``x=off``), and ``-m``/``-smp`` check their keys ("Invalid parameter
  'foo'").

What bears on QEMU's start becomes a :class:`kvmppc.policy.CheckRequest`: the machine
type, ``cap-hpt-max-page-size`` and the other ``cap-*`` properties, ``max-cpu-compat``,
``kvm-type``, the accelerator, the ``-cpu`` model, ``-m``'s size, ``slots`` and ``maxmem``,
``-mem-path`` and every ``-object memory-backend-ram|file|memfd`` with its size and how it is
used (the machine's ``memory-backend``, the ``memdev`` of a ``-numa node``, or not mapped:
QEMU creates it all the same).  Options with no bearing on that are listed as *ignored*.
Options that would bear on it but that the policy does not model (CPU properties, DIMMs,
other backend types, ``-readconfig``, ``-set``, ``-global`` on the machine or CPU) make the
answer "cannot judge" instead of a guess.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.policy import CheckRequest, QemuRefusalError, parse_memory, parse_size
from kvmppc.policy.memory import split_commas
from kvmppc.qemu_versions import parse_version

# Options of qemu-system-ppc64 7.2 that take an argument (qemu-options.hx, HAS_ARG).  An option
# in neither table is refused, as QEMU does ("-bogus: invalid option").
_WITH_ARG = """
    accel action add-fd append audio audiodev bios blockdev boot cdrom chardev chroot compat
    cpu D d debugcon device dfilter display drive dtb dump-vmstate echr fda fdb fsdev fw_cfg g
    gdb global hda hdb hdc hdd icount incoming initrd iscsi k kernel L loadvm m M machine
    mem-path mon monitor msg mtdblock name net netdev nic numa object option-rom overcommit
    parallel pflash pidfile plugin prom-env qmp qmp-pretty readconfig rotate rtc runas sandbox
    sd seed semihosting-config serial set smbios smp spice tpmdev trace usbdevice uuid vga
    virtfs vnc watchdog watchdog-action xen-domid acpitable qtest qtest-log
"""
OPTIONS_WITH_ARG = frozenset(_WITH_ARG.split())
_WITHOUT_ARG = """
    S s enable-kvm no-user-config nodefaults nographic no-reboot no-shutdown snapshot usb
    mem-prealloc daemonize full-screen portrait version h help only-migratable preconfig
    singlestep enable-sync-profile no-acpi win2k-hack no-fd-bootchk alt-grab ctrl-grab no-quit
    async-teardown xen-attach enable-fips audio-help semihosting
"""
OPTIONS_WITHOUT_ARG = frozenset(_WITHOUT_ARG.split())
HELP_OPTIONS = frozenset({"version", "h", "help", "audio-help"})

# The option tables differ by release; each was read from its binary (every option tried
# before and after ``-version``: tests/test_inputs_qemu_argv_versions.py runs both).  Named by
# the tables above but refused by QEMU 7.2 and 10.0 alike ("invalid option"): gone before 7.2.
_NOT_OPTIONS = frozenset({"alt-grab", "ctrl-grab", "no-quit", "enable-fips", "watchdog"})
# Gone by 10.0 (qemu-options.hx): -chroot and -runas became -run-with chroot=/user=,
# -async-teardown -run-with async-teardown=on, -singlestep -accel tcg,one-insn-per-tb=on,
# -no-acpi -machine acpi=off, -audio-help -audiodev help; -portrait and -rotate went.
_GONE_IN_10_0 = frozenset({"chroot", "runas", "rotate", "async-teardown", "audio-help",
                           "no-acpi", "portrait", "singlestep"})
_NEW_IN_10_0_WITH_ARG = frozenset({"run-with", "shim"})
_NEW_IN_10_0_WITHOUT_ARG = frozenset({"jitdump", "perfmap"})
# Options QEMU knows but refuses on ppc64 (qemu-options.hx arch masks; system/vl.c
# qemu_init: "Option not supported for this target" when the option is reached).
_NOT_FOR_PPC64 = frozenset({"acpitable", "smbios", "no-fd-bootchk", "win2k-hack", "xen-attach",
                            "xen-domid", "semihosting", "semihosting-config", "no-acpi"})


@dataclass(frozen=True)
class OptionTable:
    """One release's ``qemu-system-ppc64`` options: which take an argument, which do not,
    and which it knows but refuses on ppc64."""

    release: str
    with_arg: frozenset[str]
    without_arg: frozenset[str]
    not_for_target: frozenset[str]


def option_table(qemu_version: str | None = None) -> OptionTable:
    """The option table of a modelled release ("7.2", "10.0"; None: 7.2's, which this module
    has always read).  A release after 10.0 is read with 10.0's table."""
    with_arg = OPTIONS_WITH_ARG - _NOT_OPTIONS
    without_arg = OPTIONS_WITHOUT_ARG - _NOT_OPTIONS
    if qemu_version is None or _release(qemu_version) < (10, 0):
        return OptionTable("7.2", with_arg, without_arg, _NOT_FOR_PPC64)
    return OptionTable("10.0", (with_arg - _GONE_IN_10_0) | _NEW_IN_10_0_WITH_ARG,
                       (without_arg - _GONE_IN_10_0) | _NEW_IN_10_0_WITHOUT_ARG,
                       _NOT_FOR_PPC64 - _GONE_IN_10_0)


def _release(text: str) -> tuple[int, int]:
    try:
        return parse_version(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# The programs that are QEMU's pseries emulator; Debian's ``kvm`` on ppc64el (like RHEL's
# ``qemu-kvm``) adds -enable-kvm.
PROGRAMS = {"qemu-system-ppc64": False, "qemu-system-ppc64le": False, "kvm": True,
            "qemu-kvm": True}

# -machine properties with no bearing on page sizes or backing (hw/core/machine.c,
# hw/ppc/spapr.c).  Anything else not modelled makes the answer "cannot judge".
IGNORED_MACHINE_KEYS = frozenset({
    "usb", "dump-guest-core", "mem-merge", "graphics", "firmware", "kernel", "initrd", "append",
    "dtb", "dumpdtb", "phandle-start", "suppress-vmdesc", "host-serial", "host-model",
    "kernel-irqchip",
})
_MEM_KEYS = ("size", "slots", "maxmem")  # softmmu/vl.c qemu_mem_opts
_SMP_KEYS = ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads", "books",
             "drawers")  # hw/core/machine.c SMPConfiguration
_MEMORY_DEVICES = frozenset({"pc-dimm", "nvdimm", "virtio-mem-pci", "virtio-pmem-pci",
                             "spapr-nvdimm"})
_MACHINE_DRIVERS = ("spapr-machine", "pseries", "power", "host-powerpc64", "spapr-cpu-core")


class CommandLineError(UsageError):
    """The command line is one QEMU itself would refuse, or not a command line at all."""


def _bad(option: str, arg: str | None, message: str) -> CommandLineError:
    where = f"{option} {arg}" if arg is not None else option
    return CommandLineError(f"{where}: {message}")


# --------------------------------------------------------------------------------------------
# the two syntaxes


def _split_key(element: str) -> tuple[str, str | None]:
    # The key ends at the first '=' that is not part of a ',,' (already unescaped here: keys
    # cannot contain commas in either syntax, so the first '=' is the one).
    key, eq, value = element.partition("=")
    return (key, value) if eq else (element, None)


def parse_keyval(option: str, text: str, implied_key: str | None) -> dict[str, str]:
    """util/keyval.c ``keyval_parse``: later keys win, as in a QDict."""
    result: dict[str, str] = {}
    if text == "":
        return result
    for index, element in enumerate(split_commas(text)):
        key, value = _split_key(element)
        if value is None:
            if element == "":
                raise _bad(option, text, "Invalid parameter ''")
            if index == 0 and implied_key is not None:
                key, value = implied_key, element
            else:
                raise _bad(option, text, f"Expected '=' after parameter '{element}'")
        if not key:
            raise _bad(option, text, "Invalid parameter ''")
        result[key] = value
    return result


def parse_qemu_opts(option: str, text: str, implied_key: str | None,
                    known: Sequence[str] | None = None) -> dict[str, str]:
    """util/qemu-option.c ``opts_do_parse``: ``x`` means x=on and ``nox`` x=off."""
    result: dict[str, str] = {}
    for index, element in enumerate(split_commas(text)):
        if element == "" and index > 0:
            continue  # a trailing comma is accepted
        key, value = _split_key(element)
        if value is None:
            if index == 0 and implied_key is not None:
                key, value = implied_key, element
            elif element.startswith("no") and len(element) > 2:
                key, value = element[2:], "off"
            else:
                key, value = element, "on"
        if not key:
            raise _bad(option, text, "Invalid parameter ''")
        if known is not None and key not in known:
            raise _bad(option, text, f"Invalid parameter '{key}'")
        result[key] = value
    return result


def _parse_object(text: str) -> dict[str, str]:
    """``-object``: JSON (what libvirt writes) or keyval with ``qom-type`` implied."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad("-object", text, f"JSON parse error, {exc.msg}") from None
        if not isinstance(data, dict):
            raise _bad("-object", text, "JSON object expected")
        props: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, bool):
                props[str(key)] = "on" if value else "off"
            elif isinstance(value, (str, int)):
                props[str(key)] = str(value)
            elif isinstance(value, float) and value.is_integer():
                props[str(key)] = str(int(value))
            else:
                props[str(key)] = json.dumps(value)
    else:
        props = parse_keyval("-object", text, "qom-type")
    if "qom-type" not in props:
        raise _bad("-object", text, "Parameter 'qom-type' is missing")
    if "id" not in props:
        raise _bad("-object", text, "Parameter 'id' is missing")
    return props


# --------------------------------------------------------------------------------------------
# the answer


@dataclass(frozen=True)
class Translation:
    """What a command line (or a domain) asks of QEMU, in the policy's terms.

    ``request`` is None exactly when ``cannot_judge`` is not empty: each entry there names an
    option that would bear on the answer and that kvmppc does not model.  ``ignored`` lists
    the options with no bearing on page sizes or backing; ``notes`` says how the rest was read.
    """

    argv: tuple[str, ...]
    request: CheckRequest | None
    cannot_judge: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source: str = "qemu-argv"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "argv": list(self.argv),
            "request": self.request.to_dict() if self.request else None,
            "cannot_judge": list(self.cannot_judge),
            "ignored": list(self.ignored),
            "notes": list(self.notes),
            **self.extra,
        }


def split_command_line(text: str) -> list[str]:
    """A command line as a shell (or a systemd unit, or ``virsh domxml-to-native``) gives it:
    backslash-newlines joined, shell quoting undone, leading ``VAR=value`` words dropped."""
    try:
        words = shlex.split(text.replace("\\\n", " "), comments=False)
    except ValueError as exc:
        raise CommandLineError(f"cannot split the command line: {exc}") from None
    while words and "=" in words[0] and not words[0].startswith("-") and "/" not in (
            words[0].partition("=")[0]):
        words.pop(0)
    return words


@dataclass
class _Backend:
    qom_type: str
    props: dict[str, str]
    text: str


@dataclass
class _State:
    machine: dict[str, str] = field(default_factory=dict)
    machine_texts: list[str] = field(default_factory=list)
    accels: list[dict[str, str]] = field(default_factory=list)
    accel_texts: list[str] = field(default_factory=list)
    cpu: str | None = None
    mem: dict[str, str] = field(default_factory=dict)
    mem_text: str | None = None
    mem_path: str | None = None
    mem_prealloc: bool = False
    objects: dict[str, _Backend] = field(default_factory=dict)
    numa_memdevs: list[str] = field(default_factory=list)
    numa_legacy_mem: str | None = None
    ignored: list[str] = field(default_factory=list)
    cannot: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory_devices: list[str] = field(default_factory=list)


def _iter_options(argv: Sequence[str], table: OptionTable | None = None,
                  ) -> list[tuple[str, str | None]]:
    table = table or option_table()
    options: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word == "-":
            options.append(("", word))  # a disk image (QEMU's -hda)
            continue
        name = word[2:] if word.startswith("--") else word[1:]
        if name in table.with_arg:
            if i >= len(argv):
                raise CommandLineError(f"{word}: requires an argument")
            options.append((name, argv[i]))
            i += 1
        elif name in table.without_arg:
            options.append((name, None))
        else:
            raise CommandLineError(
                f"{word}: invalid option (not one of qemu-system-ppc64"
                f" {table.release}'s options)"
            )
    return options


def _program_implies_kvm(program: str) -> bool:
    base = posixpath.basename(program)
    if base not in PROGRAMS:
        raise CommandLineError(
            f"{program!r} is not QEMU's pseries emulator: give the command line of"
            f" {', '.join(sorted(PROGRAMS))} (program first)"
        )
    return PROGRAMS[base]


def translate_argv(argv: Sequence[str], qemu_version: str | None = None) -> Translation:
    """Read ``argv`` (program first) as QEMU 7.2 would, or the release ``qemu_version`` (its
    options: :func:`option_table`); see the module's docstring.  The request's own
    ``qemu_version`` is left to the caller."""
    table = option_table(qemu_version)
    if not argv:
        raise CommandLineError("empty command line: give the program and its arguments")
    state = _State()
    if _program_implies_kvm(argv[0]):
        state.machine["accel"] = "kvm"
        state.notes.append(f"{posixpath.basename(argv[0])} runs QEMU with -enable-kvm")
    for name, arg in _iter_options(argv[1:], table):
        if name in table.not_for_target:
            raise _bad(f"-{name}", arg, "Option not supported for this target")
        _read_option(state, name, arg)
    return _finish(tuple(argv), state)


def _read_option(state: _State, name: str, arg: str | None) -> None:
    option = f"-{name}"
    if name == "":
        state.ignored.append(f"{arg} (a disk image)")
    elif name in HELP_OPTIONS:
        raise CommandLineError(f"{option}: QEMU prints its help and exits; no guest to check")
    elif name in ("M", "machine"):
        assert arg is not None
        props = parse_keyval(option, arg, "type")
        if props.get("type") in ("help", "?") or props.get("accel") == "help":
            raise _bad(option, arg, "QEMU lists machine types and exits; no guest to check")
        state.machine.update(props)
        state.machine_texts.append(arg)
    elif name == "enable-kvm":
        state.machine["accel"] = "kvm"  # softmmu/vl.c: qdict_put_str(machine_opts, "accel")
    elif name == "accel":
        assert arg is not None
        props = parse_qemu_opts(option, arg, "accel")
        if "accel" not in props:
            raise _bad(option, arg, "Parameter 'accel' is missing")
        state.accels.append(props)
        state.accel_texts.append(arg)
    elif name == "cpu":
        assert arg is not None
        if arg.split(",")[0] in ("help", "?"):
            raise _bad(option, arg, "QEMU lists CPU models and exits; no guest to check")
        state.cpu = arg
    elif name == "m":
        assert arg is not None
        state.mem.update(parse_qemu_opts(option, arg, "size", _MEM_KEYS))
        state.mem_text = arg
    elif name == "mem-path":
        state.mem_path = arg
    elif name == "mem-prealloc":
        state.mem_prealloc = True
    elif name == "object":
        assert arg is not None
        props = _parse_object(arg)
        qom_type = props.pop("qom-type")
        object_id = props["id"]
        if object_id in state.objects:
            raise _bad(option, arg, f"attempt to add duplicate property '{object_id}' to"
                       " object (type 'container')")
        state.objects[object_id] = _Backend(qom_type, props, arg)
        if qom_type.startswith("memory-backend-") and "size" not in props:
            raise _bad(option, arg, "Parameter 'size' is missing")
        if not qom_type.startswith("memory-backend-"):
            state.ignored.append(f"{option} {qom_type} (not a memory backend)")
    elif name == "numa":
        assert arg is not None
        props = parse_qemu_opts(option, arg, "type")
        kind = props.get("type", "node")
        if kind == "node":
            if "mem" in props:
                state.numa_legacy_mem = f"{option} {arg}"
            if "memdev" in props:
                state.numa_memdevs.append(props["memdev"])
        else:
            state.ignored.append(f"{option} {arg}")
    elif name == "smp":
        assert arg is not None
        props = parse_qemu_opts(option, arg, "cpus")
        for key, value in props.items():
            # hw/core/machine.c visits SMPConfiguration: QEMU names no option here.
            if key not in _SMP_KEYS:
                raise CommandLineError(f"Parameter 'smp.{key}' is unexpected")
            if not value.isdigit():
                raise CommandLineError(f"Parameter 'smp.{key}' expects integer")
        state.ignored.append(f"{option} {arg} (vCPU topology: no bearing on page sizes)")
    elif name == "readconfig":
        state.cannot.append(f"-readconfig {arg}: reading QEMU config files is out of scope;"
                            " give their options on the command line")
    elif name == "set":
        state.cannot.append(f"-set {arg}: changes options given elsewhere; not modelled")
    elif name == "global":
        assert arg is not None
        driver = arg.split(".", 1)[0].lower()
        if driver.startswith(_MACHINE_DRIVERS):
            state.cannot.append(f"-global {arg}: a machine or CPU default; not modelled")
        else:
            state.ignored.append(f"-global {arg}")
    elif name == "device":
        assert arg is not None
        driver = _device_driver(arg)
        if driver in _MEMORY_DEVICES:
            state.memory_devices.append(arg)
            state.cannot.append(f"-device {arg}: hot-pluggable memory is checked against its"
                                " own backend (spapr_memory_pre_plug); not modelled")
        else:
            state.ignored.append(f"-device {driver}")
    else:
        state.ignored.append(option if arg is None else f"{option} {arg}")


def _device_driver(arg: str) -> str:
    if arg.lstrip().startswith("{"):
        try:
            data = json.loads(arg)
        except json.JSONDecodeError as exc:
            raise _bad("-device", arg, f"JSON parse error, {exc.msg}") from None
        if not isinstance(data, dict) or not isinstance(data.get("driver"), str):
            raise _bad("-device", arg, "Parameter 'driver' is missing")
        return str(data["driver"])
    return split_commas(arg)[0].partition("=")[2] if arg.startswith("driver=") else (
        split_commas(arg)[0])


def _accel_mode(state: _State) -> tuple[str | None, str]:
    """The accelerator list (softmmu/vl.c ``configure_accelerators``) as the request's accel:
    QEMU tries each in turn; "kvm" then "tcg" is what the policy's automatic choice does."""
    machine_accel = state.machine.pop("accel", None)
    if state.accels and machine_accel is not None:
        raise CommandLineError('The -accel and "-machine accel=" options are incompatible')
    if state.accels:
        names = [a["accel"] for a in state.accels]
        for accel_opts in state.accels:
            extra = sorted(set(accel_opts) - {"accel"})
            if extra:
                state.ignored.append(
                    f"-accel {accel_opts['accel']} properties {', '.join(extra)}"
                )
        source = "-accel " + " -accel ".join(names)
    elif machine_accel is not None:
        names = machine_accel.split(":")
        source = f"accel={machine_accel}"
    else:
        state.notes.append("no accelerator given: QEMU uses TCG, where no backing check"
                           " applies (libvirt passes -accel kvm for <domain type='kvm'>)")
        return "tcg", "default"
    for index, accel_name in enumerate(names):
        if accel_name not in ("kvm", "tcg"):
            # accel/accel-softmmu.c: -accel names its option, accel= does not.
            where = f"-accel {state.accel_texts[index]}: " if state.accels else ""
            raise CommandLineError(f"{where}invalid accelerator {accel_name}")
    if names[0] == "tcg":
        return "tcg", source
    if len(names) > 1 and names[1] == "tcg":
        state.notes.append(f"{source}: KVM if this host's KVM can create the VM, else TCG")
        return None, source
    return "kvm", source


_MODELLED_BACKENDS = ("memory-backend-ram", "memory-backend-file", "memory-backend-memfd")


def _backend_specs(state: _State, main_backend: str | None) -> list[str]:
    """Each ``-object memory-backend-*`` in command-line order (QEMU creates them in that
    order, used as RAM or not), as the request's ``backend`` text: its type, size, mem-path,
    hugetlb and hugetlbsize, and its use (the machine's RAM, the memdev of NUMA node N, or
    none)."""
    specs: list[str] = []
    for object_id, backend in state.objects.items():
        if not backend.qom_type.startswith("memory-backend-"):
            continue
        label = f"-object {backend.qom_type},id={object_id}"
        if backend.qom_type not in _MODELLED_BACKENDS:
            state.cannot.append(f"{label}: {backend.qom_type} is not modelled")
            continue
        props = backend.props
        if backend.qom_type == "memory-backend-file" and not props.get("mem-path"):
            raise _bad("-object", backend.text, "property 'mem-path' is required")
        _size_of(backend)
        parts = [backend.qom_type, f"id={object_id}", f"size={props['size']}"]
        for key in ("mem-path", "hugetlb", "hugetlbsize"):
            if key in props:
                parts.append(f"{key}={props[key]}")
        if object_id == main_backend:
            parts.append("use=ram")
        elif object_id in state.numa_memdevs:
            parts += ["use=numa", f"node={state.numa_memdevs.index(object_id)}"]
        else:
            parts.append("use=none")
            if not state.memory_devices:
                state.notes.append(f"{label} is created but not mapped as guest RAM: QEMU"
                                   " checks it at creation, qemu_minrampagesize skips it")
        specs.append(",".join(p.replace(",", ",,") if i else p for i, p in enumerate(parts)))
    return specs


def _size_of(backend: _Backend) -> int:
    try:
        return parse_size(backend.props["size"])
    except QemuRefusalError:
        raise _bad("-object", backend.text, "Parameter 'size' expects size") from None


def _finish(argv: tuple[str, ...], state: _State) -> Translation:
    accel, accel_source = _accel_mode(state)
    machine_type = state.machine.pop("type", "pseries")
    request_fields: dict[str, Any] = {"machine": machine_type, "accel": accel}
    state.notes.append(f"accelerator: {accel or 'kvm, else tcg'} ({accel_source})")

    for key, value in list(state.machine.items()):
        where = f"-machine {key}={value}"
        if key == "cap-hpt-max-page-size":
            request_fields["max_page_size"] = value
        elif key == "kvm-type":
            request_fields["kvm_type"] = value
        elif key == "memory-backend":
            pass
        elif key in IGNORED_MACHINE_KEYS or (key == "resize-hpt" and value != "required") or (
                key == "ic-mode" and value == "dual"):
            state.ignored.append(where)
        elif key.startswith("cap-"):
            # hw/ppc/spapr_caps.c: every cap is judged, its value as written (in -machine
            # order; keyval keeps the last of a repeated key, as here)
            request_fields.setdefault("cap", []).append(f"{key}={value}")
        elif key == "max-cpu-compat":
            request_fields["max_cpu_compat"] = value
        else:
            state.cannot.append(f"{where}: not modelled")

    if state.cpu is not None:
        model, _, features = state.cpu.partition(",")
        if features:
            state.cannot.append(f"-cpu {state.cpu}: CPU properties are not modelled")
        request_fields["cpu"] = model

    ram_text = state.mem.get("size")
    if ram_text is not None:
        request_fields["memory"] = ram_text

    main_backend = state.machine.get("memory-backend")
    if main_backend is not None and state.mem_path is not None:
        raise CommandLineError("'-mem-path' can't be used together with'-machine memory-backend'")
    if state.numa_legacy_mem:
        version = re.fullmatch(r"pseries-(\d+)\.(\d+)", machine_type)
        if machine_type == "pseries" or (version and (int(version[1]), int(version[2])) >= (
                5, 1)):
            # hw/core/numa.c: pseries-5.1 and later set numa_mem_supported false.
            raise CommandLineError(
                f"{state.numa_legacy_mem}: Parameter -numa node,mem is not supported by this"
                " machine type\nUse -numa node,memdev instead"
            )
        state.cannot.append(f"{state.numa_legacy_mem}: legacy NUMA memory (split by QEMU) is"
                            " not modelled")
    for memdev in ([main_backend] if main_backend else []) + state.numa_memdevs:
        backend = state.objects.get(memdev)
        if backend is None or not backend.qom_type.startswith("memory-backend-"):
            raise CommandLineError(f"Memory backend '{memdev}' not found" if main_backend ==
                                   memdev else f"-numa node,memdev={memdev}: memdev={memdev}"
                                   " is ambiguous")
    specs = _backend_specs(state, main_backend)
    if specs:
        request_fields["backend"] = specs
    if state.numa_memdevs and state.mem_path is not None:
        state.notes.append("-mem-path is not used: the NUMA nodes' memdevs are the RAM")
    if state.mem_path is not None:
        request_fields["mem_path"] = [state.mem_path]
    for key in ("slots", "maxmem"):
        if key in state.mem:
            request_fields[key] = state.mem[key]
    if state.mem_prealloc or any(b.props.get("prealloc") in ("on", "true", "yes")
                                 for b in state.objects.values()):
        state.notes.append("prealloc: QEMU allocates all guest RAM at start, so the hugepage"
                           " pool must hold it (kvmppc warns when the probe's pool is short)")

    if state.cannot:
        return Translation(argv, None, tuple(state.cannot), tuple(state.ignored),
                           tuple(state.notes))
    params = {key: value for key, value in request_fields.items() if value is not None}
    try:
        # from_params normalises kvm-type as hw/ppc/spapr.c does ("hv", "auto").
        request = CheckRequest.from_params(params)
    except UsageError as exc:
        raise CommandLineError(str(exc)) from None
    return Translation(argv, request, (), tuple(state.ignored), tuple(state.notes))


def _ram_size(text: str) -> int:
    try:
        size, _warnings = parse_memory(text)
    except QemuRefusalError as exc:  # QEMU's words
        raise CommandLineError(f"-m {text}: {exc.message}") from None
    return size


__all__ = [
    "CommandLineError",
    "OptionTable",
    "Translation",
    "option_table",
    "parse_keyval",
    "parse_qemu_opts",
    "split_command_line",
    "translate_argv",
]

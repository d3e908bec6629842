"""A libvirt domain XML, turned into the QEMU command line libvirt 9.0 builds from it.

Only the options that bear on QEMU's page-size decisions are built, the way libvirt 9.0's
src/qemu/qemu_command.c builds them (``qemuBuildMachineCommandLine``,
``qemuBuildAccelCommandLine``, ``qemuBuildCpuCommandLine``, ``qemuBuildMemCommandLine``,
``qemuBuildMemoryBackendProps``, ``qemuBuildNumaCommandLine``, ``qemuBuildSmpCommandLine``);
then :func:`kvmppc.inputs.qemu_argv.translate_argv` reads them like any command line.  The
result was compared option by option with ``virsh domxml-to-native qemu-argv`` of Debian 12's
libvirt 9.0 and QEMU 7.2 (tests/test_inputs_libvirt.py):

* ``<os><type machine='pseries'>`` becomes ``pseries-7.2`` (libvirt asks QEMU which machine
  the alias stands for; QEMU 7.2's is pseries-7.2);
* ``<features><hpt resizing=…><maxpagesize>`` becomes ``resize-hpt=…`` and
  ``cap-hpt-max-page-size=NNNNk`` (stored in KiB, rounded up: domain_conf.c);
  ``htm``/``nested-hv``/``ccf-assist``/``cfpc``/``sbbc``/``ibs`` become their ``cap-*``;
* ``<domain type='kvm'>`` is ``-accel kvm``, ``'qemu'`` is ``-accel tcg``;
* ``<cpu mode='host-passthrough'>`` is ``-cpu host``; ``host-model`` with a ``<model>`` is
  ``-cpu host`` and ``max-cpu-compat=MODEL`` (qemu_command.c, ppc64 only); a custom
  ``<model>`` is ``-cpu MODEL``; no ``<cpu>`` under TCG is the machine's default model as
  libvirt names it (the release's table: POWER9 from pseries-4.0 on, POWER8 before in 7.2;
  POWER10 from pseries-9.0 in 10.0), under KVM no ``-cpu``;
* ``<memory>`` (rounded up to 256 MiB on ppc64: qemuDomainAlignMemorySizes) is ``-m MiB``,
  or ``-m size=…k,slots=N,maxmem=…k`` with ``<maxMemory>``; RAM is one
  ``memory-backend-ram``/``-file`` named ``ppc_spapr.ram`` (``-machine memory-backend=``), or
  one per ``<numa><cell>`` (``ram-nodeN``) with ``-numa node,...,memdev=``; pseries machine
  types before 5.1 get the legacy ``-numa node,mem=MiB``;
* ``<memoryBacking><hugepages>`` puts the backend on the hugetlbfs mount of that page size
  (the host's default hugepage size without ``<page>``), at
  ``MOUNT/libvirt/qemu/-1-NAME`` (``qemuGetDomainHupageMemPath``; ``-1`` is the id
  domxml-to-native uses), with ``prealloc``; ``<source type='memfd'/>`` gives
  ``memory-backend-memfd`` with ``hugetlb``/``hugetlbsize``;
* ``<vcpu current=…>`` and ``<cpu><topology>`` become ``-smp N,maxcpus=…,sockets=…,dies=…,``
  ``cores=…,threads=…`` (qemuBuildSmpCommandLine).

What the host offers (hugetlbfs mounts, the default hugepage size, the base page size) is a
parameter: this module reads nothing but the text it is given.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

from kvmppc.errors import UsageError
from kvmppc.inputs.qemu_argv import Translation, translate_argv
from kvmppc.model import ProbeResult
from kvmppc.qemu_versions import MODELLED, QemuTable, choose

MAX_XML_BYTES = 1 << 20  # libvirt's own domain XMLs are a few KiB
KiB = 1024
MEMORY_ALIGN_KIB = 256 * 1024  # qemuDomainAlignMemorySizes: ppc64 aligns to 256 MiB
QEMU72_PSERIES = "pseries-7.2"  # QEMU 7.2's "pseries" alias

# virScaleInteger (src/util/virutil.c): units and their multipliers.
_UNITS = {
    "b": 1, "bytes": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": KiB**2, "mib": KiB**2, "mb": 1000**2,
    "g": KiB**3, "gib": KiB**3, "gb": 1000**3,
    "t": KiB**4, "tib": KiB**4, "tb": 1000**4,
    "p": KiB**5, "pib": KiB**5, "pb": 1000**5,
    "e": KiB**6, "eib": KiB**6, "eb": 1000**6,
}
# <features> children that become a cap-* machine option (qemu_command.c), with how the value
# is read: "state" (on/off) or "value".
_CAP_FEATURES = (
    ("htm", "cap-htm", "state"),
    ("nested-hv", "cap-nested-hv", "state"),
    ("ccf-assist", "cap-ccf-assist", "state"),
    ("cfpc", "cap-cfpc", "value"),
    ("sbbc", "cap-sbbc", "value"),
    ("ibs", "cap-ibs", "value"),
)


class DomainXMLError(UsageError):
    """The domain XML is not one kvmppc (or libvirt) can turn into a pseries command line."""


class LibvirtRefusalError(DomainXMLError):
    """libvirt itself would not start this domain on this host (its words)."""


@dataclass(frozen=True)
class HostMemory:
    """What libvirt looks up on the host to place guest RAM: the hugetlbfs mounts with their
    page sizes, the default hugepage size, and the base page size."""

    hugetlbfs: tuple[tuple[str, int], ...] = ()
    default_hugepage_size: int | None = None
    base_page_size: int = 64 * KiB


def _scaled_attr(value: str | None, unit_attr: str | None, what: str) -> int:
    """virDomainParseScaledValue: a non-negative integer times its unit (KiB by default),
    in bytes."""
    text = (value or "").strip()
    unit = (unit_attr or "KiB").lower()
    if not re.fullmatch(r"[0-9]{1,30}", text):
        raise DomainXMLError(f"{what}: invalid value {text!r} (a whole number is expected)")
    if unit not in _UNITS:
        raise DomainXMLError(f"{what}: unknown unit {unit_attr!r}")
    return int(text) * _UNITS[unit]


def _scaled(element: ET.Element, what: str) -> int:
    return _scaled_attr(element.text, element.get("unit"), what)


def _div_up(value: int, by: int) -> int:
    return -(-value // by)


def _machine_version(machine: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"pseries-(\d+)\.(\d+)", machine)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _default_cpu(machine: str, qemu: QemuTable | None = None) -> str:
    """The machine's default CPU model as libvirt names it on the command line (libvirt asks
    QEMU: query-machines ``default-cpu-type``; the release's table holds the answer: POWER9
    from pseries-4.0, POWER8 before, POWER7 up to 2.7 in 7.2; POWER10 from pseries-9.0 in
    10.0).  A machine the release lacks keeps the old rule (QEMU refuses it anyway)."""
    row = (qemu or MODELLED[(7, 2)]).machine(machine)
    if row is not None:
        return (qemu or MODELLED[(7, 2)]).cpus[row.default_cpu].family
    version = _machine_version(machine)
    return "POWER8" if version is not None and version < (4, 0) else "POWER9"


def parse_domain(text: str | bytes) -> ET.Element:
    if len(text) > MAX_XML_BYTES:
        raise DomainXMLError(f"domain XML of {len(text)} bytes: more than {MAX_XML_BYTES}")
    try:
        # Python's expat (>= 2.4.1 in Debian 12) refuses entity-expansion bombs itself.
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DomainXMLError(f"not well-formed XML: {exc}") from None
    if root.tag != "domain":
        raise DomainXMLError(f"the root element is <{root.tag}>, not <domain>")
    return root


def _hugepage_mount(host: HostMemory, page_size: int, name: str) -> str:
    """qemuGetDomainHupageMemPath: the mount of exactly that page size."""
    for path, size in host.hugetlbfs:
        if size == page_size:
            return f"{path.rstrip('/')}/libvirt/qemu/-1-{name}"
    if not host.hugetlbfs:
        raise LibvirtRefusalError(
            "internal error: hugetlbfs filesystem is not mounted or disabled by administrator"
            " config (libvirt's words: mount hugetlbfs, or give hugetlbfs_mount in qemu.conf)"
        )
    raise LibvirtRefusalError(
        f"internal error: Unable to find any usable hugetlbfs mount for {page_size // KiB} KiB"
    )


@dataclass
class _Cell:
    cell_id: int
    cpus: str | None
    memory: int  # bytes


def domain_to_argv(text: str | bytes, host: HostMemory,
                   pseries: str = QEMU72_PSERIES, qemu_version: str | None = None,
                   ) -> tuple[list[str], dict[str, str]]:
    """The command line libvirt 9.0 builds (the options that bear on page sizes), and facts
    about the domain (name, type) for the answer.  ``pseries``: what the installed QEMU's
    ``pseries`` alias stands for (libvirt asks QEMU; pseries-10.0 for QEMU 10.0).
    ``qemu_version`` (a modelled release): the QEMU libvirt asks, for the machine's default
    CPU and, unless ``pseries`` says otherwise, the alias (libvirt 11.3 with QEMU 10.0 writes
    pseries-10.0 and, under TCG, POWER10)."""
    qemu = _release_table(qemu_version)
    if qemu is not None and pseries == QEMU72_PSERIES:
        pseries = qemu.default_machine
    root = parse_domain(text)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("<name> is missing")
    virt_type = root.get("type")
    if virt_type not in ("kvm", "qemu"):
        raise DomainXMLError(f"<domain type={virt_type!r}>: only 'kvm' and 'qemu' run QEMU")
    os_type = root.find("os/type")
    if os_type is None:
        raise DomainXMLError("<os><type> is missing")
    arch = os_type.get("arch", "ppc64")
    machine = os_type.get("machine") or "pseries"
    if arch not in ("ppc64", "ppc64le") or not machine.startswith("pseries"):
        raise DomainXMLError(
            f"<os><type arch={arch!r} machine={machine!r}>: not a pseries guest (kvmppc checks"
            " ppc64/ppc64le pseries domains)"
        )
    if machine == "pseries":
        machine = pseries
    emulator = (root.findtext("devices/emulator") or "/usr/bin/qemu-system-ppc64").strip()
    argv = [emulator]

    machine_opts = [machine, "usb=off"]
    hpt = root.find("features/hpt")
    if hpt is not None:
        resizing = hpt.get("resizing")
        if resizing is not None:
            if resizing not in ("enabled", "disabled", "required"):
                raise DomainXMLError(f"<hpt resizing={resizing!r}>: enabled, disabled or"
                                     " required")
            machine_opts.append(f"resize-hpt={resizing}")
        maxpagesize = hpt.find("maxpagesize")
        if maxpagesize is not None:
            kib = _div_up(_scaled(maxpagesize, "<hpt><maxpagesize>"), KiB)
            if kib:
                machine_opts.append(f"cap-hpt-max-page-size={kib}k")
    for element, cap, attribute in _CAP_FEATURES:
        feature = root.find(f"features/{element}")
        if feature is not None and feature.get(attribute) is not None:
            machine_opts.append(f"{cap}={feature.get(attribute)}")
    machine_opts.append("dump-guest-core=off")

    cpu = root.find("cpu")
    cpu_mode = cpu.get("mode", "custom") if cpu is not None else None
    cpu_model = (cpu.findtext("model") or "").strip() if cpu is not None else ""
    cpu_arg: str | None = None
    if cpu_mode == "host-passthrough":
        cpu_arg = "host"
    elif cpu_mode == "host-model":
        cpu_arg = "host"
        if cpu_model:
            machine_opts.append(f"max-cpu-compat={cpu_model}")
    elif cpu_mode in ("custom", "maximum", None):
        if cpu_model:
            cpu_arg = cpu_model
        elif virt_type == "qemu":
            cpu_arg = _default_cpu(machine, qemu)
    else:
        raise DomainXMLError(f"<cpu mode={cpu_mode!r}>: unknown mode")

    # memory
    memory_el = root.find("memory")
    if memory_el is None:
        raise DomainXMLError("<memory> is missing")
    cells: list[_Cell] = []
    for cell_el in root.findall("cpu/numa/cell"):
        try:
            cell_id = int(cell_el.get("id", str(len(cells))))
        except ValueError:
            raise DomainXMLError(f"<numa><cell id={cell_el.get('id')!r}>: not a number") from None
        cells.append(_Cell(cell_id, cell_el.get("cpus"),
                           _scaled_attr(cell_el.get("memory"), cell_el.get("unit"),
                                        "<numa><cell memory>")))
    total_kib = _div_up(_scaled(memory_el, "<memory>"), KiB)
    if cells:
        # qemuDomainAlignMemorySizes: on ppc64 each NUMA cell is rounded up to 256 MiB, and
        # the total is their sum.
        cells = [replace(c, memory=_div_up(_div_up(c.memory, KiB), MEMORY_ALIGN_KIB)
                         * MEMORY_ALIGN_KIB * KiB) for c in cells]
        total_kib = sum(c.memory for c in cells) // KiB
    memory_kib = _div_up(total_kib, MEMORY_ALIGN_KIB) * MEMORY_ALIGN_KIB if not cells else (
        total_kib)
    max_memory = root.find("maxMemory")
    if max_memory is not None:
        max_kib = _div_up(_div_up(_scaled(max_memory, "<maxMemory>"), KiB), MEMORY_ALIGN_KIB) * (
            MEMORY_ALIGN_KIB)
        slots = max_memory.get("slots", "0")
        mem_arg = f"size={memory_kib}k,slots={slots},maxmem={max_kib}k"
    else:
        mem_arg = str(memory_kib // 1024)

    backing = root.find("memoryBacking")
    hugepages = backing.find("hugepages") if backing is not None else None
    memfd = backing is not None and backing.find("source[@type='memfd']") is not None
    pages: list[tuple[int, str | None]] = []
    if hugepages is not None:
        for page in hugepages.findall("page"):
            size_attr = page.get("size")
            if size_attr is None:
                raise DomainXMLError("<hugepages><page>: size is missing")
            pages.append((_scaled_attr(size_attr, page.get("unit"), "<hugepages><page size>"),
                          page.get("nodeset")))
        if not pages:
            if host.default_hugepage_size is None:
                raise DomainXMLError("<hugepages/> without a size, and the host has no default"
                                     " hugepage size")
            pages.append((host.default_hugepage_size, None))

    def page_for(cell_id: int | None) -> int | None:
        if hugepages is None:
            return None
        chosen: int | None = None
        for size, nodeset in pages:
            if nodeset is None:
                chosen = size if chosen is None else chosen
            elif cell_id is not None and cell_id in _parse_nodeset(nodeset):
                return size
        if chosen == host.base_page_size:
            return None  # "a page size equal to the system page size is no hugepages"
        return chosen

    def backend(backend_id: str, size: int, cell_id: int | None) -> str:
        page = page_for(cell_id)
        props: dict[str, object] = {"qom-type": "memory-backend-ram", "id": backend_id}
        if memfd:
            props["qom-type"] = "memory-backend-memfd"
            if page is not None:
                props.update({"hugetlb": True, "hugetlbsize": page})
        elif page is not None:
            props.update({"qom-type": "memory-backend-file",
                          "mem-path": _hugepage_mount(host, page, name)})
        if cell_id is None and props["qom-type"] != "memory-backend-ram":
            # qemuBuildMemoryBackendProps: main RAM in a file or memfd keeps its old RAM
            # block name (migration compatibility); NUMA cells do not.
            props["x-use-canonical-path-for-ramblock-id"] = False
        if page is not None:
            props["prealloc"] = True
        props["size"] = size
        return json.dumps(props, separators=(",", ":"))

    version = _machine_version(machine)
    legacy_numa = version is not None and version < (5, 1) and hugepages is None and not memfd
    objects: list[str] = []
    numa: list[str] = []
    if not cells:
        machine_opts.append("memory-backend=ppc_spapr.ram")
        objects.append(backend("ppc_spapr.ram", memory_kib * KiB, None))
    else:
        for cell in cells:
            cpus = f",cpus={cell.cpus}" if cell.cpus else ""
            if legacy_numa:
                numa.append(f"node,nodeid={cell.cell_id}{cpus},mem={cell.memory // KiB**2}")
            else:
                objects_id = f"ram-node{cell.cell_id}"
                numa.append(f"node,nodeid={cell.cell_id}{cpus},memdev={objects_id}")
                objects.append(backend(objects_id, cell.memory, cell.cell_id))

    argv += ["-machine", ",".join(machine_opts)]
    argv += ["-accel", "kvm" if virt_type == "kvm" else "tcg"]
    if cpu_arg is not None:
        argv += ["-cpu", cpu_arg]
    argv += ["-m", mem_arg]
    if not cells:
        argv += ["-object", objects[0]]
    argv += ["-smp", _smp(root)]
    if cells:
        for index, node in enumerate(numa):
            if not legacy_numa:
                argv += ["-object", objects[index]]
            argv += ["-numa", node]
    return argv, {"domain": name, "domain_type": virt_type}


def _count(text: str | None, what: str) -> int:
    value = (text or "").strip()
    if not value.isdigit() or not 0 < int(value) < 1 << 32:
        raise DomainXMLError(f"{what}: {value!r} is not a positive number")
    return int(value)


def _smp(root: ET.Element) -> str:
    """qemuBuildSmpCommandLine (libvirt 9.0): the online vCPUs, ``maxcpus`` when some are
    offline (``<vcpu current=N>``), then the ``<cpu><topology>`` (``dies`` is written because
    QEMU 7.2 has QEMU_CAPS_SMP_DIES; libvirt 9.0 knows no clusters), or one socket per vCPU."""
    vcpu = root.find("vcpu")
    maximum = _count(vcpu.text, "<vcpu>") if vcpu is not None else 1
    current = maximum
    if vcpu is not None and vcpu.get("current") is not None:
        current = _count(vcpu.get("current"), "<vcpu current>")
    smp = str(current) if current == maximum else f"{current},maxcpus={maximum}"
    topology = root.find("cpu/topology")
    if topology is None:
        return f"{smp},sockets={maximum},cores=1,threads=1"
    sockets, cores, threads = (_count(topology.get(key), f"<topology {key}>")
                               for key in ("sockets", "cores", "threads"))
    dies = _count(topology.get("dies", "1"), "<topology dies>")
    return f"{smp},sockets={sockets},dies={dies},cores={cores},threads={threads}"


def _parse_nodeset(text: str) -> set[int]:
    """virBitmapParse: "0-3,^2,5"."""
    result: set[int] = set()
    for raw in text.split(","):
        negate = raw.strip().startswith("^")
        part = raw.strip().lstrip("^")
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                values = set(range(low, high + 1))
            else:
                values = {int(part)}
        except ValueError:
            raise DomainXMLError(f"nodeset {text!r}: not a list of node numbers") from None
        result = result - values if negate else result | values
    return result


def translate_domain(text: str | bytes, host: HostMemory,
                     assume_kvm: bool = False, pseries: str = QEMU72_PSERIES,
                     qemu_version: str | None = None) -> Translation:
    """The domain as a :class:`Translation`: libvirt's command line, read by QEMU's rules.

    ``assume_kvm`` answers for a ``type='qemu'`` domain as though it were ``type='kvm'``
    (only for trying a POWER host profile on a machine where libvirt accepts nothing else).
    ``qemu_version``: the release libvirt runs (its ``pseries``, default CPU and options:
    :func:`domain_to_argv`, :func:`kvmppc.inputs.qemu_argv.translate_argv`).
    """
    argv, facts = domain_to_argv(text, host, pseries, qemu_version)
    if assume_kvm and facts["domain_type"] == "qemu":
        # the command line libvirt builds for type='kvm': -accel kvm, and no -cpu where the
        # domain names none (the TCG default model would be one KVM-HV refuses unless it is
        # exactly the host's)
        root = parse_domain(text)
        root.set("type", "kvm")
        cpu = root.find("cpu")
        os_type = root.find("os/type")
        machine = (os_type.get("machine") if os_type is not None else None) or "pseries"
        if cpu is not None and cpu.get("check") == "none" and cpu.get("mode", "custom") == (
                "custom") and (cpu.findtext("model") or "").strip() == _default_cpu(
                pseries if machine == "pseries" else machine, _release_table(qemu_version)):
            # the model libvirt filled in for TCG (qemuDomainDefSetDefaultCPU: custom, exact,
            # check='none'); a type='kvm' domain gets none
            root.remove(cpu)
        argv, _facts = domain_to_argv(ET.tostring(root), host, pseries, qemu_version)
    translation = translate_argv(argv, qemu_version)
    notes = translation.notes
    if assume_kvm and facts["domain_type"] == "qemu":
        notes = (*notes, "type='qemu' answered as if it were type='kvm' (assume_kvm)")
    return replace(translation, source="libvirt-domain", notes=notes,
                   extra={**translation.extra, **facts})


def _release_table(qemu_version: str | None) -> QemuTable | None:
    if qemu_version is None:
        return None
    try:
        return choose(qemu_version).table
    except ValueError as exc:
        raise DomainXMLError(f"qemu_version: {exc}") from None


def host_memory_from_probe(probe: ProbeResult) -> HostMemory:
    """The :class:`HostMemory` of a probe (live or a saved profile)."""
    hugepages = probe.hugepages
    host = probe.host
    return HostMemory(
        hugetlbfs=tuple((m.path, m.page_size) for m in hugepages.mounts),
        default_hugepage_size=hugepages.default_page_size,
        base_page_size=host.base_page_size,
    )


__all__ = [
    "DomainXMLError",
    "HostMemory",
    "LibvirtRefusalError",
    "domain_to_argv",
    "host_memory_from_probe",
    "parse_domain",
    "translate_domain",
]


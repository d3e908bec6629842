"""kvmppc.inputs.qemu_argv: a QEMU command line read with QEMU's own option syntax.

Expected values come from QEMU, not from the code under test: error texts are checked against
the real qemu-system-ppc64 7.2 on this machine (it refuses these command lines before it
needs KVM), and the user reports' messages are the ones quoted in
../shared/reference/kvm-ppc-facts.md §7.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_hosts import POWER8_PVR, KiB, hv_host

from kvmppc.errors import UsageError
from kvmppc.inputs import split_command_line, translate_argv
from kvmppc.inputs.qemu_argv import CommandLineError, parse_keyval, parse_qemu_opts
from kvmppc.policy import CheckRequest, check

MiB = 1024 * KiB
QEMU = shutil.which("qemu-system-ppc64")

# The user reports (kvm-ppc-facts.md §7), QEMU's words.
MSG_4K_HOST = "Can't support 64 kiB guest pages with 4 kiB host pages with this KVM implementation"
MSG_2M_UNDER_16M = ("Can't support 16384 kiB guest pages with 2048 kiB host pages with this KVM"
                    " implementation")
MSG_CI = "KVM can't supply 64kiB CI pages, which guest expects"
MSG_VRMA = "Unable to create 2048MiB RMA (VRMA only allows 512MiB"  # QEMU prints no ")"
# target/ppc/kvm.c kvm_arch_init_vcpu, QEMU 7.2 (quoted in a QEMU avocado patch's log too)
MSG_HV_CPU_HOST = ("Register sync failed... If you're using kvm-hv.ko, only \"-cpu host\" is"
                   " possible")

DEBIAN13 = hv_host(base_page_size=4 * KiB)  # POWER9 radix, KVM-HV, a 4 KiB-page kernel
DEBIAN13_HUGE = hv_host(base_page_size=4 * KiB, mounts=(("/dev/hugepages", 2 * MiB),))
POWER9_HUGE = hv_host(mounts=(("/dev/hugepages", 2 * MiB),))


def request(*argv: str) -> CheckRequest:
    translation = translate_argv(argv)
    assert translation.cannot_judge == (), translation.cannot_judge
    assert translation.request is not None
    return translation.request


def first_error(probe: object, *argv: str) -> str | None:
    result = check(probe, request(*argv))  # type: ignore[arg-type]
    return result.errors[0].message if result.errors else None


# --- the syntaxes ----------------------------------------------------------------------------


def test_keyval_implied_key_and_escaped_commas() -> None:
    assert parse_keyval("-M", "pseries,cap-hpt-max-page-size=16M", "type") == {
        "type": "pseries", "cap-hpt-max-page-size": "16M"}
    # ",," is one literal comma, inside a value as in the first (implied) element
    assert parse_keyval("-M", "a,,b,x=1,,2", "type") == {"type": "a,b", "x": "1,2"}
    assert parse_keyval("-M", "accel=kvm", "type") == {"accel": "kvm"}


def test_qemu_opts_booleans_and_implied_size() -> None:
    assert parse_qemu_opts("-m", "2G", "size") == {"size": "2G"}
    assert parse_qemu_opts("-accel", "kvm,nofoo,bar", "accel") == {
        "accel": "kvm", "foo": "off", "bar": "on"}


def test_m_bare_and_size_forms_are_the_same_request() -> None:
    assert request("qemu-system-ppc64", "-m", "2048") == request(
        "qemu-system-ppc64", "-m", "size=2048")
    assert request("qemu-system-ppc64", "-m", "2G").memory == "2G"


def test_escaped_comma_reaches_the_cap_value() -> None:
    # Real QEMU: "Parameter 'cap-hpt-max-page-size' expects size" for 16M,,x (the comma is
    # part of the value).
    result = check(POWER9_HUGE, request("kvm", "-M", "pseries,cap-hpt-max-page-size=16M,,x"))
    assert [e.message for e in result.errors][:1] == [
        "Parameter 'cap-hpt-max-page-size' expects size"]


@pytest.mark.parametrize(("argv", "accel"), [
    (["qemu-system-ppc64"], "tcg"),  # QEMU's own default
    (["qemu-system-ppc64", "-enable-kvm"], "kvm"),
    (["qemu-system-ppc64", "-accel", "kvm"], "kvm"),
    (["qemu-system-ppc64", "-accel", "tcg"], "tcg"),
    (["qemu-system-ppc64", "-machine", "accel=kvm:tcg"], None),  # KVM if it can, else TCG
    (["qemu-system-ppc64", "-M", "pseries,accel=tcg", "-enable-kvm"], "kvm"),  # last wins
    (["kvm", "-M", "pseries"], "kvm"),  # Debian's ppc64el wrapper
    (["/usr/bin/qemu-system-ppc64", "-accel", "kvm", "-accel", "tcg"], None),
])
def test_accelerator(argv: list[str], accel: str | None) -> None:
    assert request(*argv).accel == accel


def test_memory_backends_become_backends() -> None:
    """Every -object memory-backend-* in command-line order (QEMU creates each), with its
    use: the NUMA nodes' memdevs by node, the machine's, or none."""
    req = request(
        "qemu-system-ppc64", "-accel", "kvm", "-m", "2G",
        "-object", "memory-backend-file,id=m0,size=1G,mem-path=/dev/hugepages,prealloc=on",
        "-object", '{"qom-type":"memory-backend-file","id":"m1","size":1073741824,'
                   '"mem-path":"/dev/hugepages/x"}',
        "-object", "memory-backend-memfd,id=m2,size=1G,hugetlb=on,hugetlbsize=2M",
        "-numa", "node,nodeid=0,memdev=m1", "-numa", "node,nodeid=1,memdev=m0",
    )
    assert [(b.qom_type, b.id, b.size, b.mem_path, b.use, b.node) for b in req.backends] == [
        ("memory-backend-file", "m0", "1G", "/dev/hugepages", "numa", 1),
        ("memory-backend-file", "m1", "1073741824", "/dev/hugepages/x", "numa", 0),
        ("memory-backend-memfd", "m2", "1G", None, "none", None),
    ]
    assert (req.backends[2].hugetlb, req.backends[2].hugetlbsize) == (True, "2M")
    req = request("qemu-system-ppc64", "-m", "512", "-object",
                  "memory-backend-ram,id=r,size=512M", "-M", "pseries,memory-backend=r")
    assert [(b.qom_type, b.id, b.use) for b in req.backends] == [
        ("memory-backend-ram", "r", "ram")]
    req = request("qemu-system-ppc64", "-object", "memory-backend-file,id=r,size=1G,"
                  "mem-path=/hp", "-M", "pseries,memory-backend=r")
    assert [(b.mem_path, b.use) for b in req.backends] == [("/hp", "ram")]
    assert req.memory is None  # softmmu/vl.c: -m comes from the backend
    assert request("kvm", "-mem-path", "/dev/hugepages", "-mem-prealloc").mem_paths == (
        "/dev/hugepages",)
    req = request("kvm", "-m", "2G,slots=4,maxmem=8G")
    assert (req.memory, req.slots, req.maxmem) == ("2G", "4", "8G")


def test_kvm_type_cpu_and_machine() -> None:
    req = request("kvm", "-M", "pseries-2.12,kvm-type=pr", "-cpu", "POWER8")
    assert (req.machine, req.kvm_type, req.cpu) == ("pseries-2.12", "PR", "POWER8")


def test_ignored_options_are_listed() -> None:
    translation = translate_argv([
        "kvm", "-M", "pseries,usb=off,cap-htm=off,cap-cfpc=broken", "-smp", "4,threads=2",
        "-nographic", "-drive", "file=x.qcow2,if=virtio", "-device", "virtio-net-pci",
        "disk.img",
    ])
    assert translation.request is not None
    assert translation.ignored == (
        "-smp 4,threads=2 (vCPU topology: no bearing on page sizes)", "-nographic",
        "-drive file=x.qcow2,if=virtio", "-device virtio-net-pci", "disk.img (a disk image)",
        "-machine usb=off",
    )
    # the caps are judged now, as written and in order (hw/ppc/spapr_caps.c)
    assert translation.request.caps == ("cap-htm=off", "cap-cfpc=broken")


@pytest.mark.parametrize(("argv", "caps", "compat"), [
    (["-M", "pseries,max-cpu-compat=power8"], (), "power8"),
    (["-M", "pseries,cap-nested-hv=on,cap-fwnmi=off"], ("cap-nested-hv=on", "cap-fwnmi=off"),
     None),
    (["-M", "pseries,max-cpu-compat=", "-M", "pseries,cap-xyz=on"], ("cap-xyz=on",), ""),
])
def test_caps_and_compat_reach_the_request(argv: list[str], caps: tuple[str, ...],
                                           compat: str | None) -> None:
    """cap-* and max-cpu-compat used to be "cannot judge"; now they are the request's."""
    got = request("kvm", *argv)
    assert (got.caps, got.max_cpu_compat) == (caps, compat)


@pytest.mark.parametrize(("argv", "reason"), [
    (["-M", "pseries,resize-hpt=required"], "resize-hpt=required"),
    (["-cpu", "POWER9,compat=power8"], "-cpu POWER9,compat=power8"),
    (["-object", "memory-backend-epc,id=e,size=1G"], "memory-backend-epc is not modelled"),
    (["-readconfig", "guest.cfg"], "out of scope"),
    (["-global", "spapr-machine.cap-hpt-max-page-size=64k"], "-global"),
    (["-set", "machine.cap-hpt-max-page-size=4k"], "-set"),
    (["-device", "pc-dimm,id=d,memdev=m"], "pc-dimm"),
    (["-M", "pseries-2.11", "-m", "1G", "-numa", "node,mem=1G"], "legacy NUMA"),
])
def test_cannot_judge(argv: list[str], reason: str) -> None:
    translation = translate_argv(["kvm", *argv])
    assert translation.request is None
    assert any(reason in r for r in translation.cannot_judge), translation.cannot_judge


def test_split_command_line_like_a_script_or_virsh() -> None:
    text = ("LC_ALL=C PATH=/bin \\\n/usr/bin/qemu-system-ppc64 -name guest=g \\\n"
            "-object '{\"qom-type\":\"memory-backend-ram\",\"id\":\"r\",\"size\":1}'\n")
    assert split_command_line(text) == [
        "/usr/bin/qemu-system-ppc64", "-name", "guest=g", "-object",
        '{"qom-type":"memory-backend-ram","id":"r","size":1}']
    with pytest.raises(CommandLineError, match="cannot split"):
        split_command_line("qemu-system-ppc64 -M 'pseries")


# --- the user reports, as command lines ------------------------------------------------------


def test_debian13_4k_host_default_machine() -> None:
    assert first_error(DEBIAN13, "kvm", "-machine", "pseries") == MSG_4K_HOST
    # the release notes' cure
    assert first_error(DEBIAN13, "kvm", "-machine", "pseries,cap-hpt-max-page-size=4096") is None


def test_2m_hugepages_under_16m_cap() -> None:
    assert first_error(POWER9_HUGE, "qemu-system-ppc64", "-enable-kvm", "-M",
                       "pseries,cap-hpt-max-page-size=16M", "-mem-path", "/dev/hugepages",
                       "-mem-prealloc") == MSG_2M_UNDER_16M


def test_4k_host_old_machine_ci_pages() -> None:
    assert first_error(DEBIAN13_HUGE, "kvm", "-M", "pseries-2.11", "-mem-path",
                       "/dev/hugepages") == MSG_CI


# A POWER8 model under KVM-HV needs a POWER8 host (KVM-HV takes only the host's PVR).
POWER8_4K = hv_host(radix=False, pvr=POWER8_PVR, base_page_size=4 * KiB)
POWER8_4K_HUGE = hv_host(radix=False, pvr=POWER8_PVR, base_page_size=4 * KiB,
                         mounts=(("/dev/hugepages", 2 * MiB),))


def test_vrma_qemu_5() -> None:
    assert first_error(POWER8_4K, "kvm", "-M", "pseries,cap-hpt-max-page-size=4096", "-cpu",
                       "power8", "-m", "2G") == MSG_VRMA
    # the workaround: 2 MiB hugepages
    assert first_error(POWER8_4K_HUGE, "kvm", "-M", "pseries,cap-hpt-max-page-size=4096",
                       "-cpu", "power8", "-m", "2G", "-mem-path", "/dev/hugepages") is None
    # On the POWER9 host the POWER8 model does not get that far.
    assert first_error(DEBIAN13, "kvm", "-M", "pseries,cap-hpt-max-page-size=4096", "-cpu",
                       "power8", "-m", "2G") == MSG_HV_CPU_HOST


# --- bad input: QEMU's own words, checked against the real QEMU ------------------------------

QEMU_REFUSES = [
    ["-M", "pseries,usb"],
    ["-M", "pseries,nousb"],
    ["-M", ",x=1"],
    ["-M", "pseries,=1"],
    ["-m", "size=1G,foo=1"],
    ["-M", "pseries,accel=kvm", "-accel", "tcg"],
    ["-M", "pseries,accel=foo"],
    ["-accel", "kvm:tcg"],
    ["-bogus"],
    ["-m"],
    ["-smp", "cpus=x"],
    ["-smp", "2,foo=1"],
    ["-object", "memory-backend-ram,id=m0"],
    ["-object", "memory-backend-ram,size=1G"],
    ["-M", "pseries", "-numa", "node,memdev=nope"],
    ["-M", "pseries", "-M", "memory-backend=nope"],
    ["-M", "pseries", "-mem-path", "/tmp", "-M", "memory-backend=x"],
    ["-m", "1G", "-numa", "node,mem=1G", "-M", "pseries"],
]


@pytest.mark.parametrize("argv", QEMU_REFUSES, ids=" ".join)
def test_bad_command_line_in_qemus_words(argv: list[str]) -> None:
    with pytest.raises(CommandLineError) as raised:
        translate_argv(["qemu-system-ppc64", *argv])
    ours = str(raised.value)
    if QEMU is None:
        if os.environ.get("CI") == "true":
            pytest.fail("qemu-system-ppc64 is missing (scripts/setup-system.sh installs it)")
        pytest.skip("qemu-system-ppc64 is not installed: cannot compare with QEMU's words")
    run = subprocess.run([QEMU, "-display", "none", "-nodefaults", "-S", *argv],
                         capture_output=True, text=True, timeout=20, check=False)
    assert run.returncode != 0
    qemu_says = run.stderr.strip().removeprefix("qemu-system-ppc64: ")
    # QEMU's whole message, or (for options it does not know) its first words, are ours.
    assert ours == qemu_says or ours.startswith(qemu_says), (ours, qemu_says)


@pytest.mark.parametrize(("argv", "words"), [
    ([], "empty command line"),
    (["qemu-system-x86_64", "-m", "1G"], "not QEMU's pseries emulator"),
    (["qemu-system-ppc64", "-version"], "no guest to check"),
    (["qemu-system-ppc64", "-M", "help"], "no guest to check"),
    (["qemu-system-ppc64", "-object", "{not json"], "-object {not json: JSON parse error"),
    (["qemu-system-ppc64", "-object", "[1]"], "-object [1]: "),
    (["qemu-system-ppc64", "-object", "memory-backend-file,id=f,size=1G", "-M",
      "pseries,memory-backend=f"], "property 'mem-path' is required"),
    (["qemu-system-ppc64", "-M", "pseries,kvm-type=xx"], "Unknown kvm-type specified 'xx'"),
    (["qemu-system-ppc64", "-object", "memory-backend-ram,id=a,size=1", "-object",
      "memory-backend-ram,id=a,size=1"], "duplicate property 'a'"),
])
def test_bad_input_names_the_problem(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError, match=None) as raised:
        translate_argv(argv)
    assert words in str(raised.value)


_WORDS = st.sampled_from([
    "-M", "-machine", "-m", "-accel", "-enable-kvm", "-cpu", "-mem-path", "-mem-prealloc",
    "-object", "-numa", "-smp", "-readconfig", "-global", "-device", "-set", "-S", "--",
    "pseries", "pseries-2.11,cap-hpt-max-page-size=64k", "memory-backend=m", "accel=kvm:tcg",
    "memory-backend-file,id=m,size=1G,mem-path=/hp", "memory-backend-ram,id=m,size=512M",
    '{"qom-type":"memory-backend-ram","id":"m","size":1}', "node,memdev=m", "2G,slots=2",
    "size=,", ",,", "=", "", "kvm", "tcg", "host", "1,threads=x",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_WORDS, st.text(max_size=12)), max_size=10))
def test_any_argv_gives_an_answer_or_a_usage_error(words: list[str]) -> None:
    try:
        translation = translate_argv(["qemu-system-ppc64", *words])
    except UsageError as exc:
        assert str(exc)
        return
    assert (translation.request is None) == bool(translation.cannot_judge)
    json.dumps(translation.to_dict())


# --- the command ----------------------------------------------------------------------------


def kvmppc(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmppc", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_exit_codes_and_json() -> None:
    base = ("check", "--host-profile", "power9-radix-hv")
    no = kvmppc(*base, "--json", "--", "kvm", "-M", "pseries,cap-hpt-max-page-size=16M")
    assert no.returncode == 1, no.stderr
    body = json.loads(no.stdout)
    assert body["answer"] == "no"
    assert body["check"]["errors"][0] == (
        "Can't support 16384 kiB guest pages with 64 kiB host pages with this KVM"
        " implementation")
    yes = kvmppc(*base, "--", "kvm", "-M", "pseries")
    assert yes.returncode == 0, yes.stderr
    cannot = kvmppc(*base, "--", "kvm", "-M", "pseries,resize-hpt=required")
    assert cannot.returncode == 3
    assert "resize-hpt=required" in cannot.stdout
    bad = kvmppc(*base, "--", "kvm", "-M", "pseries,usb")
    assert bad.returncode == 2
    assert "Expected '=' after parameter 'usb'" in bad.stderr
    both = kvmppc(*base, "--max-page-size", "4K", "--", "kvm")
    assert both.returncode == 2
    assert "--max-page-size" in both.stderr
    stdin = kvmppc(*base, "-", stdin="kvm \\\n  -M pseries,cap-hpt-max-page-size=16M\n")
    assert stdin.returncode == 1
    assert "16384 kiB guest pages" in stdin.stdout
    # the flags keep working
    flags = kvmppc(*base, "--max-page-size", "64K")
    assert flags.returncode == 0, flags.stderr

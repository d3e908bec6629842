"""The pseries capabilities, max-cpu-compat and KVM-HV's CPU rule (kvmppc.policy.caps).

Expected values come from outside kvmppc: the real runs of QEMU 7.2 under nested KVM-HV on
POWER9 (/work/notes/kvm-results/slice/power9-hv.md, the integrator's harness, quoted per
case), QEMU's and the kernel's source texts (named per test), and the real QEMU 7.2 and
10.0 binaries under TCG (the qom-get test at the end; tests/test_policy_qemu.py compares
the TCG errors and warnings for the whole grid).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from qemu_oracle import need, qemu10, qemu72

from kvmppc.inputs import translate_argv
from kvmppc.model import ProbeResult
from kvmppc.policy import CheckRequest, check
from kvmppc.policy.caps import cap_value_name, default_caps, kvm_spectre
from kvmppc.policy.machines import lookup_cpu, lookup_machine, qemu_models
from kvmppc.probe import ProbePaths, probe_dec_bits
from kvmppc.profiles import load_profile

P9 = load_profile("power9-radix-hv")
P10 = load_profile("power10-radix-hv")
PR = load_profile("power8-hash-pr")

REGISTER_SYNC = 'Register sync failed... If you\'re using kvm-hv.ko, only "-cpu host" is possible'
INIT_VCPU = "kvm_init_vcpu: kvm_arch_init_vcpu failed (0): Invalid argument"
FWNMI = "Firmware Assisted Non-Maskable Interrupts(FWNMI) not supported by KVM."


def says(probe: ProbeResult, *argv: str) -> tuple[bool, tuple[str, ...]]:
    """What kvmppc predicts for a QEMU 7.2 command line: (starts, QEMU's lines)."""
    translation = translate_argv(["qemu-system-ppc64", "-nodefaults", "-display", "none",
                                  "-accel", "kvm", *argv])
    assert translation.cannot_judge == (), translation.cannot_judge
    assert translation.request is not None
    result = check(probe, replace(translation.request, qemu_version="7.2"))
    return result.ok, result.qemu_output


# --- the real runs: QEMU 7.2 in a POWER9 nested KVM-HV guest (power9-hv.md) -----------------


@pytest.mark.parametrize(("argv", "ok", "lines"), [
    # cpu-models-00: exit 1, both lines
    (("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", "POWER8", "-m", "2G"), False,
     (REGISTER_SYNC, INIT_VCPU)),
    # cpu-models-01 and -02: the host's own PVR (POWER9 v2.0) passes
    (("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", "POWER9", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", "power9_v2.0", "-m", "2G"), True, ()),
    # max-cpu-compat-00 and -01: exit 1
    (("-M", "pseries-7.2,max-cpu-compat=power8", "-m", "2G"), False,
     ("HPT not supported in nested guests",)),
    (("-M", "pseries-7.2,max-cpu-compat=power8", "-cpu", "host", "-m", "2G"), False,
     ("HPT not supported in nested guests",)),
    # caps-00, caps-01, caps-02: exit 0 (HV has FWNMI; this host has a large decrementer)
    (("-M", "pseries-7.2,cap-fwnmi=on", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-large-decr=off", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-large-decr=on", "-m", "2G"), True, ()),
    # machines-00 and -02: the defaults of pseries-7.2 and pseries-2.12 start
    (("-M", "pseries-7.2", "-m", "2G"), True, ()),
    (("-M", "pseries-2.12", "-m", "2G"), True, ()),
    # the full report (power9-hv.md, 135 cases), the cases about caps and CPUs:
    # machines-16 and -17: pseries-2.11 turns cap-htm on; KVM_CAP_PPC_HTM is 0
    (("-M", "pseries-2.11", "-m", "2G"), False,
     ("KVM implementation does not support Transactional Memory",
      "Try appending -machine cap-htm=off")),
    (("-M", "pseries-2.11", "-cpu", "host", "-m", "2G"), False,
     ("KVM implementation does not support Transactional Memory",
      "Try appending -machine cap-htm=off")),
    # cpu-models-03 to -06: every model but the host's
    *[(("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", cpu, "-m", "2G"), False,
       (REGISTER_SYNC, INIT_VCPU)) for cpu in ("POWER10", "POWER7", "power8_v2.0", "970")],
    # max-cpu-compat-02 to -09
    (("-M", "pseries-7.2,max-cpu-compat=power9", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,max-cpu-compat=power9", "-cpu", "host", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,max-cpu-compat=power7", "-m", "2G"), False,
     ("HPT not supported in nested guests",)),
    (("-M", "pseries-7.2,max-cpu-compat=power10", "-cpu", "host", "-m", "2G"), False,
     ("Compatibility PVR 0x0f000006 not valid for CPU",)),
    (("-M", "pseries-7.2,max-cpu-compat=power8,cap-fwnmi=off", "-m", "2G"), False,
     ("HPT not supported in nested guests",)),
    # caps-03 to -20
    (("-M", "pseries-7.2,cap-htm=on", "-m", "2G"), False,
     ("KVM implementation does not support Transactional Memory",
      "Try appending -machine cap-htm=off")),
    (("-M", "pseries-7.2,cap-nested-hv=on", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-ccf-assist=on", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-cfpc=workaround", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-cfpc=fixed", "-m", "2G"), False,
     ("Requested safe cache capability level not supported by KVM",
      "Try appending -machine cap-cfpc=workaround")),
    (("-M", "pseries-7.2,cap-sbbc=fixed", "-m", "2G"), False,
     ("Requested safe bounds check capability level not supported by KVM",
      "Try appending -machine cap-sbbc=workaround")),
    (("-M", "pseries-7.2,cap-ibs=fixed-ibs", "-m", "2G"), False,
     ("Requested safe indirect branch capability level not supported by KVM",
      "Try appending -machine cap-ibs=workaround")),
    (("-M", "pseries-7.2,cap-ibs=workaround", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-ail-mode-3=off", "-m", "2G"), False,
     ("Property 'pseries-7.2-machine.cap-ail-mode-3' not found",)),
    (("-M", "pseries-7.2,cap-rpt-invalidate=on", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-fwnmi=off,cap-htm=on", "-m", "2G"), False,
     ("KVM implementation does not support Transactional Memory",
      "Try appending -machine cap-htm=off")),
    (("-M", "pseries-7.2,cap-fwnmi=off,cap-large-decr=on", "-m", "2G"), True, ()),
])
def test_real_nested_power9_runs(argv: tuple[str, ...], ok: bool,
                                 lines: tuple[str, ...]) -> None:
    assert says(P9, *argv) == (ok, lines)


# --- the real runs: QEMU 7.2 in a POWER8 KVM-PR guest (power8-pr.md) -------------------------

LARGE_DECR = ("No large decrementer support", "Try appending -machine cap-large-decr=off")


@pytest.mark.parametrize(("argv", "ok", "lines"), [
    # machines-06, -14: FWNMI is on from pseries-5.0; machines-12: pseries-4.2 has it off
    (("-M", "pseries-5.2", "-m", "2G"), False, (FWNMI, "Try appending -machine cap-fwnmi=off")),
    (("-M", "pseries-6.2", "-cpu", "host", "-m", "2G"), False,
     (FWNMI, "Try appending -machine cap-fwnmi=off")),
    (("-M", "pseries-4.2", "-m", "2G"), True, ()),
    (("-M", "pseries-5.2,cap-fwnmi=off,cap-ccf-assist=off", "-m", "2G"), True, ()),
    # (pseries-4.1 and older add a VSMT warning under KVM-PR: main models it, with
    # KVM_CAP_PPC_SMT in the probe)
    # cpu-models-00: KVM-PR takes another model (POWER8 is the host's; POWER9 and POWER10
    # get cap-large-decr on, and this POWER8 host has no ibm,dec-bits: cpu-models-01, -03)
    (("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", "POWER8", "-m", "2G"), True, ()),
    (("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", "POWER9", "-m", "2G"), False, LARGE_DECR),
    (("-M", "pseries-7.2,cap-fwnmi=off", "-cpu", "POWER10", "-m", "2G"), False, LARGE_DECR),
    # caps-02: large-decr (index 8) is checked before fwnmi (index 10)
    (("-M", "pseries-7.2,cap-large-decr=on", "-m", "2G"), False, LARGE_DECR),
    (("-M", "pseries-7.2,cap-fwnmi=off,cap-large-decr=on", "-m", "2G"), False, LARGE_DECR),
    # max-cpu-compat-08, -09: ppc_set_compat's KVM_REG_PPC_ARCH_COMPAT, which PR lacks
    (("-M", "pseries-7.2,max-cpu-compat=power8,cap-fwnmi=off", "-m", "2G"), False,
     ("Unable to set CPU compatibility mode in KVM: Invalid argument",)),
    (("-M", "pseries-7.2,max-cpu-compat=power8,cap-fwnmi=off", "-cpu", "host", "-m", "2G"),
     False, ("Unable to set CPU compatibility mode in KVM: Invalid argument",)),
])
def test_real_power8_pr_runs(argv: tuple[str, ...], ok: bool, lines: tuple[str, ...]) -> None:
    assert says(PR, *argv) == (ok, lines)


# --- QEMU's and the kernel's sources ---------------------------------------------------------


def test_kvm_pr_has_no_fwnmi() -> None:
    """arch/powerpc/kvm/powerpc.c: KVM_CAP_PPC_FWNMI is ``hv_enabled``; spapr_caps.c
    cap_fwnmi_apply refuses cap-fwnmi=on (the default from pseries-5.0: pseries-4.2 turns it
    off) without it, and its hint says what to add."""
    result = check(PR, CheckRequest(cpu="power8", qemu_version="7.2"))
    assert result.qemu_output == (FWNMI, "Try appending -machine cap-fwnmi=off")
    assert check(PR, CheckRequest(cpu="power8", caps=("cap-fwnmi=off",),
                                  qemu_version="7.2")).ok
    assert check(PR, CheckRequest(cpu="power8", machine="pseries-4.2", qemu_version="7.2")).ok
    # the advice replays QEMU's hint and starts
    assert result.advice is not None
    first = result.advice.suggestions[0]
    assert first.change.startswith("add -machine cap-fwnmi=off") and first.result.ok


def test_qemu_10_asks_pr_for_ail_mode_3() -> None:
    """QEMU 10.0's cap-ail-mode-3 (on unless the model is before POWER8) needs
    KVM_CAP_PPC_AIL_MODE_3, which the kernel gives only under HV (powerpc.c)."""
    result = check(PR, CheckRequest(cpu="power8", caps=("fwnmi=off",), qemu_version="10.0"))
    assert result.qemu_output == ("KVM implementation does not support cap-ail-mode-3",
                                  "Try appending -machine cap-ail-mode-3=off")
    assert check(PR, CheckRequest(cpu="power8", caps=("fwnmi=off", "ail-mode-3=off"),
                                  qemu_version="10.0")).ok


def test_qemu_10_dawr1_on_power10() -> None:
    """QEMU 10.0 turns cap-dawr1 on for POWER10 models (spapr_machine_class_init; off before
    POWER10 in default_caps_with_cpu); the nested POWER10 KVM has no KVM_CAP_PPC_DAWR1, so
    cap_dawr1_apply stops.  7.2 has no such cap."""
    result = check(P10, CheckRequest(qemu_version="10.0"))
    assert result.qemu_output == ("DAWR1 not supported by KVM.",
                                  "Try appending -machine cap-dawr1=off")
    assert check(P10, CheckRequest(qemu_version="10.0", caps=("cap-dawr1=off",))).ok
    assert check(P10, CheckRequest(qemu_version="7.2")).ok
    assert check(P10, CheckRequest(qemu_version="7.2", caps=("cap-dawr1=off",))).qemu_output == (
        "Property 'pseries-7.2-machine.cap-dawr1' not found",)


def test_kvm_checks_of_the_other_caps() -> None:
    """spapr_caps.c under KVM (QEMU 7.2's words): HTM, nested-HV, H_RPT_INVALIDATE."""
    def first(probe: ProbeResult, *caps: str, **kw: str) -> str:
        return check(probe, CheckRequest(caps=caps, qemu_version="7.2", **kw)).qemu_output[0]

    # KVM_CAP_PPC_HTM is 0 on these kernels
    assert first(P9, "cap-htm=on") == "KVM implementation does not support Transactional Memory"
    # KVM-PR: KVM_CAP_PPC_NESTED_HV is 0 (a POWER9 model under PR on a POWER8 host)
    assert first(PR, "cap-fwnmi=off", "cap-nested-hv=on", cpu="power9") == (
        "KVM implementation does not support Nested-HV")
    # a model before POWER9 is refused first, whatever the accelerator
    assert first(PR, "cap-fwnmi=off", "cap-nested-hv=on", cpu="power8") == (
        "Nested-HV only supported on POWER9 and later")
    # under KVM the compat mode counts too (its hint is max-cpu-compat=power9)
    nested = check(P9, CheckRequest(caps=("cap-nested-hv=on",), max_cpu_compat="power8",
                                    qemu_version="7.2"))
    assert nested.qemu_output == ("Nested-HV only supported on POWER9 and later",
                                  "Try appending -machine max-cpu-compat=power9")
    # H_RPT_INVALIDATE needs radix (KVM_CAP_PPC_MMU_RADIX): PR on a hash host has none
    assert first(PR, "cap-fwnmi=off", "cap-rpt-invalidate=on", cpu="power8") == (
        "H_RPT_INVALIDATE only supported on Radix")


def test_kvm_pr_takes_other_models() -> None:
    """book3s_pr.c kvmppc_set_pvr_pr takes any PVR: no vCPU refusal under PR."""
    for cpu in ("power7", "power8", "power9"):
        result = check(PR, CheckRequest(cpu=cpu, caps=("cap-fwnmi=off",), qemu_version="7.2"))
        assert "vcpu" not in {p.kind.value for p in result.errors}, (cpu, result.errors)


def test_hv_model_advice() -> None:
    """KVM-HV refuses -cpu POWER8 on POWER9: -cpu host starts; keeping POWER8's ISA with
    max-cpu-compat=power8 meets nested KVM-HV's HPT refusal, and the advice says so."""
    result = check(P9, CheckRequest(cpu="power8", qemu_version="7.2"))
    assert result.advice is not None
    got = {s.change.split(":")[0].split(" to keep")[0]: s.result.qemu_output
           for s in result.advice.suggestions}
    assert got == {"use -cpu host": (),
                   "use -cpu host with -machine max-cpu-compat=power8": (
                       "HPT not supported in nested guests",)}


def test_kvm_spectre_levels() -> None:
    """target/ppc/kvm.c parse_cap_ppc_*: the shipped profiles' KVM_PPC_GET_CPU_CHAR gives
    the workaround level everywhere (L1D flush ori30/trig2 with thread-private, ori31
    barrier, count-cache flush); count-cache-disabled makes cap-ibs fixed-ccd and lets
    cap-ccf-assist=on pass without the flush (cap_ccf_assist_apply)."""
    vm = P9.vm_type("default")
    assert vm is not None and vm.cpu_char is not None
    levels = kvm_spectre(vm, host_is_power8=False)
    assert levels is not None
    assert (levels.cfpc, levels.sbbc, levels.ibs, levels.ccf_assist) == (1, 1, 1, 1)
    ccd = replace(vm.cpu_char, character=vm.cpu_char.character | 1 << 56,
                  behaviour=vm.cpu_char.behaviour & ~(1 << 58))
    levels = kvm_spectre(replace(vm, cpu_char=ccd), host_is_power8=False)
    assert levels is not None and (levels.ibs, levels.ccf_assist) == (3, 0)
    probe = replace(P9, kvm=replace(P9.kvm, vm_types={
        **P9.kvm.vm_types, "default": replace(vm, cpu_char=ccd)}))
    assert check(probe, CheckRequest(qemu_version="7.2")).ok
    # no KVM_PPC_GET_CPU_CHAR: QEMU assumes broken, and the default workaround is refused
    none = replace(vm, caps={**vm.caps, "PPC_GET_CPU_CHAR": 0})
    probe = replace(P9, kvm=replace(P9.kvm, vm_types={**P9.kvm.vm_types, "default": none}))
    result = check(probe, CheckRequest(qemu_version="7.2"))
    assert result.qemu_output == ("Requested safe cache capability level not supported by KVM",
                                  "Try appending -machine cap-cfpc=broken")


def test_large_decrementer_needs_dec_bits() -> None:
    """target/ppc/kvm.c kvmppc_get_dec_bits reads the host's ibm,dec-bits; spapr_caps.c
    cap_large_decr_apply compares it with the model's 56 bits (POWER9)."""
    def with_bits(bits: int | None) -> ProbeResult:
        return replace(P9, host=replace(P9.host, dec_bits=bits))

    assert check(with_bits(56), CheckRequest(qemu_version="7.2")).ok
    hint = "Try appending -machine cap-large-decr=off"
    assert check(with_bits(0), CheckRequest(qemu_version="7.2")).qemu_output == (
        "No large decrementer support", hint)
    assert check(with_bits(64), CheckRequest(qemu_version="7.2")).qemu_output == (
        "KVM large decrementer size (64) differs to model (56)", hint)
    # not probed (profiles before kvmppc read it): a note, no verdict
    result = check(with_bits(None), CheckRequest(qemu_version="7.2"))
    assert result.ok and any("ibm,dec-bits" in note for note in result.notes)


def test_probe_reads_dec_bits(tmp_path: Path) -> None:
    """kvmppc_find_cpu_dt: the CPU node with a clock-frequency; the cell is big-endian."""
    cpus = tmp_path / "device-tree" / "cpus"
    (cpus / "l2-cache@2000").mkdir(parents=True)
    node = cpus / "PowerPC,POWER9@0"
    node.mkdir()
    (node / "clock-frequency").write_bytes((2_000_000_000).to_bytes(4, "big"))
    paths = ProbePaths(proc=str(tmp_path))
    assert probe_dec_bits(paths) == 0  # no ibm,dec-bits: QEMU's "No large decrementer"
    (node / "ibm,dec-bits").write_bytes((56).to_bytes(4, "big"))
    assert probe_dec_bits(paths) == 56
    assert probe_dec_bits(ProbePaths(proc=str(tmp_path / "none"))) == 0


def test_old_profiles_load_without_dec_bits() -> None:
    """A profile taken before kvmppc read ibm,dec-bits loads, with dec_bits None."""
    data = json.loads(P9.to_json())
    del data["host"]["dec_bits"]
    assert ProbeResult.from_dict(data).host.dec_bits is None


# --- the request's inputs --------------------------------------------------------------------


def test_query_keys_and_cli_flags() -> None:
    request = CheckRequest.from_params({"cap": ["htm=off", "cap-hpt-max-page-size=4k"],
                                        "max_cpu_compat": "power9"})
    assert (request.caps, request.max_page_size, request.max_cpu_compat) == (
        ("htm=off",), "4k", "power9")
    base = [sys.executable, "-m", "kvmppc", "check", "--host-profile", "power8-hash-pr",
            "--qemu-version", "7.2", "--cpu", "power8"]
    no = subprocess.run(base, capture_output=True, text=True, check=False)
    yes = subprocess.run([*base, "--cap", "fwnmi=off"], capture_output=True, text=True,
                         check=False)
    bad = subprocess.run([*base, "--cap", "fwnmi=maybe", "--json"], capture_output=True,
                         text=True, check=False)
    compat = subprocess.run([*base, "--max-cpu-compat", "POWER7", "--json"],
                            capture_output=True, text=True, check=False)
    assert (no.returncode, yes.returncode, bad.returncode) == (1, 0, 1), (no, yes, bad)
    assert FWNMI in no.stdout
    assert json.loads(bad.stdout)["qemu_output"] == [
        "Parameter 'cap-fwnmi' expects 'on' or 'off'"]
    assert json.loads(compat.stdout)["qemu_output"] == ['Invalid compatibility mode "POWER7"']
    sizes = subprocess.run([sys.executable, "-m", "kvmppc", "pagesizes", "--qemu-version",
                            "7.2", "--cap", "cap-xyz=on"], capture_output=True, text=True,
                           check=False)
    assert sizes.returncode == 2
    assert "Property 'pseries-7.2-machine.cap-xyz' not found" in sizes.stderr


# --- QEMU itself under TCG: the defaults, read back with qom-get -----------------------------

CAPS_72 = ["htm", "vsx", "dfp", "cfpc", "sbbc", "ibs", "nested-hv", "large-decr",
           "ccf-assist", "fwnmi", "rpt-invalidate"]
CAPS_10 = [*CAPS_72, "ail-mode-3", "nested-papr", "dawr1"]
DEFAULT_CASES = [
    ("pseries", "power9", None), ("pseries", "power8", None), ("pseries", "power7", None),
    ("pseries", "power10", None), ("pseries", "power5+", None), ("pseries", "power9", "power8"),
    ("pseries", "power9", "power7"), ("pseries-5.0", "power9", None),
    ("pseries-4.2", "power9", None), ("pseries-3.1", "power9", None),
    ("pseries-3.0", "power8", None),
]
DEFAULT_CASES_72 = [("pseries-2.12", "power8", None), ("pseries-2.12-sxxm", "power8", None),
                    ("pseries-2.11", "power7", None)]


@pytest.mark.qemu
@pytest.mark.parametrize("version", ["7.2", "10.0"])
def test_defaults_match_qom_get(version: str) -> None:
    """spapr_caps_init's result for machine types, models and max-cpu-compat, as QEMU reports
    it (qom-get /machine cap-*) against kvmppc's default_caps."""
    qemu = need(qemu72() if version == "7.2" else qemu10())
    models = qemu_models(version)
    names = CAPS_72 if version == "7.2" else CAPS_10
    cases = DEFAULT_CASES + (DEFAULT_CASES_72 if version == "7.2" else [])
    for machine, cpu, compat in cases:
        options = machine + (f",max-cpu-compat={compat}" if compat else "")
        run = qemu.run(["-M", options, "-cpu", cpu, "-accel", "tcg", "-nodefaults", "-display",
                        "none", "-S", "-qmp", "stdio"], qmp=[
            *({"execute": "qom-get", "arguments": {"path": "/machine",
                                                   "property": f"cap-{n}"}} for n in names),
            {"execute": "quit"}])
        replies = [r["return"] for r in run.replies if "return" in r][1:1 + len(names)]
        assert len(replies) == len(names), (machine, cpu, run.stderr)
        qemu_says = {n: ("on" if v is True else "off" if v is False else v)
                     for n, v in zip(names, replies, strict=True)}
        machine_type = lookup_machine(machine, models)
        model = lookup_cpu(cpu, machine_type, qemu=models)
        ours = default_caps(machine_type, model, models.table, compat)
        assert {n: cap_value_name(n, ours[n]) for n in names} == qemu_says, (machine, cpu,
                                                                               compat)

"""Rules on real lspci text: AER / DevSta, ASPM, ATS, IOMMU (kernel command line), GPU-NIC affinity, capture.

Cases start from real dumps in tests/fixtures/lspci/ (provenance in SOURCES.md there); an edited line is
named in the test.
"""

from __future__ import annotations

from pathlib import Path

from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import Finding, NodeFacts
from trainfleet.health.rules import RULES, run_rules
from trainfleet.health.rules.iommu import iommu_mode
from trainfleet.health.topology import build_topology

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "lspci"
HGX = "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt"
ACS_ON = "ACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
ACS_OFF = "ACSCtl:\tSrcValid- TransBlk- ReqRedir- CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans-"
# The ATS capability as pciutils prints it (ls-ecaps.c); no saved dump has one, so it is added to the H100.
ATS_ON = ("\tCapabilities: [480 v1] Address Translation Service (ATS)\n"
          "\t\tATSCap:\tInvalidate Queue Depth: 00\n\t\tATSCtl:\tEnable+, Smallest Translation Unit: 00\n")


def text(name: str) -> str:
    return (FIX / name).read_text(errors="replace")


def block_bounds(dump: str, address: str) -> tuple[int, int]:
    start = dump.index(f"\n{address} ") + 1
    return start, dump.index("\n\n", start)


def edit_block(dump: str, address: str, old: str, new: str) -> str:
    start, end = block_bounds(dump, address)
    assert old in dump[start:end], (address, old)
    return dump[:start] + dump[start:end].replace(old, new) + dump[end:]


def drop_block(dump: str, address: str) -> str:
    start, end = block_bounds(dump, address)
    return dump[:start] + dump[end + 2:]


def judge(dump: str, cmdline: str | None = None) -> list[Finding]:
    parsed = parse_lspci(dump)
    return run_rules(NodeFacts(name="n1", lspci=parsed, cmdline=cmdline), build_topology(parsed))


def checks(findings: list[Finding], check: str) -> dict[str, Finding]:
    return {f.device: f for f in findings if f.check == check}


def test_registry_ids_are_unique_and_documented() -> None:
    ids = [c for r in RULES for c in r.checks]
    assert len(ids) == len(set(ids))
    assert all(r.run.__doc__ and r.about for r in RULES)


# --- AER -------------------------------------------------------------------------------------------

def test_correctable_replays_are_a_warning() -> None:
    # dump 02: the CX-7 logged "CESta: ... Rollover+ Timeout+" (replay rollover + replay timer timeouts)
    found = judge(text("02_puget-wrx90_2xrtx6000ada_cx7_vvv-per-device.txt"))
    f = checks(found, "aer-correctable")["21:00.0"]
    assert f.severity == "warning" and f.value == "Rollover+ Timeout+"
    assert f.evidence.startswith("CESta:") and "Rollover+ Timeout+" in f.evidence


def test_unsupported_request_alone_is_info() -> None:
    # dump 01: CX-7 with "UESta: ... UnsupReq+" and "CESta: ... AdvNonFatalErr+" (the advisory report of it)
    found = judge(text("01_asus-esc8000a-e12_4xrtx6000ada_2xcx7_vvv-per-device.txt"))
    assert not checks(found, "aer-uncorrectable") and not checks(found, "aer-correctable")
    assert checks(found, "aer-unsupported-request")["21:00.0"].severity == "info"
    # dump 11: AER clean, DevSta "CorrErr+ ... UnsupReq+" on the PLX DSP: info, not a warning
    dsp = checks(judge(text("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv-switch-dsp-and-gpu.txt")),
                 "aer-unsupported-request")["03:08.0"]
    assert dsp.severity == "info" and dsp.field == "DevSta"


def test_uncorrectable_error_is_an_error() -> None:
    dump = edit_block(text(HGX), "04:00.0", "UESta:\tDLP- SDES- TLP- FCP- CmpltTO-",
                      "UESta:\tDLP- SDES- TLP- FCP- CmpltTO+")
    f = checks(judge(dump), "aer-uncorrectable")["04:00.0"]
    assert f.severity == "error" and f.value == "CmpltTO+" and "GPU 0000:04:00.0" in f.message
    assert not checks(judge(text(HGX)), "aer-uncorrectable")


def test_devsta_nonfatal_without_aer_detail() -> None:
    # dump 04: 09:00.0 prints "DevSta: CorrErr- NonFatalErr+ FatalErr- UnsupReq+" with AER status clean
    f = checks(judge(text("04_dell-broadwell-2xp100pcie-nvme_vvv.txt")), "aer-uncorrectable")["09:00.0"]
    assert f.severity == "warning" and f.field == "DevSta" and "NonFatalErr+" in f.value


# --- ASPM ------------------------------------------------------------------------------------------

def test_aspm_enabled_on_the_switch_port_above_a_gpu() -> None:
    found = checks(judge(text("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv-switch-dsp-and-gpu.txt")),
                   "aspm-enabled")
    assert found["03:08.0"].value == "L1 Enabled"
    assert found["03:08.0"].evidence.startswith("LnkCtl: ASPM L1 Enabled")
    # the GPU itself says "ASPM Disabled"; its HDMI audio function (L0s L1 Enabled) is no GPU/NIC path
    assert set(found) == {"03:08.0"}
    assert not checks(judge(text(HGX)), "aspm-enabled")


# --- ATS -------------------------------------------------------------------------------------------

def _with_ats(dump: str) -> str:
    tail = "\tKernel modules: nvidiafb, nouveau"
    return edit_block(dump, "04:00.0", tail, ATS_ON + tail)


def test_ats_under_acs_redirect_without_direct_translation() -> None:
    f = checks(judge(_with_ats(text(HGX))), "ats-acs")["04:00.0"]
    assert f.severity == "warning" and "DirectTrans-" in f.message
    assert f.evidence.startswith("ATSCtl: Enable+")


def test_ats_on_bare_metal_with_passthrough_iommu() -> None:
    clean = _with_ats(text(HGX).replace(ACS_ON, ACS_OFF))
    assert checks(judge(clean, "ro amd_iommu=on iommu=pt"), "ats-bare-metal")["04:00.0"].severity == "warning"
    assert not [f for f in judge(clean) if f.check.startswith("ats")]  # IOMMU mode unknown: say nothing
    assert not [f for f in judge(text(HGX), "ro iommu=pt") if f.check.startswith("ats")]  # no ATS cap


# --- IOMMU -----------------------------------------------------------------------------------------

def test_iommu_mode_from_the_command_line() -> None:
    assert iommu_mode(None) == "unknown"
    assert iommu_mode("BOOT_IMAGE=/vmlinuz ro amd_iommu=off iommu=pt pci=realloc=off") == "off"  # dumps 01/02
    assert iommu_mode("ro intel_iommu=on iommu=pt") == "passthrough"
    assert iommu_mode("ro intel_iommu=on,sm_on") == "translated"
    assert iommu_mode("ro iommu.passthrough=0 iommu=pt") == "translated"
    assert iommu_mode("ro quiet splash") == "default"


def test_iommu_translated_is_an_error_on_a_gpu_node() -> None:
    f = checks(judge(text(HGX), "BOOT_IMAGE=/vmlinuz ro intel_iommu=on"), "iommu-translated")[""]
    assert f.severity == "error" and f.value == "intel_iommu=on"
    assert not checks(judge(text(HGX), "ro intel_iommu=on iommu=pt"), "iommu-translated")
    assert not checks(judge(text(HGX)), "iommu-translated")  # no cmdline.txt: say nothing


def test_iommu_default_mode_with_iommu_groups_is_a_warning() -> None:
    # dump 17 prints "IOMMU group: N" on every device: the IOMMU is active
    f = checks(judge(text(HGX), "ro quiet splash"), "iommu-translated")[""]
    assert f.severity == "warning" and "IOMMU groups" in f.message
    # dump 04 prints no IOMMU group lines: nothing to say without an iommu option
    dell = text("04_dell-broadwell-2xp100pcie-nvme_vvv.txt")
    assert not checks(judge(dell, "ro quiet"), "iommu-translated")


# --- GPU / NIC affinity ----------------------------------------------------------------------------

def test_gpus_without_a_nic_on_their_socket() -> None:
    assert not checks(judge(text(HGX)), "gpu-nic-affinity")
    # take the NUMA-1 ConnectX-5 (83:00.0/.1) out: H100s 84:00.0 and e4:00.0 (NUMA 1) lose their local NIC
    no_numa1_nic = drop_block(drop_block(text(HGX), "83:00.1"), "83:00.0")
    found = checks(judge(no_numa1_nic), "gpu-nic-affinity")
    assert set(found) == {"84:00.0", "e4:00.0"}
    assert found["84:00.0"].value == "1" and found["84:00.0"].severity == "warning"


# --- capture ---------------------------------------------------------------------------------------

def test_unprivileged_capture_is_flagged_not_clean() -> None:
    found = judge(text("12_hgx-h100-pmc-switch-nvswitch_nn-vv-unprivileged-fixture.txt"))
    assert [f.check for f in found] == ["capture-unprivileged"]
    assert found[0].severity == "warning" and "<access denied>" in found[0].evidence


def test_empty_capture_is_an_error() -> None:
    found = judge("lspci: Unable to load libkmod resources: error -2\n")
    assert [(f.check, f.severity) for f in found] == [("capture-empty", "error")]

"""Rules on real lspci text: ACS redirect, link width/speed, MaxReadReq / MaxPayload, Relaxed Ordering.

Every case starts from a real dump in tests/fixtures/lspci/ (provenance in SOURCES.md there). Where a fault
is needed that no dump shows, one real line is edited in place (e.g. ``MaxReadReq 512`` -> ``256``) and the
test says so.
"""

from __future__ import annotations

from pathlib import Path

from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import Finding, NodeFacts
from trainfleet.health.rules import run_rules
from trainfleet.health.topology import build_topology

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "lspci"
HGX = "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt"
ACS_ON = "ACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
ACS_OFF = "ACSCtl:\tSrcValid- TransBlk- ReqRedir- CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans-"


def text(name: str) -> str:
    return (FIX / name).read_text(errors="replace")


def edit_block(dump: str, address: str, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` inside the device block of ``address`` only."""
    start = dump.index(f"\n{address} ") + 1
    end = dump.index("\n\n", start)
    block = dump[start:end]
    assert old in block, (address, old)
    return dump[:start] + block.replace(old, new) + dump[end:]


def judge(dump: str, cmdline: str | None = None) -> list[Finding]:
    parsed = parse_lspci(dump)
    return run_rules(NodeFacts(name="n1", lspci=parsed, cmdline=cmdline), build_topology(parsed))


def checks(findings: list[Finding], check: str) -> dict[str, Finding]:
    return {f.device: f for f in findings if f.check == check}


# --- ACS -------------------------------------------------------------------------------------------

def test_acs_redirect_fires_on_switch_and_root_ports_above_gpus_and_nics() -> None:
    found = checks(judge(text(HGX)), "acs-redirect")
    # PEX890xx DSP 02:01.0 sits directly above H100 04:00.0; root port 00:01.1 above the whole switch.
    dsp = found["02:01.0"]
    assert dsp.severity == "error"
    assert dsp.evidence == ACS_ON.replace("\t", " ")
    assert "above GPU 0000:04:00.0" in dsp.message and "switch downstream port" in dsp.message
    assert dsp.value == "SrcValid+ ReqRedir+ CmpltRedir+ UpstreamFwd+"
    assert "setpci -s 0000:02:01.0 ECAP_ACS+0x6.w=0000" in dsp.hint
    assert "root port" in found["00:01.1"].message
    assert {"02:00.0", "82:00.0"} <= set(found)  # DSPs above the ConnectX-5s
    # ports with ACS on but no GPU/NIC below (empty root port 00:05.1, NVMe DSP 02:02.0) are not reported
    assert "00:05.1" not in found and "02:02.0" not in found
    # endpoint ACS (the CX-5's own ACSCtl, all '-') is never a finding
    assert not any(d.startswith("03:00") for d in found)


def test_acs_disabled_everywhere_is_silent() -> None:
    assert not checks(judge(text(HGX).replace(ACS_ON, ACS_OFF)), "acs-redirect")
    # PLX PEX 8747 DSP above a TITAN X (dump 11) and a PMC 8535 DSP (dump 09): ACSCtl all '-'
    assert not [f for f in judge(text("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv-switch-dsp-and-gpu.txt"))
                if f.check.startswith("acs")]
    assert not judge(text("09_yadro-power-pmc-8535-switch-dsp-acs_vvv-single-device.txt"))


def test_source_validation_alone_is_info() -> None:
    clean = text(HGX).replace(ACS_ON, ACS_OFF)
    only_src = edit_block(clean, "02:01.0", ACS_OFF, ACS_OFF.replace("SrcValid-", "SrcValid+"))
    found = judge(only_src)
    assert not checks(found, "acs-redirect")
    info = checks(found, "acs-source-valid")["02:01.0"]
    assert info.severity == "info" and info.value == "SrcValid+"


def test_acs_on_a_bridge_in_an_excerpt_without_endpoints_is_a_warning() -> None:
    # dump 07: the poster kept only the ACS lines of root port 40:01.1 (Express capability elided)
    found = checks(judge(text("07_amd-rome-4xmi100-cx6-microchip-pmc-switch_vvv-excerpt-by-poster.txt")),
                   "acs-redirect")
    assert found["40:01.1"].severity == "warning"
    assert "not in this capture" in found["40:01.1"].message


# --- link ------------------------------------------------------------------------------------------

def test_idle_gpus_at_low_speed_full_width_are_not_findings() -> None:
    # dump 01: every RTX 6000 Ada prints "Speed 2.5GT/s (downgraded), Width x16" at idle
    asus = text("01_asus-esc8000a-e12_4xrtx6000ada_2xcx7_vvv-per-device.txt")
    assert "2.5GT/s (downgraded), Width x16" in asus
    assert not [f for f in judge(asus) if f.check.startswith("link")]
    # dump 15: GRID K520 in a Xen guest, 2.5 of 8GT/s with no marker (old pciutils)
    vm = text("15_aws-g2.2xlarge-xen-vm-grid-k520_vvv.txt")
    assert not [f for f in judge(vm) if f.check.startswith("link")]


def test_narrow_link_is_reported_even_on_an_idle_gpu() -> None:
    dump = edit_block(text(HGX), "04:00.0", "LnkSta:\tSpeed 32GT/s, Width x16",
                      "LnkSta:\tSpeed 2.5GT/s (downgraded), Width x8 (downgraded)")
    found = checks(judge(dump), "link-width")
    assert found["04:00.0"].severity == "error"
    assert (found["04:00.0"].value, found["04:00.0"].expected) == ("x8", "x16")
    assert "LnkSta: Speed 2.5GT/s (downgraded), Width x8 (downgraded)" in found["04:00.0"].evidence


def test_narrow_link_from_a_real_dump_without_a_gpu_is_a_warning() -> None:
    # dump 04: BCM5720 LOM functions trained x1 of their x2
    found = checks(judge(text("04_dell-broadwell-2xp100pcie-nvme_vvv.txt")), "link-width")
    assert found["01:00.0"].severity == "warning" and found["01:00.0"].value == "x1"
    # empty / untrained ports print "Speed unknown (downgraded), Width x0 (downgraded)": never a finding
    assert all(f.value != "x0" for f in found.values())


def test_speed_is_judged_against_the_slower_end_of_the_link() -> None:
    # dump 17: Gen3 ConnectX-5 (LnkCap 8GT/s) on a Gen5 PEX890xx port runs 8GT/s: not a fault
    assert not checks(judge(text(HGX)), "link-speed")
    slowed = edit_block(text(HGX), "03:00.0", "LnkSta:\tSpeed 8GT/s", "LnkSta:\tSpeed 5GT/s")
    nic = checks(judge(slowed), "link-speed")["03:00.0"]
    assert nic.severity == "error" and (nic.value, nic.expected) == ("5GT/s", "8GT/s")


def test_speed_without_the_parent_port_is_only_a_warning() -> None:
    # dump 13: CX-5 Ex Gen4 card at 8GT/s in a Cascade Lake (Gen3) host, captured alone
    found = judge(text("13_fdio-csit-cascadelake-cx5ex-mcx556a_vvvs-single-nic.txt"))
    nic = checks(found, "link-speed")["5e:00.0"]
    assert nic.severity == "warning" and "platform limit" in nic.message
    assert (nic.value, nic.expected) == ("8GT/s", "16GT/s")


# --- DevCtl: MaxReadReq / MaxPayload / Relaxed Ordering --------------------------------------------

def test_max_read_req_below_512_on_a_nic() -> None:
    assert not checks(judge(text(HGX)), "max-read-req")  # CX-5 and H100 at 512
    assert not checks(judge(text("10_gmicloud-8xh100-cx7-mcx75310aas_vv-single-nic.txt")), "max-read-req")
    low = edit_block(text(HGX), "03:00.0", "MaxReadReq 512 bytes", "MaxReadReq 256 bytes")
    f = checks(judge(low), "max-read-req")["03:00.0"]
    assert f.severity == "warning" and f.value == "256 bytes" and "MaxReadReq 256 bytes" in f.evidence
    # PLX DSP at MaxReadReq 128 (dump 11) is a bridge, not a DMA requester: not judged
    assert not checks(judge(text("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv-switch-dsp-and-gpu.txt")),
                      "max-read-req")


def test_max_payload_128_when_more_is_possible() -> None:
    # dump 15: GRID K520 left at MaxPayload 128 bytes although DevCap says 256
    f = checks(judge(text("15_aws-g2.2xlarge-xen-vm-grid-k520_vvv.txt")), "max-payload")["00:03.0"]
    assert f.severity == "warning" and f.value == "128 bytes"
    peer2peer = checks(judge(text("15_aws-g2.2xlarge-xen-vm-grid-k520_vvv.txt"), "ro pci=pcie_bus_peer2peer"),
                       "max-payload")["00:03.0"]
    assert peer2peer.severity == "info"
    assert not checks(judge(text(HGX)), "max-payload")  # 256 everywhere along the paths


def test_relaxed_ordering_off_on_an_rdma_nic() -> None:
    assert not checks(judge(text(HGX)), "relaxed-ordering")
    off = edit_block(text(HGX), "03:00.0", "RlxdOrd+ ExtTag+", "RlxdOrd- ExtTag+")
    f = checks(judge(off), "relaxed-ordering")["03:00.0"]
    assert f.severity == "warning" and f.value == "RlxdOrd-"
    # root port above also RlxdOrd- (the kernel's Haswell/Broadwell erratum quirk pattern, dump 04): info
    both = edit_block(off, "00:01.1", "RlxdOrd+ ExtTag+", "RlxdOrd- ExtTag+")
    assert checks(judge(both), "relaxed-ordering")["03:00.0"].severity == "info"

"""The lspci parser on every real capture in tests/fixtures/lspci (values read from the files by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfleet.health.lspci import parse_block, parse_lspci
from trainfleet.health.model import DeviceKind, LspciDump, PciDevice, PortType

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lspci"
ACS_ALL = ("SrcValid", "TransBlk", "ReqRedir", "CmpltRedir", "UpstreamFwd", "EgressCtrl", "DirectTrans")


def text(prefix: str) -> str:
    (path,) = FIXTURES.glob(f"{prefix}*")
    return path.read_text()


def dump(prefix: str) -> LspciDump:
    return parse_lspci(text(prefix))


def dev(d: LspciDump, address: str) -> PciDevice:
    return next(x for x in d.devices if x.address == address)


def of_kind(d: LspciDump, kind: DeviceKind) -> list[str]:
    return [x.address for x in d.devices if x.kind is kind]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.txt")), ids=lambda p: p.name[:24])
def test_every_fixture_parses_to_typed_records(path: Path) -> None:
    d = parse_lspci(path.read_text())
    assert isinstance(d, LspciDump)
    for x in d.devices:
        assert isinstance(x, PciDevice) and x.raw.split("\n", 1)[0].strip().startswith(x.address)
        assert not any(w.startswith("parser error") for w in x.warnings), x.warnings


def test_01_rtx6000ada_and_cx7_tab_expanded() -> None:
    d = dump("01_asus-esc8000a-e12_4xrtx6000ada_2xcx7_vvv")
    assert of_kind(d, DeviceKind.GPU) == ["01:00.0", "41:00.0", "c1:00.0", "e1:00.0"]
    assert of_kind(d, DeviceKind.RDMA_NIC) == ["21:00.0", "81:00.0"]
    gpu = dev(d, "01:00.0")
    assert (gpu.class_name, gpu.vendor_device, gpu.rev) == (
        "VGA compatible controller",
        "NVIDIA Corporation AD102GL [RTX 6000 Ada Generation]",
        "a1",
    )
    assert gpu.express.port_type is PortType.LEGACY
    assert (gpu.express.lnk_cap.speed_gts, gpu.express.lnk_cap.width) == (16.0, 16)
    sta = gpu.express.lnk_sta
    assert (sta.speed_gts, sta.width, sta.speed_downgraded, sta.width_downgraded) == (2.5, 16, True, False)
    assert sta.raw == "LnkSta: Speed 2.5GT/s (downgraded), Width x16"
    assert gpu.express.ten_bit_tag_req_cap is True and gpu.express.ten_bit_tag_req_en is False
    assert gpu.express.ltr_en is True and gpu.express.aspm_ctl == "Disabled"
    bar1 = next(r for r in gpu.regions if r.index == 1)
    assert (bar1.size_bytes, bar1.bits, bar1.prefetchable, bar1.address) == (
        64 << 30,
        64,
        True,
        "3f000000000",
    )
    assert "BAR 1: current size: 64GB, supported: 64MB 128MB 256MB 512MB 1GB 2GB 4GB 8GB 16GB 32GB 64GB" in (
        gpu.resizable_bar
    )
    assert (gpu.driver, gpu.modules, gpu.physical_slot) == (
        "nvidia",
        ("nvidiafb", "nouveau", "nvidia_drm", "nvidia"),
        "3",
    )
    nic = dev(d, "21:00.0")
    assert (nic.express.max_payload, nic.express.max_read_req, nic.numa_node) == (512, 512, 0)
    assert nic.aer.ce_sta["AdvNonFatalErr"] is True and nic.aer.ue_sta["UnsupReq"] is True  # UESta UnsupReq+
    assert nic.acs.ctl == dict.fromkeys(ACS_ALL, False)
    assert dev(d, "81:00.0").numa_node == 1
    raid = dev(d, "71:00.0")
    assert raid.kind is DeviceKind.OTHER
    assert (
        raid.express.lnk_cap.width,
        raid.express.lnk_sta.width,
        raid.express.lnk_sta.width_downgraded,
    ) == (2, 1, True)


def test_01_and_02_acsctl_greps_have_no_blocks_but_keep_every_line() -> None:
    for prefix, count in (("01_asus-esc8000a-e12_acsctl", 46), ("02_puget-wrx90_acsctl", 26)):
        d = dump(prefix)
        assert d.devices == [] and d.warnings == ["no lspci device blocks found"]
        assert len(d.garbage_lines) == count
        assert all("ACSCtl: SrcValid- TransBlk- ReqRedir-" in ln for ln in d.garbage_lines)


def test_02_puget_fleet_diff_material_vs_01() -> None:
    d = dump("02_puget-wrx90_2xrtx6000ada_cx7_vvv")
    assert d.garbage_lines == ["[sudo] password for sonata:"]
    assert [x.address for x in d.devices] == ["c1:00.0", "c2:00.0", "21:00.0", "11:00.0"]
    gpu, nic = dev(d, "c1:00.0"), dev(d, "21:00.0")
    assert gpu.express.ten_bit_tag_req_en is True and nic.express.ten_bit_tag_req_en is True
    assert gpu.numa_node is None  # this capture prints no NUMA node line: unknown, not 0
    assert nic.aer.ce_sta["Rollover"] is True and nic.aer.ce_sta["Timeout"] is True
    assert nic.aer.ce_sta_raw == "CESta: RxErr- BadTLP- BadDLLP- Rollover+ Timeout+ AdvNonFatalErr-"


@pytest.mark.parametrize("variant", ["_k", "_plain"])
def test_03_plain_and_k_listings(variant: str) -> None:
    d = dump(f"03_mila-gpu-8xvega20-plx-pex8747-cx4lx{variant}")
    assert len(d.devices) == 143 and d.warnings == []
    gpus = of_kind(d, DeviceKind.GPU)
    assert gpus == ["07:00.0", "0a:00.0", "2a:00.0", "2d:00.0", "45:00.0", "48:00.0", "65:00.0", "68:00.0"]
    assert {dev(d, a).vendor_device for a in gpus} == {"Advanced Micro Devices, Inc. [AMD/ATI] Vega 20"}
    plx = [x for x in d.devices if x.vendor_device.startswith("PLX Technology, Inc. PEX 8747")]
    assert len(plx) == 12 and {x.kind for x in plx} == {DeviceKind.BRIDGE} and plx[0].rev == "ca"
    assert of_kind(d, DeviceKind.RDMA_NIC) == ["21:00.0", "21:00.1"]
    assert of_kind(d, DeviceKind.NIC) == ["49:00.0"]  # Intel X550T: no RDMA
    nic = dev(d, "21:00.0")
    assert nic.express is None and nic.capabilities == []
    if variant == "_k":
        assert (nic.driver, nic.modules) == ("mlx5_core", ("mlx5_core",))
        assert nic.subsystem == "Gigabyte Technology Co., Ltd MT27710 Family [ConnectX-4 Lx]"
    else:
        assert nic.driver is None and nic.subsystem is None


def test_04_dell_broadwell_full_dump() -> None:
    d = dump("04_dell-broadwell")
    assert len(d.devices) == 201 and d.garbage_lines == []
    assert of_kind(d, DeviceKind.GPU) == ["04:00.0", "82:00.0"]
    assert (dev(d, "04:00.0").numa_node, dev(d, "82:00.0").numa_node) == (0, 1)
    assert len(of_kind(d, DeviceKind.ROOT_PORT)) == 12
    assert of_kind(d, DeviceKind.RDMA_NIC) == [] and len(of_kind(d, DeviceKind.NIC)) == 6  # tg3, ixgbe
    empty = dev(d, "00:00.0").express.lnk_sta  # "Speed unknown (downgraded), Width x0 (downgraded)"
    assert (empty.speed_gts, empty.width, empty.speed_downgraded, empty.width_downgraded) == (
        None,
        0,
        True,
        True,
    )
    rp = dev(d, "00:03.0").express
    assert (rp.lnk_cap.speed_gts, rp.lnk_cap.width, rp.lnk_sta.speed_gts, rp.lnk_sta.width) == (
        8.0,
        4,
        5.0,
        1,
    )
    assert rp.lnk_sta.speed_downgraded and rp.lnk_sta.width_downgraded
    rp2 = dev(d, "00:02.0")
    assert rp2.kind is DeviceKind.ROOT_PORT and rp2.express.slot is True
    assert rp2.express.relaxed_ordering is False and rp2.express.max_read_req == 128
    assert rp2.acs.ctl == dict.fromkeys(ACS_ALL, False) and rp2.acs.cap["SrcValid"] is True
    assert (
        rp2.bus_range.secondary == 0x04 and rp2.express.ari_fwd_cap is True and rp2.express.ari_fwd is False
    )
    assert dev(d, "ff:1e.3").regions[0].address is None  # "I/O ports at <ignored> [disabled]"


def test_05_supermicro_plain_with_partial_ids() -> None:
    d = dump("05_supermicro")
    assert len(d.devices) == 149  # last line has no newline
    assert of_kind(d, DeviceKind.GPU) == ["c1:00.0", "e1:00.0"]
    assert dev(d, "c1:00.0").vendor_device == "NVIDIA Corporation GH100 [H100L 94GB]"
    assert of_kind(d, DeviceKind.NVME) == ["21:00.0", "22:00.0"]
    assert of_kind(d, DeviceKind.RDMA_NIC) == []  # Solarflare and X710: plain NICs
    inst = dev(d, "e2:00.0")
    assert (inst.class_name, inst.class_id, inst.vendor_id) == ("Non-Essential Instrumentation", "1300", None)


def test_07_root_port_with_acs_enabled_in_elided_excerpt() -> None:
    d = dump("07_amd-rome-4xmi100-cx6-microchip-pmc-switch_vvv")
    assert d.garbage_lines == ["....", "....", "...."]  # the poster's elisions, kept outside the block
    (rp,) = d.devices
    assert (
        rp.address == "40:01.1" and rp.numa_node == 1 and rp.kind is DeviceKind.BRIDGE
    )  # Express cap elided
    assert rp.acs.ctl == {
        "SrcValid": True,
        "TransBlk": False,
        "ReqRedir": True,
        "CmpltRedir": True,
        "UpstreamFwd": True,
        "EgressCtrl": False,
        "DirectTrans": False,
    }
    assert rp.acs.ctl_raw == (
        "ACSCtl: SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
    )
    assert rp.capabilities == ["Access Control Services"]


def test_08_connectx7_mezz_per_device() -> None:
    d = dump("08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv")
    assert d.garbage_lines == ["lspci: Unable to load libkmod resources: error -2"] * 4
    assert [x.address for x in d.devices] == ["03:00.0", "23:00.0", "a3:00.0", "c3:00.0"]
    assert [x.numa_node for x in d.devices] == [0, 0, 1, 1]
    nic = dev(d, "03:00.0")
    e = nic.express
    assert nic.kind is DeviceKind.RDMA_NIC and e.port_type is PortType.ENDPOINT
    assert (e.max_payload_cap, e.max_payload, e.max_read_req) == (512, 256, 512)
    assert (e.relaxed_ordering, e.ext_tag, e.no_snoop) == (True, True, True)
    assert e.devctl_raw.startswith("DevCtl: CorrErr- NonFatalErr+ FatalErr+ UnsupReq- RlxdOrd+")
    assert (e.lnk_sta.speed_gts, e.lnk_sta.width, e.lnk_sta.speed_downgraded, e.lnk_sta.width_downgraded) == (
        32.0,
        16,
        False,
        False,
    )
    assert e.lnk_sta.raw == "LnkSta: Speed 32GT/s (ok), Width x16 (ok)"
    assert (e.aspm_cap, e.aspm_ctl, e.target_speed_gts) == ("not supported", "Disabled", 32.0)
    assert (e.ten_bit_tag_comp, e.ten_bit_tag_req_cap, e.atomic_ops_cap) == (
        True,
        True,
        "32bit- 64bit- 128bitCAS-",
    )
    assert (nic.numa_node, nic.iommu_group, nic.driver) == (0, 39, "mlx5_core")
    assert (nic.sriov.initial_vfs, nic.sriov.total_vfs, nic.sriov.num_vfs, nic.sriov.enabled) == (
        16,
        16,
        0,
        False,
    )
    assert not any(nic.aer.ue_sta.values()) and nic.acs is None
    assert [r.size_bytes for r in nic.regions] == [32 << 20]  # the SR-IOV VF BAR is not a device region


def test_09_pmc_switch_downstream_port_old_pciutils() -> None:
    (p,) = dump("09_yadro").devices
    assert (p.address, p.bdf, p.domain, p.numa_node) == ("0062:02:02.0", "0062:02:02.0", 0x62, 24)
    assert p.kind is DeviceKind.SWITCH_DOWNSTREAM and p.express.slot is True
    assert p.acs.cap == dict.fromkeys(ACS_ALL, True) and p.acs.ctl == dict.fromkeys(ACS_ALL, False)
    assert (p.express.max_payload, p.express.max_read_req) == (512, 128)
    sta, cap = p.express.lnk_sta, p.express.lnk_cap
    assert (sta.speed_gts, sta.width, sta.speed_downgraded, cap.speed_gts, cap.width) == (
        2.5,
        0,
        False,
        8.0,
        16,
    )
    assert p.express.devsta_errors == ()  # old "UncorrErr- UnsuppReq-" spellings
    assert (p.express.ari_fwd_cap, p.express.ari_fwd, p.express.ltr_cap) == (True, False, True)
    assert (p.bus_range.primary, p.bus_range.secondary, p.bus_range.subordinate) == (0x02, 0x0D, 0x11)
    assert "Capabilities: [148 v1] #12" in p.unknown_lines and "Capabilities: [178 v1] #19" in p.unknown_lines


def test_10_single_cx7_vv() -> None:
    (nic,) = dump("10_gmicloud").devices
    assert (nic.address, nic.class_name, nic.kind) == (
        "19:00.0",
        "Infiniband controller",
        DeviceKind.RDMA_NIC,
    )
    assert (nic.physical_slot, nic.numa_node) == ("2-1", 0)
    e = nic.express
    assert (e.max_payload_cap, e.max_payload, e.max_read_req, e.relaxed_ordering) == (512, 256, 512, True)
    assert (e.lnk_sta.speed_gts, e.lnk_sta.width) == (32.0, 16)
    assert (nic.sriov.total_vfs, nic.sriov.num_vfs) == (16, 0) and nic.acs is None


def test_11_plx_downstream_port_and_titan_x() -> None:
    d = dump("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv")
    dsp = dev(d, "03:08.0")
    assert dsp.kind is DeviceKind.SWITCH_DOWNSTREAM and dsp.express.port_type is PortType.DOWNSTREAM
    assert "Access Control Services" in dsp.capabilities and dsp.acs.ctl == dict.fromkeys(ACS_ALL, False)
    assert (dsp.express.max_payload_cap, dsp.express.max_payload, dsp.express.max_read_req) == (
        2048,
        256,
        128,
    )
    assert dsp.express.devsta_errors == ("CorrErr", "UnsupReq") and dsp.express.aspm_ctl == "L1 Enabled"
    gpu = dev(d, "04:00.0")
    assert gpu.kind is DeviceKind.GPU and gpu.vendor_device == "NVIDIA Corporation GP102 [TITAN X]"
    assert gpu.express.max_read_req == 512 and (gpu.express.lnk_sta.speed_gts, gpu.express.lnk_sta.width) == (
        8.0,
        16,
    )
    assert next(r for r in gpu.regions if r.index == 1).size_bytes == 256 << 20
    audio = dev(d, "04:00.1")
    assert audio.kind is DeviceKind.OTHER and audio.express.aspm_ctl == "L0s L1 Enabled"


def test_12_unprivileged_capture_is_flagged() -> None:
    d = dump("12_hgx")
    assert d.warnings == ["not run as root: capabilities hidden (<access denied>) on 5 devices"]
    assert all(x.access_denied and x.express is None and x.acs is None for x in d.devices)
    sw = dev(d, "bc:02.0")
    assert (sw.class_id, sw.vendor_id, sw.device_id, sw.subsystem_ids) == (
        "0604",
        "11f8",
        "4128",
        "10de:1643",
    )
    assert sw.subsystem == "NVIDIA Corporation Device" and sw.bus_range.secondary == 0xBF
    assert of_kind(d, DeviceKind.NVSWITCH) == ["bd:00.0", "be:00.0", "bf:00.0"]
    assert {dev(d, a).device_id for a in of_kind(d, DeviceKind.NVSWITCH)} == {"22a3"}
    assert {x.iommu_group for x in d.devices} == {82}
    assert dev(d, "bf:00.0").warnings == ["IOMMU group printed twice (82, 468); kept 82"]


def test_13_rest_indented_cx5_ex_old_pciutils() -> None:
    (nic,) = dump("13_fdio").devices
    assert (
        nic.address == "5e:00.0"
        and nic.vendor_device == "Mellanox Technologies MT28800 Family [ConnectX-5 Ex]"
    )
    e = nic.express
    assert (e.max_payload, e.max_read_req, e.relaxed_ordering) == (256, 4096, True)
    assert e.devsta_errors == ("CorrErr", "UnsupReq")  # printed as "CorrErr+ UncorrErr- FatalErr- UnsuppReq+"
    assert (e.lnk_cap.speed_gts, e.lnk_sta.speed_gts, e.lnk_sta.width, e.lnk_sta.speed_downgraded) == (
        16.0,
        8.0,
        16,
        False,
    )
    assert e.ten_bit_tag_comp is None  # old pciutils: not printed, so unknown
    assert nic.acs.ctl == dict.fromkeys(ACS_ALL, False)
    assert [ln for ln in nic.unknown_lines if "#" in ln] == [
        "Capabilities: [1c0 v1] #19",
        "Capabilities: [320 v1] #27",
        "Capabilities: [370 v1] #26",
        "Capabilities: [420 v1] #25",
    ]


def test_15_xen_vm_grid_k520() -> None:
    d = dump("15_aws")
    assert len(d.devices) == 7 and of_kind(d, DeviceKind.GPU) == ["00:03.0"]
    assert dev(d, "00:02.0").kind is DeviceKind.OTHER  # Cirrus Logic emulated VGA
    e = dev(d, "00:03.0").express
    assert (e.lnk_cap.speed_gts, e.lnk_sta.speed_gts, e.lnk_sta.width) == (8.0, 2.5, 16)
    assert (e.max_payload, e.max_read_req) == (128, 512)
    assert next(r for r in dev(d, "00:03.0").regions if r.index == 1).size_bytes == 128 << 20
    assert dev(d, "00:01.1").regions[1].bits is None  # "(type 3, non-prefetchable)"


def test_17_hpe_cray_xd665_full_nn_dump() -> None:
    d = dump("linuxhw_17")
    assert len(d.devices) == 172 and d.warnings == [] and d.garbage_lines == []
    gpus = [dev(d, a) for a in of_kind(d, DeviceKind.GPU)]
    assert [g.address for g in gpus] == ["04:00.0", "64:00.0", "84:00.0", "e4:00.0"]
    assert {(g.vendor_id, g.device_id, g.class_id) for g in gpus} == {("10de", "2330", "0302")}
    assert [g.numa_node for g in gpus] == [0, 0, 1, 1]
    assert gpus[0].modules == ("nvidiafb", "nouveau") and gpus[0].driver is None
    assert gpus[0].resizable_bar == [
        "BAR 2: current size: 128GB, supported: 64MB 128MB 256MB 512MB 1GB 2GB 4GB 8GB 16GB 32GB 64GB 128GB"
    ]
    assert gpus[0].sriov.total_vfs == 32
    assert of_kind(d, DeviceKind.RDMA_NIC) == [
        "03:00.0",
        "03:00.1",
        "21:00.0",
        "21:00.1",
        "83:00.0",
        "83:00.1",
    ]
    assert (dev(d, "03:00.0").vendor_id, dev(d, "21:00.0").device_id) == ("15b3", "16d8")
    assert of_kind(d, DeviceKind.NIC) == ["68:00.0"]  # Intel I210
    assert [
        x.address for x in d.devices if x.express and x.express.lnk_sta and x.express.lnk_sta.speed_downgraded
    ] == ["66:00.0"]
    overdriven = dev(d, "00:05.1").express.lnk_sta
    assert (overdriven.width, overdriven.width_downgraded) == (16, False)
    dsps = [dev(d, a) for a in of_kind(d, DeviceKind.SWITCH_DOWNSTREAM)]
    assert len(dsps) == 14 and all(p.acs.ctl["ReqRedir"] and p.acs.ctl["SrcValid"] for p in dsps)
    assert of_kind(d, DeviceKind.SWITCH_UPSTREAM) == ["01:00.0", "61:00.0", "81:00.0", "e1:00.0"]
    assert dev(d, "03:00.0").acs.ctl == dict.fromkeys(ACS_ALL, False)
    assert (dev(d, "03:00.0").express.max_payload, dev(d, "03:00.0").express.max_read_req) == (256, 512)


def test_parse_block_is_memoised_and_format_independent() -> None:
    block = text("08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv").split("\nlspci:")[0]
    assert parse_block(block) is parse_block(block)
    tabs = parse_block(block)
    spaces = parse_block(block.expandtabs(8))
    crlf = parse_lspci(block.replace("\n", "\r\n")).devices[0]
    for other in (spaces, crlf):
        assert other.express == tabs.express and other.aer == tabs.aer and other.sriov == tabs.sriov
        assert (other.numa_node, other.iommu_group, other.kind) == (0, 39, DeviceKind.RDMA_NIC)


def test_truncated_and_garbled_blocks_give_warnings() -> None:
    block = text("08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv").split("\nlspci:")[0]
    cut = parse_block(block[: block.index("DevCtl:")])
    assert cut.express.max_payload is None and any("truncated" in w for w in cut.warnings)
    garbled = parse_block(block.replace("\tNUMA node: 0", "\t\x00\x01\ufffd\x7f binary"))
    assert garbled.numa_node is None and any("unreadable" in w for w in garbled.warnings)
    assert any("\x00" in ln for ln in garbled.unknown_lines)
    nameless = parse_block("not a header at all")
    assert nameless.address == "" and nameless.warnings


def test_single_v_form_reads_numa_and_iommu_from_flags() -> None:
    # `lspci -v` prints one "Flags:" summary line and capability titles without registers
    block = (
        "03:00.0 Ethernet controller: Mellanox Technologies MT2910 Family [ConnectX-7]\n"
        "\tFlags: bus master, fast devsel, latency 0, IRQ 702, NUMA node 1, IOMMU group 39\n"
        "\tMemory at 38044000000 (64-bit, prefetchable) [size=32M]\n"
        "\tCapabilities: [60] Express Endpoint, MSI 00\n"
        "\tKernel driver in use: mlx5_core\n"
    )
    nic = parse_lspci(block).devices[0]
    assert (nic.numa_node, nic.iommu_group, nic.driver, nic.kind) == (1, 39, "mlx5_core", DeviceKind.RDMA_NIC)
    assert nic.express.port_type is PortType.ENDPOINT and nic.warnings == [] and nic.unknown_lines == []


def test_blocks_differing_only_in_per_node_values_share_one_parse() -> None:
    block = text("08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv").split("\nlspci:")[0]
    other = block.replace("X1LM37Z004B", "X1LM37Z0099").replace("IRQ 702", "IRQ 93")
    a, b = parse_block(block), parse_block(other)
    assert a is not b and (a.raw, b.raw) == (block, other)
    assert b.express is a.express and b.sriov is a.sriov  # parsed once, shared
    assert (b.numa_node, b.iommu_group, b.kind) == (0, 39, DeviceKind.RDMA_NIC)
    changed = parse_block(block.replace("NUMA node: 0", "NUMA node: 1"))  # a real difference is parsed
    assert changed.numa_node == 1 and changed.express is not a.express

"""The PCIe tree built from real captures: paths to root ports, shared switches, GPU/NIC relations."""

from __future__ import annotations

from pathlib import Path

from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import LspciDump
from trainfleet.health.topology import Topology, build_topology, parse_tree_text

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lspci"


def text(prefix: str) -> str:
    (path,) = FIXTURES.glob(f"{prefix}*")
    return path.read_text()


def topo(prefix: str, tree_prefix: str | None = None) -> Topology:
    tree = parse_tree_text(text(tree_prefix)) if tree_prefix else None
    return build_topology(parse_lspci(text(prefix)), tree)


def bdfs(devices: list) -> list[str]:
    return [d.bdf for d in devices]


def test_17_each_gpu_path_and_the_nic_on_its_switch() -> None:
    t = topo("linuxhw_17")
    assert t.warnings == []
    expected = {  # GPU: (DSP, USP, root port), read from the bus ranges of the dump
        "0000:04:00.0": ["0000:02:01.0", "0000:01:00.0", "0000:00:01.1"],
        "0000:64:00.0": ["0000:62:01.0", "0000:61:00.0", "0000:60:01.1"],
        "0000:84:00.0": ["0000:82:01.0", "0000:81:00.0", "0000:80:01.1"],
        "0000:e4:00.0": ["0000:e2:01.0", "0000:e1:00.0", "0000:e0:01.1"],
    }
    for gpu, path in expected.items():
        assert bdfs(t.path_to_root(gpu)) == path
        assert t.root_port(gpu).bdf == path[-1]
        assert bdfs(t.switch_ports_above(gpu)) == path[:2]
        assert t.parent(gpu).bdf == path[0]
    assert t.shared_switch("0000:04:00.0", "0000:03:00.0").bdf == "0000:01:00.0"
    assert t.shared_switch("0000:84:00.0", "0000:83:00.1").bdf == "0000:81:00.0"
    assert t.shared_switch("0000:04:00.0", "0000:83:00.0") is None
    switch_pairs = {(g.bdf, n.bdf) for g, n, rel in t.gpu_nic_pairs() if rel == "switch"}
    assert switch_pairs == {
        ("0000:04:00.0", "0000:03:00.0"),
        ("0000:04:00.0", "0000:03:00.1"),
        ("0000:84:00.0", "0000:83:00.0"),
        ("0000:84:00.0", "0000:83:00.1"),
    }
    rel = {(g.bdf, n.bdf): r for g, n, r in t.gpu_nic_pairs()}
    assert len(rel) == 4 * 6
    assert rel["0000:64:00.0", "0000:03:00.0"] == "numa"  # GPU 64 has no NIC on its switch
    assert rel["0000:04:00.0", "0000:21:00.0"] == "numa"  # BCM57416 under root port 20:01.1, NUMA 0
    assert rel["0000:04:00.0", "0000:83:00.0"] == "none"  # other socket


def test_04_root_ports_and_numa_of_two_p100() -> None:
    t = topo("04_dell-broadwell")
    assert bdfs(t.path_to_root("0000:04:00.0")) == ["0000:00:02.0"]
    assert t.root_port("0000:82:00.0").bdf.startswith("0000:80:")
    assert t.switch_ports_above("0000:04:00.0") == []
    assert t.relation("0000:04:00.0", "0000:82:00.0") == "none"  # different sockets
    assert t.gpu_nic_pairs() == []  # tg3 / ixgbe only: no RDMA NIC


def test_11_gpu_under_plx_downstream_port_partial_dump() -> None:
    t = topo("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_vvv")
    assert t.parent("0000:04:00.0").bdf == "0000:03:08.0"
    assert bdfs(t.switch_ports_above("0000:04:00.0")) == ["0000:03:08.0"]
    assert t.root_port("0000:04:00.0") is None  # the root port is not in this capture
    assert t.shared_switch("0000:04:00.0", "0000:04:00.1").bdf == "0000:03:08.0"
    assert len(t.warnings) == 1 and t.warnings[0].startswith(
        "partial tree: no upstream bridge in the dump for 1"
    )
    assert t.orphans == {"0000:03:08.0"}


def test_08_per_device_capture_says_the_tree_is_partial() -> None:
    t = topo("08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv")
    assert t.path_to_root("0000:03:00.0") == [] and t.root_port("0000:03:00.0") is None
    assert "4 device(s)" in t.warnings[0]
    assert t.gpu_nic_pairs() == []


def test_08_tree_gpu_behind_connectx7_internal_switch() -> None:
    t = build_topology(
        LspciDump(), parse_tree_text(text("08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_t-vvv"))
    )
    assert t.warnings == []
    assert bdfs(t.path_to_root("0000:c6:00.0")) == [
        "0000:c5:00.0",
        "0000:c4:00.0",
        "0000:c2:02.0",
        "0000:c1:00.0",
        "0000:c0:01.1",
    ]
    assert t.parent("0000:c3:00.0").bdf == "0000:c2:00.0"
    assert t.shared_switch("0000:c6:00.0", "0000:c3:00.0").bdf == "0000:c1:00.0"
    assert t.relation("0000:c6:00.0", "0000:c3:00.0") == "switch"
    assert t.root_port("0000:c6:00.0").bdf == "0000:c0:01.1"


def test_01_per_device_dump_completed_by_its_tree() -> None:
    alone = topo("01_asus-esc8000a-e12_4xrtx6000ada_2xcx7_vvv")
    assert "8 device(s)" in alone.warnings[0] and alone.root_port("0000:01:00.0") is None
    t = topo("01_asus-esc8000a-e12_4xrtx6000ada_2xcx7_vvv", "01_asus-esc8000a-e12_4xrtx6000ada_2xcx7_tv")
    assert t.warnings == []
    assert t.root_port("0000:01:00.0").bdf == "0000:00:01.1"
    assert t.root_port("0000:21:00.0").bdf == "0000:20:03.1"
    rel = {(g.address, n.address): r for g, n, r in t.gpu_nic_pairs()}
    assert rel == {
        ("01:00.0", "21:00.0"): "numa",
        ("01:00.0", "81:00.0"): "none",
        ("41:00.0", "21:00.0"): "numa",
        ("41:00.0", "81:00.0"): "none",
        ("c1:00.0", "21:00.0"): "none",
        ("c1:00.0", "81:00.0"): "numa",
        ("e1:00.0", "21:00.0"): "none",
        ("e1:00.0", "81:00.0"): "numa",
    }
    nvme = bdfs(t.path_to_root("0000:65:00.0"))  # a Samsung NVMe behind the HighPoint carrier's switch chain
    assert nvme == ["0000:64:10.0", "0000:63:00.0", "0000:62:00.0", "0000:61:00.0", "0000:60:01.1"]


def test_07_tree_mi100_and_connectx6_share_the_pmc_switch() -> None:
    t = build_topology(LspciDump(), parse_tree_text(text("07_amd-rome-4xmi100-cx6-microchip-pmc-switch_tv")))
    assert bdfs(t.path_to_root("0000:4a:00.0")) == [
        "0000:49:00.0",
        "0000:48:00.0",
        "0000:47:00.0",
        "0000:46:00.0",
        "0000:44:01.0",
        "0000:43:00.0",
        "0000:40:01.1",
    ]
    assert t.shared_switch("0000:4a:00.0", "0000:45:00.0").bdf == "0000:43:00.0"
    assert t.shared_switch("0000:4a:00.0", "0000:50:00.0").bdf == "0000:43:00.0"


def test_12_unprivileged_bridges_still_give_parents() -> None:
    t = topo("12_hgx")
    assert t.parent("0000:bf:00.0").bdf == "0000:bc:02.0"  # bus range is printed without root
    assert t.parent("0000:bd:00.0") is None and "0000:bd:00.0" in t.orphans


def test_15_vm_flat_bus_needs_no_parents() -> None:
    t = topo("15_aws")
    assert t.warnings == [] and t.path_to_root("0000:00:03.0") == [] and t.root_port("0000:00:03.0") is None


def test_tree_text_of_11_and_unknown_addresses() -> None:
    entries = parse_tree_text(text("11_xeon-e5v4-4xtitanx-pascal-plx-pex8747_tv"))
    titans = [(e.bdf, e.parent) for e in entries if e.name == "NVIDIA Corporation GP102 [TITAN X]"]
    assert titans == [
        ("0000:04:00.0", "0000:03:08.0"),
        ("0000:05:00.0", "0000:03:10.0"),
        ("0000:08:00.0", "0000:07:08.0"),
        ("0000:09:00.0", "0000:07:10.0"),
    ]
    bridge = next(e for e in entries if e.bdf == "0000:00:02.0")
    assert (bridge.secondary, bridge.subordinate, bridge.parent) == (0x02, 0x05, None)
    t = build_topology(LspciDump(), entries)
    assert t.relation("0000:04:00.0", "0000:05:00.0") == "switch"
    assert t.relation("0000:04:00.0", "0000:08:00.0") == "none"  # different root ports, NUMA unknown
    assert t.relation("nonsense", "0000:zz:00.0") == "none" and t.path_to_root("x") == []


def test_02_per_device_dump_completed_by_its_tree() -> None:
    t = topo("02_puget-wrx90_2xrtx6000ada_cx7_vvv", "02_puget-wrx90_2xrtx6000ada_cx7_tv")
    assert t.warnings == []
    assert [t.root_port(g).bdf for g in ("0000:c1:00.0", "0000:c2:00.0")] == ["0000:c0:01.1", "0000:c0:03.1"]
    assert t.root_port("0000:21:00.0").bdf == "0000:20:01.1"
    hba = bdfs(t.path_to_root("0000:11:00.0"))  # HighPoint SSD7540 behind its switch chain
    assert hba[0] == "0000:10:14.0" and hba[-1] == "0000:00:03.1"
    # this capture prints no NUMA node lines, so a GPU and the NIC are "none", never guessed "numa"
    assert {r for _, _, r in t.gpu_nic_pairs()} == {"none"}

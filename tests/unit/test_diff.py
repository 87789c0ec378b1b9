"""Fleet diff on small synthetic fleets made of a real dump (HPE Cray XD665, tests/fixtures/lspci, dump 17):
a field flipped on one node, a GPU that fell off the bus, per-node noise that must not be reported, ties,
mixed platforms, and the ranking of known-bad fields above unknown ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainfleet.health.diff import diff_fleet, families, reduce_flags
from trainfleet.health.doctor import run_doctor
from trainfleet.health.lspci import parse_lspci
from trainfleet.health.model import Finding, NodeFacts
from trainfleet.health.rules import build_context
from trainfleet.health.signature import node_signature
from trainfleet.health.topology import build_topology

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "lspci"
HGX = (FIX / "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt").read_text()
DELL = (FIX / "04_dell-broadwell-2xp100pcie-nvme_vvv.txt").read_text()
ACS_ON = "ACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
ACS_OFF = "ACSCtl:\tSrcValid- TransBlk- ReqRedir- CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans-"
CLEAN = HGX.replace(ACS_ON, ACS_OFF)


def bounds(dump: str, address: str) -> tuple[int, int]:
    start = dump.index(f"\n{address} ") + 1
    return start, dump.index("\n\n", start)


def edit_block(dump: str, address: str, old: str, new: str) -> str:
    start, end = bounds(dump, address)
    assert old in dump[start:end]
    return dump[:start] + dump[start:end].replace(old, new) + dump[end:]


def drop_block(dump: str, address: str) -> str:
    start, end = bounds(dump, address)
    return dump[:start] + dump[end + 2:]


def noisy(dump: str, i: int) -> str:
    """What legitimately differs per node: IRQs, MSI addresses, BAR addresses, VPD serials."""
    dump = re.sub(r"routed to IRQ (\d+)", lambda m: f"routed to IRQ {int(m[1]) + i}", dump)
    dump = re.sub(r"Memory at ([0-9a-f]{8,})", lambda m: f"Memory at {int(m[1], 16) + i * 0x100000:x}", dump)
    dump = dump.replace("Address: 00000000fee00000", f"Address: 00000000fee{i:02x}000")
    uuid = "9853117e65d6ec11800088e9a469d814"
    return dump.replace(f"[V3] Vendor specific: {uuid}", f"[V3] Vendor specific: {i:032x}")


def write_fleet(root: Path, texts: dict[str, str]) -> Path:
    for name, body in texts.items():
        (root / name).mkdir(parents=True)
        (root / name / "lspci.txt").write_text(body)
    return root


def diffs(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.check.startswith("diff")]


def signature(dump: str, cmdline: str | None = None):
    parsed = parse_lspci(dump)
    return node_signature(build_context(NodeFacts("n", parsed, cmdline), build_topology(parsed)))


def test_per_node_noise_is_not_a_difference(tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path, {f"n{i}": noisy(CLEAN, i) for i in range(6)})
    result = run_doctor([str(fleet)])
    assert result.nodes == 6 and not diffs(result.findings)
    assert result.distinct_signatures == 1
    # also at the signature level, without the doctor's noise filter in front of the parser
    assert signature(noisy(CLEAN, 1)) == signature(noisy(CLEAN, 2))


def test_one_flipped_field_names_the_node_device_and_norm(tmp_path: Path) -> None:
    texts = {f"n{i}": noisy(CLEAN, i) for i in range(5)}
    texts["n3"] = edit_block(texts["n3"], "03:00.0", "MaxReadReq 512 bytes", "MaxReadReq 256 bytes")
    found = diffs(run_doctor([str(write_fleet(tmp_path, texts))]).findings)
    assert len(found) == 1
    f = found[0]
    assert (f.node, f.device, f.check, f.field, f.value, f.expected) == (
        "n3", "03:00.0", "diff-field", "MaxReadReq", "256 bytes", "512 bytes")
    assert f.known_bad and f.severity == "warning"
    assert "4 nodes have 512 bytes" in f.message and "0000:03:00.0" in f.message


def test_acs_flags_are_reduced_to_the_ones_that_differ() -> None:
    planted = edit_block(CLEAN, "02:01.0", ACS_OFF, ACS_ON)
    groups = [(signature(CLEAN), ["a", "b", "c"]), (signature(planted), ["d"])]
    (f,) = diff_fleet(groups)
    assert (f.field, f.value, f.expected) == ("ACSCtl", "SrcValid+ ReqRedir+ CmpltRedir+ UpstreamFwd+",
                                              "SrcValid- ReqRedir- CmpltRedir- UpstreamFwd-")
    assert "switch port above GPU 0000:04:00.0" in f.message and "known to break GPUDirect RDMA" in f.message
    assert f.evidence == "ACSCtl: " + ACS_ON.split("\t", 1)[1]


def test_missing_gpu_is_reported_although_the_shape_changed(tmp_path: Path) -> None:
    texts = {f"n{i}": noisy(CLEAN, i) for i in range(4)}
    texts["n2"] = drop_block(texts["n2"], "64:00.0")  # the H100 behind DSP 62:01.0 fell off the bus
    found = diffs(run_doctor([str(write_fleet(tmp_path, texts))]).findings)
    missing = [f for f in found if f.check == "diff-missing-device"]
    assert [(f.node, f.device, f.severity) for f in missing] == [("n2", "64:00.0", "error")]
    assert "fell off the bus" in missing[0].message and "3 of 4 nodes have it" in missing[0].message


def test_extra_device_on_one_node() -> None:
    base = drop_block(CLEAN, "64:00.0")
    groups = [(signature(base), ["a", "b", "c"]), (signature(CLEAN), ["d"])]
    extra = [f for f in diff_fleet(groups) if f.check == "diff-extra-device"]
    assert [(f.node, f.device, f.severity) for f in extra] == [("d", "64:00.0", "info")]


def test_no_majority_no_finding() -> None:
    flipped = edit_block(CLEAN, "03:00.0", "MaxReadReq 512 bytes", "MaxReadReq 4096 bytes")
    assert diff_fleet([(signature(CLEAN), ["a", "b"]), (signature(flipped), ["c", "d"])]) == []
    assert diff_fleet([(signature(CLEAN), ["a"]), (signature(flipped), ["b"])]) == []


def test_different_platforms_are_not_compared() -> None:
    groups = [(signature(CLEAN), ["h1", "h2", "h3"]), (signature(DELL), ["d1", "d2"])]
    assert len(families(groups)) == 2
    assert diff_fleet(groups) == []


def test_known_bad_fields_rank_above_unknown_ones() -> None:
    odd_driver = edit_block(CLEAN, "03:00.1", "driver in use: mlx5_core", "driver in use: vfio-pci")
    slow_mrrs = edit_block(CLEAN, "83:00.0", "MaxReadReq 512 bytes", "MaxReadReq 128 bytes")
    groups = [(signature(CLEAN), ["a", "b", "c", "d"]), (signature(odd_driver), ["x"]),
              (signature(slow_mrrs), ["y"])]
    found = diff_fleet(groups)
    assert [(f.node, f.field, f.known_bad) for f in found] == [("y", "MaxReadReq", True),
                                                               ("x", "driver", False)]
    assert found[1].severity == "info"


def test_iommu_mode_is_a_node_level_field() -> None:
    groups = [(signature(CLEAN, "ro iommu=pt"), ["a", "b", "c"]),
              (signature(CLEAN, "ro intel_iommu=on"), ["d"])]
    (f,) = diff_fleet(groups)
    assert (f.node, f.device, f.field) == ("d", "", "IOMMU mode")
    assert (f.value, f.expected) == ("translated", "passthrough")


@pytest.mark.parametrize(("value", "expected", "out"), [
    ("SrcValid+ TransBlk-", "SrcValid- TransBlk-", ("SrcValid+", "SrcValid-")),
    ("256 bytes", "512 bytes", ("256 bytes", "512 bytes")),
    ("RlxdOrd-", "RlxdOrd+", ("RlxdOrd-", "RlxdOrd+")),
])
def test_reduce_flags(value: str, expected: str, out: tuple[str, str]) -> None:
    assert reduce_flags(value, expected) == out

"""Fuzz: whatever text arrives, the parser and the tree builder return typed records and never raise."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainfleet.health.lspci import parse_block, parse_lspci
from trainfleet.health.model import LspciDump, PciDevice
from trainfleet.health.topology import Topology, TreeEntry, build_topology, parse_tree_text

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lspci"
TEXTS = [p.read_text() for p in sorted(FIXTURES.glob("*.txt"))]
TREES = [p.read_text() for p in sorted(FIXTURES.glob("*.txt")) if "_tv" in p.name or "tree" in p.name]
SMALL = [t for t in TEXTS if len(t) < 60_000]  # keeps each example fast; the big dumps get truncation only
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

lspci_like = st.sampled_from(
    [
        "\t",
        "\t\t",
        "        ",
        "\n",
        "\n\n",
        "03:00.0 ",
        "0000:",
        "Capabilities: [60] ",
        "Express (v2) Root Port (Slot+), MSI 00",
        "LnkSta:\tSpeed ",
        "Width x",
        "(downgraded)",
        "Bus: primary=00, secondary=",
        "ACSCtl:\tSrcValid+ ",
        "<access denied>",
        "Region 0: ",
        "Memory at ",
        "[size=",
        "IOMMU group: ",
        "NUMA node: -",
        "+",
        "-",
        ":",
        "\r\n",
        "\x00",
    ]
)


def check(text: str) -> LspciDump:
    """The invariants every input must keep."""
    dump = parse_lspci(text)
    assert isinstance(dump, LspciDump)
    assert all(isinstance(d, PciDevice) and d.raw for d in dump.devices)
    # parse_block turns an internal exception into a warning; the fuzz must not find any
    assert not [w for d in dump.devices for w in d.warnings if w.startswith("parser error")]
    assert all(isinstance(w, str) for w in dump.warnings)
    topo = build_topology(dump)
    assert isinstance(topo, Topology)
    for dev in dump.devices:
        assert all(isinstance(b, PciDevice) for b in topo.path_to_root(dev.bdf))
        topo.root_port(dev.bdf)
        topo.switch_ports_above(dev.bdf)
    assert all(rel in ("switch", "root_port", "numa", "none") for _, _, rel in topo.gpu_nic_pairs())
    return dump


@FUZZ
@given(st.text(max_size=3000))
def test_arbitrary_text(text: str) -> None:
    dump = check(text)
    tree = parse_tree_text(text)
    assert all(isinstance(e, TreeEntry) for e in tree)
    topo = build_topology(dump, tree)
    for entry in tree:
        assert all(isinstance(b, PciDevice) for b in topo.path_to_root(entry.bdf))


@FUZZ
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_decoded_with_replacement(data: bytes) -> None:
    check(data.decode("utf-8", errors="replace"))


@FUZZ
@given(st.lists(lspci_like, max_size=80).map("".join))
def test_lspci_shaped_noise(text: str) -> None:
    check(text)
    assert isinstance(parse_block(text), PciDevice)


@FUZZ
@given(st.sampled_from(TEXTS), st.floats(0, 1))
def test_fixtures_truncated_anywhere(text: str, where: float) -> None:
    dump = check(text[: int(len(text) * where)])
    assert len(dump.devices) <= len(parse_lspci(text).devices)


@FUZZ
@given(st.sampled_from(SMALL), st.data())
def test_lines_deleted_duplicated_and_crlf(text: str, data: st.DataObject) -> None:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(0, 12))):
        i = data.draw(st.integers(0, len(lines) - 1))
        if data.draw(st.booleans()):
            del lines[i]
        else:
            lines.insert(i, lines[i])
        if not lines:
            break
    sep = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    check(sep.join(lines))


@FUZZ
@given(st.sampled_from(SMALL), st.floats(0, 1), st.text(min_size=1, max_size=200) | lspci_like)
def test_garbage_injected_mid_block(text: str, where: float, garbage: str) -> None:
    i = int(len(text) * where)
    check(text[:i] + garbage + text[i:])


@FUZZ
@given(st.sampled_from(TREES), st.floats(0, 1), st.floats(0, 1), st.text(max_size=40) | lspci_like)
def test_tree_text_truncated_and_garbled(text: str, cut: float, where: float, garbage: str) -> None:
    text = text[: int(len(text) * cut)]
    i = int(len(text) * where)
    tree = parse_tree_text(text[:i] + garbage + text[i:])
    topo = build_topology(LspciDump(), tree)
    for entry in tree:
        assert isinstance(entry, TreeEntry) and entry.bdf.count(":") == 2
        assert all(isinstance(b, PciDevice) for b in topo.path_to_root(entry.bdf))
        topo.shared_switch(entry.bdf, tree[0].bdf)


def test_crlf_gives_the_same_devices_as_lf() -> None:
    for text in SMALL:
        lf, crlf = parse_lspci(text), parse_lspci(text.replace("\n", "\r\n"))
        assert [(d.bdf, d.express, d.acs, d.numa_node) for d in lf.devices] == [
            (d.bdf, d.express, d.acs, d.numa_node) for d in crlf.devices
        ]

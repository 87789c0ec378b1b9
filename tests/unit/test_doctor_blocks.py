"""The doctor's byte-level block walk must cut and parse a capture exactly as the text path does.

``quiet_parse_bytes`` predicts each block from the last node's layout and matches blocks that differ only in
per-node noise without re-parsing them; whatever the previous node looked like, its result must equal
``parse_lspci(quiet_text(text))`` on the same capture. Captures are real dumps (tests/fixtures/lspci, see
SOURCES.md there) and variants of them: per-node noise changed (serial numbers, IRQs, addresses), a setting
changed, blocks dropped, and arbitrary byte edits.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trainfleet.health import doctor
from trainfleet.health.lspci import parse_lspci

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lspci"
DUMPS = sorted(p for p in FIXTURES.glob("*.txt"))
HGX = (FIXTURES / "linuxhw_17_hpe-cray-xd665-4xh100sxm5-2xcx5-pex890xx-acs-on_vvnn.txt").read_bytes()


def _expected(data: bytes) -> tuple[list[str], list[str]]:
    dump = parse_lspci(doctor.quiet_text(data.decode("utf-8", errors="replace")))
    return [d.raw for d in dump.devices], dump.warnings


def _walked(data: bytes) -> tuple[list[str], list[str]]:
    dump = doctor.quiet_parse_bytes(data)
    return [d.raw for d in dump.devices], dump.warnings


def _with_noise(data: bytes, n: int) -> bytes:
    """``data`` as another node of the same model prints it: other serials, IRQs and BAR addresses."""
    data = re.sub(rb"(Device Serial Number )[0-9a-f.-]+", lambda m: m[1] + b"%02x-11-22-33" % n, data)
    data = re.sub(rb"(routed to IRQ )\d+", lambda m: m[1] + str(100 + n).encode(), data)
    return re.sub(rb"(Memory at )[0-9a-f]{6,}", lambda m: m[1] + b"%x0000000" % (n + 1), data)


def test_every_fixture_after_another_node() -> None:
    doctor._reset_state()
    previous = HGX
    for path in DUMPS:
        data = path.read_bytes()
        doctor.quiet_parse_bytes(previous)
        assert _walked(data) == _expected(data), path.name
        previous = data


def test_noise_only_nodes_share_the_parsed_blocks() -> None:
    doctor._reset_state()
    first = doctor.quiet_parse_bytes(HGX)
    for n in range(1, 4):
        node = _with_noise(HGX, n)
        assert node != HGX
        dump = doctor.quiet_parse_bytes(node)
        assert [id(d) for d in dump.devices] == [id(d) for d in first.devices]
        assert _walked(node) == _expected(node)


def test_a_changed_setting_is_not_taken_for_noise() -> None:
    doctor._reset_state()
    doctor.quiet_parse_bytes(HGX)
    bad = _with_noise(HGX, 5).replace(b"MaxReadReq 512 bytes", b"MaxReadReq 128 bytes", 1)
    assert bad != _with_noise(HGX, 5)
    assert _walked(bad) == _expected(bad)
    assert any("MaxReadReq 128 bytes" in raw for raw in _walked(bad)[0])


PIECES = [b"", b"\n", b"\n\n", b"\n\n\n", b"\t", b"x", b"\r", b"\xe2\x82", b" at fe00",
          b"\tInterrupt: pin A routed to IRQ 9", b"0000:00:00.0 Host bridge: X"]
EDIT = st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 40), st.sampled_from(PIECES))


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(EDIT, min_size=1, max_size=4), truncate=st.one_of(st.none(), st.floats(0, 1)))
def test_arbitrary_edits_after_a_good_node(edits: list[tuple[float, int, bytes]],
                                           truncate: float | None) -> None:
    doctor._reset_state()
    doctor.quiet_parse_bytes(_with_noise(HGX, 7))
    data = bytearray(HGX)
    for where, length, text in edits:
        i = int(where * len(data))
        data[i:i + length] = text
    if truncate is not None:
        data = data[: int(truncate * len(data))]
    assert _walked(bytes(data)) == _expected(bytes(data))

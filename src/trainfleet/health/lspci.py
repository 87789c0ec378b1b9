"""Parse ``lspci`` text into typed records (:mod:`trainfleet.health.model`). Pure: no I/O, never raises.

Accepted: ``lspci``, ``-k``, ``-v``/``-vv``/``-vvv``/``-vvvv``, ``-nn``, ``-D``, old and new pciutils
spellings (``LnkSta`` with or without ``(ok)``, one-line ``LnkSta``, ``Report errors:``, ``UnsuppReq``),
tab-indented, tab-expanded and doc-indented text, CRLF, ``<access denied>`` captures, truncated dumps and
binary garbage.
Lines the parser does not understand are kept in ``PciDevice.unknown_lines``; per-device problems go to
``PciDevice.warnings``, dump-level ones to ``LspciDump.warnings``.

Speed: a fleet's nodes mostly print identical device blocks, so :func:`parse_block` is memoised on the exact
block text. The ``PciDevice`` objects it returns may therefore be shared between dumps: callers must treat
them as read-only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from trainfleet.health.classify import classify
from trainfleet.health.model import BusRange, LspciDump, PciDevice, Region
from trainfleet.health.pcie_caps import Item, group_lines, indent, parse_capability

__all__ = ["parse_block", "parse_lspci"]

_BDF = r"(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])"
_HEADER_LINE = re.compile(rf"([ \t]*){_BDF}[ \t]+(?=\S)")  # start of every device block
_HEADER = re.compile(rf"^[ \t]*{_BDF}\s+(.*)$")
_HEADER_CLASS = re.compile(r"^(.*?)(?: \[([0-9a-fA-F]{4})\])?: (.*)$")
_HEADER_TAIL = re.compile(
    r"(?: \(rev ([0-9a-fA-F]{2})\))?(?: \(prog-if [0-9a-fA-F]{2}(?: \[[^\]]*\])?\))?\s*$"
)
_COLUMN0 = re.compile(r"\n(?=\S)")  # a line at column 0 inside a chunk: another header, or not lspci's
_IDS_TAIL = re.compile(r"\s*\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]$")

_INT = re.compile(r"-?\d+")
_BUS = re.compile(r"primary=([0-9a-fA-F]+), secondary=([0-9a-fA-F]+), subordinate=([0-9a-fA-F]+)")
_REGION = re.compile(
    r"^Region (\d+): (?:\[virtual\] )?(Memory|I/O ports) at (\S+)"
    r"(?: \((?:(\d+)-bit|type \d+), (non-)?prefetchable\))?(.*)$"
)
_SIZE = re.compile(r"\[size=(\d+)([KMGTP]?)\]")
_FLAGS_NUMA = re.compile(r"NUMA node:? -?\d+")
_FLAGS_IOMMU = re.compile(r"IOMMU group:? \d+")
# Values that differ between otherwise identical nodes and that no field holds: masked in the memo key.
_VOLATILE = re.compile(
    r"(routed to IRQ |, IRQ |Address: |Data: |Serial number: |Vendor specific: |Device Serial Number )[^\s,]*"
)
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")

_DEVICE_SLOTS = PciDevice.__slots__
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

# Top-level lines understood but deliberately not turned into fields (they stay in ``raw``).
_KNOWN_TOP_PREFIXES = (
    "Control:", "Status:", "Latency:", "Interrupt:", "DeviceName:", "BIST", "Expansion ROM",
    "I/O behind bridge", "Memory behind bridge", "Prefetchable memory behind bridge", "Secondary status",
    "BridgeCtl", "Capabilities: [", "Subsystem:", "Physical Slot:", "Flags:", "Kernel", "Memory at",
    "I/O ports at",
)


def _parse_region(text: str, dev: PciDevice) -> None:
    m = _REGION.match(text)
    if m is None:
        dev.unknown_lines.append(text)
        return
    addr = None if m[3].startswith("<") else m[3]
    size = _SIZE.search(m[6])
    dev.regions.append(Region(
        index=int(m[1]), kind=m[2], address=addr,
        size_bytes=int(size[1]) * _UNITS[size[2]] if size else None,
        bits=int(m[4]) if m[4] else None, prefetchable=m[5] is None and "prefetchable)" in m[0],
        disabled="[disabled]" in m[6],
    ))


def _set_int(dev: PciDevice, attr: str, text: str) -> None:
    m = _INT.search(text)
    if m is None:
        dev.warnings.append(f"cannot read {text!r}")
        return
    value, old = int(m[0]), getattr(dev, attr)
    if old is None:
        setattr(dev, attr, value)
    elif old != value:
        dev.warnings.append(f"{text.split(':')[0]} printed twice ({old}, {value}); kept {old}")


def _parse_top(item: Item, dev: PciDevice) -> None:
    text = item.text
    key, _, value = text.partition(": ")
    value = value.strip()
    if text.startswith("Capabilities:"):
        parse_capability(item, dev)
    elif key == "Subsystem":
        ids = _IDS_TAIL.search(value)
        dev.subsystem = value[: ids.start()] if ids else value
        dev.subsystem_ids = f"{ids[1]}:{ids[2]}".lower() if ids else None
    elif key == "NUMA node":
        _set_int(dev, "numa_node", text)
    elif key == "IOMMU group":
        _set_int(dev, "iommu_group", text)
    elif key == "Bus":
        bus = _BUS.search(value)
        if bus:
            dev.bus_range = BusRange(*(int(x, 16) for x in bus.groups()))
        else:
            dev.warnings.append(f"cannot read bus range: {text!r}")
    elif text.startswith("Region "):
        _parse_region(text, dev)
    elif key == "Kernel driver in use":
        dev.driver = value
    elif key == "Kernel modules":
        dev.modules = tuple(m.strip() for m in value.split(",") if m.strip())
    elif key == "Physical Slot":
        dev.physical_slot = value
    elif key == "Flags":  # lspci -v: "Flags: bus master, fast devsel, latency 0, IRQ 16, NUMA node 0"
        for attr, regex in (("numa_node", _FLAGS_NUMA), ("iommu_group", _FLAGS_IOMMU)):
            if m := regex.search(value):
                _set_int(dev, attr, m[0])
    elif not text.startswith(_KNOWN_TOP_PREFIXES):
        dev.unknown_lines.append(text)
        dev.unknown_lines.extend(first for _, _, first in item.regs)


def _nameless(warning: str) -> PciDevice:
    return PciDevice(address="", domain=0, bus=0, dev=0, fn=0, warnings=[warning])


def _parse_header(line: str) -> PciDevice:
    m = _HEADER.match(line)
    if m is None:
        return _nameless(f"not a device header: {line[:80]!r}")
    dom, bus, slot, fn, rest = m.groups()
    address = line.strip().split(None, 1)[0]
    dev = PciDevice(address=address, domain=int(dom, 16) if dom else 0, bus=int(bus, 16), dev=int(slot, 16),
                    fn=int(fn))
    cls = _HEADER_CLASS.match(rest)
    if cls is None:
        dev.vendor_device = rest.strip()
        dev.warnings.append(f"cannot read device class from header: {line.strip()[:120]!r}")
        return dev
    dev.class_name, dev.class_id = cls[1].strip(), cls[2].lower() if cls[2] else None
    name = cls[3]
    tail = _HEADER_TAIL.search(name)
    if tail and tail.start() < len(name):
        dev.rev = tail[1]
        name = name[: tail.start()]
    ids = _IDS_TAIL.search(name)
    if ids:
        dev.vendor_id, dev.device_id = ids[1].lower(), ids[2].lower()
        name = name[: ids.start()]
    dev.vendor_device = name.strip()
    return dev


def _build(block: str) -> PciDevice:
    lines = block.split("\n")
    dev = _parse_header(lines[0])
    dev.raw = block
    for item in group_lines(lines[1:]):
        _parse_top(item, dev)
    bad = [ln for ln in dev.unknown_lines if _UNPRINTABLE.search(ln)]
    if bad:
        dev.warnings.append(f"{len(bad)} unreadable line(s) (binary garbage?)")
    dev.kind = classify(dev)
    return dev


@lru_cache(maxsize=32768)
def _parse_canonical(block: str) -> PciDevice:
    try:
        return _build(block)
    except Exception as exc:  # a parser bug must not stop a fleet scan: report it on the device
        dev = _parse_header(block.split("\n", 1)[0])
        dev.raw = block
        dev.warnings.append(f"parser error ({type(exc).__name__}: {exc}); fields left empty")
        return dev


def _with_raw(dev: PciDevice, raw: str) -> PciDevice:
    copy = object.__new__(PciDevice)
    for name in _DEVICE_SLOTS:
        object.__setattr__(copy, name, getattr(dev, name))
    copy.raw = raw
    return copy


@lru_cache(maxsize=8192)
def parse_block(block: str) -> PciDevice:
    """Parse one device block (header line + its indented lines) into a :class:`PciDevice`.

    Never raises: a problem becomes a warning on the returned device. Memoised twice: on the exact text,
    and on the text with per-node values masked (IRQ numbers, MSI address/data, serial numbers and other
    VPD vendor fields, none of which the parser extracts), so a block that differs from another node's only
    there is not parsed again: it gets a shallow copy with its own ``raw``. Returned objects (and the lists
    they hold) are shared between callers and must not be mutated.
    """
    canonical = _VOLATILE.sub(r"\1*", block)
    dev = _parse_canonical(canonical)
    return dev if canonical == block else _with_raw(dev, block)


def _split_lines(chunk: str, garbage: list[str]) -> Iterator[str]:
    """Slow path: cut ``chunk`` at every header line; lines no deeper than their header go to ``garbage``."""
    block: list[str] = []
    limit = 0
    for line in chunk.split("\n"):
        head = _HEADER_LINE.match(line)
        if head:
            if block:
                yield "\n".join(block).rstrip()
            block, limit = [line], indent(head[1])
        elif not line.strip():
            continue
        elif not block or indent(line) <= limit:
            garbage.append(line)
        else:
            block.append(line)
    if block:
        yield "\n".join(block).rstrip()


def _blocks(text: str, garbage: list[str]) -> Iterator[str]:
    """Device blocks of a capture. Fast path: ``lspci -v*`` separates blocks by a blank line, so a chunk that
    starts with a header at column 0 and has no other column-0 line is exactly one block."""
    for chunk in text.split("\n\n"):
        chunk = chunk.strip("\n")
        if not chunk.strip():
            continue
        head = _HEADER_LINE.match(chunk)
        if head and not head[1] and _COLUMN0.search(chunk) is None:
            yield chunk.rstrip()
        else:
            yield from _split_lines(chunk, garbage)


def parse_lspci(text: str) -> LspciDump:
    """Parse a whole ``lspci`` capture. Never raises; see the module docstring for what is accepted.

    Devices come in printed order; text outside any device block goes to ``garbage_lines``. The devices
    may be shared with other dumps (memoised per block): do not mutate them.
    """
    dump = LspciDump()
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    dump.devices = [parse_block(block) for block in _blocks(text, dump.garbage_lines)]
    if not dump.devices and text.strip():
        dump.warnings.append("no lspci device blocks found")
    denied = sum(d.access_denied for d in dump.devices)
    if denied:
        dump.warnings.append(f"not run as root: capabilities hidden (<access denied>) on {denied} devices")
    seen: set[str] = set()
    for dev in dump.devices:
        if dev.bdf in seen:
            dump.warnings.append(f"device {dev.bdf} printed more than once")
        seen.add(dev.bdf)
    return dump

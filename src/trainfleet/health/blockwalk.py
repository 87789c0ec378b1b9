"""Per-node noise and the doctor's fast way through a capture: blocks predicted from the last node.

Per-node noise is what differs between identical nodes and no rule or signature reads (see
:func:`quiet_block`). :class:`BlockWalker` turns a node's raw lspci bytes into parsed (quieted) device blocks:
a block equal to the one the last node had at that position costs one ``startswith``; one that differs from
it only in noise lines costs a few ``startswith`` and a regex on the changed lines (so the serial numbers on
~46 of the ~183 blocks of an HGX node do not force a re-parse); any other block is cut at the next blank
line, looked up by its bytes, and parsed if new. The capture is never decoded, split or hashed as a whole.
"""

from __future__ import annotations

import re
from bisect import bisect_right, insort

from trainfleet.health.lspci import parse_block
from trainfleet.health.model import PciDevice

__all__ = ["BlockWalker", "Entry", "quiet_block", "quiet_text"]

BLOCKS_MAX = 4096
HEADER = re.compile(r"(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7] ")
COLUMN0 = re.compile(r"\n[^ \t\n]")  # a second column-0 line: not one simple block
# What differs per node and no rule or signature reads: interrupt numbers, MSI addresses, VPD fields
# (serial numbers, UUIDs), device serial numbers, BAR and bridge-window addresses (sizes are kept). Taking it
# out before parsing makes identical nodes print identical blocks, so the parser's block memo and the
# doctor's node memo hit even when serials or the BIOS's address allocation differ.
# Each pattern starts with a literal, so the regex engine skips ahead fast (most blocks are quieted once).
_NOISE_LINES = re.compile(
    r"\n[ \t]+(?:Interrupt:|Address:|\[|Capabilities: \[[0-9a-f]+ v\d+\] Device Serial Number)[^\n]*")
_AT_ADDRESS = re.compile(r" at [0-9a-f]{4,}")  # Region / I/O ports / Expansion ROM "at <address>"
_WINDOW = re.compile(r"bridge: [0-9a-f]{4,}-[0-9a-f]+")  # "Memory behind bridge: <start>-<end>"
# The same three on bytes, for the changed lines of a block (see _same_quiet).
_NOISE_LINES_B = re.compile(_NOISE_LINES.pattern.encode())
_AT_ADDRESS_B = re.compile(_AT_ADDRESS.pattern.encode())
_WINDOW_B = re.compile(_WINDOW.pattern.encode())
_SEP = b"\n\n"
_DIFF_LINES_MAX = 24  # changed lines a block may have and still be matched against its predicted block
_MISS = object()
Entry = tuple[PciDevice, str] | None  # a parsed block and its bdf; None for a blank chunk


def quiet_block(chunk: str) -> str:
    """``chunk`` (one device block) without per-node noise; line by line (no pattern spans a newline)."""
    quiet = _AT_ADDRESS.sub(" at 0", _NOISE_LINES.sub("", chunk))
    return _WINDOW.sub("bridge: 0-0", quiet)


def quiet_text(text: str) -> str:
    """``text`` without per-node noise (see ``_NOISE_LINES``, ``_AT_ADDRESS``, ``_WINDOW``)."""
    return "\n\n".join(quiet_block(chunk) for chunk in text.split("\n\n"))


def _quiet_line(line: bytes) -> bytes:
    """What :func:`quiet_block` leaves of one indented line (and its leading newline): b"" for noise."""
    quiet = _AT_ADDRESS_B.sub(b" at 0", _NOISE_LINES_B.sub(b"", b"\n" + line))
    return _WINDOW_B.sub(b"bridge: 0-0", quiet)


def _common_prefix(data: bytes, p: int, seg: memoryview, r: int) -> int:
    """Length of the common prefix of ``data[p:]`` and ``seg[r:]`` (binary search on ``startswith``)."""
    lo, hi = 0, min(len(seg) - r, len(data) - p)
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if data.startswith(seg[r:r + mid], p):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _same_quiet(data: bytes, pos: int, seg: bytes, hints: list[int],
                quiet_lines: dict[bytes, bytes]) -> int:
    """Where the chunk of ``data`` starting at ``pos`` ends, when it quiets to the same text as the block
    ``seg`` (a simple block seen before): same header line, and every line that differs differs only in
    per-node noise (:func:`quiet_block` is line-local, so comparing the changed lines' quiet forms proves it).
    -1 when that cannot be shown cheaply. ``hints``: sorted starts of the lines of ``seg`` that differed on
    earlier nodes (tried first: one ``startswith`` each); lines found to differ are added to it."""
    if seg[:1] == b"\n" or seg[-1:] == b"\n":
        return -1
    end, nseg, mv = len(data), len(seg), memoryview(seg)
    p, r, h, changed = pos, 0, 0, 0
    while True:
        while h < len(hints) and hints[h] < r:
            h += 1
        ls = -1
        if h < len(hints):
            if data.startswith(mv[r:hints[h]], p):
                ls = hints[h]  # lines up to there are equal: compare that line
                h += 1
        else:
            n = p + nseg - r
            if data.startswith(mv[r:], p) and (n == end or data.startswith(_SEP, n)):
                return n
        if ls < 0:
            ls = seg.rfind(b"\n", 0, r + _common_prefix(data, p, mv, r)) + 1  # the first line that differs
            if ls == 0:
                return -1  # the header line differs: another device
            if len(hints) < _DIFF_LINES_MAX:
                insort(hints, ls)
            h = bisect_right(hints, ls)
        le = seg.find(b"\n", ls)
        le = nseg if le < 0 else le
        dl = p + ls - r
        if le < nseg and data.startswith(mv[ls:le + 1], dl):  # the same line after all (a stale hint)
            p, r = dl + le - ls + 1, le + 1
            continue
        de = data.find(b"\n", dl)
        de = end if de < 0 else de
        line, known = data[dl:de], seg[ls:le]
        if line != known:
            changed += 1
            if changed > _DIFF_LINES_MAX or de == dl or not line.isascii():
                return -1
            quiet = quiet_lines.get(known)
            if quiet is None:
                if len(quiet_lines) >= BLOCKS_MAX:
                    quiet_lines.clear()
                quiet = quiet_lines[known] = _quiet_line(known)
            if _quiet_line(line) != quiet:
                return -1
        if le == nseg:
            return de if de == end or data.startswith(_SEP, de) else -1
        if de == end:
            return -1
        p, r = de + 1, le + 1


class BlockWalker:
    """Parse captures block by block, predicting each block from the last capture walked (one per worker).

    Keeps: the parsed entry of every simple block seen, by its raw bytes (bounded); the last layout (for
    each position: the block there, its entry, and the lines of it that differed on later nodes); the
    quiet forms of those lines. Returned devices are shared between captures: read-only."""

    def __init__(self) -> None:
        self.raw_blocks: dict[bytes, Entry] = {}
        self.layout: list[tuple[bytes, Entry, list[int]]] = []
        self.quiet_lines: dict[bytes, bytes] = {}

    def walk(self, data: bytes) -> tuple[list[PciDevice], list[str]] | None:
        """The parsed, quieted blocks of ``data`` (no CR) and their bdfs, exactly as splitting the decoded
        text at blank lines and parsing ``quiet_block`` of each chunk would give; None when a chunk is not
        one simple block (header at column 0, indented lines), which the caller must parse the slow way."""
        layout = self.layout
        devices: list[PciDevice] = []
        bdfs: list[str] = []
        pos, end, k = 0, len(data), 0
        while True:
            stop = -1
            if k < len(layout):
                seg, entry, hints = layout[k]
                n = pos + len(seg)
                if data.startswith(seg, pos) and (
                        n == end or (data.startswith(_SEP, n) and seg[-1:] != b"\n")):
                    stop = n
                elif entry is not None:
                    stop = _same_quiet(data, pos, seg, hints, self.quiet_lines)
            if stop < 0:
                stop = data.find(_SEP, pos)
                stop = end if stop < 0 else stop
                chunk = data[pos:stop]
                ok, entry = self._new_block(chunk)
                if not ok:
                    return None
                if k < len(layout):
                    layout[k] = (chunk, entry, [])
                else:
                    layout.append((chunk, entry, []))
            if entry is not None:
                devices.append(entry[0])
                bdfs.append(entry[1])
            if stop == end:
                return devices, bdfs
            pos, k = stop + 2, k + 1

    def _new_block(self, chunk: bytes) -> tuple[bool, Entry]:
        """Parse a block not predicted (memoised on its bytes); (False, None): not a simple block."""
        cache = self.raw_blocks
        entry = cache.get(chunk, _MISS)
        if entry is not _MISS:
            return True, entry  # type: ignore[return-value]
        body = chunk.decode("utf-8", errors="replace").strip("\n")
        if not body.strip():
            entry = None
        elif HEADER.match(body) is None or COLUMN0.search(body) is not None:
            return False, None
        else:
            dev = parse_block(quiet_block(body).rstrip())
            entry = (dev, dev.bdf)
        if len(cache) >= BLOCKS_MAX:
            cache.clear()
        cache[chunk] = entry
        return True, entry

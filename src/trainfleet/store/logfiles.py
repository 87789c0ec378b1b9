"""Per-rank log files of a job: the line format, finding the files, and merging them in time order.

Layout (written by the agent): ``<run_dir>/attempt-<k>/node-<n>/rank-<r>.out`` and ``.err`` (r = global
rank). Each line is ``<UTC ISO-8601 with microseconds>Z <text>``; the stamps let ranks be merged in time
order. A line without a stamp (e.g. written by something else) sorts with the line before it.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainfleet.runtime.logpipe import utc_stamp

Stream = Literal["out", "err"]

_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?")
_ATTEMPT_DIR = re.compile(r"^attempt-(\d+)$")
_NODE_DIR = re.compile(r"^node-(\d+)$")
_RANK_FILE = re.compile(r"^rank-(\d+)\.(out|err)$")
_TAIL_BLOCK = 64 * 1024


def format_ts(epoch: float) -> str:
    """``2026-12-03T07:53:03.123456Z`` for an epoch time: the stamp that starts every rank log line.

    The agent's writer owns the format; reading and writing share its one implementation.
    """
    return utc_stamp(epoch)


def stamp_line(text: str, epoch: float) -> str:
    """One rank log line: stamp, a space, ``text`` (without its newline), and a newline."""
    return f"{format_ts(epoch)} {text.rstrip(chr(10))}\n"


@dataclass(frozen=True, order=True)
class LogSource:
    """One rank's stdout or stderr file of one attempt."""

    attempt: int
    node: int
    rank: int
    stream: Stream
    path: Path = field(compare=False)


@dataclass(frozen=True)
class LogLine:
    """One line of a rank log, with its stamp split off (``key`` sorts in time order)."""

    key: str
    source: LogSource
    text: str

    @property
    def prefix(self) -> str:
        """``node:rank``, with `` err`` for stderr lines."""
        base = f"{self.source.node}:{self.source.rank}"
        return f"{base} err" if self.source.stream == "err" else base

    def render(self) -> str:
        """The display form: ``[node:rank] text`` (stamp stripped)."""
        return f"[{self.prefix}] {self.text}"


def attempt_dirs(run_dir: str | Path) -> dict[int, Path]:
    """``{k: <run_dir>/attempt-<k>}`` for every attempt directory present."""
    root = Path(run_dir)
    if not root.is_dir():
        return {}
    found = {}
    for child in root.iterdir():
        match = _ATTEMPT_DIR.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return found


def latest_attempt(run_dir: str | Path) -> int | None:
    """The highest attempt number with a directory, or None when no attempt has logs yet."""
    return max(attempt_dirs(run_dir), default=None)


def log_sources(run_dir: str | Path, attempt: int, *, rank: int | None = None) -> list[LogSource]:
    """The rank log files of one attempt, ordered by node, rank, then stdout before stderr."""
    base = Path(run_dir) / f"attempt-{attempt}"
    if not base.is_dir():
        return []
    sources = []
    for node_dir in base.iterdir():
        node_match = _NODE_DIR.match(node_dir.name)
        if not node_match or not node_dir.is_dir():
            continue
        for path in node_dir.iterdir():
            file_match = _RANK_FILE.match(path.name)
            if not file_match:
                continue
            r = int(file_match.group(1))
            if rank is None or r == rank:
                stream: Stream = "out" if file_match.group(2) == "out" else "err"
                sources.append(LogSource(attempt, int(node_match.group(1)), r, stream, path))
    return sorted(sources)


def split_stamp(raw: bytes) -> tuple[str | None, str]:
    """Split one raw line into (sortable stamp key or None, text). The key pads fractions to 9 digits."""
    match = _STAMP.match(raw)
    text_bytes = raw[match.end():] if match else raw
    text = text_bytes.decode("utf-8", errors="replace").rstrip("\r")
    if not match:
        return None, text
    frac = (match.group(2) or b"").decode().ljust(9, "0")
    return f"{match.group(1).decode()}.{frac}", text


def parse_lines(source: LogSource, raws: Iterable[bytes], *, last_key: str = "") -> Iterator[LogLine]:
    """Turn raw lines (no newlines) of one file into ``LogLine``; unstamped lines take the previous key."""
    key = last_key
    for raw in raws:
        stamp, text = split_stamp(raw)
        if stamp is not None:
            key = stamp
        yield LogLine(key, source, text)


def read_source(source: LogSource, *, tail: int | None = None) -> list[LogLine]:
    """Every line of one file (or only its last ``tail``), including a partial last line."""
    raws = _tail_raw_lines(source.path, tail) if tail is not None else _all_raw_lines(source.path)
    return list(parse_lines(source, raws))


def merge(per_source: Iterable[Iterable[LogLine]]) -> list[LogLine]:
    """Merge per-file line lists in time order; each file keeps its own order, ties go to earlier files."""
    return list(heapq.merge(*per_source, key=lambda line: line.key))


def read_merged(sources: Iterable[LogSource], *, tail: int | None = None) -> list[LogLine]:
    """All lines of ``sources`` merged in time order; with ``tail``, only the last ``tail`` of them."""
    merged = merge(read_source(s, tail=tail) for s in sources)
    if tail is not None:
        return merged[-tail:] if tail > 0 else []
    return merged


def _all_raw_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _tail_raw_lines(path: Path, n: int, *, end: int | None = None) -> list[bytes]:
    # Read backwards in blocks so `--tail` on a large log does not read the whole file.
    if n <= 0:
        return []
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            pos = fh.tell() if end is None else min(end, fh.tell())
            data = b""
            while pos > 0 and data.count(b"\n") <= n:
                step = min(_TAIL_BLOCK, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except OSError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines[-n:]


class LogFollower:
    """Incremental reader for ``logs --follow``: each ``poll()`` returns the new complete lines, merged.

    With ``attempt=None`` it follows the latest attempt and moves on when a newer one appears (draining
    the old one first). Partial last lines are held until completed, or returned by ``drain()``.
    """

    def __init__(self, run_dir: str | Path, *, attempt: int | None = None, rank: int | None = None,
                 tail: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.fixed_attempt = attempt
        self.rank = rank
        self.attempt = attempt if attempt is not None else latest_attempt(self.run_dir)
        self._tail = tail
        self._offsets: dict[LogSource, int] = {}
        self._partial: dict[LogSource, bytes] = {}
        self._last_key: dict[LogSource, str] = {}

    def poll(self) -> list[LogLine]:
        """New complete lines since the last poll, merged in time order (may switch to a newer attempt)."""
        out: list[LogLine] = []
        if self.fixed_attempt is None:
            newest = latest_attempt(self.run_dir)
            if newest is not None and (self.attempt is None or newest > self.attempt):
                if self.attempt is not None:
                    out.extend(self._read(final=True))
                self.attempt = newest
                self._offsets.clear()
                self._partial.clear()
                self._last_key.clear()
        out.extend(self._read(final=False))
        return out

    def drain(self) -> list[LogLine]:
        """Everything left, including partial last lines (call once the job is over)."""
        return self._read(final=True)

    def _read(self, *, final: bool) -> list[LogLine]:
        if self.attempt is None:
            return []
        per_source = []
        first_read = not self._offsets
        for source in log_sources(self.run_dir, self.attempt, rank=self.rank):
            if first_read and self._tail is not None:
                lines = self._start_from_tail(source, self._tail)
            else:
                lines = self._read_new(source, final=final)
            if lines:
                per_source.append(lines)
        merged = merge(per_source)
        if first_read and self._tail is not None:
            merged = merged[-self._tail:] if self._tail > 0 else []
            self._tail = None
        return merged

    def _start_from_tail(self, source: LogSource, n: int) -> list[LogLine]:
        try:
            size = source.path.stat().st_size
        except OSError:
            return []
        with source.path.open("rb") as fh:
            fh.seek(max(size - 1, 0))
            partial = size > 0 and fh.read(1) != b"\n"
        raws = _tail_raw_lines(source.path, n + 1 if partial else n, end=size)
        if partial and raws:
            # Hold a partial last line back so the next poll completes it.
            self._partial[source] = raws.pop()
        self._offsets[source] = size
        lines = list(parse_lines(source, raws))
        if lines:
            self._last_key[source] = lines[-1].key
        return lines

    def _read_new(self, source: LogSource, *, final: bool) -> list[LogLine]:
        offset = self._offsets.get(source, 0)
        try:
            with source.path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            return []
        self._offsets[source] = offset + len(chunk)
        data = self._partial.pop(source, b"") + chunk
        raws = data.split(b"\n")
        rest = raws.pop()  # b"" when data ended with a newline
        if rest and not final:
            self._partial[source] = rest
        elif rest:
            raws.append(rest)
        lines = list(parse_lines(source, raws, last_key=self._last_key.get(source, "")))
        if lines:
            self._last_key[source] = lines[-1].key
        return lines

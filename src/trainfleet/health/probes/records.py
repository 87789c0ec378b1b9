"""What the probe worker prints, read back: one JSON object per line, typed by its ``probe`` field.

* ``collective``: one (op, size) of an all-reduce / all-gather / reduce-scatter sweep, printed by rank 0, with
  the slowest rank's median time, algbw and busbw (GB/s) and whether the result was correct.
* ``pair``: one direction of one scheduled pair, printed by the receiving rank.
* ``compute``: one rank's matmul throughput.

The parser takes text (torchrun's own log lines mixed in are skipped) and returns dataclasses; it never runs
anything. A line that starts like a record but does not parse is an :class:`InputError` naming the line.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from trainfleet.errors import InputError


@dataclass(frozen=True)
class CollectiveRecord:
    """One collective at one message size over ``world`` ranks; bandwidths in GB/s."""

    op: str
    bytes: int
    world: int
    time_s: float
    algbw_gbps: float
    busbw_gbps: float
    ok: bool
    iters: int
    backend: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class PairRecord:
    """One direction ``src -> dst`` of a scheduled pair in ``round``; ``bw_gbps`` = bytes / time."""

    round: int
    src: str
    dst: str
    src_rank: int
    dst_rank: int
    bytes: int
    time_s: float
    bw_gbps: float
    ok: bool
    iters: int


@dataclass(frozen=True)
class ComputeRecord:
    """One rank's ``n x n`` matmul: median time and throughput in TFLOP/s."""

    node: str
    rank: int
    device: str
    dtype: str
    n: int
    time_s: float
    tflops: float
    ok: bool


ProbeRecord = CollectiveRecord | PairRecord | ComputeRecord
_KINDS: dict[str, type] = {"collective": CollectiveRecord, "pair": PairRecord, "compute": ComputeRecord}


def record_to_json(kind: str, record: ProbeRecord) -> str:
    """The one-line JSON form of a record, as the worker prints it."""
    body: dict[str, Any] = {"probe": kind}
    for f in fields(record):
        value = getattr(record, f.name)
        body[f.name] = list(value) if isinstance(value, tuple) else value
    return json.dumps(body, separators=(",", ":"))


def _build(kind: str, data: dict[str, Any], where: str) -> ProbeRecord:
    cls = _KINDS[kind]
    values = {}
    for f in fields(cls):
        if f.name not in data:
            raise InputError(f"{where}: {kind} record lacks field {f.name!r}")
        value = data[f.name]
        values[f.name] = tuple(value) if f.name == "nodes" else value
    return cls(**values)


def parse_probe_output(text: str, *, source: str = "probe output") -> list[ProbeRecord]:
    """Every probe record in ``text``, in order; other lines are ignored."""
    records: list[ProbeRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith('{"probe"'):
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: broken probe record ({exc.msg})") from exc
        kind = data.get("probe")
        if kind not in _KINDS:
            raise InputError(f"{where}: unknown probe kind {kind!r}")
        records.append(_build(kind, data, where))
    return records


def pair_matrix(records: Iterable[ProbeRecord]) -> dict[tuple[str, str], float]:
    """Directional ``(src, dst) -> GB/s`` from pair records (median when a direction was measured twice)."""
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if isinstance(r, PairRecord):
            seen[(r.src, r.dst)].append(r.bw_gbps)
    return {link: statistics.median(values) for link, values in seen.items()}


def format_matrix(matrix: Mapping[tuple[str, str], float]) -> str:
    """A plain-text node x node table (rows send, columns receive), GB/s with 3 decimals."""
    nodes = sorted({n for link in matrix for n in link}, key=lambda n: (len(n), n))
    width = max([7, *(len(n) + 1 for n in nodes)])
    lines = ["src\\dst".ljust(width) + "".join(n.rjust(width) for n in nodes)]
    for a in nodes:
        cells = [f"{matrix[(a, b)]:.3f}" if (a, b) in matrix else "-" for b in nodes]
        lines.append(a.ljust(width) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)

"""Bandwidth arithmetic with the nccl-tests definitions, and message-size parsing.

* ``algbw = bytes / time`` where ``bytes`` is the collective's full buffer: the all-reduce buffer, the
  all-gather *output* (``count x n``) or the reduce-scatter *input* (``count x n``), as nccl-tests reports it.
* ``busbw = algbw x factor(n)`` with ``2(n-1)/n`` for all-reduce and ``(n-1)/n`` for all-gather and
  reduce-scatter; broadcast, reduce and point-to-point use 1. busbw is what each rank's link carries in a
  ring, so it can be compared with the hardware's link speed whatever the rank count.
* Sizes such as ``"1K..1G"`` are binary (1K = 1024 bytes) like nccl-tests' ``-b``/``-e``; a range steps by a
  factor (``-f``, 2 by default), a comma list names sizes one by one.
"""

from __future__ import annotations

import enum
import re

from trainfleet.errors import InputError

GB = 1e9  # bandwidths are reported in GB/s (10^9 bytes), as nccl-tests does


class Collective(enum.StrEnum):
    """The operations a probe measures; the value is the name used in probe output."""

    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    BROADCAST = "broadcast"
    SEND_RECV = "send_recv"


def bus_factor(op: Collective | str, n: int) -> float:
    """The nccl-tests factor turning algbw into busbw for ``n`` ranks (1.0 for a single rank's own copy)."""
    if n < 1:
        raise InputError(f"rank count {n}: expected at least 1")
    op = Collective(op)
    if op is Collective.ALL_REDUCE:
        return 2 * (n - 1) / n
    if op in (Collective.ALL_GATHER, Collective.REDUCE_SCATTER):
        return (n - 1) / n
    return 1.0


def algbw(nbytes: int, seconds: float) -> float:
    """Algorithm bandwidth in GB/s: the collective's buffer size over its time."""
    if seconds <= 0:
        raise InputError(f"time {seconds!r} s: expected a positive duration")
    return nbytes / seconds / GB


def busbw(op: Collective | str, nbytes: int, seconds: float, n: int) -> float:
    """Bus bandwidth in GB/s: ``algbw x bus_factor(op, n)``."""
    return algbw(nbytes, seconds) * bus_factor(op, n)


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, field: str = "size") -> int:
    """``"64"``, ``"1K"``, ``"4MiB"``, ``"1G"`` -> bytes (binary units); bad text is an InputError."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise InputError(f"{field}: cannot read {text!r} as a size (examples: 1K, 64M, 1G)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1 or value != int(value):
        raise InputError(f"{field}: {text!r} is not a whole number of bytes >= 1")
    return int(value)


def parse_sizes(text: str, *, factor: int = 2, field: str = "sizes") -> list[int]:
    """``"1K..1G"`` (stepping by ``factor``) or ``"1K,4M,1G"`` -> ascending sizes in bytes, no duplicates."""
    if factor < 2:
        raise InputError(f"{field}: step factor {factor} must be at least 2")
    text = str(text).strip()
    if ".." in text:
        lo_text, _, hi_text = text.partition("..")
        lo, hi = parse_size(lo_text, field=field), parse_size(hi_text, field=field)
        if lo > hi:
            raise InputError(f"{field}: range {text!r} runs backwards")
        sizes, size = [], lo
        while size <= hi:
            sizes.append(size)
            size *= factor
        return sizes
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise InputError(f"{field}: no sizes given")
    return sorted({parse_size(p, field=field) for p in parts})


def format_size(nbytes: int) -> str:
    """Bytes as the shortest exact binary unit: 1024 -> ``"1K"``, 3 << 20 -> ``"3M"``, 1000 -> ``"1000"``."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)

"""Tournament schedule for pairwise probes: every pair of nodes meets exactly once, every node at most once
per round.

The circle method: fix the first node, rotate the others one place per round, and pair position ``i``
with position ``n-1-i``. With ``n`` even that takes ``n-1`` rounds and every node is busy in every round;
with ``n`` odd a placeholder joins, whoever draws it sits the round out (a bye), and it takes ``n`` rounds.
So a full node x node matrix costs ``n-1`` (or ``n``) rounds, each round running ``n/2`` transfers at
once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")  # any hashable node id


def round_robin(nodes: Sequence[T]) -> list[list[tuple[T, T]]]:
    """Rounds of disjoint pairs covering every unordered pair of ``nodes`` exactly once.

    Within a pair the node listed first comes earlier in ``nodes``. Duplicates in ``nodes`` are a ValueError.
    """
    items = list(nodes)
    if len(set(items)) != len(items):
        raise ValueError("round_robin: nodes must be distinct")
    if len(items) < 2:
        return []
    order = {node: i for i, node in enumerate(items)}
    slots: list[T | None] = [*items, None] if len(items) % 2 else list(items)
    n = len(slots)
    rounds: list[list[tuple[T, T]]] = []
    for _ in range(n - 1):
        pairs = []
        for i in range(n // 2):
            a, b = slots[i], slots[n - 1 - i]
            if a is None or b is None:
                continue  # the bye
            pairs.append((a, b) if order[a] < order[b] else (b, a))
        rounds.append(pairs)
        slots = [slots[0], slots[-1], *slots[1:-1]]
    return rounds


def rounds_needed(n: int) -> int:
    """Rounds :func:`round_robin` takes for ``n`` nodes: ``n-1`` when even, ``n`` when odd, 0 below 2."""
    if n < 2:
        return 0
    return n - 1 if n % 2 == 0 else n


def partner_map(round_pairs: Sequence[tuple[T, T]]) -> dict[T, T]:
    """Each node's partner in one round (both directions); nodes with a bye are absent."""
    partners: dict[T, T] = {}
    for a, b in round_pairs:
        partners[a] = b
        partners[b] = a
    return partners

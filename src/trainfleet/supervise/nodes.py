"""Which nodes an attempt runs on: keep the last placement, replace blamed or quarantined nodes by spares.

The pool is the backend's node names (``local-0`` .. ``local-{nodes+spare_nodes-1}`` on the local
backend). Quarantined nodes are never used. A node blamed in this job (and any suspect node) is replaced
when a better node is free; with no spare left the suspect stays (the job retries where it was) and only
a quarantined node with no replacement makes the attempt impossible (``NoUsableNodes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trainfleet.errors import BackendError
from trainfleet.store.nodes import NodeState


class NoUsableNodes(BackendError):
    """Fewer usable (not quarantined) nodes than the job needs."""


def node_pool(backend: object, nodes: int, spare_nodes: int) -> list[str]:
    """The names of the nodes a job may use: the backend's ``node_pool`` when it has one."""
    pool = getattr(backend, "node_pool", None)
    if callable(pool):
        return list(pool(nodes + spare_nodes))
    return [f"node-{i}" for i in range(nodes + spare_nodes)]


def place(pool: Sequence[str], need: int, verdicts: Mapping[str, NodeState], *,
          previous: Sequence[str] = (), blamed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Node name for each node rank 0..need-1 (see module doc)."""

    def badness(name: str) -> int:
        if verdicts.get(name) is NodeState.QUARANTINED:
            return 3
        if name in blamed:
            return 2
        return 1 if verdicts.get(name) is NodeState.SUSPECT else 0

    usable = [n for n in pool if badness(n) < 3]
    if len(usable) < need:
        quarantined = sorted(n for n in pool if badness(n) == 3)
        raise NoUsableNodes(f"needs {need} nodes but only {len(usable)} of {len(pool)} are usable; "
                            f"quarantined: {', '.join(quarantined)} (trainfleet nodes release NODE)")
    chosen = list(previous[:need]) if len(previous) >= need else sorted(usable, key=badness)[:need]
    free = sorted((n for n in usable if n not in chosen), key=lambda n: (badness(n), pool.index(n)))
    for i, name in enumerate(chosen):
        if free and badness(free[0]) < badness(name):
            chosen[i] = free.pop(0)
    return chosen

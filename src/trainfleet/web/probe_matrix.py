"""The fleet page's bandwidth matrix from the store: the newest ``pairs`` probe run as a src x dst table.

``trainfleet probe pairs`` saves one ``probe_results`` row per node (its median pair bandwidth and whether
the run judged it slow, ``health/probes/store.py``) and, for pairs runs, its outgoing links (``{dst: GB/s}``
in ``data["links"]``), from which the matrix is built. A cell is *slow* when the judge blames the link, or
the run judged one of its two nodes slow. The matrix of a run is computed once and cached by its rows.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from trainfleet.health.probes.judge import judge_pairs
from trainfleet.health.probes.store import job_results
from trainfleet.store import Store
from trainfleet.store import schema as t
from trainfleet.store.db import run_read

PAIRS = "pairs"


class ProbeMatrixSource:
    """The newest pairs probe run in ``store``, as a matrix document (cached per run)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._key: int | None = -1
        self._doc: dict[str, Any] | None = None

    def latest(self) -> dict[str, Any] | None:
        """``{job_id, ts, backend, source, nodes, gbps, slow, node_values, slow_nodes, note}`` of the newest
        pairs run (``gbps``/``slow`` are rows = src, columns = dst; None where not measured); None without
        any stored pairs run."""
        p = t.probe_results
        last_id = run_read(self.store.engine, lambda c: c.execute(sa.select(sa.func.max(p.c.id))).scalar())
        with self._lock:
            if last_id != self._key:  # rows are only ever added: the newest id says whether anything changed
                newest = (sa.select(p.c.job_id).where(p.c.probe == PAIRS)
                          .order_by(p.c.ts.desc(), p.c.id.desc()).limit(1))
                head = run_read(self.store.engine, lambda c: c.execute(newest).first())
                self._doc = self._build(head.job_id) if head is not None else None
                self._key = last_id
            return self._doc

    def _build(self, job_id: str) -> dict[str, Any]:
        rows = [r for r in job_results(self.store, [job_id]) if r.probe == PAIRS]
        values = {r.node: {"value": r.value, "verdict": r.verdict, "metric": r.metric} for r in rows}
        links: dict[tuple[str, str], float] = {}
        for r in rows:
            stored = (r.data or {}).get("links")
            if isinstance(stored, dict):
                links.update({(r.node, str(dst)): float(v) for dst, v in stored.items()
                              if isinstance(v, int | float)})
        note = "" if links else "this pairs run stored no per-link figures (only each node's median)"
        nodes = sorted(set(values) | {n for link in links for n in link}, key=_by_name)
        slow_nodes = sorted((n for n, v in values.items() if v["verdict"] == "slow"), key=_by_name)
        blamed_links = {f.subject for f in judge_pairs({k: v for k, v in links.items() if k[0] != k[1]})
                        if f.kind == "link"}
        gbps = [[links.get((a, b)) for b in nodes] for a in nodes]
        slow = [[(a, b) in links and (f"{a}->{b}" in blamed_links or a in slow_nodes or b in slow_nodes)
                 for b in nodes] for a in nodes]
        return {"job_id": job_id, "ts": max(r.ts for r in rows), "backend": rows[0].backend,
                "source": "store", "note": note, "nodes": nodes, "gbps": gbps if links else None,
                "slow": slow if links else None, "node_values": values, "slow_nodes": slow_nodes}


def _by_name(node: str) -> tuple[int, str]:
    """``tfh2`` before ``tfh10``: shorter names first, then alphabetical."""
    return (len(node), node)

"""Probe results in the job database: one ``probe_results`` row per node per probe run (migration 3).

A row holds the node's headline number of that run (all-reduce busbw of the group it was in, its median
pair bandwidth, its matmul TFLOP/s), whether the run judged it slow, and a little context. Reading a node's
rows back in time order shows it getting worse (``node_history``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from trainfleet.health.probes.records import pair_matrix
from trainfleet.store import schema as t
from trainfleet.store.db import run_read, run_write

if TYPE_CHECKING:
    from trainfleet.health.probes.run import ProbeReport
    from trainfleet.store import Store

OK, SLOW = "ok", "slow"


@dataclass(frozen=True)
class ProbeResultRow:
    """One node's result of one probe run: ``metric`` = ``value``, judged ``verdict`` (ok / slow)."""

    job_id: str
    ts: float
    probe: str
    backend: str
    node: str
    metric: str
    value: float
    verdict: str
    data: dict[str, Any]


def save_results(store: Store, rows: Sequence[ProbeResultRow]) -> None:
    """Insert ``rows`` in one transaction."""
    if not rows:
        return
    values = [{"job_id": r.job_id, "ts": r.ts, "probe": r.probe, "backend": r.backend, "node": r.node,
               "metric": r.metric, "value": float(r.value), "verdict": r.verdict, "data": r.data}
              for r in rows]

    def write(conn: Connection) -> None:
        conn.execute(sa.insert(t.probe_results), values)

    run_write(store.engine, write)


def rows_of(report: ProbeReport, *, ts: float | None = None) -> list[ProbeResultRow]:
    """One row per node of ``report``: its headline value, ``slow`` when a finding blames it."""
    blamed = {f.subject for f in report.findings if f.kind == "node"}
    for f in report.findings:
        if f.kind == "group":
            blamed.update(f.subject.split(","))
    now = time.time() if ts is None else ts
    links: dict[str, dict[str, float]] = defaultdict(dict)  # pairs: each node's outgoing GB/s by peer
    if report.kind == "pairs":
        for (src, dst), gbps in pair_matrix(report.records).items():
            if src != dst:
                links[src][dst] = gbps

    def data(node: str) -> dict[str, Any]:
        extra = {"links": links.get(node, {})} if report.kind == "pairs" else {}
        return {"state": report.state, "nodes": len(set(report.nodes)), **extra}

    return [
        ProbeResultRow(job_id=report.job_id, ts=now, probe=report.kind, backend=report.backend, node=node,
                       metric=metric, value=value, verdict=SLOW if node in blamed else OK, data=data(node))
        for node, (metric, value) in sorted(report.node_values().items())
    ]


def save_report(store: Store, report: ProbeReport) -> list[ProbeResultRow]:
    """Store each node's result of a finished probe job; returns the rows written."""
    rows = rows_of(report)
    save_results(store, rows)
    return rows


def node_history(store: Store, node: str, *, metric: str | None = None,
                 limit: int = 100) -> list[ProbeResultRow]:
    """The newest ``limit`` results of ``node`` (of ``metric`` when given), oldest first."""
    query = sa.select(t.probe_results).where(t.probe_results.c.node == node)
    if metric is not None:
        query = query.where(t.probe_results.c.metric == metric)
    query = query.order_by(t.probe_results.c.ts.desc(), t.probe_results.c.id.desc()).limit(limit)

    def read(conn: Connection) -> list[ProbeResultRow]:
        return [_row(r) for r in conn.execute(query)]

    return list(reversed(run_read(store.engine, read)))


def job_results(store: Store, job_ids: Iterable[str]) -> list[ProbeResultRow]:
    """Every stored result of the given probe jobs, by node."""
    ids = list(job_ids)
    query = sa.select(t.probe_results).where(t.probe_results.c.job_id.in_(ids)).order_by(
        t.probe_results.c.node, t.probe_results.c.id)

    def read(conn: Connection) -> list[ProbeResultRow]:
        return [_row(r) for r in conn.execute(query)]

    return run_read(store.engine, read) if ids else []


def _row(r: Any) -> ProbeResultRow:
    return ProbeResultRow(job_id=r.job_id, ts=r.ts, probe=r.probe, backend=r.backend, node=r.node,
                          metric=r.metric, value=r.value, verdict=r.verdict, data=dict(r.data or {}))

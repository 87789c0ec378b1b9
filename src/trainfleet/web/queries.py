"""Read-only batch queries the dashboard needs beyond the Store API (one query for many jobs, not one each).

Portable SQLAlchemy Core over the store's tables; nothing here writes. ``step goodput`` is defined here:
the share of executed training steps that were not thrown away by a restart,
``(last step reached - first step + 1) / sum over attempts of (steps that attempt executed)``, read from
rank 0's reported metrics; 1.0 for a job that never repeated a step, None before any report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from trainfleet.spec.state import JobState
from trainfleet.store import MetricRow, Store
from trainfleet.store import schema as t
from trainfleet.store.db import run_read

THROUGHPUT_KEYS = ("tokens_per_s", "samples_per_s", "throughput")


def latest_for_jobs(store: Store, job_ids: Sequence[str]) -> dict[str, dict[int, MetricRow]]:
    """For each job, its ranks' newest metric rows of its latest reporting attempt (``Store.latest_metrics``
    for many jobs in one query)."""
    if not job_ids:
        return {}
    m = t.metrics
    last = (sa.select(m.c.job_id, sa.func.max(m.c.attempt).label("attempt"))
            .where(m.c.job_id.in_(list(job_ids))).group_by(m.c.job_id).subquery())
    newest = (sa.select(sa.func.max(m.c.id))
              .join(last, sa.and_(m.c.job_id == last.c.job_id, m.c.attempt == last.c.attempt))
              .group_by(m.c.job_id, m.c.rank))
    query = sa.select(m.c.job_id, m.c.rank, m.c.step, m.c.ts, m.c.data).where(m.c.id.in_(newest))
    out: dict[str, dict[int, MetricRow]] = defaultdict(dict)
    for r in run_read(store.engine, lambda c: c.execute(query).all()):
        out[r.job_id][r.rank] = MetricRow(rank=r.rank, step=r.step, ts=r.ts, values=dict(r.data or {}))
    return dict(out)


def goodput_for_jobs(store: Store, job_ids: Sequence[str]) -> dict[str, float]:
    """Step goodput (see the module docstring) of each job that has rank-0 metrics."""
    if not job_ids:
        return {}
    m = t.metrics
    query = (sa.select(m.c.job_id, m.c.attempt, sa.func.min(m.c.step).label("lo"),
                       sa.func.max(m.c.step).label("hi"))
             .where(m.c.job_id.in_(list(job_ids)), m.c.rank == 0).group_by(m.c.job_id, m.c.attempt))
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in run_read(store.engine, lambda c: c.execute(query).all()):
        spans[r.job_id].append((int(r.lo), int(r.hi)))
    return {job: step_goodput(s) for job, s in spans.items()}


def step_goodput(spans: Sequence[tuple[int, int]]) -> float:
    """Useful / executed steps for per-attempt ``(first step, last step)`` spans."""
    executed = sum(hi - lo + 1 for lo, hi in spans)
    useful = max(hi for _, hi in spans) - min(lo for lo, _ in spans) + 1
    return min(1.0, useful / executed) if executed > 0 else 1.0


def throughput(latest: dict[int, MetricRow]) -> float | None:
    """Rank 0's (else the lowest rank's) reported throughput: the first of ``THROUGHPUT_KEYS`` it has."""
    if not latest:
        return None
    values = latest[min(latest)].values
    for key in THROUGHPUT_KEYS:
        value = values.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def counts_by_state(store: Store) -> dict[str, int]:
    """How many jobs are in each state (every state present, zero when none)."""
    query = sa.select(t.jobs.c.state, sa.func.count()).group_by(t.jobs.c.state)
    counts = {s.value: 0 for s in JobState}
    for state, n in run_read(store.engine, lambda c: c.execute(query).all()):
        counts[state] = int(n)
    return counts


def active_jobs(store: Store, *, limit: int) -> list[dict[str, Any]]:
    """Jobs not yet final (pending or running): ``{id, name, state, restarts}``, newest first."""
    j = t.jobs
    live = [s.value for s in JobState if not s.is_terminal]
    query = (sa.select(j.c.id, j.c.name, j.c.state, j.c.restarts).where(j.c.state.in_(live))
             .order_by(j.c.created_at.desc()).limit(limit))

    def read(conn: Connection) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(query).all()]

    return run_read(store.engine, read)

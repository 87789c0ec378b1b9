"""Read-only batch queries the dashboard needs beyond the Store API (one query for many jobs, not one each).

Portable SQLAlchemy Core over the store's tables; nothing here writes. Goodput has one definition,
``trainfleet.supervise.goodput.compute`` (what ``trainfleet status`` prints): ``goodput_for_jobs`` only
loads the events it reads for many jobs in one query and hands each job's to it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from trainfleet.spec.state import JobState
from trainfleet.store import MetricRow, Store
from trainfleet.store import schema as t
from trainfleet.store.db import run_read
from trainfleet.supervise.goodput import KINDS as GOODPUT_KINDS
from trainfleet.supervise.goodput import compute as compute_goodput

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


@dataclass(frozen=True)
class JobTimes:
    """What goodput needs of a job besides its events: its id and when it started and ended."""

    id: str
    started_at: float | None
    ended_at: float | None


def goodput_for_jobs(store: Store, jobs: Sequence[JobTimes], *, now: float) -> dict[str, dict[str, Any]]:
    """The ``goodput`` object of ``trainfleet status --json`` for each job, the events of all of them read
    in one query (only the kinds ``goodput.compute`` reads, in the order they were added)."""
    if not jobs:
        return {}
    e = t.events
    query = (sa.select(e.c.job_id, e.c.kind, e.c.ts, e.c.attempt, e.c.data)
             .where(e.c.job_id.in_([j.id for j in jobs]), e.c.kind.in_(GOODPUT_KINDS)).order_by(e.c.id))
    events: dict[str, list[Any]] = defaultdict(list)
    for r in run_read(store.engine, lambda c: c.execute(query).all()):
        events[r.job_id].append(r)
    return {j.id: compute_goodput(events.get(j.id, []), started_at=j.started_at, ended_at=j.ended_at,
                                  now=now).to_dict() for j in jobs}


def goodput_ratio(goodput: dict[str, Any] | None) -> float | None:
    """The ``ratio`` of a goodput object (None when the job has not started)."""
    return None if goodput is None else goodput.get("ratio")


def throughput(latest: dict[int, MetricRow], keys: Sequence[str] = THROUGHPUT_KEYS) -> float | None:
    """Rank 0's (else the lowest rank's) reported throughput: the first of ``keys`` it has (pass
    ``("step_time_s",)`` for its step time)."""
    if not latest:
        return None
    values = latest[min(latest)].values
    for key in keys:
        value = values.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def counts_by_state(store: Store, table: sa.Table = t.jobs,
                    states: Iterable[StrEnum] = JobState) -> dict[str, int]:
    """How many rows of ``table`` (jobs, or nodes) are in each of ``states`` (all present, zero when none)."""
    query = sa.select(table.c.state, sa.func.count()).group_by(table.c.state)
    counts = {s.value: 0 for s in states}
    for state, n in run_read(store.engine, lambda c: c.execute(query).all()):
        counts[state] = int(n)
    return counts


def active_jobs(store: Store, *, limit: int) -> list[dict[str, Any]]:
    """Jobs not yet final (pending or running): ``{id, name, state, restarts, started_at, ended_at}``,
    newest first."""
    j = t.jobs
    live = [s.value for s in JobState if not s.is_terminal]
    query = (sa.select(j.c.id, j.c.name, j.c.state, j.c.restarts, j.c.started_at, j.c.ended_at)
             .where(j.c.state.in_(live))
             .order_by(j.c.created_at.desc()).limit(limit))

    def read(conn: Connection) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(query).all()]

    return run_read(store.engine, read)

"""Node history across jobs: which nodes were blamed for failures, which are suspect or quarantined.

A node is named by its backend (``local-3`` for an agent slot of the local backend, a host name on
Slurm). Every blame is a ``node_events`` row; the ``nodes`` row holds the current verdict:

- ``suspect`` after any blame (the supervisor avoids it while a healthy node is available),
- ``quarantined`` once blamed in ``quarantine_after`` different jobs (never used until released),
- ``healthy`` again after ``release_node`` (history is kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from trainfleet.errors import StoreError
from trainfleet.store import schema as t
from trainfleet.store.db import run_read, run_write

QUARANTINE_AFTER_JOBS = 3


class NodeState(StrEnum):
    """The verdict on a node."""

    HEALTHY = "healthy"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class NodeRecord:
    """A node's current verdict: state, how often it was blamed, the last reason and job."""

    name: str
    state: NodeState
    blames: int
    last_reason: str | None
    last_job_id: str | None
    updated_at: float


@dataclass(frozen=True)
class NodeEventRecord:
    """One line of a node's history: ``blamed``, ``quarantined`` or ``released``."""

    id: int
    node: str
    ts: float
    kind: str
    job_id: str | None
    attempt: int | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """The line as JSON for `trainfleet nodes --json` and the dashboard."""
        return {"ts": self.ts, "kind": self.kind, "job_id": self.job_id, "attempt": self.attempt,
                "reason": self.reason}


class NodeHistory:
    """Node queries of ``Store`` (mixed in; needs ``self.engine``)."""

    engine: Engine

    def blame_node(self, name: str, *, job_id: str, attempt: int | None, reason: str,
                   quarantine_after: int = QUARANTINE_AFTER_JOBS) -> NodeRecord:
        """Record that ``name`` was blamed for a failure; it becomes suspect, or quarantined once blamed in
        ``quarantine_after`` different jobs. Returns the new verdict."""
        now = time.time()

        def write(conn: Connection) -> None:
            conn.execute(sa.insert(t.node_events).values(node=name, ts=now, kind="blamed", job_id=job_id,
                                                         attempt=attempt, reason=reason))
            row = conn.execute(sa.select(t.nodes).where(t.nodes.c.name == name)).first()
            since = _last_release_id(conn, name)
            jobs = conn.execute(sa.select(sa.func.count(sa.distinct(t.node_events.c.job_id))).where(
                t.node_events.c.node == name, t.node_events.c.kind == "blamed",
                t.node_events.c.id > since)).scalar_one()
            quarantine = jobs >= quarantine_after
            state = NodeState.QUARANTINED if quarantine else NodeState.SUSPECT
            if row is not None and row.state == NodeState.QUARANTINED.value:
                state = NodeState.QUARANTINED
            values = {"state": state.value, "last_reason": reason, "last_job_id": job_id, "updated_at": now}
            if row is None:
                conn.execute(sa.insert(t.nodes).values(name=name, blames=1, **values))
            else:
                conn.execute(sa.update(t.nodes).where(t.nodes.c.name == name)
                             .values(blames=row.blames + 1, **values))
            if quarantine and (row is None or row.state != NodeState.QUARANTINED.value):
                conn.execute(sa.insert(t.node_events).values(
                    node=name, ts=now, kind="quarantined", job_id=job_id, attempt=attempt,
                    reason=f"blamed in {jobs} jobs (threshold {quarantine_after})"))

        run_write(self.engine, write, retry_integrity=True)
        node = self.node(name)
        assert node is not None
        return node

    def release_node(self, name: str, *, reason: str = "released by user") -> NodeRecord:
        """Make a known node healthy again (its history stays); ``StoreError`` for an unknown node."""
        now = time.time()

        def write(conn: Connection) -> int:
            done = conn.execute(sa.update(t.nodes).where(t.nodes.c.name == name).values(
                state=NodeState.HEALTHY.value, updated_at=now)).rowcount
            if done:
                conn.execute(sa.insert(t.node_events).values(node=name, ts=now, kind="released",
                                                             reason=reason))
            return done

        if not run_write(self.engine, write):
            known = ", ".join(n.name for n in self.nodes()) or "none"
            raise StoreError(f"unknown node {name!r} (known: {known})")
        node = self.node(name)
        assert node is not None
        return node

    def node(self, name: str) -> NodeRecord | None:
        """The verdict on one node, or None if it was never blamed."""
        rows = run_read(self.engine, lambda c: c.execute(
            sa.select(t.nodes).where(t.nodes.c.name == name)).all())
        return _node(rows[0]) if rows else None

    def nodes(self) -> list[NodeRecord]:
        """Every node ever blamed, by name."""
        rows = run_read(self.engine, lambda c: c.execute(sa.select(t.nodes).order_by(t.nodes.c.name)).all())
        return [_node(r) for r in rows]

    def node_events(self, name: str | None = None, *, limit: int = 200) -> list[NodeEventRecord]:
        """History lines (of one node, or all), oldest first, the newest ``limit``."""
        query = sa.select(t.node_events).order_by(t.node_events.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(t.node_events.c.node == name)
        rows = run_read(self.engine, lambda c: c.execute(query).all())
        return [_node_event(r) for r in reversed(rows)]

    def recent_node_events(self, names: list[str], per_node: int) -> dict[str, list[NodeEventRecord]]:
        """The newest ``per_node`` history lines of each node in ``names``, oldest first (one query)."""
        if not names:
            return {}
        e = t.node_events
        newest = sa.func.row_number().over(partition_by=e.c.node, order_by=e.c.id.desc()).label("newest")
        ranked = sa.select(*e.c, newest).where(e.c.node.in_(names)).subquery()
        query = sa.select(ranked).where(ranked.c.newest <= per_node).order_by(ranked.c.node, ranked.c.id)
        out: dict[str, list[NodeEventRecord]] = {}
        for r in run_read(self.engine, lambda c: c.execute(query).all()):
            out.setdefault(r.node, []).append(_node_event(r))
        return out


def _last_release_id(conn: Connection, name: str) -> int:
    last = conn.execute(sa.select(sa.func.max(t.node_events.c.id)).where(
        t.node_events.c.node == name, t.node_events.c.kind == "released")).scalar()
    return int(last or 0)


def _node(r: sa.Row[Any]) -> NodeRecord:
    return NodeRecord(name=r.name, state=NodeState(r.state), blames=r.blames, last_reason=r.last_reason,
                      last_job_id=r.last_job_id, updated_at=r.updated_at)


def _node_event(r: sa.Row[Any]) -> NodeEventRecord:
    return NodeEventRecord(id=r.id, node=r.node, ts=r.ts, kind=r.kind, job_id=r.job_id, attempt=r.attempt,
                           reason=r.reason)

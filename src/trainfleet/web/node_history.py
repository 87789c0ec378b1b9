"""The fleet page's node history: nodes the supervisor blamed (``store/nodes.py``), read in batches.

``Store.nodes()`` / ``Store.node_events()`` read one node at a time; the page shows up to ``FLAGGED_MAX``
suspect and quarantined nodes with their newest ``EVENTS_PER_NODE`` history lines, so these read-only
queries fetch all of them at once (one query for the nodes, one for their events). Every change of a
node's verdict (a blame, a quarantine, a release) adds a ``node_events`` row, so ``NodeHistorySource``
re-reads only when the newest event id moved. Releasing a node is ``Store.release_node``, the call
``trainfleet nodes release`` makes.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from trainfleet.store import Store
from trainfleet.store import schema as t
from trainfleet.store.db import run_read
from trainfleet.store.nodes import NodeState
from trainfleet.web.queries import counts_by_state

FLAGGED = (NodeState.SUSPECT.value, NodeState.QUARANTINED.value)
FLAGGED_MAX = 200
EVENTS_PER_NODE = 5


class NodeHistorySource:
    """``{"counts", "nodes"}`` (``node_counts``, ``flagged_nodes``), cached until a node event is added."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._key: int | None = None
        self._doc: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        """The counts by state and the flagged nodes with their recent history (see the module doc)."""
        query = sa.select(sa.func.max(t.node_events.c.id))
        key = int(run_read(self.store.engine, lambda c: c.execute(query).scalar()) or 0)
        with self._lock:
            if key != self._key:
                self._doc = {"counts": node_counts(self.store), "nodes": flagged_nodes(self.store)}
                self._key = key
            return self._doc


def node_counts(store: Store) -> dict[str, int]:
    """How many nodes with a history are in each state (every state present, zero when none)."""
    return counts_by_state(store, t.nodes, NodeState)


def flagged_nodes(store: Store, *, limit: int = FLAGGED_MAX,
                  events: int = EVENTS_PER_NODE) -> list[dict[str, Any]]:
    """Suspect and quarantined nodes, quarantined first then most recently blamed: ``{name, state, blames,
    last_reason, last_job_id, updated_at, history: [{ts, kind, job_id, attempt, reason}]}`` with the
    newest ``events`` history lines of each, oldest first."""
    n = t.nodes
    quarantined_first = sa.case((n.c.state == NodeState.QUARANTINED.value, 0), else_=1)
    query = (sa.select(n).where(n.c.state.in_(FLAGGED))
             .order_by(quarantined_first, n.c.updated_at.desc(), n.c.name).limit(limit))
    rows = run_read(store.engine, lambda c: c.execute(query).all())
    history = store.recent_node_events([r.name for r in rows], events)
    return [{"name": r.name, "state": r.state, "blames": r.blames, "last_reason": r.last_reason,
             "last_job_id": r.last_job_id, "updated_at": r.updated_at,
             "history": [e.to_dict() for e in history.get(r.name, [])]} for r in rows]


def node_doc(store: Store, name: str, *, events: int = 50) -> dict[str, Any] | None:
    """One node's verdict and its newest ``events`` history lines; None for a node never blamed."""
    record = store.node(name)
    if record is None:
        return None
    return {"name": record.name, "state": record.state.value, "blames": record.blames,
            "last_reason": record.last_reason, "last_job_id": record.last_job_id,
            "updated_at": record.updated_at,
            "history": [e.to_dict() for e in store.node_events(name, limit=events)]}

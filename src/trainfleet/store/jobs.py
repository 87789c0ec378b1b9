"""The job repository: every read and write of jobs, attempts, ranks, events and metrics.

All SQL is portable SQLAlchemy Core. Writes go through ``run_write`` (one transaction each, retried while
the database is busy), so several CLI processes and a supervisor can share one database.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from trainfleet.errors import AmbiguousJobId, JobNotFound, StoreError
from trainfleet.spec.model import JobSpec
from trainfleet.spec.state import JobState
from trainfleet.store import schema as t
from trainfleet.store.db import run_read, run_write, trainfleet_home
from trainfleet.store.nodes import NodeHistory
from trainfleet.store.records import AttemptRecord, EventRecord, JobRecord, MetricRow, RankRecord

MIN_PREFIX = 4
_HEX = re.compile(r"^[0-9a-f]+$")


def new_job_id() -> str:
    """A fresh job id: 8 lowercase hex characters from a uuid4."""
    return uuid.uuid4().hex[:8]


class Store(NodeHistory):
    """The job database. Open with ``trainfleet.store.open_store``; close with ``close()`` or ``with``.

    Promises: records come back as frozen dataclasses with ``JobState`` states; timestamps are float epoch
    seconds; a missing or ambiguous job id raises ``JobNotFound`` (``AmbiguousJobId``); any other database
    failure raises ``StoreError``. Node history (suspect / quarantined nodes) comes from ``NodeHistory``.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def url(self) -> str:
        """The database URL, with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- jobs ---------------------------------------------------------------------------------------

    def create_job(self, spec: JobSpec, *, run_dir: str | None = None, job_id: str | None = None) -> str:
        """Record a new pending job and return its id.

        ``run_dir`` may contain ``{job_id}``; when omitted it is ``$TRAINFLEET_HOME/runs/<id>``.
        Pass ``job_id`` (from ``new_job_id()``) to choose the id yourself.
        """
        spec_json = spec.model_dump(mode="json")
        now = time.time()

        def insert(conn: Connection) -> str:
            jid = job_id or new_job_id()
            exists = conn.execute(sa.select(t.jobs.c.id).where(t.jobs.c.id == jid)).first()
            if exists is not None:
                if job_id is not None:
                    raise StoreError(f"job id {job_id} is already taken")
                return ""
            path = (run_dir or str(trainfleet_home() / "runs" / "{job_id}")).replace("{job_id}", jid)
            conn.execute(sa.insert(t.jobs).values(
                id=jid, name=spec.name, state=JobState.PENDING.value, reason=None, restarts=0,
                spec=spec_json, run_dir=path, backend=spec.backend, created_at=now))
            return jid

        for _ in range(10):
            jid = run_write(self.engine, insert, retry_integrity=job_id is None)
            if jid:
                return jid
        raise StoreError("could not find a free job id")

    def get_job(self, job_id_or_prefix: str) -> JobRecord:
        """The job with this id, or the only one whose id starts with this prefix (>= 4 characters)."""
        key = job_id_or_prefix.strip().lower()

        def read(conn: Connection) -> list[sa.Row[Any]]:
            exact = conn.execute(sa.select(t.jobs).where(t.jobs.c.id == key)).all()
            if exact or len(key) < MIN_PREFIX or not _HEX.match(key):
                return list(exact)
            query = sa.select(t.jobs).where(t.jobs.c.id.like(key + "%")).order_by(t.jobs.c.id).limit(6)
            return list(conn.execute(query).all())

        rows = run_read(self.engine, read)
        if not rows:
            raise JobNotFound(job_id_or_prefix)
        if len(rows) > 1:
            raise AmbiguousJobId(job_id_or_prefix, [r.id for r in rows])
        return _job(rows[0])

    def list_jobs(self, *, limit: int = 50, state: JobState | None = None) -> list[JobRecord]:
        """Jobs, newest first, at most ``limit``, optionally only those in ``state``."""
        query = sa.select(t.jobs).order_by(t.jobs.c.created_at.desc(), t.jobs.c.id).limit(limit)
        if state is not None:
            query = query.where(t.jobs.c.state == JobState(state).value)
        return [_job(r) for r in run_read(self.engine, lambda c: c.execute(query).all())]

    def update_job(
        self, job_id: str, *, state: JobState | None = None, reason: str | None = None,
        restarts: int | None = None, supervisor_pid: int | None = None, supervisor_addr: str | None = None,
        started_at: float | None = None, ended_at: float | None = None, run_dir: str | None = None,
    ) -> None:
        """Set the given (non-None) fields of a job; ``JobNotFound`` when there is no such job."""
        values = _given(state=_state(state), reason=reason, restarts=restarts, supervisor_pid=supervisor_pid,
                        supervisor_addr=supervisor_addr, started_at=started_at, ended_at=ended_at,
                        run_dir=run_dir)
        if not values:
            self.get_job(job_id)
            return

        def update(conn: Connection) -> int:
            return conn.execute(sa.update(t.jobs).where(t.jobs.c.id == job_id).values(**values)).rowcount

        if run_write(self.engine, update) == 0:
            raise JobNotFound(job_id)

    def reopen_job(self, job_id: str, *, restarts: int) -> None:
        """Make a final job pending again for attempt ``restarts`` (resume): its old reason and end go."""
        values = {"state": JobState.PENDING.value, "restarts": restarts, "reason": None, "ended_at": None}

        def update(conn: Connection) -> int:
            return conn.execute(sa.update(t.jobs).where(t.jobs.c.id == job_id).values(**values)).rowcount

        if run_write(self.engine, update) == 0:
            raise JobNotFound(job_id)

    # --- attempts and ranks -------------------------------------------------------------------------

    def start_attempt(self, job_id: str, attempt: int, *, master_addr: str, master_port: int,
                      started_at: float) -> None:
        """Record attempt ``attempt`` (0 first) as running; recording the same attempt again updates it."""
        values = {"state": JobState.RUNNING.value, "master_addr": master_addr, "master_port": master_port,
                  "started_at": started_at}
        key = {"job_id": job_id, "attempt": attempt}
        self._upsert(t.attempts, key, values)

    def end_attempt(self, job_id: str, attempt: int, *, state: JobState, reason: str | None,
                    ended_at: float) -> None:
        """Record how attempt ``attempt`` ended."""
        values = {"state": JobState(state).value, "reason": reason, "ended_at": ended_at}
        self._upsert(t.attempts, {"job_id": job_id, "attempt": attempt}, values)

    def upsert_rank(
        self, job_id: str, attempt: int, rank: int, *, node_rank: int, local_rank: int,
        host: str | None = None, pid: int | None = None, state: JobState | None = None,
        exit_code: int | None = None, signal: int | None = None, started_at: float | None = None,
        ended_at: float | None = None, log_out: str | None = None, log_err: str | None = None,
    ) -> None:
        """Insert or update one rank of one attempt; only non-None keyword values are written."""
        values = _given(node_rank=node_rank, local_rank=local_rank, host=host, pid=pid, state=_state(state),
                        exit_code=exit_code, signal=signal, started_at=started_at, ended_at=ended_at,
                        log_out=log_out, log_err=log_err)
        self._upsert(t.ranks, {"job_id": job_id, "attempt": attempt, "rank": rank}, values,
                     insert_defaults={"state": JobState.PENDING.value})

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        """Every attempt of a job, oldest first."""
        query = sa.select(t.attempts).where(t.attempts.c.job_id == job_id).order_by(t.attempts.c.attempt)
        return [_attempt(r) for r in run_read(self.engine, lambda c: c.execute(query).all())]

    def ranks(self, job_id: str, attempt: int | None = None) -> list[RankRecord]:
        """Ranks of one attempt (default: the latest attempt that has ranks), by rank."""

        def read(conn: Connection) -> list[sa.Row[Any]]:
            which = attempt
            if which is None:
                which = conn.execute(sa.select(sa.func.max(t.ranks.c.attempt))
                                     .where(t.ranks.c.job_id == job_id)).scalar()
                if which is None:
                    return []
            query = (sa.select(t.ranks).where(t.ranks.c.job_id == job_id, t.ranks.c.attempt == which)
                     .order_by(t.ranks.c.rank))
            return list(conn.execute(query).all())

        return [_rank(r) for r in run_read(self.engine, read)]

    # --- events and metrics -------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: str, message: str, *, attempt: int | None = None,
                  node: str | int | None = None, rank: int | None = None,
                  data: dict[str, Any] | None = None, ts: float | None = None) -> None:
        """Append an event; ``node`` is stored as text (a node rank or a host name)."""
        row = {"job_id": job_id, "ts": time.time() if ts is None else ts, "kind": kind, "message": message,
               "attempt": attempt, "node": None if node is None else str(node), "rank": rank, "data": data}
        run_write(self.engine, lambda c: c.execute(sa.insert(t.events).values(**row)))

    def events(self, job_id: str, *, kinds: Sequence[str] | None = None) -> list[EventRecord]:
        """Events of a job in the order they were added, optionally only some kinds."""
        query = sa.select(t.events).where(t.events.c.job_id == job_id).order_by(t.events.c.id)
        if kinds:
            query = query.where(t.events.c.kind.in_(list(kinds)))
        return [_event(r) for r in run_read(self.engine, lambda c: c.execute(query).all())]

    def add_metrics(self, job_id: str, attempt: int, rows: Sequence[MetricRow]) -> None:
        """Append reported metrics of one attempt in one transaction."""
        if not rows:
            return
        params = [{"job_id": job_id, "attempt": attempt, "rank": r.rank, "step": int(r.step), "ts": r.ts,
                   "loss": _float_or_none(r.values.get("loss")), "data": dict(r.values)} for r in rows]
        run_write(self.engine, lambda c: c.execute(sa.insert(t.metrics), params))

    def latest_metrics(self, job_id: str) -> dict[int, MetricRow]:
        """For each rank, its newest metric row of the latest attempt that reported any."""

        def read(conn: Connection) -> list[sa.Row[Any]]:
            last = conn.execute(sa.select(sa.func.max(t.metrics.c.attempt))
                                .where(t.metrics.c.job_id == job_id)).scalar()
            if last is None:
                return []
            newest = (sa.select(sa.func.max(t.metrics.c.id))
                      .where(t.metrics.c.job_id == job_id, t.metrics.c.attempt == last)
                      .group_by(t.metrics.c.rank))
            return list(conn.execute(sa.select(t.metrics).where(t.metrics.c.id.in_(newest))).all())

        return {r.rank: _metric(r) for r in run_read(self.engine, read)}

    def metrics(self, job_id: str, *, attempt: int | None = None, rank: int | None = None,
                since_id: int = 0, limit: int = 10_000) -> list[tuple[int, int, MetricRow]]:
        """Metric rows as ``(id, attempt, row)`` in insertion order: for curves and incremental polling."""
        query = (sa.select(t.metrics).where(t.metrics.c.job_id == job_id, t.metrics.c.id > since_id)
                 .order_by(t.metrics.c.id).limit(limit))
        if attempt is not None:
            query = query.where(t.metrics.c.attempt == attempt)
        if rank is not None:
            query = query.where(t.metrics.c.rank == rank)
        rows = run_read(self.engine, lambda c: c.execute(query).all())
        return [(r.id, r.attempt, _metric(r)) for r in rows]

    def count(self, table: str, job_id: str) -> int:
        """How many rows of ``events``, ``metrics``, ``attempts`` or ``ranks`` belong to a job."""
        tables = {"events": t.events, "metrics": t.metrics, "attempts": t.attempts, "ranks": t.ranks}
        if table not in tables:
            raise StoreError(f"cannot count {table!r}; one of {', '.join(tables)}")
        tab = tables[table]
        query = sa.select(sa.func.count()).select_from(tab).where(tab.c.job_id == job_id)
        return int(run_read(self.engine, lambda c: c.execute(query).scalar_one()))

    # --- helpers ------------------------------------------------------------------------------------

    def _upsert(self, table: sa.Table, key: dict[str, Any], values: dict[str, Any],
                insert_defaults: dict[str, Any] | None = None) -> None:
        # Portable insert-or-update: UPDATE, and INSERT when nothing matched. A racing insert by another
        # writer (possible on PostgreSQL) raises IntegrityError and run_write retries the transaction.
        where = [table.c[k] == v for k, v in key.items()]

        def upsert(conn: Connection) -> None:
            if values and conn.execute(sa.update(table).where(*where).values(**values)).rowcount:
                return
            if not values and conn.execute(sa.select(*table.primary_key.columns).where(*where)).first():
                return
            if "job_id" in key and conn.execute(
                    sa.select(t.jobs.c.id).where(t.jobs.c.id == key["job_id"])).first() is None:
                raise JobNotFound(key["job_id"])
            conn.execute(sa.insert(table).values(**{**(insert_defaults or {}), **values, **key}))

        run_write(self.engine, upsert, retry_integrity=True)


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _state(state: JobState | str | None) -> str | None:
    return None if state is None else JobState(state).value


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _job(r: sa.Row[Any]) -> JobRecord:
    return JobRecord(id=r.id, name=r.name, state=JobState(r.state), reason=r.reason, restarts=r.restarts,
                     spec=dict(r.spec), run_dir=r.run_dir, backend=r.backend, created_at=r.created_at,
                     started_at=r.started_at, ended_at=r.ended_at, supervisor_pid=r.supervisor_pid,
                     supervisor_addr=r.supervisor_addr)


def _attempt(r: sa.Row[Any]) -> AttemptRecord:
    return AttemptRecord(job_id=r.job_id, attempt=r.attempt, state=JobState(r.state), reason=r.reason,
                         master_addr=r.master_addr, master_port=r.master_port, started_at=r.started_at,
                         ended_at=r.ended_at)


def _rank(r: sa.Row[Any]) -> RankRecord:
    return RankRecord(job_id=r.job_id, attempt=r.attempt, rank=r.rank, node_rank=r.node_rank,
                      local_rank=r.local_rank, host=r.host, pid=r.pid, state=JobState(r.state),
                      exit_code=r.exit_code, signal=r.signal, started_at=r.started_at, ended_at=r.ended_at,
                      log_out=r.log_out, log_err=r.log_err)


def _event(r: sa.Row[Any]) -> EventRecord:
    return EventRecord(id=r.id, job_id=r.job_id, ts=r.ts, kind=r.kind, message=r.message, attempt=r.attempt,
                       node=r.node, rank=r.rank, data=r.data)


def _metric(r: sa.Row[Any]) -> MetricRow:
    return MetricRow(rank=r.rank, step=r.step, ts=r.ts, values=dict(r.data))


def open_store(url: str | None = None, *, migrate: bool = True) -> Store:
    """Open the job database at ``url`` (default ``$TRAINFLEET_DB_URL``, else SQLite in ``$TRAINFLEET_HOME``).

    Pending migrations are applied first (safe when several processes open it at once).
    """
    from trainfleet.store.db import default_db_url, make_engine
    from trainfleet.store.migrations import migrate as apply_migrations

    engine = make_engine(url or default_db_url())
    if migrate:
        try:
            apply_migrations(engine)
        except BaseException:
            engine.dispose()
            raise
    return Store(engine)


__all__ = ["Store", "new_job_id", "open_store"]

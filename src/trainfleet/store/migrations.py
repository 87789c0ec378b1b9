"""Numbered, versioned migrations of the job database, applied in order when a store is opened.

Each migration spells out its own DDL (it never reads ``schema.py``, which holds the *current* shape),
so version 1 always builds version 1 even after later versions change the tables. Applying is idempotent
and safe when several processes open the database at once: each step runs in one write transaction that
re-checks ``schema_version`` first (SQLite serialises with ``BEGIN IMMEDIATE``; PostgreSQL takes an
advisory transaction lock), and a racing ``CREATE`` is simply retried.

To change the schema: edit ``schema.py`` and append ``Migration(N + 1, "...", fn)`` to ``MIGRATIONS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from trainfleet.errors import StoreError
from trainfleet.store.db import run_write
from trainfleet.store.schema import SCHEMA_VERSION_TABLE

_MIGRATION_LOCK_KEY = 0x7472666C  # "trfl": PostgreSQL advisory lock id for migrations


@dataclass(frozen=True)
class Migration:
    """One schema step: ``version`` (1, 2, ...), what it does, and the function that does it."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _version_table(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        SCHEMA_VERSION_TABLE,
        md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.Float, nullable=False),
    )


def _v1_initial(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "jobs", md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("restarts", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("run_dir", sa.Text, nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("supervisor_pid", sa.Integer),
        sa.Column("supervisor_addr", sa.String(255)),
        sa.Index("ix_jobs_created_at", "created_at"),
        sa.Index("ix_jobs_state", "state"),
    )
    sa.Table(
        "attempts", md,
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("master_addr", sa.String(255)),
        sa.Column("master_port", sa.Integer),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
    )
    sa.Table(
        "ranks", md,
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("rank", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("node_rank", sa.Integer, nullable=False),
        sa.Column("local_rank", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("signal", sa.Integer),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("log_out", sa.Text),
        sa.Column("log_err", sa.Text),
    )
    sa.Table(
        "events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("node", sa.String(255)),
        sa.Column("rank", sa.Integer),
        sa.Column("data", sa.JSON),
        sa.Index("ix_events_job_id", "job_id", "id"),
    )
    sa.Table(
        "metrics", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("loss", sa.Float),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Index("ix_metrics_job_attempt_rank_step", "job_id", "attempt", "rank", "step"),
    )
    md.create_all(conn)


def _v2_node_history(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "nodes", md,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("blames", sa.Integer, nullable=False),
        sa.Column("last_reason", sa.Text),
        sa.Column("last_job_id", sa.String(32)),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    sa.Table(
        "node_events", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32)),
        sa.Column("attempt", sa.Integer),
        sa.Column("reason", sa.Text),
        sa.Index("ix_node_events_node", "node", "id"),
    )
    md.create_all(conn)


def _v3_probe_results(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "probe_results", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("probe", sa.String(32), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Index("ix_probe_results_node", "node", "metric", "ts"),
        sa.Index("ix_probe_results_job", "job_id"),
    )
    md.create_all(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, attempts, ranks, events, metrics", _v1_initial),
    Migration(2, "nodes and node_events: failure history, suspect and quarantined nodes", _v2_node_history),
    Migration(3, "probe_results: per-node probe measurements, for node history", _v3_probe_results),
)
LATEST_VERSION = MIGRATIONS[-1].version


def applied_versions(conn: Connection) -> set[int]:
    """Versions recorded in ``schema_version`` (empty when the table does not exist yet)."""
    if not sa.inspect(conn).has_table(SCHEMA_VERSION_TABLE):
        return set()
    table = _version_table(sa.MetaData())
    return {row[0] for row in conn.execute(sa.select(table.c.version))}


def migrate(engine: Engine, *, target: int = LATEST_VERSION) -> list[int]:
    """Apply every migration up to ``target`` that is not yet recorded; return the versions applied here.

    Raises ``StoreError`` when the database is newer than this trainfleet (a downgrade is never guessed).
    """
    applied_here: list[int] = []
    for migration in MIGRATIONS:
        if migration.version > target:
            break
        if _apply_one(engine, migration):
            applied_here.append(migration.version)
    return applied_here


def _apply_one(engine: Engine, migration: Migration) -> bool:
    def step(conn: Connection) -> bool:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        table = _version_table(sa.MetaData())
        table.create(conn, checkfirst=True)
        done = {row[0] for row in conn.execute(sa.select(table.c.version))}
        newer = [v for v in done if v > LATEST_VERSION]
        if newer:
            raise StoreError(
                f"the job database is at schema version {max(newer)}, newer than this trainfleet "
                f"supports ({LATEST_VERSION}); upgrade trainfleet"
            )
        if migration.version in done:
            return False
        migration.apply(conn)
        conn.execute(sa.insert(table).values(
            version=migration.version, description=migration.description, applied_at=time.time()))
        return True

    for _ in range(5):
        try:
            return run_write(engine, step, retry_integrity=True)
        except StoreError as err:
            # Another process created a table between our check and our CREATE: look again.
            if "already exists" not in str(err):
                raise
    raise StoreError(f"could not apply schema migration {migration.version}")


def schema_version(engine: Engine) -> int:
    """The highest applied migration version (0 for an empty database)."""
    with engine.connect() as conn:
        versions = applied_versions(conn)
    return max(versions, default=0)

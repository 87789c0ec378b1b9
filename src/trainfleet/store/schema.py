"""The current shape of the job database (SQLAlchemy Core tables the queries use).

Migrations in ``migrations.py`` build this shape step by step; a test checks that a freshly migrated
database matches these tables, so a column added here without a migration is caught.
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION_TABLE = "schema_version"

metadata = sa.MetaData()

schema_version = sa.Table(
    SCHEMA_VERSION_TABLE,
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
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

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("master_addr", sa.String(255)),
    sa.Column("master_port", sa.Integer),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
)

ranks = sa.Table(
    "ranks",
    metadata,
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

events = sa.Table(
    "events",
    metadata,
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

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    # `loss` is kept as a column as well as in `data` so curves and list views need no JSON parsing.
    sa.Column("loss", sa.Float),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_metrics_job_attempt_rank_step", "job_id", "attempt", "rank", "step"),
)

# --- migration 2: node history (suspect / quarantined nodes across jobs) -------------------------------
nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # healthy | suspect | quarantined
    sa.Column("blames", sa.Integer, nullable=False),
    sa.Column("last_reason", sa.Text),
    sa.Column("last_job_id", sa.String(32)),
    sa.Column("updated_at", sa.Float, nullable=False),
)

node_events = sa.Table(
    "node_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # blamed | quarantined | released
    sa.Column("job_id", sa.String(32)),
    sa.Column("attempt", sa.Integer),
    sa.Column("reason", sa.Text),
    sa.Index("ix_node_events_node", "node", "id"),
)

# --- migration 3: probe results per node per run (health/probes/store.py) ----------------------------------
probe_results = sa.Table(
    "probe_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("probe", sa.String(32), nullable=False),  # allreduce | pairs | compute | bisect | preflight
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),  # judge.METRICS
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),  # ok | slow
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_probe_results_node", "node", "metric", "ts"),
    sa.Index("ix_probe_results_job", "job_id"),
)

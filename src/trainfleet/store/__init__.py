"""The job database: ``open_store()`` returns a ``Store`` (SQLAlchemy Core, SQLite by default).

    from trainfleet.store import open_store, MetricRow
    with open_store() as store:
        job_id = store.create_job(spec)
"""

from __future__ import annotations

from trainfleet.store.db import default_db_url, trainfleet_home
from trainfleet.store.jobs import Store, new_job_id, open_store
from trainfleet.store.records import AttemptRecord, EventRecord, JobRecord, MetricRow, RankRecord

__all__ = [
    "AttemptRecord",
    "EventRecord",
    "JobRecord",
    "MetricRow",
    "RankRecord",
    "Store",
    "default_db_url",
    "new_job_id",
    "open_store",
    "trainfleet_home",
]

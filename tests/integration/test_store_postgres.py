"""The store on a real PostgreSQL beyond the portable tests of tests/unit/test_store.py (which run on both
SQLite and PostgreSQL): four processes writing at once, and the dashboard's queries."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from trainfleet.spec.model import JobSpec
from trainfleet.spec.state import JobState
from trainfleet.store import MetricRow, open_store

WRITERS = 4
BATCHES = 25
ROWS_PER_BATCH = 8


def _spec(name: str = "pg-job") -> JobSpec:
    return JobSpec(name=name, command=["python", "train.py"], nodes=2, procs_per_node=2)


def _writer(url: str, job_id: str, writer: int, start_at: float) -> int:
    with open_store(url) as store:
        while time.time() < start_at:  # line the processes up so their writes really overlap
            time.sleep(0.005)
        for batch in range(BATCHES):
            rows = [MetricRow(writer, batch * ROWS_PER_BATCH + i, time.time(), {"loss": float(i)})
                    for i in range(ROWS_PER_BATCH)]
            store.add_metrics(job_id, 0, rows)
            store.add_event(job_id, "progress", f"writer {writer} batch {batch}", rank=writer,
                            data={"writer": writer, "batch": batch})
            # every writer also races the others on the same rank row (insert-or-update)
            store.upsert_rank(job_id, 0, 0, node_rank=0, local_rank=0, pid=writer)
    return writer


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_concurrent_writers_lose_and_duplicate_nothing(pg_url: str) -> None:
    with open_store(pg_url) as store:
        job_id = store.create_job(_spec())
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with ctx.Pool(WRITERS) as pool:
        done = pool.starmap(_writer, [(pg_url, job_id, w, start_at) for w in range(WRITERS)])
    assert sorted(done) == list(range(WRITERS))
    with open_store(pg_url) as store:
        rows = store.metrics(job_id, limit=100_000)
        assert len(rows) == WRITERS * BATCHES * ROWS_PER_BATCH
        keys = [(row.rank, row.step) for _id, _attempt, row in rows]
        assert len(set(keys)) == len(keys)
        assert set(keys) == {(w, s) for w in range(WRITERS) for s in range(BATCHES * ROWS_PER_BATCH)}
        events = store.events(job_id, kinds=["progress"])
        pairs = [(e.data["writer"], e.data["batch"]) for e in events if e.data]
        assert sorted(pairs) == [(w, b) for w in range(WRITERS) for b in range(BATCHES)]
        assert len(store.ranks(job_id, 0)) == 1
        # each writer's own events keep their order
        for w in range(WRITERS):
            assert [b for ww, b in pairs if ww == w] == list(range(BATCHES))


def test_dashboard_queries_run_on_postgres(pg_url: str, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from trainfleet.web import create_app

    with open_store(pg_url) as store:
        job_id = store.create_job(_spec())
        store.update_job(job_id, state=JobState.RUNNING, restarts=1, started_at=time.time() - 10)
        store.add_metrics(job_id, 0, [MetricRow(0, s, float(s), {"loss": 1.0, "tokens_per_s": 5.0})
                                      for s in range(1, 11)])
        store.add_metrics(job_id, 1, [MetricRow(0, s, float(s), {"loss": 0.5}) for s in range(6, 21)])
        with TestClient(create_app(store, tmp_path, "t" * 43)) as client:
            (row,) = client.get("/api/jobs").json()["jobs"]
            assert row["step"] == 20 and row["goodput"]["ratio"] == 1.0  # no failure event: nothing lost
            assert client.get(f"/api/jobs/{job_id}").json()["latest"]["0"]["step"] == 20
            text = client.get("/metrics").text
            assert f'trainfleet_job_goodput_ratio{{job="{job_id}",name="pg-job"}} 1.0' in text

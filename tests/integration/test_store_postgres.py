"""The Store API against a real PostgreSQL: CRUD, migrations, and several processes writing at once."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import sqlalchemy as sa

from trainfleet.errors import AmbiguousJobId, JobNotFound
from trainfleet.spec.model import JobSpec
from trainfleet.spec.state import JobState
from trainfleet.store import MetricRow, open_store
from trainfleet.store.migrations import MIGRATIONS

WRITERS = 4
BATCHES = 25
ROWS_PER_BATCH = 8


def _spec(name: str = "pg-job") -> JobSpec:
    return JobSpec(name=name, command=["python", "train.py"], nodes=2, procs_per_node=2)


def test_crud_round_trip(pg_url: str) -> None:
    with open_store(pg_url) as store:
        assert store.engine.dialect.name == "postgresql"
        a = store.create_job(_spec("a"), run_dir="/runs/{job_id}")
        b = store.create_job(_spec("b"))
        job = store.get_job(a[:6])
        assert (job.id, job.name, job.state, job.run_dir) == (a, "a", JobState.PENDING, f"/runs/{a}")
        assert job.spec["procs_per_node"] == 2
        store.update_job(a, state=JobState.RUNNING, started_at=10.0, supervisor_pid=42)
        assert [j.id for j in store.list_jobs(state=JobState.RUNNING)] == [a]
        assert {j.id for j in store.list_jobs()} == {a, b}
        store.start_attempt(a, 0, master_addr="127.0.0.1", master_port=29500, started_at=11.0)
        store.upsert_rank(a, 0, 1, node_rank=0, local_rank=1, pid=7, state=JobState.RUNNING)
        store.upsert_rank(a, 0, 1, node_rank=0, local_rank=1, exit_code=3, state=JobState.FAILED)
        store.end_attempt(a, 0, state=JobState.FAILED, reason="rank 1 exited with code 3", ended_at=12.0)
        (rank,) = store.ranks(a)
        assert (rank.pid, rank.exit_code, rank.state) == (7, 3, JobState.FAILED)
        assert store.attempts(a)[0].reason == "rank 1 exited with code 3"
        store.add_event(a, "restart", "restarting", attempt=1, node=0, data={"cause": "exit 3"})
        assert store.events(a)[0].data == {"cause": "exit 3"} and store.events(a)[0].node == "0"
        store.add_metrics(a, 0, [MetricRow(0, 1, 1.0, {"loss": 3.5}), MetricRow(1, 1, 1.1, {"loss": 3.6})])
        store.add_metrics(a, 1, [MetricRow(0, 2, 2.0, {"loss": 3.0, "tokens_per_s": 900.0})])
        assert {r: m.step for r, m in store.latest_metrics(a).items()} == {0: 2}
        with pytest.raises(JobNotFound):
            store.get_job("deadbeef")
        with pytest.raises(JobNotFound):
            store.upsert_rank("deadbeef", 0, 0, node_rank=0, local_rank=0)
        store.create_job(_spec("c"), job_id="abcd0001")
        store.create_job(_spec("d"), job_id="abcd0002")
        with pytest.raises(AmbiguousJobId):
            store.get_job("abcd")


def _open_and_migrate(url: str) -> int:
    with open_store(url) as store, store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar_one())


def test_migrations_apply_once_even_when_raced(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WRITERS) as pool:
        versions = pool.map(_open_and_migrate, [pg_url] * WRITERS)
    assert versions == [MIGRATIONS[-1].version] * WRITERS
    with open_store(pg_url) as store, store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
        assert rows == [m.version for m in MIGRATIONS]
        tables = set(sa.inspect(conn).get_table_names())
    assert {"jobs", "attempts", "ranks", "events", "metrics", "schema_version"} <= tables


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
        store.update_job(job_id, state=JobState.RUNNING, restarts=1)
        store.add_metrics(job_id, 0, [MetricRow(0, s, float(s), {"loss": 1.0, "tokens_per_s": 5.0})
                                      for s in range(1, 11)])
        store.add_metrics(job_id, 1, [MetricRow(0, s, float(s), {"loss": 0.5}) for s in range(6, 21)])
        with TestClient(create_app(store, tmp_path, "t" * 43)) as client:
            (row,) = client.get("/api/jobs").json()["jobs"]
            assert row["step"] == 20 and row["goodput"] == pytest.approx(20 / 25)
            assert client.get(f"/api/jobs/{job_id}").json()["latest"]["0"]["step"] == 20
            text = client.get("/metrics").text
            assert f'trainfleet_job_goodput_ratio{{job="{job_id}",name="pg-job"}} 0.8' in text

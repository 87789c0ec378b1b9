"""The job database: CRUD through the Store API, migrations, and real concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from trainfleet.errors import AmbiguousJobId, JobNotFound, StoreError
from trainfleet.spec import JobSpec, JobState
from trainfleet.store import MetricRow, Store, open_store
from trainfleet.store.db import make_engine
from trainfleet.store.migrations import LATEST_VERSION, MIGRATIONS, migrate, schema_version
from trainfleet.store.schema import metadata
from trainfleet.store.status import job_status

SPEC = JobSpec(name="demo", command=["python", "train.py"], nodes=2, procs_per_node=2)


# Every portable store test runs twice: on SQLite (the default store) and on a real PostgreSQL
# (tests/pg_fixtures.py starts a throwaway cluster once per session; each test gets a fresh database).
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'trainfleet.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    url = request.getfixturevalue("pg_url")
    assert url.startswith("postgresql")
    return url


@pytest.fixture
def store(db_url: str):
    with open_store(db_url) as s:
        yield s


def test_create_and_get_job(store: Store, tmp_path: Path) -> None:
    job_id = store.create_job(SPEC, run_dir=str(tmp_path / "runs" / "{job_id}"))
    assert len(job_id) == 8 and all(c in "0123456789abcdef" for c in job_id)
    job = store.get_job(job_id)
    assert job.state is JobState.PENDING and job.restarts == 0 and job.reason is None
    assert job.run_dir == str(tmp_path / "runs" / job_id)
    assert job.spec == SPEC.model_dump(mode="json") and JobSpec.model_validate(job.spec) == SPEC
    assert (job.nodes, job.procs_per_node, job.backend, job.name) == (2, 2, "local", "demo")
    assert abs(job.created_at - time.time()) < 5


def test_default_run_dir_is_under_trainfleet_home(store: Store, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINFLEET_HOME", str(tmp_path / "home"))
    job_id = store.create_job(SPEC)
    assert store.get_job(job_id).run_dir == str(tmp_path / "home" / "runs" / job_id)


def test_chosen_job_id_and_duplicate(store: Store) -> None:
    assert store.create_job(SPEC, run_dir="/r", job_id="0badcafe") == "0badcafe"
    with pytest.raises(StoreError, match="already taken"):
        store.create_job(SPEC, run_dir="/r", job_id="0badcafe")


def test_prefix_lookup_unknown_and_ambiguous(store: Store) -> None:
    store.create_job(SPEC, run_dir="/r", job_id="abcd1111")
    store.create_job(SPEC, run_dir="/r", job_id="abcd2222")
    assert store.get_job("abcd1").id == "abcd1111"
    assert store.get_job("ABCD2222").id == "abcd2222"
    with pytest.raises(AmbiguousJobId) as err:
        store.get_job("abcd")
    assert str(err.value) == "ambiguous job id abcd: matches abcd1111, abcd2222"
    assert isinstance(err.value, JobNotFound)
    with pytest.raises(JobNotFound, match=r"no such job: abc$"):
        store.get_job("abc")  # too short for a prefix
    with pytest.raises(JobNotFound, match="no such job: ffff"):
        store.get_job("ffff")
    with pytest.raises(JobNotFound):
        store.get_job("ab%_")  # LIKE wildcards are not patterns here


def test_update_job_and_list_newest_first(store: Store) -> None:
    first = store.create_job(SPEC, run_dir="/a")
    time.sleep(0.01)
    second = store.create_job(SPEC.model_copy(update={"name": "two"}), run_dir="/b")
    store.update_job(first, state=JobState.FAILED, reason="rank 1 exited 3", restarts=2, ended_at=5.0,
                     supervisor_pid=4242, supervisor_addr="127.0.0.1:9")
    job = store.get_job(first)
    assert (job.state, job.reason, job.restarts, job.ended_at) == (JobState.FAILED, "rank 1 exited 3", 2, 5.0)
    assert (job.supervisor_pid, job.supervisor_addr) == (4242, "127.0.0.1:9")
    store.update_job(first, restarts=3)  # None fields are left alone
    assert store.get_job(first).reason == "rank 1 exited 3"
    assert [j.id for j in store.list_jobs()] == [second, first]
    assert [j.id for j in store.list_jobs(state=JobState.FAILED)] == [first]
    assert [j.id for j in store.list_jobs(limit=1)] == [second]
    with pytest.raises(JobNotFound):
        store.update_job("00000000", state=JobState.RUNNING)


def test_attempts_and_ranks(store: Store) -> None:
    job_id = store.create_job(SPEC, run_dir="/r")
    store.start_attempt(job_id, 0, master_addr="127.0.0.1", master_port=29500, started_at=10.0)
    for rank in range(4):
        store.upsert_rank(job_id, 0, rank, node_rank=rank // 2, local_rank=rank % 2, pid=100 + rank,
                          state=JobState.RUNNING, started_at=10.5, log_out=f"/r/rank-{rank}.out")
    # only non-None values are written: the pid and log path survive this update
    store.upsert_rank(job_id, 0, 1, node_rank=0, local_rank=1, state=JobState.FAILED, signal=9, ended_at=12.0)
    store.end_attempt(job_id, 0, state=JobState.FAILED, reason="rank 1 killed by SIGKILL", ended_at=12.5)
    store.start_attempt(job_id, 1, master_addr="127.0.0.1", master_port=29611, started_at=14.0)
    store.upsert_rank(job_id, 1, 0, node_rank=0, local_rank=0)

    attempts = store.attempts(job_id)
    assert [(a.attempt, a.state, a.master_port) for a in attempts] == [
        (0, JobState.FAILED, 29500), (1, JobState.RUNNING, 29611)]
    assert attempts[0].reason == "rank 1 killed by SIGKILL" and attempts[0].ended_at == 12.5
    old = store.ranks(job_id, attempt=0)
    assert [r.rank for r in old] == [0, 1, 2, 3]
    assert (old[1].state, old[1].signal, old[1].exit_code, old[1].pid, old[1].log_out) == (
        JobState.FAILED, 9, None, 101, "/r/rank-1.out")
    latest = store.ranks(job_id)
    assert [(r.attempt, r.rank, r.state) for r in latest] == [(1, 0, JobState.PENDING)]
    assert store.ranks("00000000") == []
    with pytest.raises(JobNotFound):
        store.upsert_rank("00000000", 0, 0, node_rank=0, local_rank=0)


def test_events_and_metrics(store: Store) -> None:
    job_id = store.create_job(SPEC, run_dir="/r")
    store.add_event(job_id, "attempt_started", "attempt 0 started", attempt=0)
    store.add_event(job_id, "rank_exit", "rank 3 exited 1", attempt=0, node=1, rank=3, data={"exit_code": 1})
    events = store.events(job_id)
    assert [e.kind for e in events] == ["attempt_started", "rank_exit"]
    assert (events[1].node, events[1].rank, events[1].data) == ("1", 3, {"exit_code": 1})
    assert [e.kind for e in store.events(job_id, kinds=["rank_exit"])] == ["rank_exit"]

    store.add_metrics(job_id, 0, [MetricRow(r, s, 100.0 + s, {"loss": 5.0 - s, "tok_s": 10.0})
                                  for s in range(3) for r in range(2)])
    store.add_metrics(job_id, 1, [MetricRow(0, 1, 200.0, {"loss": 4.5})])
    store.add_metrics(job_id, 1, [])
    latest = store.latest_metrics(job_id)
    # only the latest attempt counts: rank 1 has not reported in attempt 1 yet
    assert latest == {0: MetricRow(0, 1, 200.0, {"loss": 4.5})}
    assert store.count("metrics", job_id) == 7
    rows = store.metrics(job_id, attempt=0, rank=1)
    assert [(a, m.step, m.values["loss"]) for _, a, m in rows] == [(0, 0, 5.0), (0, 1, 4.0), (0, 2, 3.0)]
    since = rows[-1][0]
    assert [m.step for _, _, m in store.metrics(job_id, since_id=since)] == [1]
    assert store.latest_metrics("00000000") == {}


def test_status_document(store: Store) -> None:
    job_id = store.create_job(SPEC, run_dir="/r")
    store.update_job(job_id, state=JobState.RUNNING, started_at=100.0)
    store.start_attempt(job_id, 0, master_addr="127.0.0.1", master_port=1, started_at=100.0)
    store.upsert_rank(job_id, 0, 0, node_rank=0, local_rank=0, state=JobState.RUNNING)
    store.add_metrics(job_id, 0, [MetricRow(0, 7, 101.0, {"loss": 2.5})])
    doc = job_status(store, job_id[:5], now=160.0)
    assert {"id", "name", "state", "restarts", "attempts", "ranks", "reason", "run_dir", "latest"} <= set(doc)
    assert (doc["state"], doc["duration_s"], doc["step"], doc["loss"]) == ("running", 60.0, 7, 2.5)
    assert doc["latest"] == {"0": {"step": 7, "ts": 101.0, "loss": 2.5}}
    assert doc["ranks"][0]["state"] == "running" and doc["attempts"][0]["attempt"] == 0


def test_migrations_apply_once_and_record_version(db_url: str) -> None:
    engine = make_engine(db_url)
    assert schema_version(engine) == 0
    assert migrate(engine) == [m.version for m in MIGRATIONS]
    assert migrate(engine) == []  # idempotent
    assert schema_version(engine) == LATEST_VERSION
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version, description FROM schema_version")).all()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    engine.dispose()
    # opening twice is fine and keeps the data
    with open_store(db_url) as s1:
        job_id = s1.create_job(SPEC, run_dir="/r")
    with open_store(db_url) as s2:
        assert s2.get_job(job_id).name == "demo"


def test_migrated_database_matches_schema_module(db_url: str) -> None:
    with open_store(db_url) as s:
        inspector = sa.inspect(s.engine)
        for table in metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
            indexes = {i["name"] for i in inspector.get_indexes(table.name)}
            assert indexes == {i.name for i in table.indexes}, table.name


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    from trainfleet.store.db import BUSY_TIMEOUT_MS

    with open_store(sqlite_url) as s, s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_newer_database_is_refused(db_url: str) -> None:
    with open_store(db_url) as s, s.engine.begin() as conn:
        future = {"v": LATEST_VERSION + 1}
        conn.execute(sa.text("INSERT INTO schema_version VALUES (:v, 'future', 0)"), future)
    with pytest.raises(StoreError, match="newer than this trainfleet"):
        open_store(db_url)


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="bad database URL"):
        open_store("not a url")


def test_busy_database_is_retried_until_the_lock_is_released(sqlite_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db_url = sqlite_url
    import sqlite3
    import threading

    from trainfleet.store import db

    with open_store(db_url) as store:
        job_id = store.create_job(SPEC, run_dir="/r")
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 20)  # so SQLite gives up quickly and our retry loop runs
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
    released.start()
    began = time.monotonic()
    with open_store(db_url) as store:
        store.add_event(job_id, "tick", "after the lock")
        waited = time.monotonic() - began
        assert [e.message for e in store.events(job_id)] == ["after the lock"]
    released.join()
    holder.close()
    assert waited >= 0.3


def test_busy_past_the_deadline_is_one_store_error(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db_url = sqlite_url
    import sqlite3

    from trainfleet.store import db

    with open_store(db_url) as store:
        job_id = store.create_job(SPEC, run_dir="/r")
        monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 20)
        monkeypatch.setattr(db, "RETRY_DEADLINE_S", 0.3)
        store.close()  # new connections pick up the short timeout
        holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="database busy for 0 s: database is locked"):
                store.add_event(job_id, "tick", "never")
        finally:
            holder.execute("ROLLBACK")
            holder.close()


WRITER = textwrap.dedent("""
    import os, sys, time
    from trainfleet.store import open_store, MetricRow
    url, job_id, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = open_store(url)
    open(sys.argv[5] + f".ready{who}", "w").close()
    while not os.path.exists(sys.argv[5]):  # start together so the writers really overlap
        time.sleep(0.001)
    began = time.time()
    for i in range(n):
        store.add_event(job_id, "tick", f"writer {who} event {i}", rank=who)
        store.add_metrics(job_id, 0, [MetricRow(who, i, time.time(), {"loss": float(i)}),
                                      MetricRow(who + 10, i, time.time(), {"loss": float(i)})])
        store.upsert_rank(job_id, 0, who, node_rank=0, local_rank=who, pid=i)
    print(began, time.time())
""")


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _release_when_ready(go: Path, count: int, procs: list[subprocess.Popen[str]]) -> None:
    """Create ``go`` once every process has created ``go.ready<i>`` (a start barrier through files)."""
    deadline = time.monotonic() + 30
    while len(list(go.parent.glob(go.name + ".ready*"))) < count:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "the processes never got ready"
        time.sleep(0.005)
    go.touch()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_two_processes_write_at_once_and_nothing_is_lost(db_url: str, tmp_path: Path) -> None:
    with open_store(db_url) as store:
        job_id = store.create_job(SPEC, run_dir="/r")
    n = 150
    go = tmp_path / "go"
    procs = [_spawn(WRITER, db_url, job_id, str(who), str(n), str(go)) for who in (0, 1)]
    _release_when_ready(go, 2, procs)
    # this process reads while they write
    with open_store(db_url) as store:
        while any(p.poll() is None for p in procs):
            store.latest_metrics(job_id)
            time.sleep(0.01)
        outs = [p.communicate(timeout=30) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        windows = [tuple(map(float, out.split())) for out, _ in outs]
        assert max(w[0] for w in windows) < min(w[1] for w in windows), "the writers did not overlap"
        assert store.count("events", job_id) == 2 * n
        assert store.count("metrics", job_id) == 4 * n
        messages = {e.message for e in store.events(job_id)}
        assert messages == {f"writer {w} event {i}" for w in (0, 1) for i in range(n)}
        assert {r: m.step for r, m in store.latest_metrics(job_id).items()} == {0: n - 1, 1: n - 1,
                                                                              10: n - 1, 11: n - 1}
        assert [(r.rank, r.pid) for r in store.ranks(job_id)] == [(0, n - 1), (1, n - 1)]


OPENER = textwrap.dedent("""
    import os, sys, time
    from trainfleet.store import open_store
    open(sys.argv[2] + ".ready" + sys.argv[3], "w").close()
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
    with open_store(sys.argv[1]) as s:
        print(len(s.list_jobs()))
""")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_processes_opening_a_fresh_database_at_once_migrate_once(db_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [_spawn(OPENER, db_url, str(go), str(i)) for i in range(3)]
    _release_when_ready(go, 3, procs)
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [o[0].strip() for o in outs] == ["0", "0", "0"]
    engine = make_engine(db_url)
    with engine.connect() as conn:
        versions = [r[0] for r in conn.execute(sa.text("SELECT version FROM schema_version"))]
    engine.dispose()
    assert versions == [m.version for m in MIGRATIONS]


def test_node_history_quarantine_and_release(store: Store) -> None:
    from trainfleet.store.nodes import NodeState

    first = store.blame_node("gpu-07", job_id="aaaa0001", attempt=0, reason="rank 3 killed by signal 9")
    assert (first.state, first.blames, first.last_job_id) == (NodeState.SUSPECT, 1, "aaaa0001")
    store.blame_node("gpu-07", job_id="aaaa0001", attempt=1, reason="hung")  # same job: still one job
    store.blame_node("gpu-07", job_id="aaaa0002", attempt=0, reason="agent lost")
    assert store.node("gpu-07").state is NodeState.SUSPECT
    third = store.blame_node("gpu-07", job_id="aaaa0003", attempt=0, reason="no heartbeat for 9.0s")
    assert third.state is NodeState.QUARANTINED and third.last_reason == "no heartbeat for 9.0s"
    store.blame_node("gpu-02", job_id="aaaa0003", attempt=0, reason="straggler")
    assert [(n.name, n.state) for n in store.nodes()] == [("gpu-02", NodeState.SUSPECT),
                                                          ("gpu-07", NodeState.QUARANTINED)]
    released = store.release_node("gpu-07", reason="reseated the NIC")
    assert released.state is NodeState.HEALTHY and released.blames == 4
    events = store.node_events("gpu-07")
    assert [e.kind for e in events] == ["blamed"] * 4 + ["quarantined", "released"]
    assert events[-1].reason == "reseated the NIC" and events[0].job_id == "aaaa0001"
    assert [e.node for e in store.node_events()].count("gpu-02") == 1
    recent = store.recent_node_events(["gpu-07", "gpu-02", "gpu-99"], 2)
    assert {n: [e.kind for e in evs] for n, evs in recent.items()} == {
        "gpu-07": ["quarantined", "released"], "gpu-02": ["blamed"]}
    assert recent["gpu-02"][0].to_dict()["reason"] == "straggler" and store.recent_node_events([], 5) == {}
    with pytest.raises(StoreError, match="unknown node 'gpu-99'"):
        store.release_node("gpu-99")


def test_probe_results_round_trip_in_time_order(store: Store) -> None:
    from trainfleet.health.probes.store import ProbeResultRow, job_results, node_history, save_results

    rows = [ProbeResultRow(job_id=f"probe{i:04d}", ts=100.0 + i, probe="pairs", backend="netns", node=node,
                           metric="pair_bw_gbps", value=value, verdict="slow" if value < 1 else "ok",
                           data={"peers": ["tfh1", "tfh2"]})
            for i, (node, value) in enumerate([("tfh2", 9.3), ("tfh3", 0.9), ("tfh2", 9.1), ("tfh3", 0.8)])]
    save_results(store, rows)
    save_results(store, [])  # nothing to write is not an error
    history = node_history(store, "tfh3", metric="pair_bw_gbps")
    assert [(r.ts, r.value, r.verdict) for r in history] == [(101.0, 0.9, "slow"), (103.0, 0.8, "slow")]
    assert history[0].data == {"peers": ["tfh1", "tfh2"]}
    assert [r.value for r in node_history(store, "tfh2", limit=1)] == [9.1]
    assert [(r.node, r.job_id) for r in job_results(store, ["probe0000", "probe0001"])] == [
        ("tfh2", "probe0000"), ("tfh3", "probe0001")]
    assert job_results(store, []) == []


def test_reopen_clears_the_previous_end(store: Store) -> None:
    job_id = store.create_job(SPEC, run_dir="/r")
    store.update_job(job_id, state=JobState.FAILED, reason="rank 1 exited with code 3", ended_at=50.0)
    store.reopen_job(job_id, restarts=2)
    job = store.get_job(job_id)
    assert (job.state, job.reason, job.ended_at, job.restarts) == (JobState.PENDING, None, None, 2)
    with pytest.raises(JobNotFound):
        store.reopen_job("deadbeef", restarts=1)

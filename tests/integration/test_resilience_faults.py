"""Faults injected into real jobs (the torch-free ``trainer.py`` fixture, 2 nodes x 2 ranks): kill -9 a rank,
SIGSTOP a rank, kill -9 and SIGSTOP an agent, kill -9 the supervisor then ``resume``, one slow rank.

Each test asserts the detection (and how fast), the recorded cause and node, the resumed step, that the job
finishes, and that no process of it is left."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path

import pytest
from job_helpers import (
    cmdline,
    events,
    job_pids,
    reap_jobs,
    start_detached,
    status,
    tf,
    wait_final,
    wait_for,
    write_spec,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def home(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh TRAINFLEET_HOME; afterwards every process of its jobs is gone (even after a failed test)."""
    path = tmp_path / "home"
    yield path
    reap_jobs(path)


def start(tmp_path: Path, home: Path, *args: str, **fields: object) -> str:
    spec = write_spec(tmp_path, "trainer.py", *args, **{
        "name": "faulty", "checkpoint_dir": str(tmp_path / "ckpt"), "spare_nodes": 1,
        "restart": {"max_restarts": 2, "backoff_s": 0.5}, "hang_timeout_s": 60, **fields})
    return start_detached(home, spec)


def running_at_step(home: Path, job: str, attempt: int, step: int) -> dict:
    """The status once ``attempt`` runs and every rank reported at least ``step``."""
    def ready() -> dict | None:
        doc = status(home, job)
        latest = doc["latest"]
        steps = [v["step"] for v in latest.values()]
        ok = (doc["attempt"] == attempt and len(steps) == 4 and min(steps) >= step
              and all(r["state"] == "running" for r in doc["ranks"]) and len(doc["ranks"]) == 4)
        return doc if ok else None
    return wait_for(ready, 40, f"attempt {attempt} at step {step}")


def agent_pid(job_id: str, attempt: int, node: int) -> int:
    want = {"--job-id": job_id, "--attempt": str(attempt), "--node-rank": str(node)}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        argv = cmdline(entry)
        options = dict(itertools.pairwise(argv))
        if "trainfleet.runtime.agent" in argv and all(options.get(k) == v for k, v in want.items()):
            return int(entry)
    raise AssertionError(f"no agent for node {node} of attempt {attempt}")


def assert_resumed_and_done(doc: dict, attempt: int) -> dict:
    """The job succeeded at ``attempt`` from a checkpoint step (multiple of 10) and says what it redid."""
    assert doc["state"] == "succeeded", doc["reason"]
    assert doc["attempt"] == attempt and doc["restarts"] == attempt
    resumed = next(e for e in events(doc, "resumed") if e["attempt"] == attempt)["data"]
    assert resumed["resumed_step"] > 0 and resumed["resumed_step"] % 10 == 0
    assert resumed["recomputed_steps"] == resumed["lost_step"] - resumed["resumed_step"] >= 0
    assert {r["state"] for r in doc["ranks"]} == {"succeeded"} and doc["step"] == 100
    gp = doc["goodput"]
    assert 0 < gp["ratio"] < 1 and set(gp["lost_s"]) == {"detection", "teardown", "restart", "recompute"}
    assert gp["failures"] == attempt and gp["lost_s"]["restart"] > 0
    assert not job_pids(doc["id"])
    return resumed


def test_kill_9_of_a_rank_is_detected_blamed_and_resumed_on_a_spare_node(tmp_path: Path, home: Path) -> None:
    job = start(tmp_path, home, "--steps", "100", "--step-s", "0.06")
    doc = running_at_step(home, job, 0, 25)
    victim = next(r for r in doc["ranks"] if r["rank"] == 3)
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    doc = wait_final(home, job)

    crash = events(doc, "rank_failed")[0]
    assert crash["attempt"] == 0 and crash["rank"] == 3 and crash["node"] == "1"
    assert "rank 3 killed by signal 9 [local-1]" in crash["message"]
    assert crash["data"]["detected_ts"] - killed_at < 2.0, "crash detection must take < 2 s"
    assert events(doc, "node_suspect")[0]["node"] == "local-1"
    assert {r["host"] for r in doc["ranks"]} == {"local-0", "local-2"}, "the spare replaced the blamed node"
    assert_resumed_and_done(doc, 1)
    assert "detected in" in doc["story"][0] and "local-1 is suspect" in doc["story"][0]

    nodes = json.loads(tf(home, "nodes", "--json").stdout)
    assert [(n["name"], n["state"], n["blames"]) for n in nodes] == [("local-1", "suspect", 1)]
    assert nodes[0]["history"][0]["job_id"] == job
    text = tf(home, "status", job).stdout
    assert "goodput:" in text and "attempt 1; on local-0, local-2; resumed at step" in text


def test_a_stopped_rank_is_a_hang_whose_stacks_are_dumped_and_shown_by_debug(tmp_path: Path, home: Path,
                                                                             ) -> None:
    job = start(tmp_path, home, "--steps", "100", "--step-s", "0.06", hang_timeout_s=3)
    doc = running_at_step(home, job, 0, 25)
    victim = next(r for r in doc["ranks"] if r["rank"] == 2)
    os.kill(victim["pid"], signal.SIGSTOP)
    stopped_at = time.time()
    doc = wait_final(home, job)

    hang = events(doc, "rank_hung")[0]
    assert hang["rank"] == 2 and hang["node"] == "1" and "its process is stopped" in hang["message"]
    assert hang["data"]["detected_ts"] - stopped_at <= 3 + 2.0, "hang detected within hang_timeout_s + 2 s"
    assert hang["data"]["odd_ranks"] == [2]
    assert doc["stacks"]["odd_ranks"] == [2] and len(doc["stacks"]["files"]) == 4
    assert_resumed_and_done(doc, 1)
    assert f"trainfleet debug {job}" in tf(home, "status", job).stdout

    out = tf(home, "debug", job)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[1]
    assert first.startswith("rank 2 node 1") and "(stopped)" in first and "ODD RANK OUT" in first
    assert "compute (trainer.py)" in first
    others = [line for line in out.stdout.splitlines() if line.startswith("rank ") and "ODD" not in line]
    assert len(others) == 3 and all("collective (trainer.py)" in line for line in others)


def test_a_killed_agent_and_then_a_silent_agent_are_lost_nodes(tmp_path: Path, home: Path) -> None:
    job = start(tmp_path, home, "--steps", "100", "--step-s", "0.06")
    running_at_step(home, job, 0, 20)
    killed_at = time.time()
    os.kill(agent_pid(job, 0, 1), signal.SIGKILL)
    running_at_step(home, job, 1, 45)
    os.kill(agent_pid(job, 1, 0), signal.SIGSTOP)
    stopped_at = time.time()
    doc = wait_final(home, job)

    lost = events(doc, "agent_lost")
    assert [(e["attempt"], e["node"]) for e in lost] == [(0, "1"), (1, "0")]
    assert "local-1" in lost[0]["message"] and lost[0]["data"]["detected_ts"] - killed_at < 2.0
    assert "no heartbeat" in lost[1]["message"] and "local-0" in lost[1]["message"]
    assert lost[1]["data"]["detected_ts"] - stopped_at <= 3 * 1.0, "silent agent lost within 3 heartbeats"
    assert [e["node"] for e in events(doc, "node_suspect")] == ["local-1", "local-0"]
    assert_resumed_and_done(doc, 2)


def test_kill_9_of_the_supervisor_then_resume_continues_from_the_checkpoint(tmp_path: Path, home: Path,
                                                                            ) -> None:
    job = start(tmp_path, home, "--steps", "100", "--step-s", "0.06")
    doc = running_at_step(home, job, 0, 30)
    os.kill(doc["supervisor"]["pid"], signal.SIGKILL)
    wait_for(lambda: not job_pids(job), 15, "the ranks to die with their supervisor")
    gone = status(home, job)
    assert gone["state"] == "running" and gone["supervisor"]["alive"] is False  # nobody could record a thing
    assert "trainfleet resume" in tf(home, "status", job).stdout

    out = tf(home, "resume", job)
    assert out.returncode == 0 and out.stdout.strip() == job, out.stderr
    doc = wait_final(home, job)
    first = doc["attempts"][0]
    assert first["state"] == "failed" and first["reason"].startswith("supervisor lost")
    assert events(doc, "supervisor_lost")[0]["attempt"] == 0
    from trainfleet.store import open_store

    with open_store(f"sqlite:///{home}/trainfleet.db") as store:  # attempt 0's rank rows are closed too
        closed = store.ranks(job, 0)
    assert len(closed) == 4 and all(r.state.value == "failed" and r.ended_at for r in closed)
    resumed = assert_resumed_and_done(doc, 1)
    assert resumed["resumed_step"] >= 20
    again = tf(home, "resume", job)
    assert again.returncode == 2 and "already succeeded" in again.stderr


def test_one_slow_rank_is_reported_as_a_straggler_with_its_node_and_numbers(tmp_path: Path, home: Path,
                                                                            ) -> None:
    job = start(tmp_path, home, "--steps", "40", "--step-s", "0.03", "--slow-rank", "1", "--slow-factor", "4")
    doc = wait_final(home, job)
    assert doc["state"] == "succeeded"
    slow = events(doc, "straggler")
    assert [(e["rank"], e["node"]) for e in slow] == [(1, "0")]
    data = slow[0]["data"]
    assert data["ratio"] >= 2 and data["factor"] == 2 and data["host"] == "local-0"
    assert data["step_time_s"] >= 2 * data["median_s"] > 0
    assert "local-0: node 0 rank 1 is a straggler" in slow[0]["message"]


def test_resume_of_a_failed_job_runs_without_the_old_reason_and_end_time(tmp_path: Path, home: Path) -> None:
    job = start(tmp_path, home, "--steps", "60", "--step-s", "0.05", "--crash-at-step", "25", "--crash-rank",
                "1", "--crash-attempt", "0", restart={"max_restarts": 0, "backoff_s": 0})
    failed = wait_final(home, job)
    assert failed["state"] == "failed" and failed["reason"] and failed["ended_at"]
    # exit code 13 is the program's failure: the node is named but not blamed, so it stays usable
    assert [e["node"] for e in events(failed, "node_not_blamed")] == ["local-0"]  # rank 1 of 2 per node
    assert not events(failed, "node_suspect") and json.loads(tf(home, "nodes", "--json").stdout) == []
    assert "local-0 not blamed" in failed["story"][0]

    out = tf(home, "resume", job)
    assert out.returncode == 0 and out.stdout.strip() == job, out.stderr
    running = running_at_step(home, job, 1, 25)  # attempt 1 resumed from the step-20 checkpoint and runs
    assert running["state"] == "running"
    assert running["reason"] is None and running["ended_at"] is None, "a running job has no end yet"
    assert running["started_at"] == failed["started_at"]  # a resumed job keeps its start
    assert "reason:" not in tf(home, "status", job).stdout  # the human view shows no stale reason either

    doc = wait_final(home, job)
    assert doc["state"] == "succeeded" and doc["reason"] is None and doc["ended_at"] > failed["ended_at"]
    assert [a["state"] for a in doc["attempts"]] == ["failed", "succeeded"] and doc["restarts"] == 1
    assert next(e for e in events(doc, "resumed") if e["attempt"] == 1)["data"]["resumed_step"] == 20
    assert not job_pids(job)

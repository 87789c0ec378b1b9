"""`trainfleet list / status / logs` as a user runs them: a real subprocess on a database we populate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trainfleet.spec import JobSpec, JobState
from trainfleet.store import MetricRow, Store, open_store
from trainfleet.store.logfiles import format_ts, stamp_line

pytestmark = pytest.mark.timeout(60)

SPEC = JobSpec(name="gpt-demo", command=["python", "train.py"], nodes=2, procs_per_node=2)
T0 = 1_796_284_800.0


def trainfleet_exe() -> list[str]:
    exe = Path(sys.executable).with_name("trainfleet")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from trainfleet.cli import main; main()"]


def cli(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRAINFLEET_DB_URL"}
    env["TRAINFLEET_HOME"] = str(home)
    return subprocess.run([*trainfleet_exe(), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRAINFLEET_HOME", str(tmp_path))
    monkeypatch.delenv("TRAINFLEET_DB_URL", raising=False)
    return tmp_path


def failed_job(store: Store) -> str:
    """A job that ran two attempts: attempt 0 lost rank 1 to SIGKILL, attempt 1 succeeded."""
    job_id = store.create_job(SPEC)
    run_dir = Path(store.get_job(job_id).run_dir)
    store.update_job(job_id, state=JobState.RUNNING, started_at=T0)
    for attempt, port in ((0, 29500), (1, 29611)):
        store.start_attempt(job_id, attempt, master_addr="127.0.0.1", master_port=port,
                            started_at=T0 + 10 * attempt)
        for rank in range(4):
            node = rank // 2
            out = run_dir / f"attempt-{attempt}" / f"node-{node}" / f"rank-{rank}.out"
            err = out.with_suffix(".err")
            out.parent.mkdir(parents=True, exist_ok=True)
            base = T0 + 10 * attempt + rank / 10
            out.write_text("".join(stamp_line(f"a{attempt} r{rank} step {s}", base + s) for s in range(3)))
            err.write_text(stamp_line(f"a{attempt} r{rank} warning", T0 + 10 * attempt + 1.05))
            store.upsert_rank(job_id, attempt, rank, node_rank=node, local_rank=rank % 2, host="localhost",
                              pid=1000 + rank, state=JobState.SUCCEEDED, exit_code=0, started_at=T0,
                              ended_at=T0 + 9, log_out=str(out), log_err=str(err))
    store.upsert_rank(job_id, 0, 1, node_rank=0, local_rank=1, state=JobState.FAILED, exit_code=-9, signal=9)
    store.end_attempt(job_id, 0, state=JobState.FAILED, reason="rank 1 killed by SIGKILL", ended_at=T0 + 9)
    store.end_attempt(job_id, 1, state=JobState.SUCCEEDED, reason=None, ended_at=T0 + 20)
    store.add_event(job_id, "rank_exit", "rank 1 killed by SIGKILL", attempt=0, node=0, rank=1)
    store.add_metrics(job_id, 1, [MetricRow(r, s, T0 + 10 + s, {"loss": 4.0 - s, "tokens_per_s": 900.0})
                                  for s in range(3) for r in range(4)])
    store.update_job(job_id, state=JobState.SUCCEEDED, restarts=1, ended_at=T0 + 20)
    return job_id


def test_status_json_contract(home: Path) -> None:
    with open_store() as store:
        job_id = failed_job(store)
    result = cli(home, "status", job_id, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"id", "name", "state", "restarts", "attempts", "ranks", "reason", "run_dir", "latest"} <= set(doc)
    assert (doc["id"], doc["name"], doc["state"], doc["restarts"]) == (job_id, "gpt-demo", "succeeded", 1)
    assert doc["state"] in {"pending", "running", "succeeded", "failed", "cancelled"}
    assert doc["run_dir"] == str(home / "runs" / job_id)
    assert [(a["attempt"], a["state"], a["reason"]) for a in doc["attempts"]] == [
        (0, "failed", "rank 1 killed by SIGKILL"), (1, "succeeded", None)]
    assert [(r["rank"], r["node_rank"], r["attempt"], r["exit_code"]) for r in doc["ranks"]] == [
        (0, 0, 1, 0), (1, 0, 1, 0), (2, 1, 1, 0), (3, 1, 1, 0)]
    assert doc["latest"]["3"] == {"step": 2, "ts": T0 + 12, "loss": 2.0, "tokens_per_s": 900.0}
    assert doc["duration_s"] == 20.0


def test_status_by_prefix_in_human_form(home: Path) -> None:
    with open_store() as store:
        job_id = failed_job(store)
        store.update_job(job_id, state=JobState.FAILED, reason="gave up after 1 restart")
    result = cli(home, "status", job_id[:4])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"job {job_id}" in out and "failed" in out and "reason:     gave up after 1 restart" in out
    assert "2 nodes x 2 procs (world 4)" in out and f"run dir:    {home / 'runs' / job_id}" in out
    assert "rank 1 killed by SIGKILL" in out and "127.0.0.1:29611" in out
    assert str(home / "runs" / job_id / "attempt-1" / "node-1" / "rank-3.err") in out


def test_status_shows_signals_by_name(home: Path) -> None:
    with open_store() as store:
        job_id = store.create_job(SPEC)
        store.upsert_rank(job_id, 0, 0, node_rank=0, local_rank=0, state=JobState.FAILED, signal=9)
        store.upsert_rank(job_id, 0, 1, node_rank=0, local_rank=1, state=JobState.FAILED, exit_code=3)
    out = cli(home, "status", job_id).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))]
    assert ["0", "0", "0", "-", "-", "failed", "SIGKILL", "-", "-"] in rows
    assert ["1", "0", "1", "-", "-", "failed", "3", "-", "-"] in rows


def test_list_newest_first_with_progress(home: Path) -> None:
    with open_store() as store:
        done = failed_job(store)
        time.sleep(0.01)
        pending = store.create_job(SPEC.model_copy(update={"name": "later", "nodes": 1}))
    result = cli(home, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["ID", "NAME", "STATE", "RESTARTS", "SHAPE", "CREATED", "DURATION", "STEP", "LOSS"]
    assert lines[0].split() == header
    assert lines[1].split()[:5] == [pending, "later", "pending", "0", "1x2"]
    assert lines[2].split()[:5] == [done, "gpt-demo", "succeeded", "1", "2x2"]
    assert lines[2].split()[-3:] == ["20.0s", "2", "2"]
    summaries = json.loads(cli(home, "list", "--json", "--state", "succeeded").stdout)
    assert [(s["id"], s["step"], s["loss"]) for s in summaries] == [(done, 2, 2.0)]


def test_logs_merged_in_time_order(home: Path) -> None:
    with open_store() as store:
        job_id = failed_job(store)
    merged = cli(home, "logs", job_id).stdout.splitlines()
    assert merged[:6] == ["[0:0] a1 r0 step 0", "[0:1] a1 r1 step 0", "[1:2] a1 r2 step 0",
                          "[1:3] a1 r3 step 0", "[0:0] a1 r0 step 1", "[0:0 err] a1 r0 warning"]
    assert len(merged) == 16


def test_logs_of_one_rank_of_an_older_attempt(home: Path) -> None:
    with open_store() as store:
        job_id = failed_job(store)
    assert cli(home, "logs", job_id, "--rank", "2", "--attempt", "0").stdout.splitlines() == [
        "[1:2] a0 r2 step 0", "[1:2 err] a0 r2 warning", "[1:2] a0 r2 step 1", "[1:2] a0 r2 step 2"]


def test_logs_tail_and_missing_rank(home: Path) -> None:
    with open_store() as store:
        job_id = failed_job(store)
    assert cli(home, "logs", job_id, "--tail", "2").stdout.splitlines() == [
        "[1:2] a1 r2 step 2", "[1:3] a1 r3 step 2"]
    missing = cli(home, "logs", job_id, "--rank", "9")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"trainfleet: error: job {job_id} has no logs for rank 9 in attempt 1"


@pytest.mark.parametrize("command", [["status", "ffff"], ["status", "ff", "--json"], ["logs", "ffff", "-f"]])
def test_unknown_id_exits_2_with_one_line(home: Path, command: list[str]) -> None:
    with open_store() as store:
        store.create_job(SPEC, job_id="abcd0001")
    result = cli(home, *command)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"trainfleet: error: no such job: {command[1]}\n"


def test_ambiguous_prefix_exits_2_with_one_line(home: Path) -> None:
    with open_store() as store:
        store.create_job(SPEC, job_id="abcd0001")
        store.create_job(SPEC, job_id="abcd0002")
    result = cli(home, "status", "abcd")
    assert result.returncode == 2
    assert result.stderr == "trainfleet: error: ambiguous job id abcd: matches abcd0001, abcd0002\n"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_logs_follow_prints_until_the_job_ends(home: Path) -> None:
    with open_store() as store:
        job_id = store.create_job(SPEC)
        run_dir = Path(store.get_job(job_id).run_dir)
        store.update_job(job_id, state=JobState.RUNNING)
    out = run_dir / "attempt-0" / "node-0" / "rank-0.out"
    out.parent.mkdir(parents=True)
    out.write_text(stamp_line("before follow", time.time()))

    def writer() -> None:
        with open_store() as store:
            for i in range(5):
                time.sleep(0.2)
                with out.open("a") as fh:
                    fh.write(stamp_line(f"line {i}", time.time()))
            with out.open("a") as fh:
                fh.write(format_ts(time.time()) + " unterminated at exit")
            store.update_job(job_id, state=JobState.SUCCEEDED, ended_at=time.time())

    thread = threading.Thread(target=writer)
    thread.start()
    result = cli(home, "logs", job_id, "--follow", timeout=40)
    thread.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[0:0] before follow", *[f"[0:0] line {i}" for i in range(5)],
                                          "[0:0] unterminated at exit"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--state", "exploded"],
         "--state: must be one of pending, running, succeeded, failed, cancelled, got 'exploded'"),
        (["list", "--limit", "0"], "--limit: must be >= 1, got 0"),
        (["logs", "abcd0001", "--tail", "-1"], "--tail: must be >= 0, got -1"),
    ],
)
def test_bad_options_are_one_line_usage_errors(home: Path, args: list[str], message: str) -> None:
    result = cli(home, *args)
    assert (result.returncode, result.stderr) == (2, f"trainfleet: error: {message}\n")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_logs_follow_moves_on_to_the_restarted_attempt(home: Path) -> None:
    with open_store() as store:
        job_id = store.create_job(SPEC)
        run_dir = Path(store.get_job(job_id).run_dir)
        store.update_job(job_id, state=JobState.RUNNING)
    first = run_dir / "attempt-0" / "node-0" / "rank-1.out"
    first.parent.mkdir(parents=True)
    first.write_text(stamp_line("attempt 0 starts", time.time()))
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    follow = subprocess.Popen([*trainfleet_exe(), "logs", job_id, "-f"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline().rstrip("\n")]  # it is following attempt 0 now
        # the crash leaves an unterminated line, and attempt 1 starts right after it
        with first.open("a") as fh:
            fh.write(format_ts(time.time()) + " Traceback: boom")
        second = run_dir / "attempt-1" / "node-1" / "rank-3.out"
        second.parent.mkdir(parents=True)
        second.write_text(stamp_line("attempt 1 resumes", time.time()))
        time.sleep(0.5)
        with open_store() as store:
            store.update_job(job_id, state=JobState.SUCCEEDED, restarts=1)
        rest, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    assert seen + rest.splitlines() == ["[0:1] attempt 0 starts", "[0:1] Traceback: boom",
                                        "--- attempt 1 ---", "[1:3] attempt 1 resumes"]

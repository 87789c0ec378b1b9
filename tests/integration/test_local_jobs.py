"""Real multi-process jobs through ``trainfleet run`` on the local backend: env, logs, crash, restart,
cancel, and ``kill -9`` of an agent or the supervisor - and after each, no process of the job survives."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from job_helpers import cli_status as status
from job_helpers import cmdline, job_pids, reap_jobs, start_detached, tf, wait_final, wait_for, write_spec

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (.*)$")

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh TRAINFLEET_HOME; afterwards no process of a job started under it is left, even on failure."""
    path = tmp_path / "home"
    yield path
    reap_jobs(path, cancel_first=True)


def rank_lines(run_dir: str, attempt: int, rank: int, stream: str = "out") -> list[str]:
    node = rank // 2
    text = Path(run_dir, f"attempt-{attempt}", f"node-{node}", f"rank-{rank}.{stream}").read_text()
    lines = text.splitlines()
    for line in lines:
        assert STAMPED.match(line), f"unstamped line {line!r}"
    return [STAMPED.match(line).group(1) for line in lines]  # type: ignore[union-attr]


def rank_env(run_dir: str, attempt: int, rank: int) -> dict:
    env_lines = [line for line in rank_lines(run_dir, attempt, rank) if line.startswith("ENV ")]
    assert len(env_lines) == 1
    return json.loads(env_lines[0][4:])


def start_sleepers(tmp_path: Path, home: Path) -> str:
    """A detached 2x2 job whose ranks (each with a child process) sleep until killed; returns its id."""
    job = start_detached(home, write_spec(tmp_path, "sleeper.py"))
    run_dir = Path(home, "runs", job)

    def all_ready() -> bool:
        files = list(run_dir.glob("attempt-0/node-*/rank-*.out"))
        return len(files) == 4 and all("ready" in f.read_text() for f in files)

    wait_for(all_ready, 30, "4 sleeping ranks")
    assert len(job_pids(job)) == 8  # 4 ranks + a child each
    return job


@pytest.mark.timeout(90)
def test_every_rank_of_a_2x2_job_gets_its_own_environment(tmp_path: Path, home: Path) -> None:
    spec = write_spec(tmp_path, "env_dump.py", env={"EXTRA_FROM_SPEC": "from-spec"},
                      checkpoint_dir="ckpt")
    out = tf(home, "run", str(spec))
    assert out.returncode == 0, out.stderr
    job = re.search(r"job ([0-9a-f]{8})", out.stderr).group(1)  # type: ignore[union-attr]
    st = status(home, job)
    assert st["state"] == "succeeded" and st["restarts"] == 0
    ports = set()
    for rank in range(4):
        env = rank_env(st["run_dir"], 0, rank)
        assert env["RANK"] == env["ROLE_RANK"] == str(rank)
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("4", "2")
        assert env["LOCAL_RANK"] == str(rank % 2)
        assert env["NODE_RANK"] == env["GROUP_RANK"] == str(rank // 2)
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert env["TORCHELASTIC_RESTART_COUNT"] == env["TRAINFLEET_ATTEMPT"] == "0"
        assert env["TRAINFLEET_JOB_ID"] == job
        assert env["TRAINFLEET_RUN_DIR"] == st["run_dir"]
        assert env["TRAINFLEET_CHECKPOINT_DIR"] == str(Path.cwd() / "ckpt")
        assert env["TRAINFLEET_REPORT_ADDR"].startswith("127.0.0.1:")
        assert (env["OMP_NUM_THREADS"], env["PYTHONUNBUFFERED"]) == ("1", "1")
        assert env["EXTRA_FROM_SPEC"] == "from-spec"
        assert env["pid"] == env["pgid"] == env["sid"]  # own session and process group
        ports.add(env["MASTER_PORT"])
        assert rank_lines(st["run_dir"], 0, rank, "err") == ["a line on stderr"]
        assert rank_lines(st["run_dir"], 0, rank)[-1] == "partial last line without newline"
    assert ports == {str(st["attempts"][0]["master_port"])}
    ranks = {r["rank"]: r for r in st["ranks"]}
    assert sorted(ranks) == [0, 1, 2, 3]
    assert all(r["exit_code"] == 0 and r["state"] == "succeeded" and r["pid"] for r in ranks.values())
    assert {int(k): v["step"] for k, v in st["latest"].items()} == {0: 1, 1: 1, 2: 1, 3: 1}
    assert job_pids(job) == []


@pytest.mark.timeout(60)
def test_a_crashing_rank_fails_the_job_with_its_cause(tmp_path: Path, home: Path) -> None:
    out = tf(home, "run", str(write_spec(tmp_path, "env_dump.py", "--fail-rank", "3", "--code", "3")))
    assert out.returncode == 1
    job = re.search(r"job ([0-9a-f]{8})", out.stderr).group(1)  # type: ignore[union-attr]
    st = status(home, job)
    assert st["state"] == "failed"
    assert "node 1 rank 3 exited with code 3" in st["reason"]
    rank3 = next(r for r in st["ranks"] if r["rank"] == 3)
    assert (rank3["exit_code"], rank3["state"]) == (3, "failed")
    assert job_pids(job) == []


@pytest.mark.timeout(60)
def test_a_crash_on_the_first_attempt_only_is_restarted_on_a_fresh_port(tmp_path: Path, home: Path) -> None:
    spec = write_spec(tmp_path, "env_dump.py", "--fail-rank", "1", "--only-attempt", "0",
                      restart={"max_restarts": 1, "backoff_s": 0.2})
    out = tf(home, "run", str(spec))
    assert out.returncode == 0, out.stderr
    job = re.search(r"job ([0-9a-f]{8})", out.stderr).group(1)  # type: ignore[union-attr]
    st = status(home, job)
    assert (st["state"], st["restarts"]) == ("succeeded", 1)
    first, second = st["attempts"]
    assert (first["state"], second["state"]) == ("failed", "succeeded")
    assert "rank 1 exited with code 3" in first["reason"]
    assert first["master_port"] != second["master_port"]
    for rank in range(4):
        env = rank_env(st["run_dir"], 1, rank)
        assert env["TRAINFLEET_ATTEMPT"] == env["TORCHELASTIC_RESTART_COUNT"] == "1"
        assert env["MASTER_PORT"] == str(second["master_port"])
    assert job_pids(job) == []


@pytest.mark.timeout(90)
def test_cancel_of_a_detached_job_leaves_no_process(tmp_path: Path, home: Path) -> None:
    job = start_sleepers(tmp_path, home)
    out = tf(home, "cancel", job[:5], timeout=40)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"job {job} cancelled"
    assert job_pids(job) == []
    st = status(home, job)
    assert st["state"] == "cancelled"
    assert {r["state"] for r in st["ranks"]} == {"cancelled"}


@pytest.mark.timeout(90)
def test_kill_9_of_an_agent_fails_the_job_and_leaves_no_process(tmp_path: Path, home: Path) -> None:
    job = start_sleepers(tmp_path, home)
    wanted = ["-m", "trainfleet.runtime.agent", "--job-id", job, "--attempt", "0", "--node-rank", "1"]
    agent = next(int(p) for p in os.listdir("/proc") if p.isdigit() and cmdline(p)[1:9] == wanted)
    os.kill(agent, signal.SIGKILL)
    st = wait_final(home, job, 30, read=status)
    assert st["state"] == "failed"
    assert "node 1 agent lost" in st["reason"]
    wait_for(lambda: job_pids(job) == [], 10, "no surviving process")


@pytest.mark.timeout(90)
def test_kill_9_of_the_supervisor_takes_its_ranks_down(tmp_path: Path, home: Path) -> None:
    job = start_sleepers(tmp_path, home)
    supervisor = status(home, job)["supervisor"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: job_pids(job) == [], 15, "no surviving process")
    # Nobody supervises the job any more: cancel notices and records it itself.
    start = time.monotonic()
    out = tf(home, "cancel", job, timeout=40)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 10
    st = status(home, job)
    assert st["state"] == "cancelled" and "supervisor was gone" in st["reason"]


@pytest.mark.torch
@pytest.mark.timeout(180)
def test_a_torchrun_style_gloo_all_reduce_runs_unchanged(tmp_path: Path, home: Path) -> None:
    spec = write_spec(tmp_path, "gloo_allreduce.py", nodes=2, procs_per_node=1)
    out = tf(home, "run", str(spec), timeout=150)
    assert out.returncode == 0, out.stderr
    job = re.search(r"job ([0-9a-f]{8})", out.stderr).group(1)  # type: ignore[union-attr]
    run_dir = status(home, job)["run_dir"]
    for rank in range(2):
        text = Path(run_dir, "attempt-0", f"node-{rank}", f"rank-{rank}.out").read_text()
        assert f"rank {rank} all_reduce sum 3 ok" in text


@pytest.mark.timeout(60)
def test_a_command_that_cannot_start_fails_the_job_with_exit_127(tmp_path: Path, home: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"name": "t", "command": [str(tmp_path / "no-such-program")], "nodes": 1,
                                "procs_per_node": 2}))
    out = tf(home, "run", str(spec))
    assert out.returncode == 1
    job = re.search(r"job ([0-9a-f]{8})", out.stderr).group(1)  # type: ignore[union-attr]
    st = status(home, job)
    assert st["state"] == "failed" and "exited with code 127" in st["reason"]
    assert "cannot start" in rank_lines(st["run_dir"], 0, 0, "err")[0]


@pytest.mark.torch
@pytest.mark.timeout(240)
def test_a_gloo_job_restarts_cleanly_after_a_rank_dies(tmp_path: Path, home: Path) -> None:
    """The one-host restart gotcha (gloo dialling the previous attempt's peers) does not bite: fresh port."""
    spec = write_spec(tmp_path, "gloo_allreduce.py", "--crash-rank", "1", "--crash-attempt", "0", nodes=2,
                      procs_per_node=1, restart={"max_restarts": 1, "backoff_s": 0})
    out = tf(home, "run", str(spec), timeout=200)
    assert out.returncode == 0, out.stderr
    job = re.search(r"job ([0-9a-f]{8})", out.stderr).group(1)  # type: ignore[union-attr]
    st = status(home, job)
    assert [a["state"] for a in st["attempts"]] == ["failed", "succeeded"]
    assert "node 1 rank 1 exited with code 13" in st["attempts"][0]["reason"]
    for rank in range(2):
        text = Path(st["run_dir"], "attempt-1", f"node-{rank}", f"rank-{rank}.out").read_text()
        assert f"rank {rank} all_reduce sum 3 ok" in text

"""The GPT demo (tiny settings) survives a crash whose newest checkpoint is corrupt: the restart falls back to
the previous checkpoint (the script verifies checksums) and the supervisor records where it resumed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from job_helpers import events, job_pids, status, tf, wait_for
from job_helpers import wait_final as finished
from test_resilience_faults import home

REPO = Path(__file__).parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.torch, pytest.mark.timeout(150)]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--corpus-chars", "20000", "--eval-every", "0", "--eval-batches", "1", "--log-every", "10",
        "--pg-timeout-s", "30"]
__all__ = ["home"]  # the fixture: a fresh TRAINFLEET_HOME, and no process left afterwards


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, home: Path) -> None:
    ckpt = tmp_path / "ckpt"
    command = [sys.executable, str(REPO / "examples" / "gpt" / "train.py"), "--steps", "40",
               "--ckpt-every", "10", *TINY, "--crash-at-step", "25", "--crash-rank", "1",
               "--crash-attempt", "0"]
    spec = {"name": "gpt-faulty", "command": command, "nodes": 2, "grace_s": 2, "checkpoint_dir": str(ckpt),
            "workdir": str(REPO), "restart": {"max_restarts": 1, "backoff_s": 3}, "hang_timeout_s": 60,
            "env": {"PYTHONHASHSEED": "0"}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    out = tf(home, "run", str(path), "--detach")
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()

    wait_for(lambda: events(status(home, job), "attempt_failed"), 90, "the injected crash")
    newest = ckpt / "ckpt-00000020.pt"
    assert newest.is_file() and (ckpt / "ckpt-00000010.pt").is_file()
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum must catch it
    newest.write_bytes(bytes(data))
    corrupted_at = time.time()
    doc = finished(home, job, timeout=120)

    assert doc["state"] == "succeeded", doc["reason"]
    crash = events(doc, "rank_failed")[0]
    assert crash["rank"] == 1 and "exited with code 13" in crash["message"] and crash["node"] == "1"
    assert crash["ts"] < corrupted_at
    resumed = events(doc, "resumed")[0]["data"]
    assert resumed["resumed_step"] == 10 and resumed["lost_step"] == 24 and resumed["recomputed_steps"] == 14
    assert doc["step"] == 40 and doc["goodput"]["recomputed_steps"] == 14
    rank0_err = Path(next(r for r in doc["ranks"] if r["rank"] == 0)["log_err"]).read_text()
    assert "skipping corrupt checkpoint" in rank0_err
    assert not job_pids(job)


def test_a_slow_rank_of_the_gpt_demo_is_a_straggler_and_its_step_time_is_exported(tmp_path: Path,
                                                                                  home: Path) -> None:
    """Rank 1 computes 80 ms longer each step (``--slow-rank``): DDP makes every rank's *step* equally long,
    but the demo reports each rank's own ``compute_s`` too, so the supervisor names rank 1 and its node."""
    command = [sys.executable, str(REPO / "examples" / "gpt" / "train.py"), "--steps", "30", *TINY,
               "--ckpt-every", "0", "--slow-rank", "1", "--slow-s", "0.08"]
    spec = {"name": "gpt-slow", "command": command, "nodes": 2, "grace_s": 2, "workdir": str(REPO),
            "restart": {"max_restarts": 0}, "hang_timeout_s": 60, "env": {"PYTHONHASHSEED": "0"}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    out = tf(home, "run", str(path), "--detach")
    assert out.returncode == 0, out.stderr
    doc = finished(home, out.stdout.strip(), timeout=120)
    assert doc["state"] == "succeeded", doc["reason"]
    slow = events(doc, "straggler")
    assert slow and {(e["rank"], e["node"]) for e in slow} == {(1, "1")}, [e["message"] for e in slow]
    data = slow[0]["data"]
    assert data["host"] == "local-1" and data["step_time_s"] >= 0.08 and data["ratio"] >= 2
    latest = doc["latest"]["0"]
    assert latest["step_time_s"] >= 0.08  # rank 0 waits for rank 1 in the all-reduce: its step is slow too
    assert latest["compute_s"] < latest["step_time_s"]


def test_a_rank_stuck_before_its_first_step_is_hung_after_the_startup_timeout(tmp_path: Path,
                                                                              home: Path) -> None:
    """Rank 1 hangs before step 1, so no rank ever reports (rank 0 waits in the first all-reduce): without a
    report the hang timeout cannot fire, ``startup_timeout_s`` does; the stacks name rank 1 and the restart
    trains to the end."""
    command = [sys.executable, str(REPO / "examples" / "gpt" / "train.py"), "--steps", "8", *TINY,
               "--ckpt-every", "0", "--hang-at-step", "1", "--hang-rank", "1", "--hang-attempt", "0"]
    spec = {"name": "gpt-stuck", "command": command, "nodes": 2, "grace_s": 2, "workdir": str(REPO),
            "restart": {"max_restarts": 1, "backoff_s": 0}, "hang_timeout_s": 60, "startup_timeout_s": 12,
            "env": {"PYTHONHASHSEED": "0"}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    out = tf(home, "run", str(path), "--detach")
    assert out.returncode == 0, out.stderr
    doc = finished(home, out.stdout.strip(), timeout=120)
    assert doc["state"] == "succeeded" and doc["restarts"] == 1, doc["reason"]
    (hang,) = events(doc, "rank_hung")
    assert hang["rank"] == 1 and "no progress reported in" in hang["message"]
    assert "startup_timeout_s 12" in hang["message"] and hang["data"]["odd_ranks"] == [1]
    assert 12 <= hang["data"]["silent_s"] < 30

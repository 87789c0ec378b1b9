"""``trainfleet nodes`` / ``nodes release`` and ``debug`` / ``resume`` refusals, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trainfleet.store import open_store

TRAINFLEET = str(Path(sys.executable).parent / "trainfleet")


def tf(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    return subprocess.run([TRAINFLEET, *args], env=env, capture_output=True, text=True, timeout=30)


def test_nodes_lists_history_and_release_makes_a_quarantined_node_healthy(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/trainfleet.db") as store:
        for job in ("aaaa0001", "aaaa0002", "aaaa0003"):
            store.blame_node("local-2", job_id=job, attempt=0, reason=f"rank 3 killed by signal 9 in {job}")
        store.blame_node("local-0", job_id="aaaa0003", attempt=1, reason="agent lost")
    listed = json.loads(tf(tmp_path, "nodes", "--json").stdout)
    assert [(n["name"], n["state"], n["blames"]) for n in listed] == [("local-0", "suspect", 1),
                                                                      ("local-2", "quarantined", 3)]
    assert [h["kind"] for h in listed[1]["history"]][-2:] == ["blamed", "quarantined"]
    text = tf(tmp_path, "nodes").stdout
    assert "local-2  quarantined  blames 3" in text and "rank 3 killed by signal 9 in aaaa0003" in text
    out = tf(tmp_path, "nodes", "release", "local-2")
    assert out.returncode == 0 and out.stdout.strip() == "local-2: quarantined -> healthy"
    bad = tf(tmp_path, "nodes", "release", "local-7")
    assert bad.returncode == 2
    assert "unknown node 'local-7' (nodes with a history: local-0, local-2)" in bad.stderr


def test_debug_and_resume_refuse_with_one_line(tmp_path: Path) -> None:
    from trainfleet.spec import JobSpec, JobState

    with open_store(f"sqlite:///{tmp_path}/trainfleet.db") as store:
        job = store.create_job(JobSpec(name="done", command=["true"], nodes=1), run_dir=str(tmp_path / "r"))
        store.update_job(job, state=JobState.SUCCEEDED)
    out = tf(tmp_path, "debug", job)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"trainfleet: error: job {job} has no stack dump (stacks are dumped when a rank hangs)")
    again = tf(tmp_path, "resume", job)
    assert again.returncode == 2 and "already succeeded; nothing to resume" in again.stderr

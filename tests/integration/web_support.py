"""Helpers for the dashboard tests: a real SQLite store in a temp home, seeded through the Store API."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from trainfleet.spec.model import JobSpec
from trainfleet.spec.state import JobState
from trainfleet.store import MetricRow, Store
from trainfleet.store.logfiles import stamp_line

REPO = Path(__file__).resolve().parents[2]
FLEET_DIR = REPO / "examples" / "fleet"


@dataclass
class SeededJob:
    id: str
    run_dir: Path


def seed_job(store: Store, home: Path, *, name: str = "demo", state: JobState = JobState.RUNNING,
             steps: int = 20, ranks: int = 2, restart_at: int | None = None) -> SeededJob:
    """A job with attempts, ranks, per-rank log files, events and rank metrics, as the supervisor writes them.

    With ``restart_at``, attempt 0 ran steps 1..restart_at and attempt 1 resumed from step restart_at - 5.
    """
    spec = JobSpec(name=name, command=["python", "train.py"], nodes=ranks, procs_per_node=1)
    job_id = store.create_job(spec, run_dir=str(home / "runs" / "{job_id}"))
    run_dir = Path(store.get_job(job_id).run_dir)
    t0 = time.time() - 100
    store.update_job(job_id, state=JobState.RUNNING, started_at=t0)
    spans = [(0, 1, steps)] if restart_at is None else [(0, 1, restart_at), (1, restart_at - 5, steps)]
    for attempt, first, last in spans:
        store.start_attempt(job_id, attempt, master_addr="127.0.0.1", master_port=29500 + attempt,
                            started_at=t0 + attempt)
        for rank in range(ranks):
            out = run_dir / f"attempt-{attempt}" / f"node-{rank}" / f"rank-{rank}.out"
            out.parent.mkdir(parents=True, exist_ok=True)
            lines = [stamp_line(f"rank {rank} step {s}", t0 + s) for s in range(first, last + 1)]
            out.write_text("".join(lines))
            store.upsert_rank(job_id, attempt, rank, node_rank=rank, local_rank=0, host="127.0.0.1",
                              pid=1000 + rank, state=JobState.RUNNING, log_out=str(out))
            store.add_metrics(job_id, attempt, [
                MetricRow(rank, s, t0 + s, {"loss": 5.0 - 0.1 * s, "tokens_per_s": 1000.0 + s})
                for s in range(first, last + 1)])
        store.add_event(job_id, "attempt_started", f"attempt {attempt} started", attempt=attempt)
        if attempt == 0 and restart_at is not None:
            store.end_attempt(job_id, 0, state=JobState.FAILED, reason="rank 1 exited with code 1",
                              ended_at=t0 + restart_at)
            store.update_job(job_id, restarts=1)
    if state.is_terminal:
        store.update_job(job_id, state=state, ended_at=t0 + steps + 1, reason=f"job {state.value}")
    return SeededJob(job_id, run_dir)


def save_fleet_report(home: Path, report: dict) -> Path:
    """Write a doctor JSON report where the dashboard looks for it."""
    path = home / "fleet" / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path

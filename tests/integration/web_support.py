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
STACKS_DIR = REPO / "tests" / "fixtures" / "stacks"
PROBES_DIR = REPO / "tests" / "fixtures" / "probes"


@dataclass
class SeededJob:
    id: str
    run_dir: Path


def seed_job(store: Store, home: Path, *, name: str = "demo", state: JobState = JobState.RUNNING,
             steps: int = 20, ranks: int = 2, restart_at: int | None = None) -> SeededJob:
    """A job with attempts, ranks, per-rank log files, events and rank metrics, as the supervisor writes them.

    With ``restart_at``, attempt 0 ran steps 1..restart_at and attempt 1 resumed from step restart_at - 5;
    the failure is recorded with the events the supervisor writes (``rank_failed`` with fault and detection
    times, ``attempt_failed``, ``resumed``, ``caught_up``), so goodput loses detection, teardown, restart and
    recompute time.
    """
    spec = JobSpec(name=name, command=["python", "train.py"], nodes=ranks, procs_per_node=1)
    job_id = store.create_job(spec, run_dir=str(home / "runs" / "{job_id}"))
    run_dir = Path(store.get_job(job_id).run_dir)
    t0 = time.time() - 100
    store.update_job(job_id, state=JobState.RUNNING, started_at=t0)
    spans = [(0, 1, steps)] if restart_at is None else [(0, 1, restart_at), (1, restart_at - 5, steps)]
    for attempt, first, last in spans:
        store.start_attempt(job_id, attempt, master_addr="127.0.0.1", master_port=29500 + attempt,
                            started_at=t0 if attempt == 0 else t0 + first + 7)  # 2 s after the failure
        for rank in range(ranks):
            out = run_dir / f"attempt-{attempt}" / f"node-{rank}" / f"rank-{rank}.out"
            out.parent.mkdir(parents=True, exist_ok=True)
            lines = [stamp_line(f"rank {rank} step {s}", t0 + s) for s in range(first, last + 1)]
            out.write_text("".join(lines))
            store.upsert_rank(job_id, attempt, rank, node_rank=rank, local_rank=0, host="127.0.0.1",
                              pid=1000 + rank, state=JobState.RUNNING, log_out=str(out))
            store.add_metrics(job_id, attempt, [
                MetricRow(rank, s, t0 + s, {"loss": 5.0 - 0.1 * s, "tokens_per_s": 1000.0 + s,
                                                   "step_time_s": 0.25})
                for s in range(first, last + 1)])
        store.add_event(job_id, "attempt_started", f"attempt {attempt} started", attempt=attempt)
        if attempt == 0 and restart_at is not None:
            fault = t0 + restart_at
            store.add_event(job_id, "rank_failed", "rank 1 exited with code 1", attempt=0, rank=1,
                            data={"fault_ts": fault, "detected_ts": fault + 0.5, "exit_code": 1},
                            ts=fault + 0.5)
            store.end_attempt(job_id, 0, state=JobState.FAILED, reason="rank 1 exited with code 1",
                              ended_at=fault + 1.5)
            store.add_event(job_id, "attempt_failed", "attempt 0 failed", attempt=0, ts=fault + 1.5)
            store.update_job(job_id, restarts=1)
        if attempt == 1:
            store.add_event(job_id, "resumed", f"attempt 1 resumed from step {first}", attempt=1,
                            data={"resumed_step": first, "lost_step": restart_at, "recomputed_steps": 5,
                                  "first_report_ts": t0 + restart_at + 4.0}, ts=t0 + restart_at + 4.0)
            store.add_event(job_id, "caught_up", f"back at step {restart_at}", attempt=1,
                            data={"step": restart_at, "recompute_s": 2.5}, ts=t0 + restart_at + 6.5)
    if state.is_terminal:
        store.end_attempt(job_id, spans[-1][0], state=state, reason=None, ended_at=t0 + steps + 1)
        store.update_job(job_id, state=state, ended_at=t0 + steps + 1, reason=f"job {state.value}")
    return SeededJob(job_id, run_dir)


def save_fleet_report(home: Path, report: dict) -> Path:
    """Write a doctor JSON report where the dashboard looks for it."""
    path = home / "fleet" / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def seed_stack_dump(store: Store, job: SeededJob, *, attempt: int = 0, odd: int = 1,
                    files: dict[int, str] | None = None) -> dict[int, Path]:
    """A ``stacks_dumped`` event as the supervisor records it, over the real dumps in tests/fixtures/stacks
    copied into the attempt's ``stacks`` directory (rank 0 waiting in a collective, rank ``odd`` computing).

    ``files`` overrides the stored path of some ranks (to test what the web refuses to serve).
    """
    directory = job.run_dir / f"attempt-{attempt}" / "stacks"
    directory.mkdir(parents=True, exist_ok=True)
    paths = {0: directory / "rank-0.txt", odd: directory / f"rank-{odd}.txt"}
    paths[0].write_text((STACKS_DIR / "pyspy-rank-0.txt").read_text())
    paths[odd].write_text((STACKS_DIR / "pyspy-rank-2.txt").read_text())
    stored = {str(r): str(p) for r, p in paths.items()}
    stored.update({str(r): p for r, p in (files or {}).items()})
    store.add_event(job.id, "stacks_dumped",
                    f"stacks of {len(stored)} ranks in {directory}; odd rank out: {odd}", attempt=attempt,
                    data={"directory": str(directory), "files": stored, "odd_ranks": [odd],
                          "tool": ["py-spy"]})
    return paths


def seed_pairs_probe(store: Store, home: Path, fixture: Path) -> str:
    """A finished ``pairs`` probe job as ``trainfleet probe pairs`` leaves it: the job (one node per host
    of ``fixture``, a real probe-worker output), its ranks' stdout holding the records, the placement event,
    and one ``probe_results`` row per node (``health.probes.store``). Returns the job id."""
    from trainfleet.health.probes.judge import judge_pairs, node_scores
    from trainfleet.health.probes.records import pair_matrix, parse_probe_output
    from trainfleet.health.probes.store import ProbeResultRow, save_results

    text = fixture.read_text()
    records = parse_probe_output(text, source=str(fixture))
    ranks = sorted({(r.src_rank, r.src) for r in records} | {(r.dst_rank, r.dst) for r in records})
    names = [name for _, name in ranks]
    spec = JobSpec(name="probe-pairs", command=["python", "-m", "trainfleet.health.probes.worker"],
                   nodes=len(names), procs_per_node=1)
    job_id = store.create_job(spec, run_dir=str(home / "runs" / "{job_id}"))
    run_dir = Path(store.get_job(job_id).run_dir)
    t0 = time.time() - 30
    store.update_job(job_id, state=JobState.RUNNING, started_at=t0)
    store.start_attempt(job_id, 0, master_addr="127.0.0.1", master_port=29500, started_at=t0)
    store.add_event(job_id, "attempt_started", "attempt 0", attempt=0,
                    data={"master_port": 29500, "nodes": {str(i): n for i, n in enumerate(names)}})
    for rank, name in ranks:
        out = run_dir / "attempt-0" / f"node-{rank}" / f"rank-{rank}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        mine = [line for line in text.splitlines() if f'"dst_rank":{rank},' in line]
        out.write_text("".join(stamp_line(line, t0 + 1) for line in mine))
        store.upsert_rank(job_id, 0, rank, node_rank=rank, local_rank=0, host=name, pid=2000 + rank,
                          state=JobState.SUCCEEDED, log_out=str(out))
    store.end_attempt(job_id, 0, state=JobState.SUCCEEDED, reason=None, ended_at=t0 + 5)
    store.update_job(job_id, state=JobState.SUCCEEDED, ended_at=t0 + 5)
    matrix = pair_matrix(records)
    slow = {f.subject for f in judge_pairs(matrix) if f.kind == "node"}
    save_results(store, [ProbeResultRow(job_id=job_id, ts=t0 + 5, probe="pairs", backend="netns", node=n,
                                        metric="pair_bw_gbps", value=v, verdict="slow" if n in slow else "ok",
                                        data={"state": "succeeded", "nodes": len(names),
                                              "links": {d: g for (s, d), g in matrix.items() if s == n != d}})
                         for n, v in sorted(node_scores(matrix).items())])
    return job_id

"""The status document of a job: what ``trainfleet status --json`` prints and the web's JSON twin serves.

Plain JSON types only (str, int, float, None, lists, dicts with string keys), one dict per job.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from trainfleet.backends.procscan import pid_alive
from trainfleet.spec.state import JobState
from trainfleet.store.jobs import Store
from trainfleet.store.records import EventRecord, JobRecord, MetricRow

RECENT_EVENTS = 50


def job_summary(job: JobRecord, latest: dict[int, MetricRow], *, now: float | None = None) -> dict[str, Any]:
    """The short form used by ``list``: id, name, state, restarts, shape, times and the latest step/loss."""
    now = time.time() if now is None else now
    step, loss = progress(latest)
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "restarts": job.restarts,
        "nodes": job.nodes,
        "procs_per_node": job.procs_per_node,
        "backend": job.backend,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "duration_s": job.duration_s(now),
        "step": step,
        "loss": loss,
    }


def job_status(store: Store, job_id: str, *, now: float | None = None) -> dict[str, Any]:
    """Everything ``status`` shows about one job (``job_id`` may be a unique prefix).

    Keys: id, name, state, reason, restarts, run_dir, attempts (oldest first), attempt (latest number or
    None), ranks (of the latest attempt), latest ({rank: {step, ts, loss, ...}}), events (the last 50),
    spec, supervisor, the fields of ``job_summary``, and the failure story: goodput ({ratio, productive_s,
    lost_s: {detection, teardown, restart, recompute}, ...}), story (one line per attempt), stacks (the
    newest stack dump: directory, files, odd_ranks; None without one). Raises ``JobNotFound``.
    """
    from trainfleet.supervise.goodput import compute as compute_goodput
    from trainfleet.supervise.story import attempt_story, newest_stacks

    job = store.get_job(job_id)
    latest = store.latest_metrics(job.id)
    attempts = store.attempts(job.id)
    ranks = store.ranks(job.id)
    all_events = store.events(job.id)
    events = all_events[-RECENT_EVENTS:]
    now = time.time() if now is None else now
    doc = job_summary(job, latest, now=now)
    doc.update({
        "run_dir": job.run_dir,
        "attempt": attempts[-1].attempt if attempts else (ranks[0].attempt if ranks else None),
        "attempts": [_attempt_dict(a) for a in attempts],
        "ranks": [_rank_dict(r) for r in ranks],
        "latest": {str(rank): _metric_dict(row) for rank, row in sorted(latest.items())},
        "supervisor": {"pid": job.supervisor_pid, "addr": job.supervisor_addr,
                       "alive": None if job.state.is_terminal else _alive(job.supervisor_pid)},
        "events": [_event_dict(e) for e in events],
        "spec": job.spec,
        "goodput": compute_goodput(all_events, started_at=job.started_at, ended_at=job.ended_at,
                                   now=now).to_dict(),
        "story": attempt_story(attempts, all_events),
        "stacks": newest_stacks(all_events),
    })
    return doc


def progress(latest: dict[int, MetricRow]) -> tuple[int | None, float | None]:
    """The job's step (the slowest rank's, so it is what every rank has reached) and rank 0's loss."""
    if not latest:
        return None, None
    step = min(row.step for row in latest.values())
    first = latest[min(latest)]
    loss = first.values.get("loss")
    return step, (float(loss) if isinstance(loss, int | float) else None)


def _alive(pid: int | None) -> bool | None:
    """Whether the supervisor process still runs on this host (None: no pid recorded yet)."""
    return None if pid is None else pid_alive(pid)


def _attempt_dict(a: Any) -> dict[str, Any]:
    d = asdict(a)
    d.pop("job_id")
    d["state"] = JobState(a.state).value
    return d


def _rank_dict(r: Any) -> dict[str, Any]:
    d = asdict(r)
    d.pop("job_id")
    d["state"] = JobState(r.state).value
    return d


def _event_dict(e: EventRecord) -> dict[str, Any]:
    d = asdict(e)
    d.pop("job_id")
    return d


def _metric_dict(row: MetricRow) -> dict[str, Any]:
    return {"step": row.step, "ts": row.ts, **row.values}

"""``service.prepare_resume``: a failed or cancelled job that runs again loses the reason and end time of its
previous end, on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfleet import service
from trainfleet.errors import InputError
from trainfleet.spec import JobSpec, JobState
from trainfleet.store import open_store

CAUSE = "node 0 rank 0 exited with code 3"
SPEC = JobSpec(name="resumable", command=["python", "train.py"], nodes=1)


@pytest.mark.parametrize("final", [JobState.FAILED, JobState.CANCELLED])
def test_a_resumed_job_is_pending_with_no_reason_and_no_end(tmp_path: Path, final: JobState) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        job = store.create_job(SPEC, run_dir=str(tmp_path / "runs" / "{job_id}"))
        store.update_job(job, state=JobState.RUNNING, started_at=100.0)
        store.start_attempt(job, 0, master_addr="127.0.0.1", master_port=29500, started_at=100.0)
        store.end_attempt(job, 0, state=final, reason=CAUSE, ended_at=110.0)
        store.update_job(job, state=final, reason=f"{CAUSE} (no restarts allowed)", ended_at=110.0)

        assert service.prepare_resume(job, store) == 1
        record = store.get_job(job)
        assert (record.state, record.restarts) == (JobState.PENDING, 1)
        assert record.reason is None and record.ended_at is None
        assert record.started_at == 100.0  # the job keeps its first start
        attempt = store.attempts(job)[0]  # the attempt that ended keeps its own record
        assert (attempt.state, attempt.reason, attempt.ended_at) == (final, CAUSE, 110.0)
        assert [e.kind for e in store.events(job)][-1] == "resume"


def test_a_succeeded_job_is_not_resumed_and_keeps_its_record(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        job = store.create_job(SPEC, run_dir=str(tmp_path / "runs" / "{job_id}"))
        store.update_job(job, state=JobState.SUCCEEDED, reason="done", ended_at=5.0)
        with pytest.raises(InputError, match="already succeeded"):
            service.prepare_resume(job, store)
        record = store.get_job(job)
        assert (record.state, record.reason, record.ended_at) == (JobState.SUCCEEDED, "done", 5.0)

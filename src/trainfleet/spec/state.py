"""The one state enum of jobs, attempts and ranks."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Lifecycle of a job, of one attempt of it, and of one rank.

    ``pending -> running -> succeeded | failed | cancelled``. The same five strings are used for jobs,
    attempts and ranks; backends map their native states into these (one small table per backend).
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once nothing will change any more: succeeded, failed or cancelled."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

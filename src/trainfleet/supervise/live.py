"""The supervisor's picture of a running job, handed to an observer (the foreground ``run`` view)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainfleet.spec.state import JobState


@dataclass
class RankView:
    """One rank as last seen: where it runs, its state, latest step and reported values."""

    rank: int
    node_rank: int
    state: JobState = JobState.PENDING
    step: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    signal: int | None = None


@dataclass
class JobView:
    """The job as the supervisor sees it now; ``ranks`` maps global rank -> ``RankView``."""

    job_id: str
    name: str
    state: JobState
    attempt: int = 0
    restarts: int = 0
    reason: str | None = None
    ranks: dict[int, RankView] = field(default_factory=dict)

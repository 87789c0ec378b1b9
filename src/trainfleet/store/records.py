"""Frozen records the store returns (and ``MetricRow``, which it also accepts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainfleet.spec.state import JobState


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: its spec (a JSON-ready dict), state and bookkeeping. Times are epoch seconds."""

    id: str
    name: str
    state: JobState
    reason: str | None
    restarts: int
    spec: dict[str, Any]
    run_dir: str
    backend: str
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    supervisor_pid: int | None = None
    supervisor_addr: str | None = None

    @property
    def nodes(self) -> int:
        """Logical nodes asked for in the spec."""
        return int(self.spec.get("nodes", 0))

    @property
    def procs_per_node(self) -> int:
        """Ranks per node asked for in the spec."""
        return int(self.spec.get("procs_per_node", 1))

    def duration_s(self, now: float) -> float | None:
        """Seconds from start to end (or to ``now`` while running); None before it started."""
        if self.started_at is None:
            return None
        return (self.ended_at if self.ended_at is not None else now) - self.started_at


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt (the first run, or a restart) of a job, numbered from 0."""

    job_id: str
    attempt: int
    state: JobState
    reason: str | None
    master_addr: str | None
    master_port: int | None
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True)
class RankRecord:
    """One rank of one attempt: where and how it ran and how it ended (exit code or signal number)."""

    job_id: str
    attempt: int
    rank: int
    node_rank: int
    local_rank: int
    host: str | None
    pid: int | None
    state: JobState
    exit_code: int | None
    signal: int | None
    started_at: float | None
    ended_at: float | None
    log_out: str | None
    log_err: str | None


@dataclass(frozen=True)
class EventRecord:
    """Something that happened to a job, as decided by the supervisor or the CLI (typed by ``kind``)."""

    id: int
    job_id: str
    ts: float
    kind: str
    message: str
    attempt: int | None
    node: str | None
    rank: int | None
    data: dict[str, Any] | None


@dataclass(frozen=True)
class MetricRow:
    """One ``trainfleet.report`` call of one rank: its step, when (epoch seconds), and its scalar values."""

    rank: int
    step: int
    ts: float
    values: dict[str, float] = field(default_factory=dict)

"""Goodput from a job's events: lost time per cause and the effective-training ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainfleet.supervise.goodput import compute


@dataclass
class Ev:
    kind: str
    ts: float
    attempt: int | None = None
    data: dict[str, Any] | None = None


def test_one_crash_splits_into_detection_teardown_restart_and_recompute() -> None:
    events = [
        Ev("attempt_started", 100.0, 0),
        Ev("rank_failed", 150.5, 0, {"fault_ts": 150.0, "detected_ts": 150.5}),
        Ev("attempt_failed", 152.5, 0),
        Ev("restart", 152.5, 1),
        Ev("attempt_started", 153.5, 1),
        Ev("resumed", 160.0, 1, {"first_report_ts": 160.0, "recomputed_steps": 7}),
        Ev("caught_up", 163.0, 1, {"recompute_s": 3.0}),
        Ev("attempt_succeeded", 200.0, 1),
    ]
    gp = compute(events, started_at=100.0, ended_at=200.0, now=999.0)
    assert gp.lost_s == {"detection": 0.5, "teardown": 2.0, "restart": 7.5, "recompute": 3.0}
    assert gp.wall_s == 100.0 and gp.productive_s == 87.0 and gp.ratio == 0.87
    doc = gp.to_dict()
    assert doc["ratio"] == 0.87 and doc["recomputed_steps"] == 7 and doc["failures"] == 1


def test_a_job_without_failures_is_all_productive_and_an_unstarted_one_has_no_ratio() -> None:
    gp = compute([Ev("attempt_started", 0.0, 0), Ev("attempt_succeeded", 50.0, 0)], started_at=0.0,
                 ended_at=50.0, now=60.0)
    assert gp.ratio == 1.0 and sum(gp.lost_s.values()) == 0
    assert compute([], started_at=None, ended_at=None, now=5.0).ratio is None


def test_a_running_job_counts_the_restart_so_far_and_a_final_failure_counts_detection_and_teardown() -> None:
    events = [Ev("agent_lost", 12.0, 0, {"fault_ts": 10.0, "detected_ts": 12.0}),
              Ev("attempt_failed", 13.0, 0)]
    running = compute(events, started_at=0.0, ended_at=None, now=20.0)
    assert running.lost_s == {"detection": 2.0, "teardown": 1.0, "restart": 7.0, "recompute": 0.0}
    final = compute(events, started_at=0.0, ended_at=13.0, now=99.0)
    assert final.lost_s["restart"] == 0.0 and final.productive_s == 10.0


def test_a_fault_time_after_detection_is_clamped() -> None:
    events = [Ev("rank_hung", 5.0, 0, {"fault_ts": 9.0, "detected_ts": 5.0}), Ev("attempt_failed", 6.0, 0)]
    assert compute(events, started_at=0.0, ended_at=6.0, now=6.0).lost_s["detection"] == 0.0

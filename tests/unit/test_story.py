"""The failure story of a job (``supervise.story``); which failures blame a node (``supervise.monitor``)."""

from __future__ import annotations

from trainfleet.spec import JobState
from trainfleet.store.records import AttemptRecord, EventRecord
from trainfleet.supervise.monitor import AgentLost, RankCrashed, RankHung
from trainfleet.supervise.story import attempt_story


def attempt(k: int, state: JobState, reason: str | None = None, start: float = 0.0, end: float = 10.0
            ) -> AttemptRecord:
    return AttemptRecord("j1", k, state, reason, "127.0.0.1", 29500, start, end)


def event(k: int, kind: str, message: str, ts: float = 1.0, **data: object) -> EventRecord:
    return EventRecord(ts * 100 + len(kind), "j1", ts, kind, message, k, None, None, dict(data) or None)


def test_only_signals_lost_agents_and_hangs_blame_a_node() -> None:
    assert not RankCrashed(1, 3, 13, None, 0.0).implicates_node  # the program's own exit code
    assert RankCrashed(1, 3, None, 9, 0.0).implicates_node  # killed: OOM killer, a node fault, an operator
    assert AgentLost(0, "no heartbeat").implicates_node
    assert RankHung(0, 1, 5, 12.0, 10.0).implicates_node


def test_story_names_the_cause_the_blame_and_the_preemption() -> None:
    started = {"nodes": {"0": "node1", "1": "node2"}}
    events = [
        event(0, "attempt_started", "attempt 0", 0.5, **started),
        event(0, "rank_failed", "node 1 rank 1 exited with code 13 [node2]", 4.0, fault_ts=3.0,
              detected_ts=3.2),
        event(0, "node_not_blamed", "node2 not blamed: an exit code is the program's failure"),
        event(1, "attempt_started", "attempt 1", 11.0, **started),
        event(1, "resumed", "resumed", 12.0, resumed_step=40, recomputed_steps=3),
        event(1, "rank_failed", "node 0 rank 0 killed by signal 15 [node1]", 19.0, fault_ts=19.0),
        event(1, "preempted", "slurm ended attempt 1 itself (REQUEUED) after a checkpoint notice"),
        event(2, "attempt_started", "attempt 2", 21.0, **started),
    ]
    attempts = [attempt(0, JobState.FAILED, end=3.5), attempt(1, JobState.CANCELLED, "preempted", 11.0, 20.0),
                attempt(2, JobState.SUCCEEDED, None, 21.0, 30.0)]
    first, second, third = attempt_story(attempts, events)
    assert first.startswith("attempt 0; on node1, node2; failed: node 1 rank 1 exited with code 13 [node2]")
    assert "detected in 0.2s, torn down in 0.3s" in first and "node2 not blamed" in first
    assert "resumed at step 40 (3 redone)" in second
    assert "preempted: slurm ended attempt 1 itself (REQUEUED)" in second and "signal 15" not in second
    assert third == "attempt 2; on node1, node2; succeeded"

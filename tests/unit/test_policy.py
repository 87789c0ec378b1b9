"""Restart decisions with backoff, node placement with spares, and node history across jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfleet.errors import StoreError
from trainfleet.spec.model import RestartPolicy
from trainfleet.spec.state import JobState
from trainfleet.store import open_store
from trainfleet.store.nodes import NodeState
from trainfleet.supervise.nodes import NoUsableNodes, node_pool, place
from trainfleet.supervise.policy import Outcome, backoff_s, decide

S, Q = NodeState.SUSPECT, NodeState.QUARANTINED


def test_failures_restart_with_backoff_until_the_budget_is_spent_then_fail_with_the_last_cause() -> None:
    policy = RestartPolicy(max_restarts=2, backoff_s=1.5)
    first = decide(Outcome.FAILED, attempt=0, policy=policy, cause="node 1 rank 3 killed by signal 9")
    assert first.restart and first.delay_s == 1.5
    last = decide(Outcome.FAILED, attempt=2, policy=policy, cause="node 0 agent lost")
    assert not last.restart and last.final is JobState.FAILED
    assert last.reason == "node 0 agent lost (after 2 restarts)"
    assert decide(Outcome.SUCCEEDED, attempt=1, policy=policy).final is JobState.SUCCEEDED
    assert decide(Outcome.CANCELLED, attempt=0, policy=policy, cause="by user").reason == "by user"
    none = decide(Outcome.FAILED, attempt=0, policy=RestartPolicy(), cause="boom")
    assert none.reason == "boom (no restarts allowed)"


def test_backoff_grows_by_the_factor_per_restart_up_to_the_cap() -> None:
    policy = RestartPolicy(max_restarts=6, backoff_s=1.0, backoff_factor=2.0, max_backoff_s=5.0)
    assert [backoff_s(policy, a) for a in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    delays = [decide(Outcome.FAILED, attempt=a, policy=policy, cause="boom").delay_s for a in range(6)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert not decide(Outcome.FAILED, attempt=6, policy=policy, cause="boom").restart


def test_default_backoff_is_constant() -> None:
    assert [backoff_s(RestartPolicy(backoff_s=3), a) for a in range(4)] == [3.0, 3.0, 3.0, 3.0]
    assert backoff_s(RestartPolicy(backoff_s=0, backoff_factor=10), 7) == 0.0


def test_a_cap_below_backoff_s_never_shortens_the_first_wait() -> None:
    policy = RestartPolicy(backoff_s=600, max_backoff_s=300)  # a spec written before the cap existed
    assert [backoff_s(policy, a) for a in range(3)] == [600.0, 600.0, 600.0]
    growing = RestartPolicy(backoff_s=600, backoff_factor=2, max_backoff_s=300)
    assert backoff_s(growing, 2) == 600.0


def test_a_huge_restart_count_reaches_the_cap_without_overflow() -> None:
    policy = RestartPolicy(max_restarts=100_000, backoff_s=0.5, backoff_factor=10, max_backoff_s=120)
    assert backoff_s(policy, 50_000) == 120.0
    assert decide(Outcome.FAILED, attempt=99_999, policy=policy).delay_s == 120.0


def test_a_blamed_node_is_replaced_by_a_spare_and_kept_when_there_is_none() -> None:
    pool = node_pool(object(), 2, 1)
    assert pool == ["node-0", "node-1", "node-2"]
    first = place(pool, 2, {})
    assert first == ["node-0", "node-1"]
    second = place(pool, 2, {"node-1": S}, previous=first, blamed={"node-1"})
    assert second == ["node-0", "node-2"]  # node rank 0 stays where it was
    third = place(pool, 2, {"node-1": S, "node-2": S}, previous=second, blamed={"node-1", "node-2"})
    assert third == ["node-0", "node-2"]  # no better node free: the suspect stays
    assert place(["a", "b"], 2, {"b": S}, previous=["a", "b"], blamed={"b"}) == ["a", "b"]


def test_quarantined_nodes_are_never_used() -> None:
    pool = ["local-0", "local-1", "local-2"]
    assert place(pool, 2, {"local-0": Q}) == ["local-1", "local-2"]
    assert place(pool, 2, {"local-1": Q}, previous=["local-0", "local-1"]) == ["local-0", "local-2"]
    with pytest.raises(NoUsableNodes, match="only 1 of 3 are usable; quarantined: local-0, local-1"):
        place(pool, 2, {"local-0": Q, "local-1": Q})


def test_a_node_blamed_in_three_jobs_is_quarantined_until_released(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        first = store.blame_node("local-3", job_id="aaaa0001", attempt=0, reason="rank 1 killed by signal 9")
        assert first.state is S and first.blames == 1
        again = store.blame_node("local-3", job_id="aaaa0001", attempt=1, reason="hung")
        assert again.state is S and again.blames == 2  # twice in one job is still one job
        store.blame_node("local-3", job_id="aaaa0002", attempt=0, reason="agent lost")
        third = store.blame_node("local-3", job_id="aaaa0003", attempt=0, reason="agent lost")
        assert third.state is Q and third.last_job_id == "aaaa0003"
        kinds = [e.kind for e in store.node_events("local-3")]
        assert kinds == ["blamed", "blamed", "blamed", "blamed", "quarantined"]
        released = store.release_node("local-3")
        assert released.state is NodeState.HEALTHY and released.blames == 4
        after = store.blame_node("local-3", job_id="aaaa0004", attempt=0, reason="again")
        assert after.state is S  # the count starts over after a release
        assert [n.name for n in store.nodes()] == ["local-3"] and store.node("local-9") is None
        with pytest.raises(StoreError, match="unknown node 'local-9' \\(known: local-3\\)"):
            store.release_node("local-9")

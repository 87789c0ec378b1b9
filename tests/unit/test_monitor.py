"""Detection logic: silent agents, hung ranks, stragglers, and reading real stack dumps back."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainfleet.supervise.monitor import HeartbeatMonitor, ProgressMonitor, RankCrashed, RankHung
from trainfleet.supervise.stacks import load_dump, main_thread_frames, odd_ranks

STACKS = Path(__file__).parents[1] / "fixtures" / "stacks"


def test_a_node_is_silent_only_after_the_deadline_and_oldest_first() -> None:
    mon = HeartbeatMonitor(interval_s=1.0, misses=2.5)
    for node in range(5):
        mon.beat(node, now=100.0 + node * 0.1)
    mon.beat(0, now=101.0)  # node 0 is fresh again
    assert mon.silent(now=102.5) == []
    assert [n for n, _ in mon.silent(now=102.75)] == [1, 2]
    silent = dict(mon.silent(now=104.0))
    assert list(silent) == [1, 2, 3, 4, 0] and round(silent[1], 6) == 3.9
    mon.forget(1)
    assert len(mon) == 4 and 1 not in dict(mon.silent(now=200.0))


def test_heartbeat_check_cost_does_not_grow_with_healthy_nodes() -> None:
    mon = HeartbeatMonitor(interval_s=1.0, misses=3)
    for node in range(20_000):
        mon.beat(node, now=1000.0)
    for node in range(20_000):
        if node != 7:
            mon.beat(node, now=1002.0)  # everyone beats again but node 7, which is now first in line
    assert [n for n, _ in mon.silent(now=1003.5)] == [7]
    assert mon.silent(now=1002.9) == []


def test_a_rank_hangs_only_after_its_first_report_and_only_while_it_lives() -> None:
    mon = ProgressMonitor(hang_timeout_s=4.0)
    mon.started(0, node=0)
    mon.started(1, node=1)
    assert mon.hung(now=100.0) == []  # never reported: startup is not a hang
    mon.progress(0, 1, ts=1.0, values={}, now=10.0)
    mon.progress(1, 1, ts=1.0, values={}, now=10.0)
    mon.progress(0, 2, ts=2.0, values={}, now=12.0)
    mon.progress(1, 1, ts=2.5, values={}, now=13.0)  # the same step again is no progress
    hung = mon.hung(now=14.5)
    assert [(rank, round(silent, 1)) for rank, _, silent in hung] == [(1, 4.5)]
    assert mon.last_step(1) == 1
    mon.exited(1)
    assert mon.hung(now=30.0)[0][0] == 0
    mon.paused = True  # a rank finished: the others' wait is the job ending, not a hang
    assert mon.hung(now=30.0) == []


def test_with_a_startup_timeout_a_rank_that_never_reports_is_hung() -> None:
    mon = ProgressMonitor(hang_timeout_s=4.0, startup_timeout_s=20.0)
    mon.started(0, node=0, now=100.0)
    mon.started(1, node=1, now=101.0)
    mon.progress(0, 1, ts=1.0, values={}, now=110.0)
    assert (mon.timeout_for(0), mon.timeout_for(1)) == (4.0, 20.0)
    assert [rank for rank, _, _ in mon.hung(now=113.0)] == []
    assert [(rank, silent) for rank, _, silent in mon.hung(now=121.5)] == [(1, 20.5), (0, 11.5)]
    hang = RankHung(1, 1, None, 20.5, mon.timeout_for(1))
    assert hang.describe() == ("node 1 rank 1 hung: no progress reported in 20.5s since it started "
                               "(startup_timeout_s 20)")


def test_a_rank_whose_step_time_exceeds_k_times_the_others_is_a_straggler_once() -> None:
    mon = ProgressMonitor(hang_timeout_s=60, straggler_factor=2.0, window=4)
    for rank in range(4):
        mon.started(rank, node=rank // 2)
    for step in range(1, 5):
        for rank in range(4):
            compute = 0.30 if rank == 3 else 0.10 + 0.001 * rank
            mon.progress(rank, step, ts=step, values={"step_time_s": compute}, now=step)
    found = mon.stragglers()
    assert [(s.rank, s.node) for s in found] == [(3, 1)]
    assert round(found[0].ratio, 1) == 3.0 and found[0].median_s == 0.101
    assert "node 1 rank 3 is a straggler: step time 300 ms = 3.0x the median 101 ms" in found[0].describe()
    assert mon.stragglers() == []  # reported once until it recovers


def test_without_a_reported_step_time_the_gap_between_reports_is_used() -> None:
    mon = ProgressMonitor(hang_timeout_s=60, window=3)
    for rank in range(2):
        mon.started(rank, node=0)
    for step in range(1, 5):
        mon.progress(0, step, ts=step * 1.0, values={}, now=step)
        mon.progress(1, step, ts=step * 5.0, values={}, now=step)
    assert [s.rank for s in mon.stragglers()] == [1]


def test_failures_describe_themselves() -> None:
    assert RankCrashed(1, 3, None, 9, 0.0).describe() == "node 1 rank 3 killed by signal 9"
    assert RankCrashed(0, 0, 13, None, 0.0).describe() == "node 0 rank 0 exited with code 13"
    hang = RankHung(1, 2, 61, 4.2, 4.0, "its process is stopped")
    assert hang.describe() == ("node 1 rank 2 hung: no progress for 4.2s (hang_timeout_s 4) after step 61; "
                               "its process is stopped")


def test_py_spy_and_faulthandler_dumps_parse_to_main_thread_frames() -> None:
    stopped = load_dump(STACKS / "pyspy-rank-2.txt")
    waiting = load_dump(STACKS / "pyspy-rank-0.txt")
    assert stopped is not None and waiting is not None
    assert (stopped.rank, stopped.node, stopped.state, stopped.tool) == (2, 1, "T", "py-spy")
    assert stopped.signature == "compute (trainer.py)" and waiting.signature == "collective (trainer.py)"
    assert [f.short() for f in stopped.frames] == ["compute (trainer.py:65)", "<module> (trainer.py:83)"]
    fh = load_dump(STACKS / "faulthandler-rank-5.txt")
    assert fh is not None and fh.tool == "faulthandler" and fh.node == 2
    assert [f.func for f in fh.frames] == ["all_reduce", "<module>"]  # the current thread, not the worker
    assert main_thread_frames("no stacks here") == []


def test_the_odd_rank_out_differs_from_the_majority_or_is_the_stopped_one(tmp_path: Path) -> None:
    for rank in range(4):
        src = STACKS / ("pyspy-rank-2.txt" if rank == 2 else "pyspy-rank-0.txt")
        text = src.read_text().replace("# rank 2 ", f"# rank {rank} ").replace("# rank 0 ", f"# rank {rank} ")
        (tmp_path / f"rank-{rank}.txt").write_text(text)
    stacks = {r: load_dump(tmp_path / f"rank-{r}.txt") for r in range(4)}
    assert odd_ranks(stacks) == [2]  # type: ignore[arg-type]
    two = {0: stacks[0], 2: stacks[2]}
    assert odd_ranks(two) == [2]  # type: ignore[arg-type]  # no majority of two: the stopped process
    same = {r: stacks[0] for r in range(3)}
    assert odd_ranks(same) == []  # type: ignore[arg-type]
    shutil.rmtree(tmp_path)
    assert load_dump(tmp_path / "rank-0.txt") is None


def test_with_two_ranks_the_one_outside_the_collective_is_the_odd_one(tmp_path: Path) -> None:
    fh = (STACKS / "faulthandler-rank-5.txt").read_text()  # main thread inside `all_reduce`
    waiting = fh.replace("# rank 5 ", "# rank 0 ")
    busy = (STACKS / "pyspy-rank-2.txt").read_text().replace("state T", "state S")  # in `compute`, running
    (tmp_path / "rank-0.txt").write_text(waiting)
    (tmp_path / "rank-1.txt").write_text(busy.replace("# rank 2 ", "# rank 1 "))
    stacks = {r: load_dump(tmp_path / f"rank-{r}.txt") for r in range(2)}
    assert stacks[0].in_collective and not stacks[1].in_collective  # type: ignore[union-attr]
    assert odd_ranks(stacks) == [1]  # type: ignore[arg-type]


def test_a_hang_blames_the_odd_rank_out_else_the_longest_silent_one() -> None:
    from trainfleet.supervise.stacks import blame_hang

    files = {0: str(STACKS / "pyspy-rank-0.txt"), 2: str(STACKS / "pyspy-rank-2.txt")}
    rank, why, stacks, odd = blame_hang(files, silent=[0, 2])
    assert (rank, why, odd, sorted(stacks)) == (2, "its process is stopped", [2], [0, 2])
    assert blame_hang({}, silent=[3, 1]) == (3, "silent longest", {}, [])


def test_stack_dump_messages_round_trip_through_the_wire_format() -> None:
    from trainfleet.runtime.protocol import DumpStacks, LineBuffer, StacksDumped, encode

    sent = [DumpStacks("hang", "/runs/j/attempt-0/stacks"),
            StacksDumped(1, {2: "/s/rank-2.txt", 3: "/s/rank-3.txt"}, {2: "T", 3: "S"}, "py-spy")]
    got = LineBuffer().feed(b"".join(encode(m) for m in sent))
    assert got == sent and got[1].files[2] == "/s/rank-2.txt"  # type: ignore[union-attr]

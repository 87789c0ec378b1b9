"""Rank log files: finding them, merging ranks in time order, tails, partial lines, following."""

from __future__ import annotations

from pathlib import Path

from trainfleet.store.logfiles import (
    LogFollower,
    attempt_dirs,
    format_ts,
    latest_attempt,
    log_sources,
    read_merged,
    split_stamp,
    stamp_line,
)

T0 = 1_796_284_800.0  # 2026-12-03T08:00:00Z


def rank_file(run_dir: Path, attempt: int, node: int, rank: int, stream: str = "out") -> Path:
    path = run_dir / f"attempt-{attempt}" / f"node-{node}" / f"rank-{rank}.{stream}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def append(path: Path, *lines: tuple[float, str], partial: str | None = None) -> None:
    with path.open("a") as fh:
        for ts, text in lines:
            fh.write(stamp_line(text, ts))
        if partial is not None:
            fh.write(partial)


def rendered(lines) -> list[str]:
    return [line.render() for line in lines]


def test_stamp_format_and_split() -> None:
    assert format_ts(T0 + 0.123456) == "2026-12-03T08:00:00.123456Z"
    assert stamp_line("hello\n", T0) == "2026-12-03T08:00:00.000000Z hello\n"
    assert split_stamp(b"2026-12-03T07:20:00.5Z short fraction") == ("2026-12-03T07:20:00.500000000",
                                                                    "short fraction")
    assert split_stamp(b"no stamp here") == (None, "no stamp here")


def test_merge_interleaves_ranks_by_time_with_node_rank_prefixes(tmp_path: Path) -> None:
    r0 = rank_file(tmp_path, 0, 0, 0)
    r1 = rank_file(tmp_path, 0, 0, 1)
    r2 = rank_file(tmp_path, 0, 1, 2)
    e1 = rank_file(tmp_path, 0, 0, 1, "err")
    append(r0, (T0 + 0.0, "r0 a"), (T0 + 3.0, "r0 b"), (T0 + 3.5, "r0 c"))
    append(r1, (T0 + 1.0, "r1 a"), (T0 + 3.2, "r1 b"))
    append(r2, (T0 + 0.5, "r2 a"), (T0 + 4.0, "r2 b"))
    append(e1, (T0 + 2.0, "r1 warning"))
    lines = read_merged(log_sources(tmp_path, 0))
    assert rendered(lines) == [
        "[0:0] r0 a", "[1:2] r2 a", "[0:1] r1 a", "[0:1 err] r1 warning",
        "[0:0] r0 b", "[0:1] r1 b", "[0:0] r0 c", "[1:2] r2 b",
    ]
    # timestamps are stripped in display but kept for ordering
    assert all("2026-" not in text for text in rendered(lines))


def test_microsecond_ties_keep_each_file_in_order(tmp_path: Path) -> None:
    a = rank_file(tmp_path, 0, 0, 0)
    b = rank_file(tmp_path, 0, 1, 1)
    append(a, (T0, "a1"), (T0, "a2"))
    append(b, (T0, "b1"))
    assert rendered(read_merged(log_sources(tmp_path, 0))) == ["[0:0] a1", "[0:0] a2", "[1:1] b1"]


def test_partial_last_line_and_unstamped_lines(tmp_path: Path) -> None:
    a = rank_file(tmp_path, 0, 0, 0)
    b = rank_file(tmp_path, 0, 0, 1)
    append(a, (T0 + 1, "a complete"), partial=format_ts(T0 + 5) + " a partial without newline")
    append(b, (T0 + 2, "b first"))
    with b.open("a") as fh:
        fh.write("Traceback continuation without a stamp\n")
    append(b, (T0 + 3, "b last"))
    assert rendered(read_merged(log_sources(tmp_path, 0))) == [
        "[0:0] a complete", "[0:1] b first", "[0:1] Traceback continuation without a stamp",
        "[0:1] b last", "[0:0] a partial without newline",
    ]


def test_tail_and_single_rank(tmp_path: Path) -> None:
    a = rank_file(tmp_path, 0, 0, 0)
    b = rank_file(tmp_path, 0, 0, 1)
    append(a, *[(T0 + 2 * i, f"a{i}") for i in range(500)])
    append(b, *[(T0 + 2 * i + 1, f"b{i}") for i in range(500)])
    last3 = read_merged(log_sources(tmp_path, 0), tail=3)
    assert rendered(last3) == ["[0:1] b498", "[0:0] a499", "[0:1] b499"]
    assert read_merged(log_sources(tmp_path, 0), tail=0) == []
    only_b = read_merged(log_sources(tmp_path, 0, rank=1))
    assert len(only_b) == 500 and {line.source.rank for line in only_b} == {1}


def test_tail_reads_across_block_boundaries(tmp_path: Path) -> None:
    a = rank_file(tmp_path, 0, 0, 0)
    long = "x" * 100_000
    append(a, (T0, "first"), (T0 + 1, long), (T0 + 2, "last"))
    assert [line.text for line in read_merged(log_sources(tmp_path, 0), tail=2)] == [long, "last"]


def test_attempt_discovery(tmp_path: Path) -> None:
    assert latest_attempt(tmp_path / "missing") is None
    rank_file(tmp_path, 0, 0, 0)
    rank_file(tmp_path, 2, 0, 0)
    (tmp_path / "attempt-x").mkdir()
    (tmp_path / "supervisor.log").touch()
    assert sorted(attempt_dirs(tmp_path)) == [0, 2] and latest_attempt(tmp_path) == 2
    (tmp_path / "attempt-2" / "node-0" / "notes.txt").touch()
    assert [(s.node, s.rank, s.stream) for s in log_sources(tmp_path, 2)] == [(0, 0, "out")]
    assert log_sources(tmp_path, 7) == []


def test_follower_returns_new_lines_and_completes_partial_ones(tmp_path: Path) -> None:
    a = rank_file(tmp_path, 0, 0, 0)
    b = rank_file(tmp_path, 0, 1, 1)
    follower = LogFollower(tmp_path)
    append(a, (T0 + 1, "a1"), partial=format_ts(T0 + 3) + " a2 hal")
    append(b, (T0 + 2, "b1"))
    assert rendered(follower.poll()) == ["[0:0] a1", "[1:1] b1"]
    assert follower.poll() == []
    with a.open("a") as fh:
        fh.write("f done\n")
    append(b, (T0 + 4, "b2"))
    assert rendered(follower.poll()) == ["[0:0] a2 half done", "[1:1] b2"]
    append(a, partial=format_ts(T0 + 5) + " left over at exit")
    assert follower.poll() == []
    assert rendered(follower.drain()) == ["[0:0] left over at exit"]


def test_follower_with_tail_starts_near_the_end(tmp_path: Path) -> None:
    a = rank_file(tmp_path, 0, 0, 0)
    append(a, *[(T0 + i, f"a{i}") for i in range(10)], partial=format_ts(T0 + 20) + " part")
    follower = LogFollower(tmp_path, tail=2)
    assert rendered(follower.poll()) == ["[0:0] a8", "[0:0] a9"]
    with a.open("a") as fh:
        fh.write("ial\n")
    assert rendered(follower.poll()) == ["[0:0] partial"]


def test_follower_moves_to_a_new_attempt_after_draining_the_old(tmp_path: Path) -> None:
    old = rank_file(tmp_path, 0, 0, 0)
    append(old, (T0, "old 1"))
    follower = LogFollower(tmp_path)
    assert rendered(follower.poll()) == ["[0:0] old 1"] and follower.attempt == 0
    append(old, (T0 + 1, "old crash"), partial=format_ts(T0 + 2) + " old partial")
    new = rank_file(tmp_path, 1, 0, 0)
    append(new, (T0 + 10, "new 1"))
    lines = follower.poll()
    assert rendered(lines) == ["[0:0] old crash", "[0:0] old partial", "[0:0] new 1"]
    assert [line.source.attempt for line in lines] == [0, 0, 1] and follower.attempt == 1


def test_follower_fixed_attempt_and_rank(tmp_path: Path) -> None:
    append(rank_file(tmp_path, 0, 0, 0), (T0, "attempt 0 rank 0"))
    append(rank_file(tmp_path, 0, 0, 1), (T0, "attempt 0 rank 1"))
    append(rank_file(tmp_path, 1, 0, 1), (T0, "attempt 1 rank 1"))
    follower = LogFollower(tmp_path, attempt=0, rank=1)
    assert rendered(follower.poll()) == ["[0:1] attempt 0 rank 1"]

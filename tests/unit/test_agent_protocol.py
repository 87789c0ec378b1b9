"""Agent <-> supervisor messages, timestamped rank log lines, and the restart decision."""

from __future__ import annotations

import io
import os
import re

import pytest

from trainfleet.runtime.logpipe import LineStamper, PipeLog, utc_stamp
from trainfleet.runtime.protocol import (
    AgentDone,
    CancelRequest,
    Heartbeat,
    Hello,
    LineBuffer,
    ProgressRow,
    ProtocolError,
    RankExited,
    RankStarted,
    Stop,
    decode,
    encode,
    parse_addr,
)
from trainfleet.spec import JobState, RestartPolicy
from trainfleet.supervise.policy import Outcome, decide

STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")

MESSAGES = [
    Hello(node_rank=1, pid=42, host="vm"),
    RankStarted(node_rank=0, rank=1, local_rank=1, pid=43, started_at=1.5, log_out="/o", log_err="/e"),
    RankExited(node_rank=0, rank=1, exit_code=None, signal=9, ended_at=2.0),
    Heartbeat(node_rank=1, ts=3.0, steps={2: 10, 3: 11},
              rows=[ProgressRow(rank=2, step=10, ts=2.9, values={"loss": 1.5})]),
    AgentDone(node_rank=1),
    Stop(reason="node 0 rank 1 exited with code 3"),
    CancelRequest(),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip(msg: object) -> None:
    line = encode(msg)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == msg


def test_line_buffer_reassembles_messages_split_across_reads() -> None:
    data = b"".join(encode(m) for m in MESSAGES)  # type: ignore[arg-type]
    buf, got = LineBuffer(), []
    for i in range(0, len(data), 7):
        got += buf.feed(data[i:i + 7])
    assert got == MESSAGES


@pytest.mark.parametrize("line", [b"{}", b"nope", b'{"type": "warp"}', b'{"type": "hello", "node_rank": 1}'])
def test_garbage_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


def test_rank_exit_describes_its_cause() -> None:
    assert RankExited(1, 3, 3, None, 0.0).describe() == "node 1 rank 3 exited with code 3"
    assert RankExited(0, 0, None, 15, 0.0).describe() == "node 0 rank 0 killed by signal 15"
    assert RankExited(0, 0, 0, None, 0.0).ok and not RankExited(0, 0, None, 9, 0.0).ok


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_addr("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="host:port"):
        parse_addr("localhost")


def test_stamper_writes_complete_lines_and_flushes_the_partial_one_at_close() -> None:
    sink = io.BytesIO()
    sink.close = lambda: None  # type: ignore[method-assign]  # keep the buffer readable
    stamper = LineStamper(sink)
    stamper.feed(b"step 1\nstep", ts=0.0)
    stamper.feed(b" 2\n", ts=1.5)
    stamper.feed(b"no newline", ts=2.0)
    stamper.close(ts=3.25)
    assert sink.getvalue().splitlines() == [
        b"1970-01-01T00:00:00.000000Z step 1",
        b"1970-01-01T00:00:01.500000Z step 2",
        b"1970-01-01T00:00:03.250000Z no newline",
    ]
    assert stamper.lines == 3


def test_pipe_log_reads_a_real_pipe_to_eof(tmp_path) -> None:
    r, w = os.pipe()
    log = PipeLog(r, str(tmp_path / "rank-0.out"))
    os.write(w, b"hello\nwor")
    assert log.pump() is True
    os.write(w, b"ld")
    os.close(w)
    while log.pump():
        pass
    lines = (tmp_path / "rank-0.out").read_bytes().splitlines()
    assert [line[28:] for line in lines] == [b"hello", b"world"]
    assert all(STAMP.match(line) for line in lines)


def test_utc_stamp_rounds_microseconds_without_overflow() -> None:
    assert utc_stamp(59.9999999) == "1970-01-01T00:01:00.000000Z"


POLICY = RestartPolicy(max_restarts=2, backoff_s=1.5)


def test_a_failure_restarts_with_backoff_until_the_budget_is_spent() -> None:
    first = decide(Outcome.FAILED, attempt=0, policy=POLICY, cause="rank 1 exited with code 3")
    assert first.restart and first.delay_s == 1.5
    assert decide(Outcome.FAILED, attempt=1, policy=POLICY).restart
    last = decide(Outcome.FAILED, attempt=2, policy=POLICY, cause="rank 1 exited with code 3")
    assert last.final is JobState.FAILED and last.reason == "rank 1 exited with code 3 (after 2 restarts)"


def test_success_and_cancel_are_final_whatever_the_budget() -> None:
    assert decide(Outcome.SUCCEEDED, attempt=0, policy=POLICY).final is JobState.SUCCEEDED
    assert decide(Outcome.CANCELLED, attempt=0, policy=POLICY).final is JobState.CANCELLED
    no_restarts = decide(Outcome.FAILED, attempt=0, policy=RestartPolicy(), cause="x")
    assert no_restarts.final is JobState.FAILED and "no restarts allowed" in (no_restarts.reason or "")

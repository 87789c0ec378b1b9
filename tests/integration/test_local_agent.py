"""The node agent on its own, against a real TCP socket standing in for the supervisor: the messages it
sends, heartbeats with reported steps, and how it stops its ranks (Stop, SIGKILL after grace, lost
supervisor)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainfleet.runtime.protocol import (
    AgentDone,
    Heartbeat,
    Hello,
    LineBuffer,
    Message,
    RankExited,
    RankStarted,
    Stop,
    encode,
)

JOBS = Path(__file__).parents[1] / "fixtures" / "jobs"
pytestmark = pytest.mark.slow


class FakeSupervisorSocket:
    """A listening socket that accepts one agent and reads its messages (the edge, not the supervisor)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.conn: socket.socket | None = None
        self.buf = LineBuffer()
        self.messages: list[Message] = []

    def accept(self) -> None:
        self.server.settimeout(20)
        self.conn, _ = self.server.accept()
        self.conn.settimeout(0.2)

    def read_until(self, predicate, timeout: float = 20) -> list[Message]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            assert time.monotonic() < deadline, f"timed out; got {self.messages}"
            try:
                data = self.conn.recv(65536)  # type: ignore[union-attr]
            except TimeoutError:
                continue
            if not data:
                break
            self.messages += self.buf.feed(data)
        return self.messages

    def of(self, kind: type) -> list:
        return [m for m in self.messages if isinstance(m, kind)]


def start_agent(tmp_path: Path, sup: FakeSupervisorSocket, script: str, *, nproc: int = 2,
                grace_s: float = 1.0) -> subprocess.Popen:
    argv = [sys.executable, "-m", "trainfleet.runtime.agent", "--job-id", "feedbeef", "--attempt", "0",
            "--node-rank", "1", "--nnodes", "2", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
            "--master-port", "29999", "--run-dir", str(tmp_path), "--supervisor", sup.addr,
            "--heartbeat-interval-s", "0.2", "--grace-s", str(grace_s),
            "--", sys.executable, str(JOBS / script)]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sup.accept()
    return agent


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_agent_reports_hello_starts_exits_heartbeats_and_done(tmp_path: Path) -> None:
    sup = FakeSupervisorSocket()
    agent = start_agent(tmp_path, sup, "env_dump.py")
    sup.read_until(lambda ms: any(isinstance(m, AgentDone) for m in ms))
    assert agent.wait(timeout=10) == 0
    hello = sup.messages[0]
    assert isinstance(hello, Hello) and (hello.node_rank, hello.pid) == (1, agent.pid)
    started = {m.rank: m for m in sup.of(RankStarted)}
    assert sorted(started) == [2, 3] and {m.local_rank for m in started.values()} == {0, 1}
    assert started[2].log_out == f"{tmp_path}/attempt-0/node-1/rank-2.out"
    exited = {m.rank: m for m in sup.of(RankExited)}
    assert sorted(exited) == [2, 3] and all(m.ok for m in exited.values())
    assert all(exited[r].ended_at >= started[r].started_at for r in (2, 3))
    rows = [row for beat in sup.of(Heartbeat) for row in beat.rows]
    assert {(row.rank, row.step, row.values["loss"]) for row in rows} == {(2, 1, 2.5), (3, 1, 2.5)}
    assert isinstance(sup.messages[-1], AgentDone)


@pytest.mark.timeout(60)
def test_stop_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    sup = FakeSupervisorSocket()
    agent = start_agent(tmp_path, sup, "stubborn.py", grace_s=1.0)
    sup.read_until(lambda ms: any(isinstance(m, Heartbeat) and len(m.steps) == 2 for m in ms))
    assert next(m for m in sup.of(Heartbeat) if len(m.steps) == 2).steps == {2: 5, 3: 5}
    pids = [m.pid for m in sup.of(RankStarted)]
    t0 = time.monotonic()
    sup.conn.sendall(encode(Stop("test says stop")))  # type: ignore[union-attr]
    sup.read_until(lambda ms: any(isinstance(m, AgentDone) for m in ms))
    took = time.monotonic() - t0
    assert 0.9 <= took < 5, took  # SIGTERM ignored: killed only after the 1 s grace
    assert {m.signal for m in sup.of(RankExited)} == {9}
    assert agent.wait(timeout=10) == 1
    assert not any(alive(pid) for pid in pids)


@pytest.mark.timeout(60)
def test_losing_the_supervisor_stops_every_rank_and_its_children(tmp_path: Path) -> None:
    sup = FakeSupervisorSocket()
    agent = start_agent(tmp_path, sup, "sleeper.py", grace_s=2.0)
    sup.read_until(lambda ms: len([m for m in ms if isinstance(m, RankStarted)]) == 2)
    out_files = [tmp_path / "attempt-0" / "node-1" / f"rank-{r}.out" for r in (2, 3)]
    deadline = time.monotonic() + 20
    while not all(f.exists() and "ready" in f.read_text() for f in out_files):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    children = [int(f.read_text().split("child=")[1].split()[0]) for f in out_files]
    leaders = [m.pid for m in sup.of(RankStarted)]
    sup.conn.close()  # type: ignore[union-attr]
    assert agent.wait(timeout=10) == 1
    assert not any(alive(pid) for pid in leaders + children)
    assert os.path.getsize(out_files[0]) > 0

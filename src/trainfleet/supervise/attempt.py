"""One attempt as the supervisor sees it: the agents' connections, their messages, teardown, the outcome.

``AttemptWatch.run`` owns the ``select`` loop while an attempt lives. It turns typed agent messages into
store rows and, on the first failed rank or lost agent, records the cause as an event and tells every agent
to stop; when the loop ends (all nodes done, or the teardown deadline passed) the backend sweeps whatever is
left, so no process of the attempt outlives it.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from typing import TYPE_CHECKING

from trainfleet.backends.base import JobHandle
from trainfleet.runtime.protocol import (
    AgentDone,
    CancelRequest,
    Heartbeat,
    Hello,
    LineBuffer,
    Message,
    ProtocolError,
    RankExited,
    RankStarted,
    Stop,
    encode,
)
from trainfleet.spec import JobState
from trainfleet.store import MetricRow
from trainfleet.supervise.policy import Outcome

if TYPE_CHECKING:
    from trainfleet.supervise.supervisor import Supervisor

AGENT_CONNECT_TIMEOUT_S = 60.0  # an agent that has not said hello by then failed to start
TEARDOWN_EXTRA_S = 3.0  # beyond the agents' grace, before the backend kills what is left


class Conn:
    """One accepted connection: an agent (after ``Hello``) or a client (``CancelRequest``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = LineBuffer()
        self.node: int | None = None
        self.done = False


class AttemptWatch:
    """The select loop of one attempt: agent connections, their messages, teardown, outcome."""

    def __init__(self, sup: Supervisor, attempt: int, handle: JobHandle) -> None:
        self.sup = sup
        self.attempt = attempt
        self.handle = handle
        self.spec = sup.spec
        self.conns: dict[int, Conn] = {}
        self.hello: set[int] = set()
        self.finished_nodes: set[int] = set()
        self.exits: dict[int, RankExited] = {}
        self.last_heartbeat: dict[int, float] = {}  # node -> monotonic time (for node-loss detection)
        self.cause: str | None = None
        self.teardown_deadline: float | None = None
        self.t0 = time.monotonic()

    def run(self) -> tuple[Outcome, str | None]:
        sup = self.sup
        try:
            while True:
                for key, _ in sup.sel.select(timeout=0.2):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        drain(sup.wake_fd)
                    elif isinstance(key.data, Conn):
                        self._read(key.data)
                if sup.cancel_reason and self.teardown_deadline is None:
                    sup.store.add_event(sup.job_id, "cancel", sup.cancel_reason, attempt=self.attempt)
                    self._teardown()
                self._check_agents()
                sup.flush_metrics()
                sup.observe()
                if len(self.finished_nodes) == self.spec.nodes:
                    break
                if self.teardown_deadline is not None and time.monotonic() >= self.teardown_deadline:
                    break
        finally:  # whatever happened above (even a store error), no process of the attempt outlives it
            sup.backend.cancel(self.handle, grace_s=self.spec.grace_s)
            for conn in list(self.conns.values()):
                self._close(conn)
        return self._outcome()

    def _outcome(self) -> tuple[Outcome, str | None]:
        now = time.time()
        for rank, view in self.sup.view.ranks.items():
            if rank not in self.exits and view.state in (JobState.PENDING, JobState.RUNNING):
                view.state = JobState.CANCELLED if self.sup.cancel_reason else JobState.FAILED
                self.sup.store.upsert_rank(self.sup.job_id, self.attempt, rank, node_rank=view.node_rank,
                                           local_rank=rank % self.spec.procs_per_node, state=view.state,
                                           ended_at=now)
        if self.sup.cancel_reason:
            return Outcome.CANCELLED, self.sup.cancel_reason
        if self.cause is not None:
            return Outcome.FAILED, self.cause
        if len(self.exits) == self.spec.world_size and all(e.ok for e in self.exits.values()):
            return Outcome.SUCCEEDED, None
        return Outcome.FAILED, f"only {len(self.exits)} of {self.spec.world_size} ranks reported an exit"

    # ---- connections ----------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sup.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            conn = Conn(sock)
            self.sup.sel.register(sock, selectors.EVENT_READ, conn)
            self.conns[id(conn)] = conn

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        try:
            messages = conn.buf.feed(data) if data else []
        except ProtocolError:
            messages, data = [], b""
        for msg in messages:
            self._handle(conn, msg)
        if not data:
            self._close(conn)
            if conn.node is not None and not conn.done:
                self._node_finished(conn.node, lost=True)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(id(conn), None) is not None:
            self.sup.sel.unregister(conn.sock)
            conn.sock.close()

    def _send(self, conn: Conn, msg: Message) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(2)
            conn.sock.sendall(encode(msg))
        except OSError:
            pass
        finally:
            conn.sock.setblocking(False)

    # ---- messages -------------------------------------------------------------------------------------
    def _handle(self, conn: Conn, msg: Message) -> None:
        sup, job, att = self.sup, self.sup.job_id, self.attempt
        if isinstance(msg, Hello):
            conn.node = msg.node_rank
            self.hello.add(msg.node_rank)
            if self.teardown_deadline is not None:
                self._send(conn, Stop(self.cause or sup.cancel_reason or "stopping"))
        elif isinstance(msg, RankStarted):
            sup.view.ranks[msg.rank].state = JobState.RUNNING
            sup.store.upsert_rank(job, att, msg.rank, node_rank=msg.node_rank, local_rank=msg.local_rank,
                                  host=socket.gethostname(), pid=msg.pid or None, state=JobState.RUNNING,
                                  started_at=msg.started_at, log_out=msg.log_out, log_err=msg.log_err)
        elif isinstance(msg, RankExited):
            self._rank_exited(msg)
        elif isinstance(msg, Heartbeat):
            self.last_heartbeat[msg.node_rank] = time.monotonic()
            for row in msg.rows:
                view = sup.view.ranks.get(row.rank)
                step = row.step if row.step is not None else (view.step if view else None)
                if view is not None:
                    view.step, view.values = step, {**view.values, **row.values}
                if step is not None:
                    sup.pending_metrics.append(MetricRow(row.rank, step, row.ts, row.values))
        elif isinstance(msg, AgentDone):
            conn.done = True
            self._node_finished(msg.node_rank, lost=False)
        elif isinstance(msg, CancelRequest):
            sup.request_cancel(msg.reason)
            self._close(conn)

    def _rank_exited(self, msg: RankExited) -> None:
        sup = self.sup
        self.exits[msg.rank] = msg
        failing = not msg.ok and self.cause is None and not sup.cancel_reason
        if msg.ok:
            state = JobState.SUCCEEDED
        elif failing or self.teardown_deadline is None:
            state = JobState.FAILED
        else:
            state = JobState.CANCELLED  # stopped by our own teardown, not the cause
        view = sup.view.ranks[msg.rank]
        view.state, view.exit_code, view.signal = state, msg.exit_code, msg.signal
        sup.store.upsert_rank(sup.job_id, self.attempt, msg.rank, node_rank=msg.node_rank,
                              local_rank=msg.rank % self.spec.procs_per_node, state=state,
                              exit_code=msg.exit_code, signal=msg.signal, ended_at=msg.ended_at)
        if failing:
            self._fail(msg.describe(), kind="rank_failed", node=msg.node_rank, rank=msg.rank,
                       data={"exit_code": msg.exit_code, "signal": msg.signal})

    def _node_finished(self, node: int, *, lost: bool) -> None:
        if node in self.finished_nodes:
            return
        self.finished_nodes.add(node)
        if lost and self.teardown_deadline is None:
            self._fail(f"node {node} agent lost (connection closed before its ranks finished)",
                       kind="agent_lost", node=node)

    def _check_agents(self) -> None:
        """Backstop: agents that died without a word, and agents that never came up."""
        for node, status in self.sup.backend.exited(self.handle).items():
            if node not in self.finished_nodes and not any(c.node == node for c in self.conns.values()):
                self.finished_nodes.add(node)
                if self.teardown_deadline is None:
                    self._fail(f"node {node} agent exited with status {status}", kind="agent_lost", node=node)
        waited = time.monotonic() - self.t0
        if waited > AGENT_CONNECT_TIMEOUT_S and len(self.hello) < self.spec.nodes and self.cause is None:
            missing = sorted(set(range(self.spec.nodes)) - self.hello)
            self._fail(f"agents of nodes {missing} did not connect within {AGENT_CONNECT_TIMEOUT_S:g}s",
                       kind="agent_lost")
            self.finished_nodes.update(missing)

    def _fail(self, cause: str, *, kind: str, node: int | None = None, rank: int | None = None,
              data: dict | None = None) -> None:
        self.cause = cause
        self.sup.store.add_event(self.sup.job_id, kind, cause, attempt=self.attempt, node=node, rank=rank,
                                 data=data)
        self._teardown()

    def _teardown(self) -> None:
        if self.teardown_deadline is not None:
            return
        self.teardown_deadline = time.monotonic() + self.spec.grace_s + TEARDOWN_EXTRA_S
        reason = self.cause or self.sup.cancel_reason or "stopping"
        for conn in list(self.conns.values()):
            if conn.node is not None:
                self._send(conn, Stop(reason))



def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


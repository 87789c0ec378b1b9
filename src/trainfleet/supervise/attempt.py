"""One attempt as the supervisor sees it: the agents' connections, their messages, teardown, the outcome.

``AttemptWatch.run`` owns the ``select`` loop while an attempt lives. It turns typed agent messages into
store rows and typed detections (``supervise.monitor``): a crashed rank, a lost or silent agent (no
heartbeat for 3 intervals), a hung rank (no progress for ``hang_timeout_s``; every rank's stacks are dumped
first and the odd one out is blamed) and stragglers (an event only). On the first failure it records the
cause with its node and tells every agent to stop; when the loop ends (all nodes done, or the teardown
deadline passed) the backend sweeps whatever is left, so no process of the attempt outlives it. Only then is
the failure's node blamed: unless the engine says it ended the attempt itself (``backend.interruption``:
preempted, timed out, requeued), which makes the attempt ``preempted`` instead (no node's fault), or cancelled
it on someone's request outside trainfleet (the job is cancelled). A user's cancel first lets the engine
record it (``backend.abort``). An engine's preemption notice (``PreemptNotice``, e.g. from the Slurm batch
script's trap) is passed to every agent (``Checkpoint``), whose answers become ``checkpoint_notice`` events.
It also records when a restarted attempt resumed (``resumed``) and caught up (``caught_up``) for goodput.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from typing import TYPE_CHECKING

from trainfleet.backends.base import JobHandle
from trainfleet.runtime.protocol import (
    AgentDone,
    CancelRequest,
    Checkpoint,
    CheckpointNotice,
    Heartbeat,
    Hello,
    LineBuffer,
    Message,
    PreemptNotice,
    ProtocolError,
    RankExited,
    RankStarted,
    StacksDumped,
    Stop,
    encode,
)
from trainfleet.spec import JobState
from trainfleet.store import MetricRow
from trainfleet.supervise.hang import HangDump
from trainfleet.supervise.monitor import (
    AgentLost,
    Failure,
    HeartbeatMonitor,
    ProgressMonitor,
    RankCrashed,
)
from trainfleet.supervise.policy import Outcome
from trainfleet.supervise.resume import ResumeTracker

if TYPE_CHECKING:
    from trainfleet.supervise.supervisor import Supervisor

AGENT_CONNECT_TIMEOUT_S = 60.0  # an agent that has not said hello by then (after the queue) failed to start
TEARDOWN_EXTRA_S = 3.0  # beyond the agents' grace, before the backend kills what is left
# A connected agent silent this many intervals after its last heartbeat is lost: with the 0.2 s loop that is
# within 3 intervals of the moment it stopped.
HEARTBEAT_MISSES = 2.5
STRAGGLER_CHECK_S = 1.0


class Conn:
    """One accepted connection: an agent (after ``Hello``) or a client (``CancelRequest``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = LineBuffer()
        self.node: int | None = None
        self.done = False


class AttemptWatch:
    """The select loop of one attempt: agent connections, their messages, detections, teardown, outcome."""

    def __init__(self, sup: Supervisor, attempt: int, handle: JobHandle, *, port: int = 0) -> None:
        self.sup = sup
        self.attempt = attempt
        self.handle = handle
        self.port = port
        self.announced = not sup.places_nodes  # attempt_started is written once the allocation is known
        self.suspect: tuple[int, str] | None = None  # (node rank, cause) to blame once the attempt is over
        self.preempted: str | None = None  # the engine's word when it ended the attempt itself
        self.notices = 0
        self.spec = sup.spec
        self.conns: dict[int, Conn] = {}
        self.hello: set[int] = set()
        self.finished_nodes: set[int] = set()
        self.exits: dict[int, RankExited] = {}
        self.heartbeats = HeartbeatMonitor(self.spec.heartbeat_interval_s, HEARTBEAT_MISSES)
        self.progress = ProgressMonitor(self.spec.hang_timeout_s, straggler_factor=self.spec.straggler_factor,
                                        startup_timeout_s=self.spec.startup_timeout_s,
                                        window=self.spec.straggler_window)
        self.cause: str | None = None
        self.teardown_deadline: float | None = None
        self.t0 = time.monotonic()
        self.resume = ResumeTracker(sup.store, sup.job_id, attempt, sup.lost_step)
        self.dump: HangDump | None = None
        self._next_straggler_check = self.t0

    def run(self) -> tuple[Outcome, str | None]:
        """Watch the attempt until every node is done or the teardown deadline passes; return its outcome."""
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
                    abort = getattr(sup.backend, "abort", None)
                    if callable(abort):  # e.g. scancel first, so Slurm records the job as cancelled
                        abort(self.handle, sup.cancel_reason)
                    self._teardown()
                self._check_agents()
                self._check_progress()
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
        self.preempted = sup.judge_attempt(self)
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
        if self.preempted is not None:
            return Outcome.FAILED, f"preempted: {self.sup.backend.name} ended the attempt ({self.preempted})"
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
        if conn.node is not None and conn.node not in self.finished_nodes:
            self.heartbeats.beat(conn.node, time.monotonic())  # any message proves the agent alive
        if isinstance(msg, Hello):
            conn.node = msg.node_rank
            self.hello.add(msg.node_rank)
            self.heartbeats.beat(msg.node_rank, time.monotonic())
            if not self.announced:  # an agent runs: the engine's allocation is known now
                self.announced = True
                sup.announce_attempt(att, self.port)
            if self.teardown_deadline is not None:
                self._send(conn, Stop(self.cause or sup.cancel_reason or "stopping"))
        elif isinstance(msg, RankStarted):
            sup.view.ranks[msg.rank].state = JobState.RUNNING
            self.progress.started(msg.rank, msg.node_rank, time.monotonic())
            sup.store.upsert_rank(job, att, msg.rank, node_rank=msg.node_rank, local_rank=msg.local_rank,
                                  host=sup.node_name(msg.node_rank), pid=msg.pid or None,
                                  state=JobState.RUNNING, started_at=msg.started_at, log_out=msg.log_out,
                                  log_err=msg.log_err)
        elif isinstance(msg, RankExited):
            self._rank_exited(msg)
        elif isinstance(msg, Heartbeat):
            self._heartbeat(msg)
        elif isinstance(msg, StacksDumped):
            if self.dump is not None:
                self.dump.answered(msg)
        elif isinstance(msg, AgentDone):
            conn.done = True
            self._node_finished(msg.node_rank, lost=False)
        elif isinstance(msg, PreemptNotice):
            agents = {c.node: c for c in self.conns.values()
                      if c.node is not None and c.node not in self.finished_nodes}
            sup.store.add_event(job, "preempt_notice", f"the engine will stop the job soon ({msg.source}): "
                                f"{len(agents)} agents asked to have their ranks checkpoint", attempt=att,
                                data={"source": msg.source, "nodes": sorted(agents)})
            for agent in agents.values():
                self._send(agent, Checkpoint(f"preemption notice ({msg.source})"))
            self._close(conn)
        elif isinstance(msg, CheckpointNotice):
            self.notices += 1
            host = sup.node_name(msg.node_rank)
            message = (f"{host}: preemption/time-limit notice ({msg.source}) passed to ranks {msg.ranks} as "
                       f"{_signame(msg.rank_signal)}")
            sup.store.add_event(job, "checkpoint_notice", message, attempt=att, node=msg.node_rank,
                                data={"host": host, "source": msg.source, "rank_signal": msg.rank_signal,
                                      "ranks": msg.ranks, "ts": msg.ts})
        elif isinstance(msg, CancelRequest):
            sup.request_cancel(msg.reason)
            self._close(conn)

    def _heartbeat(self, msg: Heartbeat) -> None:
        sup, now = self.sup, time.monotonic()
        for row in msg.rows:
            view = sup.view.ranks.get(row.rank)
            step = row.step if row.step is not None else (view.step if view else None)
            if view is not None:
                view.step, view.values = step, {**view.values, **row.values}
            if step is None:
                continue
            sup.pending_metrics.append(MetricRow(row.rank, step, row.ts, row.values))
            self.progress.progress(row.rank, row.step, row.ts, row.values, now)
            if row.step is not None:
                self.resume.step(row.step, row.ts, row.values)

    def _rank_exited(self, msg: RankExited) -> None:
        sup = self.sup
        self.exits[msg.rank] = msg
        self.progress.exited(msg.rank)
        if msg.ok:
            self.progress.paused = True  # the job is finishing: waiting for the others is not a hang
        # While stacks are being dumped for a hang, an exit (e.g. SIGUSR1 to a rank without the hook) is part
        # of the dump, not a new cause: the hang verdict follows.
        failing = not msg.ok and self.cause is None and not sup.cancel_reason and self.dump is None
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
            crash = RankCrashed(msg.node_rank, msg.rank, msg.exit_code, msg.signal, msg.ended_at)
            self._fail(crash, fault_ts=msg.ended_at, data={"exit_code": msg.exit_code, "signal": msg.signal})

    def _node_finished(self, node: int, *, lost: bool) -> None:
        if node in self.finished_nodes:
            return
        self.finished_nodes.add(node)
        self.heartbeats.forget(node)
        if lost and self.teardown_deadline is None and self.cause is None:
            self._fail(AgentLost(node, "connection closed before its ranks finished"), fault_ts=time.time())

    # ---- detections -----------------------------------------------------------------------------------
    def _check_agents(self) -> None:
        """Agents that died without a word, went silent, or never came up."""
        for node, status in self.sup.backend.exited(self.handle).items():
            if node not in self.finished_nodes and not any(c.node == node for c in self.conns.values()):
                self.finished_nodes.add(node)
                self.heartbeats.forget(node)
                if self.teardown_deadline is None and self.cause is None:
                    self._fail(AgentLost(node, f"agent exited with status {status}"), fault_ts=time.time())
        now = time.monotonic()
        if self.cause is None and self.teardown_deadline is None and self.dump is None:
            for node, silent in self.heartbeats.silent(now):
                self.heartbeats.forget(node)
                self.finished_nodes.add(node)  # given up on: the backend's sweep stops it
                lost = AgentLost(node, f"no heartbeat for {silent:.1f}s (deadline {HEARTBEAT_MISSES:g} x "
                                       f"{self.spec.heartbeat_interval_s:g}s)", silent)
                self._fail(lost, fault_ts=time.time() - silent,
                           data={"silent_s": silent, "deadline_s": self.heartbeats.deadline_s})
                break
        queued = getattr(self.sup.backend, "queued", None)
        if not self.hello and callable(queued) and queued(self.handle):
            self.t0 = now  # waiting in the engine's queue is not a failure to start: the clock starts later
        waited = now - self.t0
        if waited > AGENT_CONNECT_TIMEOUT_S and len(self.hello) < self.spec.nodes and self.cause is None:
            missing = sorted(set(range(self.spec.nodes)) - self.hello)
            self.cause = f"agents of nodes {missing} did not connect within {AGENT_CONNECT_TIMEOUT_S:g}s"
            self.sup.store.add_event(self.sup.job_id, "agent_lost", self.cause, attempt=self.attempt)
            self._teardown()
            self.finished_nodes.update(missing)

    def _check_progress(self) -> None:
        if self.cause is not None or self.teardown_deadline is not None:
            return
        now = time.monotonic()
        if self.dump is not None:
            if self.dump.done(now):
                self._hang_verdict()
            return
        hung = self.progress.hung(now)
        if hung:
            self._start_stack_dump(hung)
            return
        if now >= self._next_straggler_check:
            self._next_straggler_check = now + STRAGGLER_CHECK_S
            for slow in self.progress.stragglers():
                data = {"step_time_s": slow.step_time_s, "median_s": slow.median_s, "ratio": slow.ratio,
                        "factor": slow.factor, "window": slow.window, "host": self.sup.node_name(slow.node)}
                self.sup.store.add_event(self.sup.job_id, "straggler",
                                         f"{self.sup.node_name(slow.node)}: {slow.describe()}",
                                         attempt=self.attempt, node=slow.node, rank=slow.rank, data=data)

    def _start_stack_dump(self, hung: list) -> None:  # type: ignore[type-arg]
        """A rank is past its hang timeout: ask every agent for its ranks' stacks before tearing down."""
        self.dump = HangDump(hung, f"{self.sup.run_dir}/attempt-{self.attempt}/stacks")
        self.dump.start(((c.node, c) for c in self.conns.values()
                         if c.node is not None and c.node not in self.finished_nodes), self._send)

    def _hang_verdict(self) -> None:
        """Blame the hung rank named by the stacks (``supervise.hang``)."""
        assert self.dump is not None
        hang, fault_ts, data = self.dump.verdict(
            self.sup.store, self.sup.job_id, self.attempt, node_of=lambda r: self.sup.view.ranks[r].node_rank,
            last_step=self.progress.last_step, timeout_of=self.progress.timeout_for)
        self._fail(hang, fault_ts=fault_ts, detected_ts=self.dump.detected_ts, data=data)

    def _fail(self, failure: Failure, *, fault_ts: float, detected_ts: float | None = None,
              data: dict | None = None) -> None:
        """Record the failure (cause, node, timing), blame its node, and stop every agent."""
        sup = self.sup
        host = sup.node_name(failure.node)
        self.cause = f"{failure.describe()} [{host}]"
        rank = getattr(failure, "rank", None)
        detected = time.time() if detected_ts is None else detected_ts
        body = {**(data or {}), "host": host, "fault_ts": fault_ts, "detected_ts": detected,
                "last_step": self.resume.max_step}
        sup.store.add_event(sup.job_id, failure.kind, self.cause, attempt=self.attempt, node=failure.node,
                            rank=rank, data=body)
        self._teardown()
        if failure.implicates_node:
            self.suspect = (failure.node, self.cause)  # blamed once the engine had its say (judge_attempt)
        else:
            sup.store.add_event(sup.job_id, "node_not_blamed", f"{host} not blamed: an exit code is the "
                                "program's failure, not the node's", attempt=self.attempt, node=host,
                                data={"node_rank": failure.node})

    def _teardown(self) -> None:
        if self.teardown_deadline is not None:
            return
        self.teardown_deadline = time.monotonic() + self.spec.grace_s + TEARDOWN_EXTRA_S
        reason = self.cause or self.sup.cancel_reason or "stopping"
        for conn in list(self.conns.values()):
            if conn.node is not None:
                self._send(conn, Stop(reason))


def _signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


"""The supervisor of one job: runs attempts through a backend, listens to the agents, decides, records.

For each attempt it picks a fresh rendezvous port, renders and submits the request, then reads the agents'
typed messages (``runtime.protocol``) in one ``select`` loop. The first failed rank (or a lost agent) fails
the attempt: every agent is told to stop, the backend sweeps what is left, the node blamed for the failure
is marked suspect in the store (``store.nodes``) and replaced by a spare for the next attempt when one is
free (``supervise.nodes``), and the restart policy (``supervise.policy``) decides between another attempt
after the backoff and a final state. A ``CancelRequest`` on the same socket (from ``trainfleet cancel``)
or ``request_cancel()`` (signals) cancels. ``first_attempt`` > 0 continues a job whose supervisor died.

It is the only writer of the job's rows in the store; metrics are written in batches.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time
from collections.abc import Callable

from trainfleet.backends.base import AttemptPlan, Backend
from trainfleet.errors import BackendError
from trainfleet.runtime.protocol import CancelRequest, LineBuffer, ProtocolError
from trainfleet.spec import JobSpec, JobState
from trainfleet.store import MetricRow, Store
from trainfleet.supervise.attempt import AttemptWatch, drain
from trainfleet.supervise.live import JobView, RankView
from trainfleet.supervise.nodes import NoUsableNodes, node_pool, place
from trainfleet.supervise.policy import Outcome, decide

METRICS_FLUSH_S = 1.0
OBSERVE_EVERY_S = 0.25


class Supervisor:
    """Runs one job to a final state (see module doc); ``observer`` gets a ``JobView`` 4 times a second."""

    def __init__(self, store: Store, job_id: str, spec: JobSpec, backend: Backend, *, run_dir: str,
                 observer: Callable[[JobView], None] | None = None, host: str = "127.0.0.1",
                 first_attempt: int = 0, lost_step: int | None = None) -> None:
        self.store = store
        self.job_id = job_id
        self.spec = spec
        self.backend = backend
        self.run_dir = run_dir
        self.observer = observer
        self.host = host
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server((host, 0), backlog=256)
        self.listener.setblocking(False)
        self.addr = f"{host}:{self.listener.getsockname()[1]}"
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self.sel.register(self.wake_fd, selectors.EVENT_READ, "wake")
        self.cancel_reason: str | None = None
        self.used_ports: set[int] = set()
        self.pending_metrics: list[MetricRow] = []
        self.view = JobView(job_id=job_id, name=spec.name, state=JobState.PENDING)
        self._last_flush = self._last_observe = 0.0
        self.first_attempt = first_attempt
        self.lost_step = lost_step  # the newest step before the last failure (what a restart must redo)
        self.straggler_factor = float(getattr(spec, "straggler_factor", 2.0))
        self.straggler_window = int(getattr(spec, "straggler_window", 8))
        self.pool = node_pool(backend, spec.nodes, spec.spare_nodes)
        self.placement: list[str] = []
        self.blamed: set[str] = set()

    # ---- public ---------------------------------------------------------------------------------------
    def request_cancel(self, reason: str = "cancelled by user") -> None:
        """Ask the job to stop; safe from a signal handler or another thread."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        try:
            os.write(self._wake_w, b"c")
        except OSError:
            pass

    def run(self) -> JobState:
        """Run attempts until the job succeeds, fails for good or is cancelled; returns the final state."""
        started = time.time()
        first_start = started if self.first_attempt == 0 else None  # a resumed job keeps its start time
        self.store.update_job(self.job_id, state=JobState.RUNNING, supervisor_pid=os.getpid(),
                              supervisor_addr=self.addr, started_at=first_start)
        self.view.state = JobState.RUNNING
        attempt, final, reason = self.first_attempt, JobState.FAILED, None
        try:
            while True:
                try:
                    outcome, cause = self._run_attempt(attempt)
                except NoUsableNodes as exc:
                    final, reason = JobState.FAILED, str(exc)
                    self.store.add_event(self.job_id, "no_usable_nodes", reason, attempt=attempt)
                    break
                decision = decide(outcome, attempt=attempt, policy=self.spec.restart, cause=cause)
                if decision.restart:
                    self.store.update_job(self.job_id, restarts=attempt + 1)
                    message = f"restarting in {decision.delay_s:g}s from the latest checkpoint after: {cause}"
                    self.store.add_event(self.job_id, "restart", message, attempt=attempt + 1)
                    self.view.restarts = attempt + 1
                    if self._sleep(decision.delay_s):
                        final, reason = JobState.CANCELLED, self.cancel_reason
                        break
                    attempt += 1
                    continue
                final, reason = decision.final or JobState.FAILED, decision.reason
                break
        except BaseException as exc:
            reason = f"supervisor error: {exc}"
            raise
        finally:
            self.flush_metrics(force=True)
            self.store.update_job(self.job_id, state=final, reason=reason, ended_at=time.time())
            self.store.add_event(self.job_id, f"job_{final.value}", reason or f"job {final.value}")
            self.view.state, self.view.reason = final, reason
            self.observe(force=True)
            self.close()
        return final

    def close(self) -> None:
        """Close the listening socket and the wake pipe."""
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.sel.close()
        self.listener.close()

    # ---- one attempt ----------------------------------------------------------------------------------
    def _run_attempt(self, attempt: int) -> tuple[Outcome, str | None]:
        if self.cancel_reason:
            return Outcome.CANCELLED, self.cancel_reason
        port = free_port(self.host, exclude=self.used_ports)
        self.used_ports.add(port)
        plan = AttemptPlan(job_id=self.job_id, attempt=attempt, run_dir=self.run_dir, master_addr=self.host,
                           master_port=port, supervisor_addr=self.addr, python=sys.executable)
        if getattr(self.spec, "preflight", None) is not None:  # node checks first (supervise.preflight)
            from trainfleet.supervise.preflight import preflight_gate

            why = preflight_gate(self, attempt)
            if why:
                raise NoUsableNodes(why)
        verdicts = {n.name: n.state for n in self.store.nodes()}
        self.placement = place(self.pool, self.spec.nodes, verdicts, previous=self.placement,
                               blamed=self.blamed)
        request = self.backend.render(self.spec, plan)
        started = time.time()
        self.view.attempt = attempt
        self.view.ranks = {r: RankView(r, r // self.spec.procs_per_node) for r in range(self.spec.world_size)}
        try:
            handle = self.backend.submit(request)
        except BackendError as exc:
            handle, outcome, cause = None, Outcome.FAILED, str(exc)
        self.store.start_attempt(self.job_id, attempt, master_addr=self.host, master_port=port,
                                 started_at=started)
        if handle is not None:
            nodes = {str(i): name for i, name in enumerate(self.placement)}
            self.store.add_event(self.job_id, "attempt_started", f"attempt {attempt} on {handle.url} "
                                 f"(MASTER_PORT {port}) nodes {', '.join(self.placement)}", attempt=attempt,
                                 data={"master_port": port, "nodes": nodes})
            watch = AttemptWatch(self, attempt, handle)
            outcome, cause = watch.run()
            if watch.max_step is not None:
                self.lost_step = watch.max_step
        self.flush_metrics(force=True)
        state = JobState(outcome.value)
        self.store.end_attempt(self.job_id, attempt, state=state, reason=cause, ended_at=time.time())
        self.store.add_event(self.job_id, f"attempt_{state.value}", cause or f"attempt {attempt} {state}",
                             attempt=attempt)
        return outcome, cause

    # ---- nodes ----------------------------------------------------------------------------------------
    def node_name(self, node_rank: int) -> str:
        """The name of the node that holds ``node_rank`` in the current attempt."""
        if 0 <= node_rank < len(self.placement):
            return self.placement[node_rank]
        return f"node-{node_rank}"

    def blame(self, node_rank: int, attempt: int, reason: str) -> None:
        """Mark the node of ``node_rank`` suspect (or quarantined) in the store, with this failure."""
        name = self.node_name(node_rank)
        self.blamed.add(name)
        record = self.store.blame_node(name, job_id=self.job_id, attempt=attempt, reason=reason)
        spare = "a spare replaces it" if self.spec.spare_nodes else "no spare nodes in the spec"
        self.store.add_event(self.job_id, f"node_{record.state.value}",
                             f"{name} is {record.state.value} ({record.blames} blames); {spare}",
                             attempt=attempt, node=name,
                             data={"node_rank": node_rank, "blames": record.blames})

    # ---- helpers --------------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (the backoff) unless a cancel arrives first; returns True when cancelled."""
        deadline = time.monotonic() + seconds
        while not self.cancel_reason:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in self.sel.select(timeout=left):
                if key.data == "listen":
                    self._accept_clients_only()
                elif key.data == "wake":
                    drain(self.wake_fd)
        return True

    def _accept_clients_only(self) -> None:
        """Between attempts only cancel clients can talk to us; read their request right away."""
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        with sock:
            sock.settimeout(2)
            try:
                data = sock.recv(65536)
                for msg in LineBuffer().feed(data):
                    if isinstance(msg, CancelRequest):
                        self.request_cancel(msg.reason)
            except (OSError, ProtocolError):
                pass

    def flush_metrics(self, force: bool = False) -> None:
        """Write the buffered metric rows in one transaction (at most once a second unless ``force``)."""
        now = time.monotonic()
        if self.pending_metrics and (force or now - self._last_flush >= METRICS_FLUSH_S):
            rows, self.pending_metrics = self.pending_metrics, []
            self.store.add_metrics(self.job_id, self.view.attempt, rows)
            self._last_flush = now

    def observe(self, force: bool = False) -> None:
        """Hand the current ``JobView`` to the observer (rate-limited); a failing observer is dropped."""
        now = time.monotonic()
        if self.observer is not None and (force or now - self._last_observe >= OBSERVE_EVERY_S):
            self._last_observe = now
            try:
                self.observer(self.view)
            except Exception as exc:  # a broken display must never take the job down
                print(f"trainfleet: live view disabled: {exc}", file=sys.stderr)
                self.observer = None


def free_port(host: str = "127.0.0.1", exclude: set[int] | None = None) -> int:
    """A TCP port free on ``host`` right now, not in ``exclude`` (so every attempt gets a new one)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if not exclude or port not in exclude:
            return port
    raise BackendError(f"no free port on {host}")

"""The supervisor of one job: runs attempts through a backend, listens to the agents, decides, records.

For each attempt it picks a fresh rendezvous port, renders and submits the request, then reads the agents'
typed messages (``runtime.protocol``) in one ``select`` loop. The first failed rank (or a lost agent) fails
the attempt: every agent is told to stop, the backend sweeps what is left, the node blamed for the failure
is marked suspect in the store (``store.nodes``) and replaced by a spare for the next attempt when one is
free (``supervise.nodes``), and the restart policy (``supervise.policy``) decides between another attempt
after the backoff and a final state. A ``CancelRequest`` on the same socket (from ``trainfleet cancel``)
or ``request_cancel()`` (signals) cancels. ``first_attempt`` > 0 continues a job whose supervisor died.

On a backend whose engine places the nodes (``places_nodes``: Slurm) there is no placement here: the nodes
are named by the engine's allocation (``backend.node_names``) once it is known, blamed nodes are handed to
``backend.exclude_nodes`` and the node history holds the engine's node names, as it does the local ones. An
attempt the engine itself ended (``backend.interruption``: preempted, timed out, requeued) blames no node
and is followed at once by a new attempt that does not count against ``restart.max_restarts`` (a
``preempted`` event; ``restart.max_preemptions`` bounds them). The supervisor listens
on ``backend.supervisor_host`` unless ``host`` is given.

It is the only writer of the job's rows in the store; metrics are written in batches.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time
from collections.abc import Callable

from trainfleet.backends.base import AttemptPlan, Backend, JobHandle
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
                 observer: Callable[[JobView], None] | None = None, host: str | None = None,
                 first_attempt: int = 0, lost_step: int | None = None) -> None:
        self.store = store
        self.job_id = job_id
        self.spec = spec
        self.backend = backend
        self.run_dir = run_dir
        self.observer = observer
        self.host = host if host is not None else str(getattr(backend, "supervisor_host", "127.0.0.1"))
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server((self.host, 0), backlog=256)
        self.listener.setblocking(False)
        self.addr = f"{self.host}:{self.listener.getsockname()[1]}"
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
        self.places_nodes = bool(getattr(backend, "places_nodes", False))
        # The engine's usable nodes are only read when a preflight needs them (see _run_attempt).
        self.pool = [] if self.places_nodes else node_pool(backend, spec.nodes, spec.spare_nodes)
        self.placement: list[str] = []
        self.blamed: set[str] = set()
        self.handle: JobHandle | None = None
        self.preempted: str | None = None  # the engine's word when it ended the last attempt itself
        self.preemptions = 0 if first_attempt == 0 else len(store.events(job_id, kinds=["preempted"]))
        self.max_preemptions = spec.restart.max_preemptions

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
                if self.preempted is not None and outcome is Outcome.FAILED and self._preemption_allowed():
                    self.preemptions += 1
                    self.store.update_job(self.job_id, restarts=attempt + 1)
                    message = (f"restarting at once from the latest checkpoint after: {cause} (preemption "
                               f"{self.preemptions}; preemptions do not count against max_restarts)")
                    self.store.add_event(self.job_id, "restart", message, attempt=attempt + 1,
                                         data={"preemption": True, "preemptions": self.preemptions})
                    self.view.restarts = attempt + 1
                    attempt += 1
                    continue
                failures = attempt - self.preemptions  # attempts that failed (preempted ones do not count)
                decision = decide(outcome, attempt=failures, policy=self.spec.restart, cause=cause)
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
        self.preempted, self.handle = None, None
        if self.cancel_reason:
            return Outcome.CANCELLED, self.cancel_reason
        port = free_port(self.host, exclude=self.used_ports)
        self.used_ports.add(port)
        if self.spec.preflight is not None:  # node checks first (supervise.preflight)
            from trainfleet.supervise.preflight import preflight_gate

            if self.places_nodes:  # the engine's usable nodes now (drained or down ones are not offered)
                try:
                    self.pool = node_pool(self.backend, self.spec.nodes, self.spec.spare_nodes)
                except BackendError as exc:
                    raise NoUsableNodes(f"cannot list the nodes for the preflight: {exc}") from None
            why = preflight_gate(self, attempt)
            if why:
                raise NoUsableNodes(why)
        if self.places_nodes:
            self.placement = []  # the engine places the attempt; named once its allocation is known
        else:
            verdicts = {n.name: n.state for n in self.store.nodes()}
            self.placement = place(self.pool, self.spec.nodes, verdicts, previous=self.placement,
                                   blamed=self.blamed)
        plan = AttemptPlan(job_id=self.job_id, attempt=attempt, run_dir=self.run_dir, master_addr=self.host,
                           master_port=port, supervisor_addr=self.addr, python=sys.executable,
                           nodes=tuple(self.placement))
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
        preempted = False
        if handle is not None:
            self.handle = handle
            if not self.places_nodes:
                self.announce_attempt(attempt, port)
            watch = AttemptWatch(self, attempt, handle, port=port)
            outcome, cause = watch.run()
            if watch.resume.max_step is not None:
                self.lost_step = watch.resume.max_step
            self.preempted = watch.preempted
            preempted = watch.preempted is not None
        self.flush_metrics(force=True)
        state = JobState.CANCELLED if preempted else JobState(outcome.value)  # stopped by the engine
        self.store.end_attempt(self.job_id, attempt, state=state, reason=cause, ended_at=time.time())
        self.store.add_event(self.job_id, f"attempt_{state.value}", cause or f"attempt {attempt} {state}",
                             attempt=attempt)
        return outcome, cause

    def announce_attempt(self, attempt: int, port: int) -> None:
        """The ``attempt_started`` event with the attempt's node names (on an engine that places nodes:
        called once its allocation is known, i.e. when the first agent says hello)."""
        handle = self.handle
        names = [self.node_name(k) for k in range(self.spec.nodes)]
        nodes = {str(i): name for i, name in enumerate(names)}
        url = handle.url if handle is not None else "?"
        self.store.add_event(self.job_id, "attempt_started", f"attempt {attempt} on {url} "
                             f"(MASTER_PORT {port}) nodes {', '.join(names)}", attempt=attempt,
                             data={"master_port": port, "nodes": nodes})

    def judge_attempt(self, watch: AttemptWatch) -> str | None:
        """Once the attempt is over (the backend's ``cancel`` returned): if the engine ended it itself, say so
        (a ``preempted`` event; returns the engine's word) or, for a cancel outside trainfleet, cancel the
        job; otherwise blame the node of the failure seen, if any. Returns None unless preempted."""
        interruption = getattr(self.backend, "interruption", None)
        why = interruption(watch.handle) if callable(interruption) else None
        ok = len(watch.exits) == self.spec.world_size and all(e.ok for e in watch.exits.values())
        if why is not None and not self.cancel_reason and not ok:
            if why.startswith("CANCELLED"):
                self.cancel_reason = f"cancelled in {self.backend.name} outside trainfleet ({why})"
                self.store.add_event(self.job_id, "cancel", self.cancel_reason, attempt=watch.attempt)
                return None
            names = {str(k): self.node_name(k) for k in range(self.spec.nodes)}
            notice = "after a checkpoint notice" if watch.notices else "without a checkpoint notice"
            message = (f"{self.backend.name} ended attempt {watch.attempt} itself ({why}) {notice}; not a "
                       f"node's fault, no node blamed (seen: {watch.cause or 'no failure'})")
            self.store.add_event(self.job_id, "preempted", message, attempt=watch.attempt,
                                 data={"engine_state": why, "notices": watch.notices, "nodes": names,
                                       "cause": watch.cause, "last_step": watch.resume.max_step})
            return why
        if watch.suspect is not None:
            self.blame(watch.suspect[0], watch.attempt, watch.suspect[1])
        return None

    def _preemption_allowed(self) -> bool:
        return self.max_preemptions is None or self.preemptions < self.max_preemptions

    # ---- nodes ----------------------------------------------------------------------------------------
    def node_name(self, node_rank: int) -> str:
        """The name of the node that holds ``node_rank`` in the current attempt (``node-K`` when unknown)."""
        return self.known_node_name(node_rank) or f"node-{node_rank}"

    def known_node_name(self, node_rank: int) -> str | None:
        """The node of ``node_rank``: the placement, or on an engine that places nodes its allocation (asked
        until known); None when nobody knows yet."""
        if 0 <= node_rank < len(self.placement):
            return self.placement[node_rank]
        if self.places_nodes and self.handle is not None:
            names = self.backend.node_names(self.handle)  # type: ignore[attr-defined]
            if len(names) >= self.spec.nodes and all(k in names for k in range(self.spec.nodes)):
                self.placement = [names[k] for k in range(self.spec.nodes)]
                return self.placement[node_rank] if 0 <= node_rank < len(self.placement) else None
        return None

    def blame(self, node_rank: int, attempt: int, reason: str) -> None:
        """Mark the node of ``node_rank`` suspect (or quarantined) in the store, with this failure; an engine
        that places nodes is told to avoid it."""
        name = self.known_node_name(node_rank)
        if name is None:
            if self.places_nodes:  # never put a made-up name in the node history
                self.store.add_event(self.job_id, "node_unknown", f"node rank {node_rank}: the engine did "
                                     "not say which node it was; no node blamed", attempt=attempt,
                                     data={"node_rank": node_rank})
                return
            name = self.node_name(node_rank)
        self.blamed.add(name)
        record = self.store.blame_node(name, job_id=self.job_id, attempt=attempt, reason=reason)
        if self.places_nodes:
            replaced = "the next submission excludes it"
            self._exclude_on_engine({name})
        else:
            replaced = "a spare replaces it" if self.spec.spare_nodes else "no spare nodes in the spec"
        self.store.add_event(self.job_id, f"node_{record.state.value}",
                             f"{name} is {record.state.value} ({record.blames} blames); {replaced}",
                             attempt=attempt, node=name,
                             data={"node_rank": node_rank, "blames": record.blames})

    def _exclude_on_engine(self, names: set[str]) -> None:
        exclude = getattr(self.backend, "exclude_nodes", None)
        if callable(exclude):
            try:
                exclude(sorted(names), wanted=self.spec.nodes)
            except BackendError as exc:  # e.g. a preflight name Slurm cannot take: keep the job going
                self.store.add_event(self.job_id, "exclude_failed", f"cannot exclude {sorted(names)}: {exc}")

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

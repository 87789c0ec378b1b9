"""``SlurmBackend``: the ``Backend`` seam over sbatch / squeue / scancel (argv lists, never a shell string).

- ``render`` is pure (``slurm.render``): the sbatch script, with ``--exclude`` of the nodes this backend
  avoids right now (see below).
- ``submit`` creates the attempt's log directories on the shared filesystem, keeps the script there as
  ``attempt-<k>/job.sbatch`` and pipes it into ``sbatch --parsable`` (run in the spec's workdir); the
  handle carries the Slurm job id.
- ``exited`` polls ``squeue --json`` (at most once per ``poll_s``), maps Slurm's state through the one table
  (``slurm.states``) and, once the job is final, reports every node's agent as gone.
- ``cancel`` lets a job whose agents are done end by itself (COMPLETED / FAILED), else runs ``scancel``;
  it waits until Slurm says the job is final (COMPLETING is over: slurmstepd has seen every process of the
  job end on every node), then sweeps this host for leftovers of the attempt. A job Slurm requeued is
  cancelled at once: the supervisor owns restarts (the script says ``--no-requeue``; an admin's
  ``scontrol requeue`` or a preemption with requeue still happens).
- ``abort`` is the supervisor's hook for a user's cancel: ``scancel`` right away, before the agents are told
  to stop, so Slurm records the job CANCELLED (not FAILED by agents that exit 1 on ``Stop``).
- ``interruption`` says, after ``cancel``, whether Slurm itself ended the attempt: preempted, timed out,
  requeued (``INTERRUPTION_STATES``), or cancelled outside trainfleet; the supervisor then blames no node.

Slurm places the nodes (``places_nodes``): ``node_names`` gives the allocation (node rank -> Slurm node name,
the order of ``$SLURM_NODEID``), ``node_pool`` the usable (not drained, down or failing) nodes of the
partition for a preflight, and ``supervisor_host`` where the supervisor must listen (``slurm.address``).

Pinned nodes: ``nodelist`` (e.g. a probe job over chosen nodes) renders ``--nodelist``: every attempt runs
on exactly those nodes (with as many job nodes as names), ``node_pool`` offers only them, and no exclusion
(history or blame) ever names one of them (sbatch would refuse the job).

Nodes to avoid: the ``exclude`` given at construction, plus the suspect and quarantined nodes in the store's
node history (``Store.nodes()``: the supervisor blames nodes by their Slurm names) that this cluster knows,
plus the nodes named by ``exclude_nodes`` (the supervisor's hook when it blames one). The set is refreshed
when an attempt ends (in ``cancel``) and on ``exclude_nodes``, so ``render`` itself never does I/O. It never
grows so large that the job no longer fits on the usable nodes.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from trainfleet.backends.base import AttemptPlan, JobHandle, Request, job_url
from trainfleet.backends.procscan import kill_job_processes
from trainfleet.backends.slurm.address import supervisor_host
from trainfleet.backends.slurm.parse import (
    SlurmJob,
    SlurmNode,
    parse_sbatch_output,
    parse_sinfo_json,
    parse_squeue_json,
)
from trainfleet.backends.slurm.render import check_node_names, render_request
from trainfleet.errors import BackendError, EngineOutputError
from trainfleet.spec.state import JobState

if TYPE_CHECKING:
    from trainfleet.spec import JobSpec
    from trainfleet.store import Store

COMMAND_TIMEOUT_S = 30.0
SETTLE_S = 1.5  # how long cancel lets a job whose agents are done end by itself
CANCEL_EXTRA_S = 30.0  # beyond the spec's grace: Slurm's KillWait plus epilog time
INTERRUPTION_STATES = frozenset(
    {"PREEMPTED", "TIMEOUT", "DEADLINE", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT"})
"""Slurm ended or requeued the job itself (preemption, time limit, deadline, requeue): no node's fault.
NODE_FAIL is not here: a node failed, and the supervisor blames it through its lost agent."""


def slurm_command(argv: list[str], *, stdin: str | None = None, cwd: str | None = None,
                  timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run a Slurm client command (argv, no shell); its stdout, or ``BackendError`` with its stderr."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=timeout_s,
                              check=False)
    except FileNotFoundError:
        raise BackendError(f"{argv[0]}: not found (is slurm-client installed?)") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{' '.join(argv[:2])}: no answer in {timeout_s:g}s (is slurmctld up?)") from None
    except OSError as exc:
        raise BackendError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise BackendError(f"{argv[0]} exited {done.returncode}: {message[-1] if message else '(no output)'}")
    return done.stdout


def squeue_jobs() -> list[SlurmJob]:
    """Every job squeue lists (finished ones stay for ``MinJobAge``)."""
    return parse_squeue_json(slurm_command(["squeue", "--json"]))


class SlurmBackend:
    """Runs each attempt as one Slurm batch job with one trainfleet agent per node (see module doc)."""

    name = "slurm"
    places_nodes = True  # Slurm chooses the nodes; the supervisor learns them from ``node_names``

    def __init__(self, *, exclude: Iterable[str] = (), partition: str | None = None,
                 nodelist: Iterable[str] = (), store_factory: Callable[[], Store] | None = None,
                 poll_s: float = 1.0) -> None:
        self.static_exclude = check_node_names(exclude)
        self.nodelist = check_node_names(nodelist, field="nodelist")
        both = sorted(set(self.nodelist) & set(self.static_exclude))
        if both:
            raise BackendError(f"slurm backend: {','.join(both)} both in nodelist and exclude")
        self.partition = partition
        self.poll_s = poll_s
        self._store_factory = store_factory
        self._failed_here: set[str] = set()  # nodes the supervisor blamed in a job run by this backend
        self._exclude: tuple[str, ...] = self.static_exclude
        self._jobs: dict[str, SlurmJob] = {}  # handle url -> last squeue view
        self._polled_at = 0.0
        self._spec_nodes: dict[str, int] = {}
        self._scancelled: set[str] = set()  # handle urls trainfleet itself ran scancel on
        self._interrupted: dict[str, str] = {}  # handle url -> Slurm state that ended it (``interruption``)
        self._supervisor_host: str | None = None
        self.refresh_exclusions()

    # ---- the Backend seam ---------------------------------------------------------------------------
    @property
    def exclude(self) -> tuple[str, ...]:
        """The nodes the next ``render`` passes to ``--exclude``."""
        return self._exclude

    @property
    def supervisor_host(self) -> str:
        """The address the supervisor binds and the agents connect to (``slurm.address``; chosen once)."""
        if self._supervisor_host is None:
            self._supervisor_host = supervisor_host()
        return self._supervisor_host

    def render(self, spec: JobSpec, plan: AttemptPlan) -> Request:
        """The sbatch script of ``plan`` (``Request.script``), excluding ``self.exclude``; pure."""
        return render_request(spec, plan, exclude=self._exclude, partition=self.partition,
                              nodelist=self.nodelist)

    def submit(self, request: Request) -> JobHandle:
        """Create the attempt's log directories, then ``sbatch --parsable`` the script (stdin)."""
        if request.script is None or not request.agents:
            raise BackendError("slurm: the request has no sbatch script (render it with SlurmBackend)")
        cwd = request.agents[0].cwd
        for agent in request.agents:
            os.makedirs(os.path.dirname(agent.log_path), exist_ok=True)
        # What was submitted stays next to the logs (e.g. to see the --exclude of a resubmission).
        attempt_dir = Path(request.agents[0].log_path).parent.parent
        (attempt_dir / "job.sbatch").write_text(request.script)
        output = slurm_command(["sbatch", "--parsable"], stdin=request.script, cwd=cwd)
        submitted = parse_sbatch_output(output)
        url = job_url(self.name, submitted.cluster or "cluster", request.job_id, request.attempt)
        self._spec_nodes[url] = len(request.agents)
        return JobHandle(backend=self.name, job_id=request.job_id, attempt=request.attempt, url=url,
                         native_ids={agent.node_rank: str(submitted.job_id) for agent in request.agents})

    def exited(self, handle: JobHandle) -> dict[int, int]:
        """All agents once Slurm says the job is final: node_rank -> exit status (negative: signal)."""
        job = self.status(handle, max_age_s=self.poll_s)
        if job is None or not job.state.is_terminal:
            return {}
        status = -job.exit_signal if job.exit_signal else (job.exit_code if job.exit_code is not None else 1)
        return {node: status for node in handle.native_ids}

    def queued(self, handle: JobHandle) -> bool:
        """True while Slurm has not started the job (pending in the queue, or configuring its nodes); the
        supervisor's agent-connect timeout only runs once it has (squeue at most once per ``poll_s``)."""
        job = self.status(handle, max_age_s=self.poll_s)
        return job is not None and job.state is JobState.PENDING

    def abort(self, handle: JobHandle, reason: str) -> None:
        """The user cancelled: ``scancel`` now, so Slurm records CANCELLED (Slurm sends SIGTERM to the steps;
        the agents stop their ranks with grace). Never raises: ``cancel`` retries and waits."""
        self._scancel(handle)

    def cancel(self, handle: JobHandle, *, grace_s: float) -> None:
        """End the attempt's job (see module doc), wait until it is final on every node, sweep this host;
        refresh exclusions. Raises ``BackendError`` if Slurm still runs it ``grace_s + 30`` s later."""
        slurm_id = slurm_job_id(handle)
        # The supervisor calls cancel after every attempt; when the agents are done, the job ends by itself
        # within moments: let it, so Slurm records COMPLETED/FAILED instead of CANCELLED.
        now = time.monotonic()
        settle, deadline = now + SETTLE_S, now + grace_s + CANCEL_EXTRA_S
        while True:
            job = self.status(handle, max_age_s=0)
            if job is None or job.state.is_terminal:  # COMPLETING maps to running: still waited for
                break
            # COMPLETING: the script is over and Slurm is already ending every process; scancel adds nothing.
            # A pending job (never started, or requeued by Slurm) will not end by itself.
            if handle.url not in self._scancelled and job.native_state != "COMPLETING" and (
                    job.state is JobState.PENDING or time.monotonic() >= settle):
                self._scancel(handle)
            if time.monotonic() >= deadline:
                waited = grace_s + CANCEL_EXTRA_S
                raise BackendError(f"slurm job {slurm_id} still {job.native_state} {waited:g}s after scancel")
            time.sleep(0.2)
        outside = handle.url not in self._scancelled
        if job is not None and job.native_state.startswith("CANCELLED") and outside:
            self._interrupted.setdefault(handle.url, "CANCELLED")  # scancel outside trainfleet
        # Slurm's proctrack saw the job end; anything left here escaped it (a double fork out of the tree).
        kill_job_processes(handle.job_id, handle.attempt)
        self.refresh_exclusions(wanted=self._spec_nodes.pop(handle.url, 1))
        self._jobs.pop(handle.url, None)
        self._scancelled.discard(handle.url)

    def interruption(self, handle: JobHandle) -> str | None:
        """After ``cancel``: the Slurm state in which Slurm itself ended the attempt (``INTERRUPTION_STATES``
        or ``CANCELLED`` by someone other than trainfleet), else None. Asked once per attempt."""
        return self._interrupted.pop(handle.url, None)

    def _scancel(self, handle: JobHandle) -> None:
        self._scancelled.add(handle.url)
        try:
            slurm_command(["scancel", "--quiet", str(slurm_job_id(handle))])
        except BackendError:
            pass  # it ended meanwhile, or Slurm forgot it: the caller's wait tells

    # ---- Slurm views --------------------------------------------------------------------------------
    def status(self, handle: JobHandle, *, max_age_s: float = 0.0) -> SlurmJob | None:
        """The job of ``handle`` as squeue reports it (None once forgotten), at most ``max_age_s`` old."""
        now = time.monotonic()
        if max_age_s <= 0 or now - self._polled_at >= max_age_s or handle.url not in self._jobs:
            wanted = slurm_job_id(handle)
            self._polled_at = now
            found = [job for job in squeue_jobs() if job.job_id == wanted]
            if not found:
                self._jobs.pop(handle.url, None)
                return None
            self._jobs[handle.url] = job = found[0]
            interrupted = engine_interruption(job)
            if interrupted is not None:
                self._interrupted.setdefault(handle.url, interrupted)
        return self._jobs[handle.url]

    def node_names(self, handle: JobHandle) -> dict[int, str]:
        """node_rank -> Slurm node name of the allocation (``$SLURM_NODEID`` indexes the job's node list);
        empty while the job has no nodes (pending)."""
        job = self._jobs.get(handle.url)
        if job is None or not job.nodes:
            job = self.status(handle)
        return dict(enumerate(job.nodes)) if job is not None else {}

    def node_pool(self, count: int) -> list[str]:
        """The nodes a job of this backend may get now (for a preflight): usable nodes of the partition (not
        drained, down or failing), minus the static exclusions (only the pinned ones with a ``nodelist``), in
        Slurm's order; ``count`` is not a limit (Slurm picks among all of them). Raises ``BackendError`` when
        sinfo cannot be read."""
        try:
            nodes = parse_sinfo_json(slurm_command(["sinfo", "--json"]))
        except EngineOutputError as exc:
            raise BackendError(f"slurm: {exc}") from None
        return [node.name for node in nodes if self._in_partition(node) and node.is_usable
                and node.name not in self.static_exclude
                and (not self.nodelist or node.name in self.nodelist)]

    def _in_partition(self, node: SlurmNode) -> bool:
        return self.partition is None or self.partition in node.partitions

    def exclude_nodes(self, names: Iterable[str], *, wanted: int = 1) -> None:
        """Avoid ``names`` in every later attempt of this backend (the supervisor's hook when it blames), as
        long as ``wanted`` usable nodes remain (see ``refresh_exclusions``)."""
        self._failed_here.update(check_node_names(names))
        self.refresh_exclusions(wanted=wanted)

    def refresh_exclusions(self, *, wanted: int = 1) -> tuple[str, ...]:
        """Recompute ``exclude``: static + node history (suspect/quarantined) + nodes blamed here, limited to
        nodes this cluster has, never a pinned node (``nodelist``), and never so many that fewer than
        ``wanted`` usable nodes remain."""
        names = set(self.static_exclude) | self._failed_here | set(self._history_exclusions())
        names -= set(self.nodelist)
        if names - set(self.static_exclude):
            try:
                nodes = parse_sinfo_json(slurm_command(["sinfo", "--json"]))
            except (BackendError, EngineOutputError):
                nodes = []
            if nodes:
                known = {node.name for node in nodes}
                usable = [node.name for node in nodes if node.is_usable]
                names = {n for n in names if n in known or n in self.static_exclude}
                room = len([n for n in usable if n not in names])
                if room < wanted:  # drop some verdicts rather than leave the job pending forever
                    dropped = sorted(names - set(self.static_exclude))[: wanted - room]
                    names -= set(dropped)
        self._exclude = check_node_names(names)
        return self._exclude

    # ---- node history -------------------------------------------------------------------------------
    def _history_exclusions(self) -> list[str]:
        if self._store_factory is None:
            return []
        from trainfleet.store.nodes import NodeState

        with self._store_factory() as store:
            return [n.name for n in store.nodes() if n.state in (NodeState.SUSPECT, NodeState.QUARANTINED)]


def engine_interruption(job: SlurmJob) -> str | None:
    """The Slurm state in which Slurm itself ended or requeued ``job`` (``INTERRUPTION_STATES``; a pending
    job with a restart count was requeued: ``REQUEUED``), else None (running, done, failed, cancelled,
    NODE_FAIL: a failed node is blamed, not excused)."""
    seen = sorted(set(job.native_state.split(",")) & INTERRUPTION_STATES)
    if seen:
        return seen[0]
    return "REQUEUED" if job.state is JobState.PENDING and job.restart_count > 0 else None


def slurm_job_id(handle: JobHandle) -> int:
    """The Slurm job id of a handle made by ``SlurmBackend.submit``."""
    try:
        return int(next(iter(handle.native_ids.values())))
    except (StopIteration, ValueError):
        raise BackendError(f"{handle.url}: not a Slurm job handle") from None


def default_store_factory() -> Store:
    """Open trainfleet's store (``$TRAINFLEET_DB_URL`` / ``$TRAINFLEET_HOME``) for node history reads."""
    from trainfleet.store import open_store

    return open_store()


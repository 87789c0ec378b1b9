"""``SlurmBackend``: the ``Backend`` seam over sbatch / squeue / scancel (argv lists, never a shell string).

- ``render`` is pure (``slurm.render``): the sbatch script, with ``--exclude`` of the nodes this backend
  avoids right now (see below).
- ``submit`` creates the attempt's log directories on the shared filesystem, keeps the script there as
  ``attempt-<k>/job.sbatch`` and pipes it into ``sbatch --parsable`` (run in the spec's workdir); the
  handle carries the Slurm job id.
- ``exited`` polls ``squeue --json`` (at most once per ``poll_s``), maps Slurm's state through the one table
  (``slurm.states``) and, once the job is final, reports every node's agent as gone.
- ``cancel`` runs ``scancel``, waits until Slurm says the job is final (COMPLETING is over: slurmstepd has
  seen every process of the job end on every node), then sweeps this host for leftovers of the attempt.

Nodes to avoid: the ``exclude`` given at construction, plus the suspect and quarantined nodes in the store's
node history (``Store.nodes()``) that this cluster knows, plus the nodes this backend saw fail an attempt of
the job (blamed by the supervisor, or a rank killed by a signal, hung or lost there: the attempt's typed
store events, mapped from node rank to Slurm node through the allocation's node list). The set
is refreshed when an attempt ends (in ``cancel``), so ``render`` itself never does I/O. It never grows so
large that the job no longer fits on the usable nodes.
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
from trainfleet.backends.slurm.parse import SlurmJob, parse_sbatch_output, parse_sinfo_json, parse_squeue_json
from trainfleet.backends.slurm.render import check_node_names, render_request
from trainfleet.errors import BackendError, EngineOutputError

if TYPE_CHECKING:
    from trainfleet.spec import JobSpec
    from trainfleet.store import Store

COMMAND_TIMEOUT_S = 30.0
SETTLE_S = 1.5  # how long cancel lets a job whose agents are done end by itself
CANCEL_EXTRA_S = 30.0  # beyond the spec's grace: Slurm's KillWait plus epilog time
_FAILURE_EVENTS = ("rank_failed", "agent_lost", "rank_hung")


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

    def __init__(self, *, exclude: Iterable[str] = (), partition: str | None = None,
                 store_factory: Callable[[], Store] | None = None, poll_s: float = 1.0) -> None:
        self.static_exclude = check_node_names(exclude)
        self.partition = partition
        self.poll_s = poll_s
        self._store_factory = store_factory
        self._failed_here: set[str] = set()  # nodes that failed an attempt of a job run by this backend
        self._exclude: tuple[str, ...] = self.static_exclude
        self._jobs: dict[str, SlurmJob] = {}  # handle url -> last squeue view
        self._polled_at = 0.0
        self._spec_nodes: dict[str, int] = {}
        self.refresh_exclusions()

    # ---- the Backend seam ---------------------------------------------------------------------------
    @property
    def exclude(self) -> tuple[str, ...]:
        """The nodes the next ``render`` passes to ``--exclude``."""
        return self._exclude

    def render(self, spec: JobSpec, plan: AttemptPlan) -> Request:
        """The sbatch script of ``plan`` (``Request.script``), excluding ``self.exclude``; pure."""
        return render_request(spec, plan, exclude=self._exclude, partition=self.partition)

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

    def cancel(self, handle: JobHandle, *, grace_s: float) -> None:
        """``scancel`` the job, wait until it is final on every node, sweep this host; refresh exclusions."""
        slurm_id = slurm_job_id(handle)
        # The supervisor calls cancel after every attempt; when the agents are done, the job ends by itself
        # within moments: let it, so Slurm records COMPLETED/FAILED instead of CANCELLED.
        settle = time.monotonic() + SETTLE_S
        job = self.status(handle, max_age_s=0)
        while job is not None and not job.state.is_terminal and time.monotonic() < settle:
            time.sleep(0.1)
            job = self.status(handle, max_age_s=0)
        if job is not None and not job.state.is_terminal:
            try:
                slurm_command(["scancel", "--quiet", str(slurm_id)])
            except BackendError:
                pass  # it ended meanwhile, or Slurm forgot it: the wait below tells
        deadline = time.monotonic() + grace_s + CANCEL_EXTRA_S
        while True:
            job = self.status(handle, max_age_s=0)
            if job is None or (job.state.is_terminal and job.native_state != "COMPLETING"):
                break
            if time.monotonic() >= deadline:
                waited = grace_s + CANCEL_EXTRA_S
                raise BackendError(f"slurm job {slurm_id} still {job.native_state} {waited:g}s after scancel")
            time.sleep(0.2)
        # Slurm's proctrack saw the job end; anything left here escaped it (a double fork out of the tree).
        kill_job_processes(handle.job_id, handle.attempt)
        self._learn_failed_nodes(handle, job)
        self.refresh_exclusions(wanted=self._spec_nodes.pop(handle.url, 1))
        self._jobs.pop(handle.url, None)

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
            self._jobs[handle.url] = found[0]
        return self._jobs[handle.url]

    def node_names(self, handle: JobHandle) -> dict[int, str]:
        """node_rank -> Slurm node name of the allocation (``$SLURM_NODEID`` indexes the job's node list)."""
        job = self._jobs.get(handle.url) or self.status(handle)
        return dict(enumerate(job.nodes)) if job is not None else {}

    def exclude_nodes(self, names: Iterable[str]) -> None:
        """Avoid ``names`` in every later attempt of this backend (the resilience policy's hook)."""
        self._failed_here.update(check_node_names(names))
        self.refresh_exclusions()

    def refresh_exclusions(self, *, wanted: int = 1) -> tuple[str, ...]:
        """Recompute ``exclude``: static + node history (suspect/quarantined) + nodes seen failing, limited to
        nodes this cluster has, and never so many that fewer than ``wanted`` usable nodes remain."""
        names = set(self.static_exclude) | self._failed_here | set(self._history_exclusions())
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

    def _learn_failed_nodes(self, handle: JobHandle, job: SlurmJob | None) -> None:
        """Nodes the supervisor blamed in this attempt (``node_*`` events carrying ``node_rank``), or where a
        rank was killed by a signal, hung, or its agent was lost (typed store events, never log text)."""
        if self._store_factory is None or job is None or not job.nodes:
            return
        by_rank = dict(enumerate(job.nodes))
        with self._store_factory() as store:
            events = [e for e in store.events(handle.job_id) if e.attempt == handle.attempt]
        for event in events:
            data = event.data or {}
            if event.kind.startswith("node_") and isinstance(data.get("node_rank"), int):
                node_rank: int | None = data["node_rank"]
            elif event.kind in _FAILURE_EVENTS and event.node is not None and str(event.node).isdigit():
                if event.kind == "rank_failed" and not data.get("signal"):
                    continue  # an exit code alone blames the program, not the node
                node_rank = int(event.node)
            else:
                continue
            if node_rank in by_rank:
                self._failed_here.add(by_rank[node_rank])


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


"""The backend seam: render a job attempt into a plain request (no I/O), then submit, watch and cancel it.

A backend is four small operations:

- ``render(spec, plan) -> Request``: pure; the exact processes to start (agent argv, env, cwd, log file).
  ``trainfleet run --dry-run`` prints it and golden tests pin it.
- ``submit(request) -> JobHandle``: start the agents (one per logical node).
- ``exited(handle) -> dict[node_rank, exit status]``: which agents are gone (supervisor backstop).
- ``cancel(handle, grace_s)``: stop every process of the attempt; when it returns, none survives.

The agents themselves talk to the supervisor over TCP (``runtime.protocol``); the backend only starts and
stops them. The local backend runs agents as processes here; a Slurm backend renders an sbatch script
whose ``srun`` starts the very same agent on every node.

Optional members, looked up by the supervisor with ``getattr`` (a backend without them gets the default):

- ``supervisor_host`` (default ``127.0.0.1``): the address the supervisor binds and hands to the agents.
- ``node_pool(count) -> list[str]``: names of the nodes a job may use (the local backend's agent slots).
- ``places_nodes = True``: the engine, not the supervisor, chooses the nodes (a scheduler such as Slurm);
  then ``node_names(handle) -> {node_rank: name}`` names them once the allocation is known (empty before),
  and ``exclude_nodes(names, wanted=N)`` asks the engine to avoid nodes the supervisor blamed (while N
  usable nodes remain).
- ``queued(handle) -> bool``: the engine has not started the attempt yet (a scheduler's queue); the
  supervisor's agent-connect timeout starts once it has.
- ``abort(handle, reason)``: the user cancelled; called before the agents are told to stop, so the
  engine can record the job as cancelled (``cancel`` still follows and waits).
- ``interruption(handle) -> str | None``: after ``cancel``, the engine's word when the engine itself ended
  the attempt (preemption, time limit, requeue, a cancel outside trainfleet): no node is to blame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trainfleet.spec import JobSpec


@dataclass(frozen=True)
class AttemptPlan:
    """Everything an attempt needs besides the spec: ids, the rendezvous and supervisor addresses, paths.

    ``workdir``/``checkpoint_dir`` come from the spec resolved at ``run`` time; ``run_dir`` holds the logs.
    """

    job_id: str
    attempt: int
    run_dir: str
    master_addr: str
    master_port: int
    supervisor_addr: str
    python: str = "python3"
    nodes: tuple[str, ...] = ()  # the node of each node rank, when the supervisor places them (else empty)


@dataclass(frozen=True)
class AgentLaunch:
    """One agent process to start: ``argv`` run in ``cwd`` with ``env`` added to the inherited environment."""

    node_rank: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_path: str


@dataclass(frozen=True)
class Request:
    """The rendered attempt: what ``submit`` will start, and nothing else. Plain data, printable."""

    backend: str
    job_id: str
    attempt: int
    world_size: int
    master_addr: str
    master_port: int
    agents: list[AgentLaunch] = field(default_factory=list)
    script: str | None = None  # e.g. the sbatch text of a batch backend

    def to_dict(self) -> dict[str, Any]:
        """The request as plain JSON-able data (for ``--dry-run`` and golden tests)."""
        data = asdict(self)
        if self.script is None:
            data.pop("script")
        return data


@dataclass(frozen=True)
class JobHandle:
    """A submitted attempt; ``url`` names it (``local://host/<job>/<attempt>``, later ``slurm://...``)."""

    backend: str
    job_id: str
    attempt: int
    url: str
    native_ids: Mapping[int, str] = field(default_factory=dict)  # node_rank -> pid / Slurm step id


class Backend(Protocol):
    """What the supervisor needs from an execution engine (see module doc)."""

    name: str

    def render(self, spec: JobSpec, plan: AttemptPlan) -> Request:
        """The exact request for ``plan``; pure: no processes, no files, no network."""
        ...

    def submit(self, request: Request) -> JobHandle:
        """Start every agent of ``request``; raises ``BackendError`` if any cannot be started."""
        ...

    def exited(self, handle: JobHandle) -> dict[int, int]:
        """Agents of ``handle`` that have ended: node_rank -> exit status (negative: killed by signal)."""
        ...

    def cancel(self, handle: JobHandle, *, grace_s: float) -> None:
        """Stop every process of the attempt (agents and ranks); returns once none survives."""
        ...


def job_url(backend: str, host: str, job_id: str, attempt: int) -> str:
    """Handle URL ``<backend>://<host>/<job_id>/<attempt>``."""
    return f"{backend}://{host}/{job_id}/{attempt}"


def merged_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` with ``extra`` on top (a new dict)."""
    env = dict(base)
    env.update(extra)
    return env

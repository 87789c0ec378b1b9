"""The local backend: every logical node is an agent process on this machine.

``render`` is pure: it returns the agent command lines, their environment additions (the spec's ``env``
with ``OMP_NUM_THREADS`` defaulted to 1) and their log files. ``submit`` starts all agents at once (each in
its own session, with PR_SET_PDEATHSIG=SIGTERM so a killed supervisor takes them down); ``cancel`` asks them
to stop, escalates to SIGKILL, then sweeps ``/proc`` for any process still carrying the job's id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from trainfleet.backends.base import AgentLaunch, AttemptPlan, JobHandle, Request, job_url
from trainfleet.backends.procscan import kill_job_processes
from trainfleet.errors import BackendError
from trainfleet.runtime import lifeline

if TYPE_CHECKING:
    from trainfleet.spec import JobSpec

AGENT_MODULE = "trainfleet.runtime.agent"


def agent_argv(spec: JobSpec, plan: AttemptPlan, node_rank: int | None) -> list[str]:
    """The agent command line for one node (``node_rank=None``: taken from ``$SLURM_NODEID`` at run time)."""
    argv = [plan.python, "-m", AGENT_MODULE, "--job-id", plan.job_id, "--attempt", str(plan.attempt)]
    if node_rank is not None:
        argv += ["--node-rank", str(node_rank)]
    argv += [
        "--nnodes", str(spec.nodes), "--nproc-per-node", str(spec.procs_per_node),
        "--master-addr", plan.master_addr, "--master-port", str(plan.master_port),
        "--run-dir", plan.run_dir, "--workdir", spec.workdir, "--supervisor", plan.supervisor_addr,
        "--heartbeat-interval-s", _num(spec.heartbeat_interval_s), "--grace-s", _num(spec.grace_s),
    ]
    if spec.checkpoint_dir:
        argv += ["--checkpoint-dir", spec.checkpoint_dir]
    return [*argv, "--", *spec.argv]


def agent_env(spec: JobSpec) -> dict[str, str]:
    """Environment the agent (and so every rank) gets on top of the inherited one."""
    env = {"OMP_NUM_THREADS": "1"}
    env.update(spec.env)
    return env


def _num(value: float) -> str:
    return repr(float(value)).removesuffix(".0") if float(value).is_integer() else repr(float(value))


class LocalBackend:
    """Runs each logical node as an agent process on this host (see module doc)."""

    name = "local"
    supervisor_host = "127.0.0.1"  # every agent runs on this machine

    def __init__(self) -> None:
        self._agents: dict[str, dict[int, subprocess.Popen]] = {}

    def node_pool(self, count: int) -> list[str]:
        """Names of the agent slots a job may use (``local-0`` ...): a slot is this backend's node."""
        return [f"local-{i}" for i in range(count)]

    def render(self, spec: JobSpec, plan: AttemptPlan) -> Request:
        """One ``AgentLaunch`` per node; pure."""
        agents = [
            AgentLaunch(
                node_rank=node,
                argv=agent_argv(spec, plan, node),
                env=agent_env(spec),
                cwd=spec.workdir,
                log_path=f"{plan.run_dir}/attempt-{plan.attempt}/node-{node}/agent.log",
            )
            for node in range(spec.nodes)
        ]
        return Request(backend=self.name, job_id=plan.job_id, attempt=plan.attempt,
                       world_size=spec.nodes * spec.procs_per_node, master_addr=plan.master_addr,
                       master_port=plan.master_port, agents=agents)

    def submit(self, request: Request) -> JobHandle:
        """Start every agent now (in parallel: nothing waits for an agent to come up)."""
        hook = lifeline.die_with_parent_hook(signal.SIGTERM, os.getpid())
        procs: dict[int, subprocess.Popen] = {}
        for launch in request.agents:
            os.makedirs(os.path.dirname(launch.log_path), exist_ok=True)
            env = dict(os.environ)
            env.update(launch.env)
            try:
                with open(launch.log_path, "ab") as log:
                    procs[launch.node_rank] = subprocess.Popen(
                        launch.argv, cwd=launch.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=hook, close_fds=True,
                    )
            except OSError as exc:
                for proc in procs.values():
                    _kill_group(proc.pid, signal.SIGKILL)
                    proc.wait()
                raise BackendError(f"cannot start agent for node {launch.node_rank}: {exc}") from None
        url = job_url(self.name, socket.gethostname(), request.job_id, request.attempt)
        self._agents[url] = procs
        return JobHandle(backend=self.name, job_id=request.job_id, attempt=request.attempt, url=url,
                         native_ids={node: str(p.pid) for node, p in procs.items()})

    def exited(self, handle: JobHandle) -> dict[int, int]:
        """Agents that have ended, with their exit status (negative: signal)."""
        out = {}
        for node, proc in self._agents.get(handle.url, {}).items():
            code = proc.poll()
            if code is not None:
                out[node] = code
        return out

    def cancel(self, handle: JobHandle, *, grace_s: float) -> None:
        """SIGTERM the agents (they stop their ranks), SIGKILL after the grace, then sweep the job."""
        procs = self._agents.pop(handle.url, {})
        for proc in procs.values():
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGTERM)
                _kill_group(proc.pid, signal.SIGCONT)  # a stopped (SIGSTOP) agent must run to obey
        deadline = time.monotonic() + grace_s + 2.0  # the agents' own grace, plus time to report back
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_job_processes(handle.job_id, handle.attempt)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

"""The netns backend: every logical node is an agent inside one namespaced testbed host (``tfh1..tfhK``).

Node ``n`` of a job runs in the ``n``-th host of the backend's host list (``tfh1..tfhN`` by default) as
``ip netns exec tfhK python -m trainfleet.runtime.agent ...`` — an argv list, no shell. The rendezvous
(``MASTER_ADDR``) is the first host's namespace address; every rank gets ``GLOO_SOCKET_IFNAME=eth0`` (the
namespaces share one hostname that resolves to 127.0.0.1) and ``TRAINFLEET_NODE_NAME`` = its host's name.
The agents reach their supervisor at the bridge's host-side address (``testbed.HOST_SIDE_ADDRESS``), so
the supervisor must listen there: ``supervisor_host`` says where. All traffic stays on this machine.

Starting, watching and stopping the agents is the local backend's work (``ip netns exec`` replaces itself
with the agent, so the process it starts *is* the agent); only ``render`` differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from trainfleet.backends.base import AgentLaunch, JobHandle, Request
from trainfleet.backends.local import LocalBackend, agent_argv, agent_env
from trainfleet.errors import BackendError, InputError
from trainfleet.testbed import netns

if TYPE_CHECKING:
    from trainfleet.backends.base import AttemptPlan
    from trainfleet.spec import JobSpec


class NetnsBackend(LocalBackend):
    """Runs node ``n`` of a job inside testbed host ``hosts[n]`` (see module doc)."""

    name = "netns"
    supervisor_host = netns.HOST_SIDE_ADDRESS

    def __init__(self, hosts: Sequence[str | int] | None = None) -> None:
        super().__init__()
        try:
            self.hosts: list[netns.Host] | None = [netns.host(h) for h in hosts] if hosts else None
        except InputError as exc:
            raise BackendError(f"netns backend: {exc}") from None
        if self.hosts is not None and len({h.name for h in self.hosts}) != len(self.hosts):
            raise BackendError("netns backend: a host is listed twice")
        self.excluded: set[str] = set()

    def exclude(self, names: Iterable[str]) -> None:
        """Never place a node on these hosts again (preflight found them slow); spares take their ranks."""
        self.excluded.update(names)

    def node_pool(self, count: int) -> list[str]:
        """The hosts a job (nodes + spares = ``count``) may use: the given list, else ``tfh1..tfh<count>``."""
        pool = self.hosts if self.hosts is not None else [netns.host(i) for i in range(1, count + 1)]
        return [h.name for h in pool[:count]]

    def hosts_for(self, nodes: int, placement: Sequence[str] = (), *, spares: int = 0) -> list[netns.Host]:
        """The host of each node rank: ``placement`` when given (names, e.g. the supervisor's choice of
        nodes and spares), else the first ``nodes`` hosts of the pool (the given list, else
        ``tfh1..tfh<nodes + spares>``) that are not excluded."""
        if placement:
            try:
                hosts = [netns.host(name) for name in placement]
            except InputError as exc:
                raise BackendError(f"netns backend: placement: {exc}") from None
        else:
            pool = self.hosts or [netns.host(name) for name in self.node_pool(nodes + spares)]
            hosts = [h for h in pool if h.name not in self.excluded]
        if len(hosts) < nodes:
            excluded = f" ({len(self.excluded)} excluded)" if self.excluded else ""
            raise BackendError(f"netns backend: {nodes} nodes asked, {len(hosts)} hosts given{excluded}")
        return hosts[:nodes]

    def render(self, spec: JobSpec, plan: AttemptPlan) -> Request:
        """One ``AgentLaunch`` per node, wrapped in ``ip netns exec <host>``; pure. A plan that names its
        nodes (``plan.nodes``, one per node rank) places them there; otherwise excluded hosts are skipped
        and spares (``spec.spare_nodes``) fill in."""
        hosts = self.hosts_for(spec.nodes, plan.nodes, spares=spec.spare_nodes)
        plan = dataclasses.replace(plan, master_addr=hosts[0].address)
        agents = []
        for node, h in enumerate(hosts):
            env = agent_env(spec)
            env.setdefault("GLOO_SOCKET_IFNAME", netns.HOST_IFNAME)
            env["TRAINFLEET_NODE_NAME"] = h.name
            agents.append(AgentLaunch(
                node_rank=node,
                argv=netns.in_host(h, agent_argv(spec, plan, node)),
                env=env,
                cwd=spec.workdir,
                log_path=f"{plan.run_dir}/attempt-{plan.attempt}/node-{node}/agent.log",
            ))
        return Request(backend=self.name, job_id=plan.job_id, attempt=plan.attempt,
                       world_size=spec.nodes * spec.procs_per_node, master_addr=plan.master_addr,
                       master_port=plan.master_port, agents=agents)

    def submit(self, request: Request) -> JobHandle:
        """Check that every host's namespace exists, then start the agents (``BackendError`` if not)."""
        try:
            present = {h.name for h in netns.hosts_up()}
        except BackendError as exc:
            raise BackendError(f"netns backend: cannot list the testbed hosts: {exc}") from None
        wanted = [launch.env["TRAINFLEET_NODE_NAME"] for launch in request.agents]
        missing = [name for name in wanted if name not in present]
        if missing:
            raise BackendError(f"netns backend: testbed host(s) {', '.join(missing)} not up "
                               f"(scripts/testbed up {len(wanted)})")
        return super().submit(request)

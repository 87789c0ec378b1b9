"""Which Slurm nodes a probe runs on, and the names Slurm gave the ranks of a probe job.

A probe on Slurm is pinned to its nodes (``SlurmBackend(nodelist=...)``): the nodes named by the user
(``--hosts node1,node3``), checked against ``sinfo --json``, or the first ``count`` usable nodes (idle, mixed
or allocated; not drained, draining, down or failing) of the partition, in Slurm's order. Slurm numbers the
nodes of an allocation in its own order (``$SLURM_NODEID``), not the order given, so the records of a probe
job are named by its allocation (the supervisor's ``attempt_started`` event, ``allocation_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainfleet.errors import BackendError, EngineOutputError, InputError

if TYPE_CHECKING:
    from trainfleet.backends.slurm.parse import SlurmNode
    from trainfleet.store import Store
    from trainfleet.store.records import EventRecord


def sinfo_nodes() -> list[SlurmNode]:
    """Every node ``sinfo --json`` lists, in Slurm's order (``BackendError`` when it cannot be read)."""
    from trainfleet.backends.slurm.backend import slurm_command
    from trainfleet.backends.slurm.parse import parse_sinfo_json

    try:
        return parse_sinfo_json(slurm_command(["sinfo", "--json"]))
    except EngineOutputError as exc:
        raise BackendError(f"slurm: {exc}") from None


def pick_nodes(count: int, hosts: Sequence[str] | None = None, *, partition: str | None = None,
               nodes: Sequence[SlurmNode] | None = None) -> list[str]:
    """``count`` Slurm node names for a probe: the first ``count`` of ``hosts`` when given (each must be a
    usable node of the partition), else the first ``count`` usable nodes of the partition. ``nodes`` is the
    cluster's view (read with ``sinfo --json`` when None). Raises ``InputError`` naming what is missing."""
    from trainfleet.backends.slurm.collect import choose_nodes
    from trainfleet.backends.slurm.render import check_node_names

    cluster = list(nodes) if nodes is not None else sinfo_nodes()
    where = f" in partition {partition}" if partition is not None else ""
    if hosts:
        names = list(hosts)
        try:
            check_node_names(names, field="--hosts")
        except BackendError as exc:
            raise InputError(str(exc)) from None
        if len(set(names)) != len(names):
            raise InputError("--hosts: a node is listed twice")
        if len(names) < count:
            raise InputError(f"{count} nodes asked, {len(names)} names given")
        names = names[:count]
        known = {node.name: node for node in cluster}
        for name in names:
            node = known.get(name)
            if node is None:
                raise InputError(f"--hosts: {name} is not a node of this Slurm cluster "
                                 f"(known: {', '.join(known) or 'none'})")
            if partition is not None and partition not in node.partitions:
                raise InputError(f"--hosts: {name} is not in partition {partition}")
            if not node.is_usable:
                raise InputError(f"--hosts: {name} is not usable now ({node.condition})")
        return names
    chosen, skipped = choose_nodes(cluster, partition=partition, count=count)
    if len(chosen) < count:
        unusable = [f"{s.name} {s.why}" for s in skipped]
        raise InputError(f"slurm: {count} node{'s' if count != 1 else ''} asked, {len(chosen)} usable{where}"
                         + (f" (skipped: {'; '.join(unusable)})" if unusable else ""))
    return chosen


def allocation_names(store: Store, job_id: str, *, events: Sequence[EventRecord] | None = None
                     ) -> list[str] | None:
    """The Slurm node of each node rank of the job's last attempt that started (the supervisor's
    ``attempt_started`` event; pass ``events`` when already read), or None when no attempt got that far."""
    if events is None:
        events = store.events(job_id, kinds=["attempt_started"])
    for event in reversed(events):
        nodes = (event.data or {}).get("nodes")
        if isinstance(nodes, dict) and nodes:
            try:
                return [str(nodes[k]) for k in sorted(nodes, key=int)]
            except (TypeError, ValueError):
                return None
    return None



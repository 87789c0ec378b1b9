"""GPU without an RDMA NIC nearby (facts §2.8).

GPUDirect RDMA is best when GPU and HCA share a PCIe switch or root complex; a GPU whose nearest NIC sits
on the other socket (``SYS`` in ``nvidia-smi topo -m``) gets half-speed GDR or NCCL host staging. Judged
only when the capture shows at least one RDMA NIC and the GPU's NUMA node (a partial capture or a
single-socket host without NUMA lines proves nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from trainfleet.health.model import DeviceKind, Finding, Severity
from trainfleet.health.rules.context import RuleContext, describe

_NEAR = ("switch", "root_port", "numa")


def _bdf_of(item: Any) -> str:
    return item if isinstance(item, str) else item.bdf


def check_gpu_nic_affinity(ctx: RuleContext) -> Iterator[Finding]:
    """``gpu-nic-affinity``: a GPU with no RDMA NIC on its PCIe switch, root port or NUMA node."""
    nics = [d for d in ctx.of_kind(DeviceKind.RDMA_NIC) if not d.is_virtual_function]
    if ctx.topo is None or not nics:
        return
    best: dict[str, str] = {}
    for gpu, _nic, relation in ctx.topo.gpu_nic_pairs():
        g = _bdf_of(gpu)
        if relation in _NEAR:
            best[g] = relation
        else:
            best.setdefault(g, relation)
    for gpu in ctx.of_kind(DeviceKind.GPU):
        if gpu.is_virtual_function or gpu.numa_node is None or best.get(gpu.bdf, "none") in _NEAR:
            continue
        where = sorted({str(n.numa_node) for n in nics if n.numa_node is not None})
        yield ctx.finding(
            gpu, "gpu-nic-affinity", Severity.WARNING, "NUMA node", str(gpu.numa_node),
            f"an RDMA NIC on NUMA node {gpu.numa_node}",
            f"{describe(gpu)} (NUMA node {gpu.numa_node}) has no RDMA NIC on its PCIe switch, root port or "
            f"NUMA node (NICs on NUMA {', '.join(where) or 'unknown'}): GPUDirect RDMA crosses sockets",
            f"{gpu.address}: NUMA node: {gpu.numa_node}",
            "move or add a NIC on this GPU's socket/switch (rail-aligned), or map this GPU's rank to a "
            "local NIC",
        )

"""What every rule needs about one node, computed once: devices by address, the PCIe tree around each
device (parent port, child devices, bridges above it) and the kernel command line.

The tree comes from ``trainfleet.health.topology.Topology`` (built from bridge bus ranges); this module
only adapts it to the questions rules ask, and answers "unknown" (``None`` / empty) when the capture does
not show a device's parent (single-device dumps, partial captures).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trainfleet.health.model import DeviceKind, Finding, NodeFacts, PciDevice, PortType, Severity

# Kinds the RDMA / GPUDirect rules are about.
ENDPOINT_KINDS = (DeviceKind.GPU, DeviceKind.RDMA_NIC)
PATH_PORT_TYPES = (PortType.ROOT_PORT, PortType.DOWNSTREAM)


def _bdf_of(item: Any) -> str:
    """Topology answers may be addresses or devices; rules work with canonical addresses."""
    return item if isinstance(item, str) else item.bdf


KIND_NAMES = {
    DeviceKind.GPU: "GPU",
    DeviceKind.RDMA_NIC: "RDMA NIC",
    DeviceKind.NIC: "NIC",
    DeviceKind.NVME: "NVMe",
    DeviceKind.ROOT_PORT: "root port",
    DeviceKind.SWITCH_DOWNSTREAM: "switch downstream port",
    DeviceKind.SWITCH_UPSTREAM: "switch upstream port",
    DeviceKind.NVSWITCH: "NVSwitch",
    DeviceKind.BRIDGE: "bridge",
}


def kind_name(kind: str) -> str:
    """``"rdma_nic"`` -> ``"RDMA NIC"``; unknown kinds read as ``device``."""
    return KIND_NAMES.get(kind, "device")  # DeviceKind is a StrEnum: its values look themselves up


def describe(dev: PciDevice) -> str:
    """A short human name: ``GPU 0000:04:00.0`` / ``RDMA NIC 0000:03:00.0`` / ``root port 0000:00:01.1``."""
    return f"{kind_name(dev.kind)} {dev.bdf}"


@dataclass(slots=True)
class RuleContext:
    """One node as the rules see it. Build with :func:`build_context`; read-only afterwards."""

    node: NodeFacts
    topo: Any  # trainfleet.health.topology.Topology, or None when it could not be built
    by_bdf: dict[str, PciDevice] = field(default_factory=dict)
    children: dict[str, list[PciDevice]] = field(default_factory=dict)
    # bridge address -> the GPUs / RDMA NICs below it (only bridges on such a path appear)
    endpoints_below: dict[str, list[PciDevice]] = field(default_factory=dict)

    @property
    def devices(self) -> list[PciDevice]:
        """Every device of the node, in printed order."""
        return self.node.lspci.devices

    def of_kind(self, *kinds: DeviceKind) -> Iterable[PciDevice]:
        """The devices whose kind is one of ``kinds``, in printed order."""
        return (d for d in self.devices if d.kind in kinds)

    def parent(self, dev: PciDevice) -> PciDevice | None:
        """The port directly above ``dev``, when the capture shows it."""
        if self.topo is None:
            return None
        up = self.topo.parent(dev.bdf)
        return None if up is None else self.by_bdf.get(_bdf_of(up))

    def bridges_above(self, dev: PciDevice) -> list[PciDevice]:
        """Bridges between ``dev`` and its root port, nearest first (empty when unknown)."""
        if self.topo is None:
            return []
        path = self.topo.path_to_root(dev.bdf) or []
        out = []
        for item in path:
            bdf = _bdf_of(item)
            if bdf != dev.bdf and bdf in self.by_bdf:
                out.append(self.by_bdf[bdf])
        return out

    def finding(
        self,
        dev: PciDevice | None,
        check: str,
        severity: Severity,
        field_name: str,
        value: str,
        expected: str,
        message: str,
        evidence: str = "",
        hint: str = "",
    ) -> Finding:
        """A rule finding about ``dev`` (or the node when ``dev`` is None) of this node."""
        return Finding(
            node=self.node.name,
            device=dev.address if dev is not None else "",
            check=check,
            severity=severity,
            field=field_name,
            value=value,
            expected=expected,
            message=message,
            evidence=evidence.strip(),
            hint=hint,
        )


def build_context(node: NodeFacts, topo: Any) -> RuleContext:
    """Index ``node``'s devices and its tree once, for all rules."""
    ctx = RuleContext(node=node, topo=topo)
    ctx.by_bdf = {d.bdf: d for d in node.lspci.devices}
    if topo is None:
        return ctx
    for dev in node.lspci.devices:
        up = topo.parent(dev.bdf)
        if up is not None:
            ctx.children.setdefault(_bdf_of(up), []).append(dev)
    for dev in node.lspci.devices:
        if dev.kind in ENDPOINT_KINDS and not dev.is_virtual_function:
            for bridge in ctx.bridges_above(dev):
                ctx.endpoints_below.setdefault(bridge.bdf, []).append(dev)
    return ctx


def flags_set(flags: dict[str, bool], names: Iterable[str] | None = None) -> list[str]:
    """Names of the flags that are ``+`` (restricted to ``names`` when given), in printed order."""
    wanted = None if names is None else set(names)
    return [k for k, v in flags.items() if v and (wanted is None or k in wanted)]


def plus(names: Iterable[str]) -> str:
    """``["ReqRedir", "CmpltRedir"]`` -> ``"ReqRedir+ CmpltRedir+"``."""
    return " ".join(f"{n}+" for n in names)


def minus(names: Iterable[str]) -> str:
    """``["ReqRedir", "CmpltRedir"]`` -> ``"ReqRedir- CmpltRedir-"``."""
    return " ".join(f"{n}-" for n in names)

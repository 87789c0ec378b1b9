"""The PCIe tree of one node, from the bridges' bus ranges in an ``lspci -vvv`` dump.

A device's parent is the deepest bridge (same PCI domain) whose ``secondary..subordinate`` bus range holds the
device's bus. From that: each device's path up to its root port, the switch ports on it, the lowest switch two
devices share, and how each GPU reaches each RDMA NIC (same switch, same root port, same NUMA node, or not).
Per-device captures (``lspci -s <bdf> -vvv``) hold no bridges: the tree is then partial and says so in
``Topology.warnings``; nothing here raises. :func:`parse_tree_text` reads ``lspci -tv`` text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from trainfleet.health.model import BusRange, DeviceKind, LspciDump, PciDevice, PortType

__all__ = ["Relation", "Topology", "TreeEntry", "build_topology", "parse_tree_text"]

Relation = str  # "switch" | "root_port" | "numa" | "none"
_SWITCH_PORTS = (PortType.UPSTREAM, PortType.DOWNSTREAM)


def _is_root_port(dev: PciDevice) -> bool:
    return dev.express is not None and dev.express.port_type is PortType.ROOT_PORT


@dataclass(slots=True)
class Topology:
    """Parent links between the devices of one dump (keyed by ``bdf``) and what could not be known."""

    devices: dict[str, PciDevice] = field(default_factory=dict)
    parents: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    orphans: set[str] = field(default_factory=set)  # off a root bus, yet no upstream bridge in the dump
    bus_owner: dict[tuple[int, int], str] = field(default_factory=dict)  # (domain, bus) -> bridge above it

    def _up(self, bdf: str) -> str | None:
        if bdf in self.parents:
            return self.parents[bdf]
        try:  # an address the dump does not hold (e.g. an endpoint seen only in lspci -t): go by its bus
            return self.bus_owner.get((int(bdf[:-8], 16), int(bdf[-7:-5], 16)))
        except ValueError:
            return None

    def parent(self, bdf: str) -> PciDevice | None:
        """The bridge directly upstream of ``bdf``; None at a root bus or when the dump lacks it."""
        up = self._up(bdf)
        return self.devices.get(up) if up else None

    def path_to_root(self, bdf: str) -> list[PciDevice]:
        """Upstream bridges from the device's parent up to (and including) its root port; [] if none known."""
        path: list[PciDevice] = []
        seen = {bdf}
        up = self._up(bdf)
        while up and up not in seen:
            seen.add(up)
            bridge = self.devices[up]
            path.append(bridge)
            if _is_root_port(bridge):
                break
            up = self.parents.get(up)
        return path

    def root_port(self, bdf: str) -> PciDevice | None:
        """The root port above ``bdf``; when port types are hidden (``<access denied>``, plain ``lspci``) the
        topmost bridge on the path, if it sits on a root bus; None when unknown."""
        path = self.path_to_root(bdf)
        if not path:
            return None
        top = path[-1]
        if _is_root_port(top):
            return top
        if top.express is None and self.parents.get(top.bdf) is None and top.bdf not in self.orphans:
            return top
        return None

    def switch_ports_above(self, bdf: str) -> list[PciDevice]:
        """Switch ports (Upstream/Downstream Port) on the path, nearest first. Bridges whose port type is
        hidden count as switch ports when another bridge sits above them."""
        return [
            b for b in self.path_to_root(bdf)
            if (b.express is not None and b.express.port_type in _SWITCH_PORTS)
            or (b.express is None and self.parents.get(b.bdf) is not None)
        ]

    def shared_switch(self, a_bdf: str, b_bdf: str) -> PciDevice | None:
        """The lowest bridge above both devices that is below the root complex (not a root port), or None."""
        above_b = {d.bdf for d in self.path_to_root(b_bdf)}
        for bridge in self.path_to_root(a_bdf):
            if bridge.bdf in above_b:
                return None if _is_root_port(bridge) or bridge is self.root_port(a_bdf) else bridge
        return None

    def relation(self, a_bdf: str, b_bdf: str) -> Relation:
        """How two devices reach each other: "switch", "root_port", "numa" (same NUMA node only) or "none"."""
        if self.shared_switch(a_bdf, b_bdf) is not None:
            return "switch"
        ra, rb = self.root_port(a_bdf), self.root_port(b_bdf)
        if ra is not None and ra is rb:
            return "root_port"
        a, b = self.devices.get(a_bdf), self.devices.get(b_bdf)
        na, nb = (a.numa_node if a else None), (b.numa_node if b else None)
        return "numa" if na is not None and na == nb else "none"

    def gpu_nic_pairs(self) -> list[tuple[PciDevice, PciDevice, Relation]]:
        """Every (GPU, RDMA NIC) pair of the node with its :meth:`relation`, in dump order."""
        gpus = [d for d in self.devices.values() if d.kind is DeviceKind.GPU]
        nics = [d for d in self.devices.values() if d.kind is DeviceKind.RDMA_NIC]
        return [(g, n, self.relation(g.bdf, n.bdf)) for g in gpus for n in nics]


def _placeholder(entry: TreeEntry) -> PciDevice:
    """A bridge seen only in ``lspci -t`` output (per-device ``-vvv`` captures omit bridges)."""
    dom, bus, rest = entry.bdf.split(":")
    dev, fn = rest.split(".")
    sub = entry.subordinate if entry.subordinate is not None else entry.secondary
    return PciDevice(
        address=entry.bdf, domain=int(dom, 16), bus=int(bus, 16), dev=int(dev, 16), fn=int(fn),
        class_name="PCI bridge", vendor_device=entry.name, kind=DeviceKind.BRIDGE,
        bus_range=BusRange(int(bus, 16), entry.secondary or 0, sub or 0),
        warnings=["known only from lspci -t: no capabilities"],
    )


def build_topology(dump: LspciDump, tree: list[TreeEntry] | None = None) -> Topology:
    """Link every device of ``dump`` to its parent bridge. Never raises; gaps are reported in ``warnings``.

    ``tree`` (from :func:`parse_tree_text` of the same node's ``lspci -tv``) fills in the bridges a per-device
    capture lacks; they appear as placeholder devices with no capabilities.
    """
    topo = Topology()
    for dev in dump.devices:
        topo.devices.setdefault(dev.bdf, dev)
    root_buses = {(0, 0)}  # buses that need no parent: bus 0, host-bridge buses, tree roots
    for entry in tree or ():
        if entry.parent is None:
            root_buses.add((int(entry.bdf[:4], 16), int(entry.bdf[5:7], 16)))
        if entry.secondary is not None and entry.bdf not in topo.devices:
            topo.devices[entry.bdf] = _placeholder(entry)
    # Per domain: bus number -> deepest bridge whose range holds it (wider ranges first, narrower overwrite).
    owner = topo.bus_owner
    bridges = [(bdf, d) for bdf, d in topo.devices.items() if d.bus_range is not None]
    bridges.sort(key=lambda it: (it[1].bus_range.secondary - it[1].bus_range.subordinate, it[1].bus))
    for bdf, b in bridges:
        lo, hi = b.bus_range.secondary, min(b.bus_range.subordinate, 255)
        if lo <= b.bus or hi < lo:
            topo.warnings.append(f"bridge {bdf} has an impossible bus range {lo:02x}-{hi:02x}")
            continue
        for bus in range(lo, hi + 1):
            owner[b.domain, bus] = bdf
    for dev in topo.devices.values():
        if "host bridge" in dev.class_name.lower():
            root_buses.add((dev.domain, dev.bus))
    for bdf, dev in topo.devices.items():
        up = owner.get((dev.domain, dev.bus))
        topo.parents[bdf] = up
        if up is None and (dev.domain, dev.bus) not in root_buses:
            topo.orphans.add(bdf)
    if topo.orphans:
        shown = ", ".join(sorted(topo.orphans)[:8]) + (" ..." if len(topo.orphans) > 8 else "")
        topo.warnings.append(
            f"partial tree: no upstream bridge in the dump for {len(topo.orphans)} device(s) ({shown}); "
            "per-device capture? paths to root ports are unknown there"
        )
    return topo


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One device of ``lspci -tv`` output: its address, printed name, parent bridge and bridge bus range."""

    bdf: str
    name: str
    parent: str | None
    secondary: int | None = None
    subordinate: int | None = None


_TREE_DOMAIN = re.compile(r"\[([0-9a-fA-F]{4}):([0-9a-fA-F]{2})\]")
_TREE_DEV = re.compile(
    r"(?<=[-+\\|])([0-9a-fA-F]{2})\.([0-7])(?:-\[([0-9a-fA-F]{2})(?:-([0-9a-fA-F]{2}))?\])?(?:\s{2}(\S.*))?"
)
_TREE_LINK = re.compile(r"[-+\\]*")


def parse_tree_text(text: str) -> list[TreeEntry]:
    """Parse ``lspci -t`` / ``lspci -tv`` output; never raises, unreadable lines are skipped.

    Children of a bridge are printed at the column after its bus range, so each column remembers which
    (domain, bus, parent) it stands for.
    """
    entries: list[TreeEntry] = []
    columns: dict[int, tuple[int, int, str | None]] = {}  # column of a device address -> domain, bus, parent
    for line in text.replace("\r", "").split("\n"):
        for m in _TREE_DOMAIN.finditer(line):
            columns[_TREE_LINK.match(line, m.end()).end()] = (int(m[1], 16), int(m[2], 16), None)
        for m in _TREE_DEV.finditer(line):
            domain, bus, parent = columns.get(m.start(), (0, 0, None))
            bdf = f"{domain:04x}:{bus:02x}:{int(m[1], 16):02x}.{m[2]}"
            sec = int(m[3], 16) if m[3] else None
            sub = int(m[4], 16) if m[4] else sec
            entries.append(TreeEntry(bdf, (m[5] or "").strip(), parent, sec, sub))
            if sec is not None:
                link = _TREE_LINK.match(line, (m.end(4) if m[4] else m.end(3)) + 1)
                columns[link.end()] = (domain, sec, bdf)
    return entries

"""The compact, comparable description of one node that the fleet diff works on.

A node becomes a :class:`NodeSig`: per device its position (canonical address), kind, model and the
settings that matter — never what legitimately differs per node (serial numbers, IRQs, MSI addresses,
BAR addresses, VPD, IOMMU group numbers). Identical nodes give equal (and, once interned, identical)
signatures, so a 12,500-node fleet is diffed as a handful of distinct signatures with node counts.

A GPU idling at a low link speed is not a difference: the link speed of a full-width GPU link (on the GPU
and on the port above it) is left out of the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainfleet.health.model import DeviceKind, PciDevice
from trainfleet.health.rules.context import RuleContext, describe
from trainfleet.health.rules.iommu import iommu_mode
from trainfleet.health.rules.link import fmt_speed

NODE_POSITION = ""  # the pseudo-device holding node-level fields (IOMMU mode, capture privilege)

# Field -> why a difference there matters. Fields not listed are compared too but rank as "unknown".
KNOWN_BAD: dict[str, str] = {
    "ACSCtl": "known to break GPUDirect RDMA",
    "LnkSta width": "cuts the link's bandwidth",
    "LnkSta speed": "caps the link's bandwidth",
    "MaxReadReq": "lowers DMA read throughput",
    "MaxPayload": "lowers throughput; inconsistent MPS can fail P2P",
    "RlxdOrd": "changes RDMA write ordering and bandwidth",
    "ATSCtl": "changes how P2P is routed through ACS",
    "UESta": "uncorrectable PCIe errors",
    "CESta": "link-level replays",
    "DevSta": "PCIe error status",
    "NUMA node": "moves the device to another socket",
    "IOMMU mode": "IOMMU translation decides GDR / P2P bandwidth",
    "LnkCtl ASPM": "link power states add latency",
    "10BitTagReq": "10-bit tags to a non-capable peer break P2P",
    "capture": "capabilities hidden: the node was not checked",
}
FIELD_RANK = {name: i for i, name in enumerate(KNOWN_BAD)}


@dataclass(frozen=True, slots=True)
class DevSig:
    """One device as the diff sees it. ``fields`` are compared; ``address``, ``role`` are for the report."""

    bdf: str
    kind: str
    model: str
    fields: tuple[tuple[str, str], ...]
    address: str = ""
    role: str = ""


NodeSig = tuple[DevSig, ...]  # sorted by bdf; the node-level pseudo-device first


def _flags(flags: dict[str, bool]) -> str:
    return " ".join(f"{k}{'+' if v else '-'}" for k, v in flags.items())


def _role(ctx: RuleContext, dev: PciDevice) -> str:
    below = ctx.endpoints_below.get(dev.bdf)
    if below:
        names = ", ".join(describe(d) for d in below[:3]) + (" ..." if len(below) > 3 else "")
        port = "switch port" if dev.kind in (DeviceKind.SWITCH_DOWNSTREAM, DeviceKind.SWITCH_UPSTREAM) else (
            "root port" if dev.kind == DeviceKind.ROOT_PORT else "bridge")
        return f"{port} above {names}"
    return describe(dev).rsplit(" ", 1)[0]


def _idle_gpu_link(ctx: RuleContext, dev: PciDevice) -> bool:
    """The device's link ends at a GPU and runs full width: its speed may be idle power saving."""
    ex = dev.express
    if ex is None or ex.lnk_sta is None or not ex.lnk_sta.width or ex.lnk_sta.width_downgraded:
        return False
    gpu = dev if dev.kind == DeviceKind.GPU else next(
        (k for k in ctx.children.get(dev.bdf, ()) if k.kind == DeviceKind.GPU), None)
    if gpu is None:
        return False
    caps = [c.width for c in (ex.lnk_cap, gpu.express.lnk_cap if gpu.express else None) if c and c.width]
    return ex.lnk_sta.width >= min(caps, default=0)


def device_fields(ctx: RuleContext, dev: PciDevice) -> tuple[tuple[str, str], ...]:
    """The comparable settings of ``dev`` as (field, value) strings; absent facts are left out."""
    out: list[tuple[str, str]] = []
    add = out.append
    if dev.acs is not None and dev.acs.ctl:
        add(("ACSCtl", _flags(dev.acs.ctl)))
    ex = dev.express
    if ex is not None:
        if ex.lnk_sta is not None:
            if ex.lnk_sta.width is not None:
                add(("LnkSta width", f"x{ex.lnk_sta.width}"))
            if ex.lnk_sta.speed_gts is not None and not _idle_gpu_link(ctx, dev):
                add(("LnkSta speed", fmt_speed(ex.lnk_sta.speed_gts)))
        if ex.max_read_req is not None:
            add(("MaxReadReq", f"{ex.max_read_req} bytes"))
        if ex.max_payload is not None:
            add(("MaxPayload", f"{ex.max_payload} bytes"))
        if ex.relaxed_ordering is not None:
            add(("RlxdOrd", "RlxdOrd+" if ex.relaxed_ordering else "RlxdOrd-"))
        add(("DevSta", " ".join(f"{f}+" for f in ex.devsta_errors) or "clean"))
        if ex.aspm_ctl is not None:
            add(("LnkCtl ASPM", ex.aspm_ctl))
        if ex.ten_bit_tag_req_en is not None:
            add(("10BitTagReq", "10BitTagReq+" if ex.ten_bit_tag_req_en else "10BitTagReq-"))
        if ex.lnk_cap is not None:
            add(("LnkCap", f"{fmt_speed(ex.lnk_cap.speed_gts)} x{ex.lnk_cap.width}"))
        if ex.ext_tag is not None:
            add(("ExtTag", "ExtTag+" if ex.ext_tag else "ExtTag-"))
        if ex.no_snoop is not None:
            add(("NoSnoop", "NoSnoop+" if ex.no_snoop else "NoSnoop-"))
        if ex.ari_fwd is not None:
            add(("ARIFwd", "ARIFwd+" if ex.ari_fwd else "ARIFwd-"))
        if ex.target_speed_gts is not None:
            add(("Target Link Speed", fmt_speed(ex.target_speed_gts)))
    if dev.ats is not None and dev.ats.enabled is not None:
        add(("ATSCtl", "Enable+" if dev.ats.enabled else "Enable-"))
    if dev.aer is not None:
        if dev.aer.ue_sta:
            add(("UESta", _flags(dev.aer.ue_sta)))
        if dev.aer.ce_sta:
            add(("CESta", _flags(dev.aer.ce_sta)))
    if dev.numa_node is not None:
        add(("NUMA node", str(dev.numa_node)))
    if dev.sriov is not None and dev.sriov.num_vfs is not None:
        add(("SR-IOV VFs", str(dev.sriov.num_vfs)))
    if dev.driver:
        add(("driver", dev.driver))
    if dev.rev:
        add(("rev", dev.rev))
    if dev.subsystem:
        add(("subsystem", dev.subsystem_ids or dev.subsystem))
    sizes = " ".join(f"{r.index}:{r.size_bytes}" for r in dev.regions if r.size_bytes)
    if sizes:
        add(("BAR sizes", sizes))
    if dev.resizable_bar:
        add(("Resizable BAR", " ".join(b.split(",", 1)[0] for b in dev.resizable_bar)))
    if dev.access_denied:
        add(("capture", "<access denied>"))
    return tuple(out)


def node_signature(ctx: RuleContext) -> NodeSig:
    """The node's signature: a node-level pseudo-device, then every device sorted by address."""
    mode = iommu_mode(ctx.node.cmdline)
    node_fields = [] if mode == "unknown" else [("IOMMU mode", mode)]
    denied = sum(1 for d in ctx.devices if d.access_denied)
    node_fields.append(("capture", f"{denied} devices <access denied>" if denied else "privileged"))
    devs = [DevSig(NODE_POSITION, "node", "node", tuple(node_fields), "", "node")]
    for dev in sorted(ctx.devices, key=lambda d: d.bdf):
        model = dev.vendor_device if dev.vendor_id is None else f"{dev.vendor_id}:{dev.device_id}"
        fields = device_fields(ctx, dev)
        devs.append(DevSig(dev.bdf, str(dev.kind), model, fields, dev.address, _role(ctx, dev)))
    return tuple(devs)

"""Device Control settings of GPUs and RDMA NICs: MaxReadReq, MaxPayload, Relaxed Ordering (facts §2.4, §2.5).

Vendor norms only; "differs from the other nodes" is the fleet diff's job.

- MaxReadReq: NIC MRRS >= 512, typically 4096 (Mellanox nic-configuration-operator
  ``pciPerformanceOptimized``; FD.io CSIT); the corpus GPUs run 512 (dumps 02, 11, 17).
- MaxPayload: consistent along a P2P path; a device left at 128 bytes while it and its port can do more
  halves TLP efficiency (``pci=pcie_bus_peer2peer`` sets 128 on purpose: then only info).
- Relaxed Ordering: mlx5 uses RO only when the DevCtl bit is set; off costs GDR/RDMA bandwidth. When the
  root port above also shows ``RlxdOrd-`` the kernel may have disabled it for a platform erratum
  (``quirk_relaxedordering_disable``, Haswell/Broadwell root ports, dump 04): info then.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import DeviceKind, Finding, PortType, Severity
from trainfleet.health.rules.context import ENDPOINT_KINDS, RuleContext, describe

MIN_MRRS = 512
MIN_MPS = 256


def check_max_read_req(ctx: RuleContext) -> Iterator[Finding]:
    """``max-read-req``: MaxReadReq below 512 bytes on a GPU or RDMA NIC."""
    for dev in ctx.of_kind(*ENDPOINT_KINDS):
        ex = dev.express
        if ex is None or ex.max_read_req is None or dev.is_virtual_function or ex.max_read_req >= MIN_MRRS:
            continue
        norm = "4096 (Mellanox tuning)" if dev.kind == DeviceKind.RDMA_NIC else str(MIN_MRRS)
        yield ctx.finding(
            dev, "max-read-req", Severity.WARNING, "MaxReadReq", f"{ex.max_read_req} bytes",
            f">= {MIN_MRRS} bytes",
            f"{describe(dev)} MaxReadReq {ex.max_read_req} bytes, below the vendor norm ({norm}): "
            "fewer bytes per DMA read, lower RDMA/GDR throughput",
            ex.devctl_raw,
            "set MRRS 4096 on ConnectX (nic-configuration-operator pciPerformanceOptimized, or a value:mask "
            f"setpci write on {dev.bdf} CAP_EXP+0x8.w) and persist it across reboots",
        )


def check_max_payload(ctx: RuleContext) -> Iterator[Finding]:
    """``max-payload``: MaxPayload 128 while device and port support more, or differing from the port."""
    peer2peer = ctx.node.cmdline is not None and "pcie_bus_peer2peer" in ctx.node.cmdline
    for dev in ctx.of_kind(*ENDPOINT_KINDS):
        ex = dev.express
        if ex is None or ex.max_payload is None or dev.is_virtual_function:
            continue
        parent = ctx.parent(dev)
        pex = parent.express if parent is not None else None
        caps = (ex.max_payload_cap, pex.max_payload_cap if pex else None, 4096)
        room = min(x for x in caps if x is not None)
        if ex.max_payload < MIN_MPS <= room:
            sev = Severity.INFO if peer2peer else Severity.WARNING
            why = " (pci=pcie_bus_peer2peer sets 128 on purpose)" if peer2peer else ""
            yield ctx.finding(
                dev, "max-payload", sev, "MaxPayload", f"{ex.max_payload} bytes", f">= {MIN_MPS} bytes",
                f"{describe(dev)} MaxPayload {ex.max_payload} bytes although it and its port support "
                f"{room}{why}: more TLP overhead per byte",
                ex.devctl_raw,
                "let the kernel size MPS (default, or pci=pcie_bus_safe); avoid pcie_bus_tune_off",
            )
        elif pex is not None and pex.max_payload is not None and pex.max_payload != ex.max_payload:
            yield ctx.finding(
                dev, "max-payload", Severity.WARNING, "MaxPayload", f"{ex.max_payload} bytes",
                f"{pex.max_payload} bytes (as port {parent.bdf})" if parent else "",
                f"{describe(dev)} MaxPayload {ex.max_payload} bytes differs from its port's "
                f"{pex.max_payload} bytes: inconsistent MPS along a P2P path can fail peer transfers",
                ex.devctl_raw,
                "boot with the default MPS policy (or pci=pcie_bus_safe) so the whole path agrees",
            )


def check_relaxed_ordering(ctx: RuleContext) -> Iterator[Finding]:
    """``relaxed-ordering``: DevCtl RlxdOrd- on an RDMA NIC."""
    for dev in ctx.of_kind(DeviceKind.RDMA_NIC):
        ex = dev.express
        if ex is None or ex.relaxed_ordering is not False or dev.is_virtual_function:
            continue
        roots = [b for b in ctx.bridges_above(dev) if b.express and b.express.port_type == PortType.ROOT_PORT]
        quirk = any(r.express is not None and r.express.relaxed_ordering is False for r in roots)
        if quirk:
            sev = Severity.INFO
            msg = (f"{describe(dev)} has Relaxed Ordering off, and so does its root port {roots[0].bdf}: the "
                   "kernel may disable RO on this platform for a completion erratum (check dmesg/quirks)")
        else:
            sev = Severity.WARNING
            msg = (f"{describe(dev)} has Relaxed Ordering off (RlxdOrd-): mlx5 then sends strictly ordered "
                   "writes, lowering GPUDirect RDMA / RDMA bandwidth")
        yield ctx.finding(
            dev, "relaxed-ordering", sev, "RlxdOrd", "RlxdOrd-", "RlxdOrd+", msg,
            ex.devctl_raw,
            "enable RO (mlxconfig PCI_WR_ORDERING / setpci DevCtl bit 4) unless the platform erratum "
            "applies; NCCL_IB_PCI_RELAXED_ORDERING=1 requires it",
        )

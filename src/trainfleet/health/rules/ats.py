"""ATS on GPUs and RDMA NICs (facts §2.6).

Bare metal: ATS off is the operator default (nic-configuration-operator ``gpuDirectOptimized`` sets
``ATS_ENABLED=0``); with the IOMMU off or in passthrough there is nothing to translate. VMs: ATS on the
NIC is required for GDR, and the ACS bits on the path must then let translated requests go peer to peer
(``DirectTrans+``; NVIDIA AI Enterprise "ATS and ACS configuration" appendix) — ATS with ACS redirect and
``DirectTrans-`` still sends every peer request up to the root complex.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import Finding, PortType, Severity
from trainfleet.health.rules.acs import REDIRECT_FLAGS
from trainfleet.health.rules.context import ENDPOINT_KINDS, RuleContext, describe, flags_set
from trainfleet.health.rules.iommu import iommu_mode


def check_ats(ctx: RuleContext) -> Iterator[Finding]:
    """``ats-acs``: ATS on under ACS redirect without DirectTrans; ``ats-bare-metal``: ATS on, no IOMMU."""
    mode = iommu_mode(ctx.node.cmdline)
    for dev in ctx.of_kind(*ENDPOINT_KINDS):
        if dev.ats is None or not dev.ats.enabled:
            continue
        evidence = dev.ats.raw or "ATSCtl: Enable+"
        blocking = [
            b for b in ctx.bridges_above(dev)
            if b.acs is not None and b.express is not None
            and b.express.port_type in (PortType.ROOT_PORT, PortType.DOWNSTREAM)
            and flags_set(b.acs.ctl, REDIRECT_FLAGS) and not b.acs.ctl.get("DirectTrans", False)
        ]
        if blocking:
            yield ctx.finding(
                dev, "ats-acs", Severity.WARNING, "ATSCtl", "Enable+", "ACS DirectTrans+ on the path",
                f"{describe(dev)} has ATS enabled but {describe(blocking[0])} redirects P2P with "
                "DirectTrans-: translated peer requests still go through the root complex",
                evidence,
                "VMs: set ACS on the path bridges to allow ATS (DirectTrans+), only on the GPU/NIC path; "
                "bare metal: disable ACS redirect and ATS",
            )
        elif mode in ("off", "passthrough"):
            yield ctx.finding(
                dev, "ats-bare-metal", Severity.WARNING, "ATSCtl", "Enable+", "Enable-",
                f"{describe(dev)} has ATS enabled while the IOMMU is {mode}: nothing to translate; the "
                "bare-metal GPUDirect default is ATS off",
                evidence,
                "mlxconfig -d <dev> set ATS_ENABLED=0 (nic-configuration-operator gpuDirectOptimized)",
            )

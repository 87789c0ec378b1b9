"""ACS redirection on the bridges above a GPU or RDMA NIC (facts §2.1).

ACS P2P Request/Completion Redirect (and Upstream Forwarding / Egress Control) send peer-to-peer TLPs up
to the root complex and through the IOMMU: NCCL hangs, GPUDirect RDMA completion errors, even silent
corruption (NVIDIA/nccl#304, #523, #606, #2079; intel/compute-runtime#935). Only root ports and switch
downstream ports on a GPU/NIC path matter (nccl#523 maintainer); endpoint ACS is irrelevant. ``SrcValid+``
alone validates requester ids and does not re-route P2P (NVIDIA/nccl#606 shows such bridges): reported
as info, since NCCL's own quick test looks for it.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import Finding, PciDevice, Severity
from trainfleet.health.rules.context import (
    ENDPOINT_KINDS,
    PATH_PORT_TYPES,
    RuleContext,
    describe,
    flags_set,
    minus,
    plus,
)

REDIRECT_FLAGS = ("ReqRedir", "CmpltRedir", "UpstreamFwd", "EgressCtrl")
HINT = (
    "bare metal: disable ACS in the BIOS (e.g. 'ACS Enable: Disabled'), or clear it per bridge with "
    "'setpci -s {bdf} ECAP_ACS+0x6.w=0000' (not persistent; run it from a boot unit) or the kernel "
    "parameter pci=disable_acs_redir={bdf}; VMs keep ACS and enable ATS on the NIC instead"
)


def _port_name(bridge: PciDevice) -> str:
    return describe(bridge) if bridge.express is not None else f"bridge {bridge.bdf}"


def _partial_capture(ctx: RuleContext) -> Iterator[Finding]:
    """A capture with no GPU or RDMA NIC at all (an excerpt, a per-device dump, dump 07): an active port with
    redirect on may well sit above one, so say so as a warning."""
    for bridge in ctx.devices:
        ex, acs = bridge.express, bridge.acs
        if acs is None or not bridge.is_bridge:
            continue
        # Port type and link hidden (an elided excerpt) count as "may be active".
        linked = ex is not None and (ex.lnk_sta is None or bool(ex.lnk_sta.width))
        active = ex is None or (ex.port_type in PATH_PORT_TYPES and linked)
        on = flags_set(acs.ctl, REDIRECT_FLAGS)
        if on and active:
            shown = (["SrcValid"] if acs.ctl.get("SrcValid") else []) + on
            yield ctx.finding(
                bridge, "acs-redirect", Severity.WARNING, "ACSCtl", plus(shown), minus(shown),
                f"ACS redirect ({plus(on)}) on {_port_name(bridge)}; the devices below it are "
                "not in this capture: if a GPU or RDMA NIC sits there, P2P / GPUDirect RDMA is redirected",
                acs.ctl_raw, HINT.format(bdf=bridge.bdf),
            )


def check_acs_redirect(ctx: RuleContext) -> Iterator[Finding]:
    """``acs-redirect``: ACSCtl redirect bits on a root port / switch downstream port above a GPU or NIC."""
    if not any(True for _ in ctx.of_kind(*ENDPOINT_KINDS)):
        yield from _partial_capture(ctx)
        return
    for bdf, below in ctx.endpoints_below.items():
        bridge = ctx.by_bdf[bdf]
        if bridge.acs is None or bridge.express is None or bridge.express.port_type not in PATH_PORT_TYPES:
            continue
        ctl = bridge.acs.ctl
        on = flags_set(ctl, REDIRECT_FLAGS)
        src_valid = ctl.get("SrcValid", False)
        if not on and not src_valid:
            continue
        whom = ", ".join(describe(d) for d in below[:4])
        if len(below) > 4:
            whom += f" and {len(below) - 4} more"
        where = f"{describe(bridge)} above {whom}"
        shown = (["SrcValid"] if src_valid else []) + on
        if on:
            yield ctx.finding(
                bridge, "acs-redirect", Severity.ERROR, "ACSCtl", plus(shown), minus(shown),
                f"ACS redirect ({plus(on)}) on {where}: peer-to-peer traffic is forced up to the root "
                "complex; known to break GPUDirect RDMA / P2P (hangs, completion errors, low bandwidth)",
                bridge.acs.ctl_raw, HINT.format(bdf=bridge.bdf),
            )
        else:
            yield ctx.finding(
                bridge, "acs-source-valid", Severity.INFO, "ACSCtl", "SrcValid+", "SrcValid-",
                f"ACS source validation only (SrcValid+, no redirect bits) on {where}: P2P is not re-routed",
                bridge.acs.ctl_raw, HINT.format(bdf=bridge.bdf),
            )

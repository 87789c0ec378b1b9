"""ASPM on GPU / NIC links and the switch ports above them (facts §2.10).

Link power states add exit latency to every transfer after an idle gap; HPC BIOS guides disable ASPM
(stelline: "ASPM Support Disabled"). Dump 11 shows ``ASPM L1 Enabled`` on a PLX downstream port above a
GPU while the GPU's own link says ``ASPM Disabled``.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import Finding, Severity
from trainfleet.health.rules.context import ENDPOINT_KINDS, RuleContext, describe


def check_aspm(ctx: RuleContext) -> Iterator[Finding]:
    """``aspm-enabled``: LnkCtl ASPM not Disabled on a GPU, RDMA NIC, or a port above one."""
    for dev in ctx.devices:
        ex = dev.express
        if ex is None or not ex.aspm_ctl or ex.aspm_ctl.lower().startswith("disabled"):
            continue
        if dev.kind not in ENDPOINT_KINDS and dev.bdf not in ctx.endpoints_below:
            continue
        yield ctx.finding(
            dev, "aspm-enabled", Severity.WARNING, "LnkCtl ASPM", ex.aspm_ctl, "Disabled",
            f"ASPM {ex.aspm_ctl} on {describe(dev)}: link power-state exits add latency on the GPU/NIC path",
            ex.lnkctl_raw, "disable ASPM in the BIOS or boot with pcie_aspm=off",
        )

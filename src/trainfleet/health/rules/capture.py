"""Is the capture usable at all (facts §0)?

Without root, lspci prints ``Capabilities: <access denied>`` and every ACS, DevCtl, AER and link line is
missing (dump 12): a grep for ``ACSCtl`` then finds nothing, which looks like "ACS off". The node is
therefore reported as "not checked" rather than "clean"; the other rules see ``None`` and stay silent.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import Finding, Severity
from trainfleet.health.rules.context import RuleContext


def check_capture(ctx: RuleContext) -> Iterator[Finding]:
    """``capture-unprivileged`` when capabilities were hidden; ``capture-empty`` when no device was parsed."""
    devices = ctx.devices
    if not devices:
        yield ctx.finding(
            None, "capture-empty", Severity.ERROR, "lspci", "no devices", "lspci -vvv output",
            "no PCI device could be read from the lspci capture: node not checked",
            (ctx.node.lspci.warnings or [""])[0],
            "re-collect with 'sudo trainfleet collect' (lspci -vvv -nn -D)",
        )
        return
    denied = [d for d in devices if d.access_denied]
    if denied:
        yield ctx.finding(
            None, "capture-unprivileged", Severity.WARNING, "Capabilities", "<access denied>", "readable",
            f"lspci was not run as root: capabilities hidden on {len(denied)} of {len(devices)} devices, so "
            "ACS, link, MaxReadReq, AER and ATS checks could not run on them (not the same as clean)",
            f"{denied[0].address}: Capabilities: <access denied>",
            "re-collect as root: 'sudo trainfleet collect'",
        )

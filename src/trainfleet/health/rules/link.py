"""PCIe link trained below capability (facts §2.3).

Each link is judged once, from its downstream side (the endpoint or switch upstream port), against
``min(device LnkCap, parent port LnkCap)`` when the parent is in the capture — a Gen4 card in a Gen3 slot
is a platform limit, not a fault. Values are compared numerically: old pciutils print no ``(downgraded)``
marker (dumps 09, 13, 15). Not faults: VFs (``Speed unknown, Width x0``), untrained/empty links
(``Width x0``), and GPUs idling at a low link speed with full width (dumps 01, 02, 15; measure under load).
A narrower width is never a power-saving state.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import DeviceKind, Finding, Link, PciDevice, Severity
from trainfleet.health.rules.context import ENDPOINT_KINDS, RuleContext, describe

# Downstream sides of links whose bandwidth matters here.
_LINK_KINDS = (*ENDPOINT_KINDS, DeviceKind.NIC, DeviceKind.NVME, DeviceKind.NVSWITCH,
               DeviceKind.SWITCH_UPSTREAM)


def fmt_speed(gts: float | None) -> str:
    """``32.0`` -> ``32GT/s``, ``2.5`` -> ``2.5GT/s``."""
    if gts is None:
        return "unknown"
    return f"{gts:g}GT/s"


def _min(a: float | int | None, b: float | int | None) -> float | int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _links(ctx: RuleContext) -> Iterator[tuple[PciDevice, Link, Link, Link | None, bool]]:
    """(device, its LnkCap, its LnkSta, the parent port's LnkCap or None, parent known) per judged link."""
    for dev in ctx.devices:
        ex = dev.express
        if dev.kind not in _LINK_KINDS or ex is None or dev.is_virtual_function:
            continue
        if ex.lnk_cap is None or ex.lnk_sta is None or not ex.lnk_sta.width:
            continue  # no link info, or nothing trained (Width x0)
        parent = ctx.parent(dev)
        parent_cap = parent.express.lnk_cap if parent is not None and parent.express is not None else None
        yield dev, ex.lnk_cap, ex.lnk_sta, parent_cap, parent is not None


def _severity(ctx: RuleContext, dev: PciDevice) -> Severity:
    on_path = dev.kind in ENDPOINT_KINDS or dev.bdf in ctx.endpoints_below
    return Severity.ERROR if on_path else Severity.WARNING


def _evidence(cap: Link, sta: Link, parent_cap: Link | None) -> str:
    """The device's LnkCap and LnkSta lines (and the parent port's LnkCap), as printed."""
    parts = [cap.raw, sta.raw] + ([f"parent {parent_cap.raw}"] if parent_cap is not None else [])
    return " | ".join(p for p in parts if p)


def check_link_width(ctx: RuleContext) -> Iterator[Finding]:
    """``link-width``: LnkSta width below min(LnkCap device, LnkCap parent port)."""
    for dev, cap, sta, parent_cap, _known in _links(ctx):
        expected = _min(cap.width, parent_cap.width if parent_cap else None)
        if expected is None or sta.width is None or sta.width >= expected:
            continue
        yield ctx.finding(
            dev, "link-width", _severity(ctx, dev), "LnkSta width", f"x{sta.width}", f"x{expected}",
            f"{describe(dev)} link trained at x{sta.width} of x{expected}: bandwidth cut to "
            f"{sta.width / expected:.0%}; a narrow link is a fault (reseat, riser/cable, lane errors), never "
            "a power-saving state",
            _evidence(cap, sta, parent_cap),
            "reseat the card / check riser and cable, look for AER errors on both ends, then retrain "
            "the link",
        )


def check_link_speed(ctx: RuleContext) -> Iterator[Finding]:
    """``link-speed``: LnkSta speed below min(LnkCap device, LnkCap parent), except an idling GPU."""
    for dev, cap, sta, parent_cap, known in _links(ctx):
        expected = _min(cap.speed_gts, parent_cap.speed_gts if parent_cap else None)
        if expected is None or sta.speed_gts is None or sta.speed_gts >= expected:
            continue
        full = _min(cap.width, parent_cap.width if parent_cap else None)
        width_full = sta.width is not None and full is not None and sta.width >= full
        if dev.kind == DeviceKind.GPU and width_full and not sta.width_downgraded:
            continue  # GPUs drop link speed when idle (dumps 01, 02, 15): normal power saving
        ex = dev.express
        capped = ex is not None and ex.target_speed_gts is not None and ex.target_speed_gts < expected
        why = ""
        if capped and ex is not None:
            target = fmt_speed(ex.target_speed_gts)
            why = f"; LnkCtl2 Target Link Speed is {target} (a BIOS PCIe-generation cap?)"
        if known:
            sev, note = _severity(ctx, dev), ""
        else:
            sev = Severity.WARNING
            note = (" (parent port not in the capture: may be a platform limit, e.g. a Gen4 card in a "
                    "Gen3 host)")
        yield ctx.finding(
            dev, "link-speed", sev, "LnkSta speed", fmt_speed(sta.speed_gts), fmt_speed(expected),
            f"{describe(dev)} link runs at {fmt_speed(sta.speed_gts)} of {fmt_speed(expected)}{note}{why}",
            _evidence(cap, sta, parent_cap),
            "check the BIOS PCIe link-speed setting for the slot, then riser/cable/retimer; compare "
            "under load",
        )

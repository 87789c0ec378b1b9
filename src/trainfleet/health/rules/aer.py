"""AER and Device Status error bits (facts §2.7).

These are sticky status bits, not counters: "at least one since the last clear". Uncorrectable
(``UESta``) bits are errors; correctable (``CESta``: RxErr, BadTLP, BadDLLP, Rollover, Timeout = replays
and retrains) are warnings. An Unsupported Request alone (``UESta UnsupReq+``, logged as
``CESta AdvNonFatalErr+`` / ``DevSta CorrErr+ UnsupReq+``) is usually config-space probing and only info.
When AER is absent or shows nothing, ``DevSta`` is the evidence (``CorrErr+ UnsupReq+`` together is the
advisory report of an Unsupported Request: info).
"""

from __future__ import annotations

from collections.abc import Iterator

from trainfleet.health.model import Finding, PciDevice, Severity
from trainfleet.health.rules.context import RuleContext, describe, flags_set, minus, plus

_BENIGN_UE = {"UnsupReq"}
_BENIGN_CE = {"AdvNonFatalErr", "NonFatalErr"}  # old pciutils print AdvNonFatalErr as NonFatalErr
_HINT = ("read the counters in /sys/bus/pci/devices/<bdf>/aer_dev_*, check the link partner too, clear "
         "the bits (setpci) and watch whether they come back under load; reseat or replace on repeat")


def _aer_findings(ctx: RuleContext, dev: PciDevice) -> Iterator[Finding]:
    aer = dev.aer
    assert aer is not None
    ue = flags_set(aer.ue_sta)
    ce = flags_set(aer.ce_sta)
    ue_real = [f for f in ue if f not in _BENIGN_UE]
    ce_real = [f for f in ce if f not in _BENIGN_CE]
    if ue_real:
        yield ctx.finding(
            dev, "aer-uncorrectable", Severity.ERROR, "UESta", plus(ue_real), minus(ue_real),
            f"{describe(dev)} logged uncorrectable PCIe errors ({plus(ue_real)}): data loss or a link reset",
            aer.ue_sta_raw, _HINT,
        )
    if ce_real:
        yield ctx.finding(
            dev, "aer-correctable", Severity.WARNING, "CESta", plus(ce_real), minus(ce_real),
            f"{describe(dev)} logged correctable PCIe errors ({plus(ce_real)}): link-level replays cost "
            "bandwidth",
            aer.ce_sta_raw, _HINT,
        )
    if not ue_real and not ce_real and (ue or ce):
        yield ctx.finding(
            dev, "aer-unsupported-request", Severity.INFO, "UESta" if ue else "CESta", plus(ue or ce),
            minus(ue or ce),
            f"{describe(dev)} logged an Unsupported Request ({plus(ue + ce)}): usually config-space probing",
            aer.ue_sta_raw if ue else aer.ce_sta_raw, _HINT,
        )


def _devsta_findings(ctx: RuleContext, dev: PciDevice) -> Iterator[Finding]:
    assert dev.express is not None
    flags = list(dev.express.devsta_errors)
    if not flags:
        return
    evidence = "DevSta: " + plus(flags)
    fatal = [f for f in flags if f in ("FatalErr", "NonFatalErr", "UncorrErr")]
    if fatal:
        sev = Severity.ERROR if "FatalErr" in fatal else Severity.WARNING
        yield ctx.finding(
            dev, "aer-uncorrectable", sev, "DevSta", plus(flags), minus(fatal),
            f"{describe(dev)} reports {plus(fatal)} in DevSta (AER does not say which"
            + ("; may be the Unsupported Request itself)" if "UnsupReq" in flags else ")"),
            evidence, _HINT,
        )
    elif "CorrErr" in flags and "UnsupReq" not in flags:
        yield ctx.finding(
            dev, "aer-correctable", Severity.WARNING, "DevSta", plus(flags), "CorrErr-",
            f"{describe(dev)} reports correctable errors in DevSta (AER does not say which)",
            evidence, _HINT,
        )
    else:
        yield ctx.finding(
            dev, "aer-unsupported-request", Severity.INFO, "DevSta", plus(flags), minus(flags),
            f"{describe(dev)} reports {plus(flags)} in DevSta: an Unsupported Request (CorrErr+ is its "
            "advisory report), usually config-space probing", evidence, _HINT,
        )


def check_aer(ctx: RuleContext) -> Iterator[Finding]:
    """``aer-uncorrectable`` / ``aer-correctable`` / ``aer-unsupported-request`` from AER or DevSta bits."""
    for dev in ctx.devices:
        found = list(_aer_findings(ctx, dev)) if dev.aer is not None else []
        yield from found
        if not found and dev.express is not None:
            # AER clean (or absent) yet DevSta set: the AER bits were cleared, DevSta tells the rest.
            yield from _devsta_findings(ctx, dev)

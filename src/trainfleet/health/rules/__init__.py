"""The rule registry: every per-node check, its id, default severity and what it is about.

A rule is a function ``RuleContext -> Iterable[Finding]`` kept in a small module per family (``acs``,
``link``, ``devctl``, ``ats``, ``aer``, ``aspm``, ``iommu``, ``affinity``, ``capture``); each module's
docstring says which section of ``rdma_bios_facts.md`` it implements. :func:`run_rules` runs them all on
one node. Rules never raise on odd input: a field the capture lacks is ``None`` and the rule stays silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from trainfleet.health.model import Finding, NodeFacts, Severity
from trainfleet.health.rules.acs import check_acs_redirect
from trainfleet.health.rules.aer import check_aer
from trainfleet.health.rules.affinity import check_gpu_nic_affinity
from trainfleet.health.rules.aspm import check_aspm
from trainfleet.health.rules.ats import check_ats
from trainfleet.health.rules.capture import check_capture
from trainfleet.health.rules.context import RuleContext, build_context
from trainfleet.health.rules.devctl import check_max_payload, check_max_read_req, check_relaxed_ordering
from trainfleet.health.rules.iommu import check_iommu
from trainfleet.health.rules.link import check_link_speed, check_link_width

__all__ = ["RULES", "Rule", "RuleContext", "build_context", "run_rules"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One registered check: ``checks`` are the finding ids it can emit, ``severity`` its worst one."""

    name: str
    checks: tuple[str, ...]
    severity: Severity
    run: Callable[[RuleContext], Iterable[Finding]]
    about: str


RULES: tuple[Rule, ...] = (
    Rule("capture", ("capture-unprivileged", "capture-empty"), Severity.ERROR, check_capture,
         "lspci not run as root / nothing parsed"),
    Rule("acs", ("acs-redirect", "acs-source-valid"), Severity.ERROR, check_acs_redirect,
         "ACS redirect on root/switch ports above GPUs and RDMA NICs"),
    Rule("link-width", ("link-width",), Severity.ERROR, check_link_width, "link narrower than capability"),
    Rule("link-speed", ("link-speed",), Severity.ERROR, check_link_speed,
         "link slower than capability (idle GPUs excepted)"),
    Rule("max-read-req", ("max-read-req",), Severity.WARNING, check_max_read_req,
         "MRRS below 512 on GPU/NIC"),
    Rule("max-payload", ("max-payload",), Severity.WARNING, check_max_payload,
         "MPS 128 or differs from port"),
    Rule("relaxed-ordering", ("relaxed-ordering",), Severity.WARNING, check_relaxed_ordering,
         "Relaxed Ordering off on RDMA NICs"),
    Rule("ats", ("ats-acs", "ats-bare-metal"), Severity.WARNING, check_ats, "ATS vs ACS / IOMMU mode"),
    Rule("aer", ("aer-uncorrectable", "aer-correctable", "aer-unsupported-request"), Severity.ERROR,
         check_aer, "AER / DevSta error status bits"),
    Rule("aspm", ("aspm-enabled",), Severity.WARNING, check_aspm, "ASPM on GPU/NIC paths"),
    Rule("iommu", ("iommu-translated",), Severity.ERROR, check_iommu, "IOMMU not in passthrough (cmdline)"),
    Rule("affinity", ("gpu-nic-affinity",), Severity.WARNING, check_gpu_nic_affinity,
         "GPU with no RDMA NIC on its switch / NUMA node"),
)


def run_rules(node: NodeFacts, topo: Any) -> list[Finding]:
    """All rule findings for one node, in registry order. ``topo`` may be None (tree unknown)."""
    ctx = build_context(node, topo)
    out: list[Finding] = []
    for rule in RULES:
        out.extend(rule.run(ctx))
    return out

"""Turn a :class:`~trainfleet.health.doctor.DoctorResult` into what people and programs read.

- :func:`headline`: the one line a human needs first — the top known-bad fleet difference
  (``3 of 12500 nodes differ from the fleet: ACSCtl SrcValid+ on ...; 12497 nodes have SrcValid-``), or,
  without differences (or when an error hits every node), the worst rule finding.
- :func:`render`: the headline, then a Rich table with one row per distinct finding, collapsing identical
  findings across nodes (``on 37 nodes: ...``).
- :func:`to_json`: ``{"nodes": int, "findings": [{"node", "device", "check", "severity", "field", "value",
  "expected", "message", ...}], ...}``.
- :func:`write_html`: the same table as one self-contained HTML file (inline CSS, no scripts).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainfleet.errors import InputError
from trainfleet.health.diff import rank_key
from trainfleet.health.doctor import DoctorResult
from trainfleet.health.model import Finding, Severity

TABLE_MAX_ROWS = 60
NODES_SHOWN = 5
_SEV_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
_SEV_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


@dataclass(slots=True)
class FindingGroup:
    """Identical findings (same check, device, field, value, message) on several nodes."""

    first: Finding
    nodes: list[str]

    @property
    def nodes_text(self) -> str:
        shown = ", ".join(self.nodes[:NODES_SHOWN]) + (" ..." if len(self.nodes) > NODES_SHOWN else "")
        return shown if len(self.nodes) == 1 else f"on {len(self.nodes)} nodes: {shown}"


def _key(f: Finding) -> tuple[str, ...]:
    return (f.check, f.device, f.field, f.value, f.expected, f.message, str(f.severity))


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Collapse identical findings across nodes; worst first (severity, known-bad diff rank, more nodes)."""
    groups: dict[tuple[str, ...], FindingGroup] = {}
    for f in findings:
        g = groups.get(_key(f))
        if g is None:
            groups[_key(f)] = FindingGroup(f, [f.node])
        else:
            g.nodes.append(f.node)
    return sorted(groups.values(), key=lambda g: (_SEV_ORDER[g.first.severity], rank_key(g.first)[:3],
                                                  -len(g.nodes), g.first.check, g.first.device))


def headline(result: DoctorResult) -> str:
    """The first line of the report."""
    n = result.nodes
    diffs = [f for f in result.findings if f.check.startswith("diff")]
    rules = [f for f in result.findings if not f.check.startswith("diff")]
    rule_groups = group_findings(rules)
    worst = rule_groups[0] if rule_groups else None
    fleet_wide_error = (worst is not None and worst.first.severity == Severity.ERROR and n > 1
                        and len(set(worst.nodes)) == n)
    if diffs and not fleet_wide_error:
        diff_groups = sorted(group_findings(diffs), key=lambda g: rank_key(g.first)[:3])
        top = diff_groups[0]
        line = f"{len(set(top.nodes))} of {n} nodes differ from the fleet: {top.first.message}"
        if len(diff_groups) > 1:
            line += f" (+{len(diff_groups) - 1} more difference{'s' if len(diff_groups) > 2 else ''})"
        return line
    if worst is None:
        return f"{n} node{'s' if n != 1 else ''} checked: no findings"
    f = worst.first
    where = f"{f.node}" if n == 1 else f"on {len(set(worst.nodes))} of {n} nodes"
    line = f"{where}: {f.severity}: {f.message}"
    more = len(rule_groups) - 1 + (1 if diffs else 0)
    if more:
        line += f" (+{more} more finding{'s' if more > 1 else ''})"
    return line


def _counts(result: DoctorResult) -> str:
    by_sev = {s: 0 for s in Severity}
    for f in result.findings:
        by_sev[f.severity] += 1
    return ", ".join(f"{v} {k}" for k, v in by_sev.items())


def render(result: DoctorResult, console: Console) -> None:
    """Print the headline, then one table row per distinct finding (worst first)."""
    console.print(escape(headline(result)), highlight=False, soft_wrap=True)
    groups = group_findings(result.findings)
    if not groups:
        return
    table = Table(show_lines=False, expand=False, title=f"{result.nodes} nodes; findings: {_counts(result)}")
    for col in ("severity", "check", "device", "finding"):
        table.add_column(col, overflow="fold")
    table.add_column("nodes", overflow="fold", max_width=36)
    for g in groups[:TABLE_MAX_ROWS]:
        f = g.first
        what = escape(f.message) + (f"\n[dim]{escape(f.evidence)}[/dim]" if f.evidence else "")
        table.add_row(f"[{_SEV_STYLE[f.severity]}]{f.severity}[/]", f.check, f.device or "-", what,
                      escape(g.nodes_text))
    console.print(table)
    if len(groups) > TABLE_MAX_ROWS:
        console.print(f"... {len(groups) - TABLE_MAX_ROWS} more distinct findings (see --json or --html)")


def to_json(result: DoctorResult) -> dict[str, Any]:
    """The ``--json`` object: ``nodes``, ``findings`` (one entry per node and finding), plus ``headline``."""
    findings = []
    for f in result.findings:
        item: dict[str, Any] = f.to_json()
        item["known_bad"] = f.known_bad
        findings.append(item)
    return {"nodes": result.nodes, "findings": findings, "headline": headline(result),
            "distinct_signatures": result.distinct_signatures}


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.2em}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;
text-align:left;font-size:.9em}th{background:#f4f4f4}.error{color:#b00;font-weight:bold}.warning{color:#a60}
.info{color:#777}.ev{font-family:monospace;color:#555;font-size:.85em}.hint{color:#375;font-size:.85em}"""


def render_html(result: DoctorResult) -> str:
    """A self-contained HTML page: headline, counts and every distinct finding with evidence and fix hint."""
    e = html.escape
    rows = []
    for g in group_findings(result.findings):
        f = g.first
        rows.append(
            f"<tr><td class='{e(str(f.severity))}'>{e(str(f.severity))}</td><td>{e(f.check)}</td>"
            f"<td>{e(f.device or '-')}</td><td>{e(f.message)}<div class='ev'>{e(f.evidence)}</div>"
            f"<div class='hint'>{e(f.hint)}</div></td><td>{e(', '.join(g.nodes))}</td></tr>"
        )
    body = "\n".join(rows) or "<tr><td colspan='5'>no findings</td></tr>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>trainfleet doctor</title>"
        f"<style>{_CSS}</style></head><body><h1>{e(headline(result))}</h1>"
        f"<p>{result.nodes} nodes; findings: {e(_counts(result))}</p>"
        "<table><tr><th>severity</th><th>check</th><th>device</th><th>finding</th><th>nodes</th></tr>"
        f"{body}</table></body></html>\n"
    )


def write_html(result: DoctorResult, path: str | Path) -> None:
    """Write :func:`render_html` to ``path``; InputError naming the path when it cannot be written."""
    try:
        Path(path).write_text(render_html(result), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write HTML report: {exc.strerror or exc}", path=str(path)) from None

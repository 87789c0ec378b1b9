"""The fleet page's data: the latest ``trainfleet doctor --json`` report, indexed by node, and node releases.

The report is the doctor's JSON object (``{"nodes", "findings", "headline", ...}``) saved to
``$TRAINFLEET_HOME/fleet/latest.json`` (or a path given to ``trainfleet ui --fleet-report``). An optional
``"probes"`` list of probe-worker records (``{"probe": "pair", ...}``) adds a bandwidth matrix.
It is re-read only when the file's size or mtime changes. ``error_nodes`` are the nodes with an ``error``
finding: the doctor's verdict on the hardware, shown as such. Whether a node is suspect or quarantined,
and releasing it, is the store's node history (``node_history.py``), not this report.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainfleet.errors import InputError

SEVERITIES = ("error", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass
class FleetIndex:
    """One loaded report: findings per node, nodes worst first, checks, counts and the pair matrix."""

    path: str
    mtime: float
    nodes: int
    headline: str
    by_node: dict[str, list[dict[str, Any]]]
    order: list[str]
    checks: list[str]
    severity_counts: dict[str, int]
    error_nodes: list[str]
    pairs: dict[str, Any] | None = None
    cells: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def build_index(report: dict[str, Any], *, path: str, mtime: float) -> FleetIndex:
    """Index a doctor JSON report; ``InputError`` naming ``path`` when it is not one."""
    findings = report.get("findings")
    if not isinstance(findings, list) or not isinstance(report.get("nodes"), int):
        raise InputError("not a doctor report: needs 'nodes' (int) and 'findings' (list)", path=path)
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    checks: set[str] = set()
    counts: Counter[str] = Counter()
    cells: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for i, f in enumerate(findings):
        if not isinstance(f, dict) or not isinstance(f.get("node"), str) or f.get("severity") not in _RANK:
            raise InputError(f"findings[{i}]: needs 'node' and a 'severity' of {', '.join(SEVERITIES)}",
                             path=path)
        node, check, sev = f["node"], str(f.get("check", "?")), f["severity"]
        by_node[node].append(f)
        checks.add(check)
        counts[sev] += 1
        cell = cells[node].setdefault(check, {"severity": sev, "count": 0})
        cell["count"] += 1
        if _RANK[sev] < _RANK[cell["severity"]]:
            cell["severity"] = sev

    def worst(node: str) -> tuple[int, int, str]:
        return (min(_RANK[c["severity"]] for c in cells[node].values()), -len(by_node[node]), node)

    order = sorted(by_node, key=worst)
    error_nodes = [n for n in order if any(f["severity"] == "error" for f in by_node[n])]
    return FleetIndex(path=path, mtime=mtime, nodes=report["nodes"], headline=str(report.get("headline", "")),
                      by_node=dict(by_node), order=order, checks=sorted(checks),
                      severity_counts={s: counts.get(s, 0) for s in SEVERITIES}, error_nodes=error_nodes,
                      pairs=_pairs(report.get("probes"), path), cells=dict(cells))


def _pairs(probes: Any, path: str) -> dict[str, Any] | None:
    if not probes:
        return None
    from trainfleet.health.probes.records import pair_matrix, parse_probe_output

    if not isinstance(probes, list):
        raise InputError("probes: must be a list of probe records", path=path)
    records = parse_probe_output("\n".join(json.dumps(p, separators=(",", ":")) for p in probes),
                                 source=f"{path}: probes")
    matrix = pair_matrix(records)
    if not matrix:
        return None
    nodes = sorted({n for link in matrix for n in link}, key=lambda n: (len(n), n))
    gbps = [[matrix.get((a, b)) for b in nodes] for a in nodes]
    return {"nodes": nodes, "gbps": gbps}


class FleetSource:
    """The report file, loaded lazily and cached until the file changes."""

    def __init__(self, report: Path) -> None:
        self.report = report
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._index: FleetIndex | None = None

    def index(self) -> FleetIndex | None:
        """The indexed report, or None when no report has been saved yet."""
        try:
            st = self.report.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"cannot read the fleet report: {exc.strerror}", path=str(self.report)) from None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if key != self._key or self._index is None:
                try:
                    report = json.loads(self.report.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InputError(f"cannot read the fleet report: {exc}", path=str(self.report)) from None
                if not isinstance(report, dict):
                    raise InputError("not a doctor report (a JSON object)", path=str(self.report))
                self._index = build_index(report, path=str(self.report), mtime=st.st_mtime)
                self._key = key
            return self._index

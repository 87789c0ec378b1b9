"""Judge probe results: against what the hardware class should reach, and against the fleet's own median.

Two questions, each giving :class:`Finding` s, worst first:

* *Is it slow for this hardware?* ``value < expected.low`` from the expectations table (shipped defaults in
  ``expected.yaml``, overridable by a YAML file of the same shape).
* *Is it slow for this fleet?* ``value < fraction x median`` of its peers. For a pair matrix, each node's
  score is the median of every link it sends or receives on, and the fleet reference is the median of node
  scores: one slow node drags all of its own links down but only a few of anyone else's, so it stands out
  while a single bad cable does not smear the blame onto its two ends. Links well below the reference that
  no blamed node explains are named as links.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trainfleet.errors import InputError, UnreadableInput

DEFAULT_FRACTION = 0.5  # "well below the fleet": a node under half of the median
# One link is one noisy measurement (on shared CPUs healthy links spread 0.6-2x around the median), while a
# node score is a median over 2(n-1) of them; a link needs to be further down before it is named on its own.
DEFAULT_LINK_FRACTION = 0.4
METRICS = (
    "all_reduce_busbw_gbps",
    "all_gather_busbw_gbps",
    "reduce_scatter_busbw_gbps",
    "pair_bw_gbps",
    "matmul_tflops",
)


@dataclass(frozen=True)
class Expectation:
    """The range a metric should fall in for one hardware class, and where the numbers come from."""

    metric: str
    low: float
    high: float
    source: str = ""


@dataclass(frozen=True)
class HardwareClass:
    """A named kind of hardware (``h100-nvlink``, ``ib-400g``, ``cpu-gloo``) and its expectations."""

    name: str
    description: str
    expectations: Mapping[str, Expectation]


@dataclass(frozen=True)
class Finding:
    """A node or link judged slow: ``value`` against ``reference`` (``ratio`` = value / reference)."""

    kind: str  # "node" or "link"
    subject: str  # node name, or "src->dst"
    metric: str
    value: float
    reference: float
    reason: str  # "below fleet median" or "below expected for <class>"

    @property
    def ratio(self) -> float:
        return self.value / self.reference if self.reference > 0 else 0.0


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise InputError(f"{where}: expected a number >= 0, got {raw!r}")
    return float(raw)


def _parse_classes(data: Any, source: str) -> dict[str, HardwareClass]:
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise InputError("expected a mapping with a 'classes' mapping", path=source)
    out: dict[str, HardwareClass] = {}
    for name, body in data["classes"].items():
        where = f"classes.{name}"
        if not isinstance(body, dict):
            raise InputError(f"{where}: expected a mapping", path=source)
        expectations = {}
        for metric, entry in body.items():
            if metric == "description":
                continue
            if metric not in METRICS:
                raise InputError(
                    f"{where}.{metric}: unknown metric (known: {', '.join(METRICS)})", path=source
                )
            if not isinstance(entry, dict) or "low" not in entry:
                raise InputError(f"{where}.{metric}: expected a mapping with 'low' (and 'high')", path=source)
            low = _number(entry["low"], f"{source}: {where}.{metric}.low")
            high = _number(entry.get("high", low), f"{source}: {where}.{metric}.high")
            if high < low:
                raise InputError(f"{where}.{metric}: high {high:g} is below low {low:g}", path=source)
            expectations[metric] = Expectation(metric, low, high, str(entry.get("source", "")))
        out[str(name)] = HardwareClass(str(name), str(body.get("description", "")), expectations)
    return out


def load_expectations(path: str | Path | None = None) -> dict[str, HardwareClass]:
    """The shipped expectations, with the classes and metrics of the YAML file at ``path`` laid over them."""
    shipped = resources.files("trainfleet.health.probes").joinpath("expected.yaml").read_text()
    classes = _parse_classes(yaml.safe_load(shipped), "expected.yaml (shipped)")
    if path is None:
        return classes
    try:
        text = Path(path).read_text()
        data = yaml.safe_load(text)
    except OSError as exc:
        raise UnreadableInput(f"cannot read: {exc.strerror}", path=str(path)) from exc
    except yaml.YAMLError as exc:
        raise UnreadableInput(f"not valid YAML ({str(exc).splitlines()[0]})", path=str(path)) from exc
    for name, cls in _parse_classes(data, str(path)).items():
        base = classes.get(name)
        merged = {**(base.expectations if base else {}), **cls.expectations}
        classes[name] = HardwareClass(name, cls.description or (base.description if base else ""), merged)
    return classes


def judge_nodes(
    values: Mapping[str, float],
    metric: str,
    *,
    expected: Expectation | None = None,
    class_name: str = "",
    fraction: float = DEFAULT_FRACTION,
) -> list[Finding]:
    """Nodes whose ``metric`` is below ``fraction x`` the fleet median or ``expected.low``; worst first."""
    if not values:
        return []
    median = statistics.median(values.values())
    findings = []
    for node, value in values.items():
        if expected is not None and value < expected.low:
            findings.append(
                Finding("node", node, metric, value, expected.low, f"below expected for {class_name}")
            )
        elif value < fraction * median:
            findings.append(Finding("node", node, metric, value, median, "below fleet median"))
    return sorted(findings, key=lambda f: f.value)


def node_scores(matrix: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """Each node's median bandwidth over every link it sends or receives on."""
    per_node: dict[str, list[float]] = defaultdict(list)
    for (src, dst), value in matrix.items():
        per_node[src].append(value)
        per_node[dst].append(value)
    return {node: statistics.median(vals) for node, vals in per_node.items()}


def judge_pairs(
    matrix: Mapping[tuple[str, str], float],
    *,
    expected: Expectation | None = None,
    class_name: str = "",
    fraction: float = DEFAULT_FRACTION,
    link_fraction: float = DEFAULT_LINK_FRACTION,
) -> list[Finding]:
    """Blame slow nodes (worst first), then slow links not explained by a blamed node (worst first)."""
    scores = node_scores(matrix)
    nodes = judge_nodes(scores, "pair_bw_gbps", expected=expected, class_name=class_name, fraction=fraction)
    blamed = {f.subject for f in nodes}
    reference = statistics.median(scores.values()) if scores else 0.0
    links = []
    for (src, dst), value in matrix.items():
        if src in blamed or dst in blamed:
            continue
        if expected is not None and value < expected.low:
            reason = f"below expected for {class_name}"
            links.append(Finding("link", f"{src}->{dst}", "pair_bw_gbps", value, expected.low, reason))
        elif value < link_fraction * reference:
            links.append(
                Finding("link", f"{src}->{dst}", "pair_bw_gbps", value, reference, "below fleet median")
            )
    return nodes + sorted(links, key=lambda f: f.value)


def blamed_nodes(findings: list[Finding]) -> list[str]:
    """The node names among ``findings``, in the order given (worst first)."""
    return [f.subject for f in findings if f.kind == "node"]

"""Narrow a slow all-reduce down to the node(s) that make it slow, in O(log N) rounds.

A ring all-reduce runs at the speed of its slowest member, so a group's busbw tells whether the group
holds a slow node. Round 1 measures the whole fleet; if it is below the threshold, every failing suspect set
is split in halves and both halves are measured in the next round (the groups of one round are disjoint, so
a runner can measure them at once). Halves that pass clear their nodes; halves that fail are split again.
A half of one node cannot all-reduce alone, so it is measured together with a node already cleared
("padding"); when no cleared node exists yet, a lone node whose sibling half passed is the culprit by
elimination.

Several slow nodes are all found (each failing branch is followed). A failing set whose halves both pass is
reported as unresolved: the slowness needs the whole set (a bad link between the halves, or a threshold too
tight for the group size). Rounds: ``1 + ceil(log2 N)``, plus one when a lone suspect waits for padding.
With one slow node among four or more, round 2 always clears a half, so the answer is exact; with two or
three nodes a suspect may be left unresolved (there is nobody known-good to compare with).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Group = tuple[str, ...]


@dataclass(frozen=True)
class GroupMeasurement:
    """One measured group: the round it ran in, its members, its busbw (GB/s) and the verdict."""

    round: int
    group: Group
    busbw_gbps: float
    passed: bool


@dataclass
class BisectResult:
    """Slow nodes found (slowest measured group first), sets that could not be narrowed, and the trail."""

    culprits: list[str] = field(default_factory=list)
    unresolved: list[Group] = field(default_factory=list)
    rounds: int = 0
    measurements: list[GroupMeasurement] = field(default_factory=list)


def rounds_bound(n: int) -> int:
    """Most rounds :func:`find_slow_nodes` takes for ``n`` nodes and one slow node."""
    return 1 + (math.ceil(math.log2(n)) if n > 1 else 0) + 1


def find_slow_nodes(
    nodes: Sequence[str],
    measure: Callable[[Group], float],
    min_busbw_gbps: float,
) -> BisectResult:
    """Find the nodes whose presence puts a group's all-reduce busbw below ``min_busbw_gbps``.

    ``measure(group)`` runs the all-reduce over ``group`` (two or more nodes) and returns its busbw in GB/s.
    """
    if len(set(nodes)) != len(nodes):
        raise ValueError("find_slow_nodes: nodes must be distinct")
    result = BisectResult()
    if len(nodes) < 2:
        return result
    state = _Search(measure, min_busbw_gbps, result)
    everyone = tuple(nodes)
    if state.run_round([everyone])[everyone]:
        return result
    suspects: list[Group] = [everyone]
    limit = 2 * rounds_bound(len(nodes))
    while suspects and result.rounds < limit:
        narrowed = state.narrow(suspects)
        if narrowed is None:
            break  # only lone suspects are left and no cleared node exists to measure them with
        suspects = narrowed
    result.unresolved.extend(suspects)
    slowest = {node: m.busbw_gbps for m in result.measurements for node in m.group if not m.passed}
    result.culprits.sort(key=lambda node: slowest.get(node, math.inf))
    return result


class _Search:
    """The bookkeeping of one search: cleared nodes, culprits found, measurements taken."""

    def __init__(self, measure: Callable[[Group], float], threshold: float, result: BisectResult) -> None:
        self.measure = measure
        self.threshold = threshold
        self.result = result
        self.cleared: list[str] = []

    def run_round(self, groups: list[Group]) -> dict[Group, bool]:
        self.result.rounds += 1
        verdicts = {}
        for group in groups:
            value = self.measure(group)
            passed = value >= self.threshold
            self.result.measurements.append(GroupMeasurement(self.result.rounds, group, value, passed))
            verdicts[group] = passed
        return verdicts

    def _padded(self, single: str, used: set[str]) -> Group | None:
        spare = [n for n in self.cleared if n not in used] or self.cleared
        if not spare:
            return None
        pad = spare[0]
        used.add(pad)
        return (single, pad)

    def narrow(self, suspects: list[Group]) -> list[Group] | None:
        """Measure one round of halves of every suspect set; return the suspect sets left afterwards, or
        None when nothing could be measured."""
        used: set[str] = set()
        plan: list[tuple[Group, Group, Group | None]] = []  # (suspect set, half, group measured or None)
        for s in suspects:
            halves = [s] if len(s) == 1 else [s[: len(s) // 2], s[len(s) // 2 :]]
            for half in halves:
                plan.append((s, half, half if len(half) > 1 else self._padded(half[0], used)))
        groups = [g for _, _, g in plan if g is not None]
        if not groups:
            return None
        verdicts = self.run_round(groups)
        left: list[Group] = []
        for s in suspects:
            parts = [(half, g) for owner, half, g in plan if owner == s]
            passed = {half: verdicts[g] for half, g in parts if g is not None}
            for half, ok in passed.items():
                if ok:
                    self.cleared.extend(n for n in half if n not in self.cleared)
                elif len(half) == 1:
                    self.result.culprits.append(half[0])
                else:
                    left.append(half)
            unmeasured = [half for half, g in parts if g is None]
            if len(parts) == 2 and len(passed) == 2 and all(passed.values()):
                self.result.unresolved.append(s)
            for half in unmeasured:
                if len(parts) == 2 and passed and all(passed.values()):
                    self.result.culprits.append(half[0])  # the set failed and its other half is fine
                else:
                    left.append(half)
        return left

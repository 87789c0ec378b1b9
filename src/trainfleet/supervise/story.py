"""A job's failure story in a few lines, from its attempts and events (for ``status`` and the web)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainfleet.supervise.goodput import FAILURE_KINDS


def attempt_story(attempts: Sequence[Any], events: Sequence[Any]) -> list[str]:
    """One line per attempt: where it ran, where it resumed, what ended it, how fast that was seen."""
    by_attempt: dict[int, list[Any]] = {}
    for ev in events:
        if ev.attempt is not None:
            by_attempt.setdefault(ev.attempt, []).append(ev)
    lines = []
    for a in attempts:
        evs = by_attempt.get(a.attempt, [])
        parts = [f"attempt {a.attempt}"]
        started = next((e for e in evs if e.kind == "attempt_started"), None)
        nodes = (started.data or {}).get("nodes") if started else None
        if nodes:
            parts.append(f"on {', '.join(nodes.values())}")
        resumed = next((e for e in evs if e.kind == "resumed"), None)
        if resumed:
            d = resumed.data or {}
            parts.append(f"resumed at step {d.get('resumed_step')} ({d.get('recomputed_steps', 0)} redone)")
        failure = next((e for e in evs if e.kind in FAILURE_KINDS), None)
        preempted = next((e for e in evs if e.kind == "preempted"), None)
        if preempted:  # the engine ended the attempt; whatever the ranks did then is not the cause
            parts.append(f"preempted: {preempted.message}")
        elif failure:
            d = failure.data or {}
            detect = _secs(d.get("detected_ts"), d.get("fault_ts"))
            torn = _secs(a.ended_at, d.get("detected_ts"))
            parts.append(f"{a.state.value}: {failure.message}; detected in {detect}, torn down in {torn}")
            blamed = next((e for e in evs if e.kind.startswith("node_")), None)
            if blamed:
                parts.append(blamed.message)
            if any(e.kind == "stacks_dumped" for e in evs):
                parts.append("stacks dumped (trainfleet debug JOB)")
        else:
            parts.append(a.state.value + (f": {a.reason}" if a.reason else ""))
        stragglers = [e for e in evs if e.kind == "straggler"]
        if stragglers:
            parts.append(f"{len(stragglers)} straggler warning(s): {stragglers[0].message}")
        lines.append("; ".join(parts))
    return lines


def newest_stacks(events: Sequence[Any]) -> dict[str, Any] | None:
    """The newest ``stacks_dumped`` event as {attempt, directory, files, odd_ranks, tool}; None if none."""
    for ev in reversed(events):
        if ev.kind == "stacks_dumped":
            d = ev.data or {}
            return {"attempt": ev.attempt, "directory": d.get("directory"), "files": d.get("files", {}),
                    "odd_ranks": d.get("odd_ranks", []), "tool": d.get("tool")}
    return None


def _secs(end: float | None, start: float | None) -> str:
    if end is None or start is None:
        return "-"
    return f"{max(0.0, end - start):.1f}s"

"""Goodput: how much of a job's wall time trained the model, and what each failure cost.

Computed from the events the supervisor records (so it works for finished and running jobs alike):

- a failure event (``rank_failed``, ``agent_lost``, ``rank_hung``, ``supervisor_lost``) carries
  ``fault_ts`` (when it happened: the rank's exit, the last heartbeat, the last progress) and
  ``detected_ts``; ``detection`` = detected - fault;
- ``attempt_failed`` is written once every process of the attempt is gone: ``teardown`` = that - detected;
- ``resumed`` (first report of the next attempt): ``restart`` = its ``first_report_ts`` - teardown end
  (backoff, process start, rendezvous, checkpoint load);
- ``caught_up`` (the next attempt is back at the step the failure lost): ``recompute`` = its
  ``recompute_s`` (steps trained twice because they were after the last checkpoint).

``productive_s`` = wall time - all lost time; ``ratio`` = productive / wall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FAILURE_KINDS = ("rank_failed", "agent_lost", "rank_hung", "supervisor_lost")
ATTEMPT_END_KINDS = ("attempt_failed", "attempt_cancelled", "attempt_succeeded")
KINDS = (*FAILURE_KINDS, *ATTEMPT_END_KINDS, "resumed", "caught_up")
"""Every event kind ``compute`` reads (a caller may load just these)."""
CAUSES = ("detection", "teardown", "restart", "recompute")


@dataclass
class Goodput:
    """Wall, productive and lost seconds (per cause), and the recomputed step count."""

    wall_s: float = 0.0
    lost_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0.0))
    failures: int = 0
    recomputed_steps: int = 0

    @property
    def productive_s(self) -> float:
        """Wall time not lost to failures."""
        return max(0.0, self.wall_s - sum(self.lost_s.values()))

    @property
    def ratio(self) -> float | None:
        """Effective training time ratio; None before the job started."""
        return None if self.wall_s <= 0 else self.productive_s / self.wall_s

    def to_dict(self) -> dict[str, Any]:
        """The ``goodput`` object of ``status --json``."""
        ratio = self.ratio
        return {"ratio": None if ratio is None else round(ratio, 4), "wall_s": round(self.wall_s, 3),
                "productive_s": round(self.productive_s, 3),
                "lost_s": {k: round(v, 3) for k, v in self.lost_s.items()},
                "failures": self.failures, "recomputed_steps": self.recomputed_steps}


def compute(events: Sequence[Any], *, started_at: float | None, ended_at: float | None,
            now: float) -> Goodput:
    """Goodput from a job's events (objects with ``kind``, ``ts``, ``attempt``, ``data``) and its times."""
    out = Goodput()
    if started_at is None:
        return out
    end = ended_at if ended_at is not None else now
    out.wall_s = max(0.0, end - started_at)
    failures: dict[int, Any] = {}
    ended: dict[int, float] = {}
    resumed: dict[int, Any] = {}
    caught: dict[int, Any] = {}
    for ev in events:
        if ev.attempt is None:
            continue
        if ev.kind in FAILURE_KINDS and ev.attempt not in failures:
            failures[ev.attempt] = ev
        elif ev.kind in ATTEMPT_END_KINDS:
            ended[ev.attempt] = ev.ts
        elif ev.kind == "resumed":
            resumed[ev.attempt] = ev
        elif ev.kind == "caught_up":
            caught[ev.attempt] = ev
    for attempt, ev in failures.items():
        data = ev.data or {}
        detected = float(data.get("detected_ts", ev.ts))
        fault = min(float(data.get("fault_ts", detected)), detected)
        out.failures += 1
        out.lost_s["detection"] += detected - fault
        torn = ended.get(attempt, end if attempt not in ended and ended_at is None else detected)
        torn = max(torn, detected)
        out.lost_s["teardown"] += torn - detected
        nxt = attempt + 1
        if nxt in resumed:
            rdata = resumed[nxt].data or {}
            first = float(rdata.get("first_report_ts", resumed[nxt].ts))
            out.lost_s["restart"] += max(0.0, first - torn)
            out.recomputed_steps += int(rdata.get("recomputed_steps") or 0)
            if nxt in caught:
                out.lost_s["recompute"] += float((caught[nxt].data or {}).get("recompute_s", 0.0))
            elif rdata.get("recomputed_steps"):
                stop = ended.get(nxt, end)
                out.lost_s["recompute"] += max(0.0, stop - first)
        elif nxt in ended or (ended_at is None and attempt in ended):
            out.lost_s["restart"] += max(0.0, ended.get(nxt, end) - torn)
    return out

"""What to do after an attempt ends: a pure decision from the attempt's outcome and the restart policy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from trainfleet.spec.model import RestartPolicy
from trainfleet.spec.state import JobState


class Outcome(StrEnum):
    """How one attempt ended, as observed by the supervisor."""

    SUCCEEDED = "succeeded"  # every rank exited 0
    FAILED = "failed"  # a rank failed, an agent was lost, or the attempt could not start
    CANCELLED = "cancelled"  # a user (or signal) asked to stop


@dataclass(frozen=True)
class Decision:
    """Either a final job state, or ``restart`` after ``delay_s`` seconds (``final`` is None then)."""

    final: JobState | None
    delay_s: float = 0.0
    reason: str | None = None

    @property
    def restart(self) -> bool:
        """True when another attempt should start."""
        return self.final is None


def decide(outcome: Outcome, *, attempt: int, policy: RestartPolicy, cause: str | None = None) -> Decision:
    """Succeeded/cancelled end the job; a failure restarts while ``attempt < max_restarts``, else fails it.

    ``attempt`` is the number of the attempt that just ended (0 for the first). The final reason names the
    last cause and how many restarts were used.
    """
    if outcome is Outcome.SUCCEEDED:
        return Decision(JobState.SUCCEEDED)
    if outcome is Outcome.CANCELLED:
        return Decision(JobState.CANCELLED, reason=cause or "cancelled")
    if attempt < policy.max_restarts:
        return Decision(None, delay_s=backoff_s(policy, attempt), reason=cause)
    used = f"after {attempt} restart{'s' if attempt != 1 else ''}" if attempt else "no restarts allowed"
    return Decision(JobState.FAILED, reason=f"{cause or 'attempt failed'} ({used})")


def backoff_s(policy: RestartPolicy, attempt: int) -> float:
    """Delay before the attempt after ``attempt``: ``backoff_s * backoff_factor**attempt``, capped.

    ``backoff_factor`` (default 1: a constant delay) and ``max_backoff_s`` (default 300) are read from the
    policy when it has them, so a spec without them keeps the constant ``backoff_s``.
    """
    factor = float(getattr(policy, "backoff_factor", 1.0))
    cap = float(getattr(policy, "max_backoff_s", 300.0))
    return min(cap, policy.backoff_s * factor ** max(0, attempt))

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

    ``attempt`` is the number of the attempt that just ended (0 for the first); a restart waits
    ``backoff_s(policy, attempt)`` seconds (growing by ``backoff_factor`` per restart, capped at
    ``max_backoff_s``). The final reason names the last cause and how many restarts were used.
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
    """Seconds to wait after attempt ``attempt`` (0 first) failed: ``backoff_s * backoff_factor**attempt``.

    The growth stops at ``max_backoff_s``; a cap below ``backoff_s`` never shortens the first wait (the
    result is always >= ``backoff_s``). With the default factor 1 the wait is a constant ``backoff_s``.
    Never raises: a factor that would overflow simply reaches the cap.
    """
    base = policy.backoff_s
    cap = max(policy.max_backoff_s, base)
    if base <= 0:
        return 0.0
    try:
        grown = base * policy.backoff_factor ** max(0, attempt)
    except OverflowError:
        return cap
    return min(cap, grown)

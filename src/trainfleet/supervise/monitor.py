"""What the supervisor detects, as typed events, and the two monitors that detect the silent kinds.

Failures (each ends the attempt): ``RankCrashed`` (a rank exited non-zero or by a signal), ``AgentLost``
(its connection closed, its process ended, or it stopped heartbeating), ``RankHung`` (a live rank made
no reported progress for ``hang_timeout_s``). ``Straggler`` is a warning: the job keeps running.

``HeartbeatMonitor`` keeps the nodes in the order of their last heartbeat, so finding the silent ones
costs O(silent), not O(nodes) (the supervisor checks several times a second with thousands of agents).
``ProgressMonitor`` follows each rank's reported steps: hangs, and step times for stragglers. Both take
``now`` (monotonic seconds) from the caller, so they are pure and testable.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class RankCrashed:
    """A rank's process ended badly: ``exit_code`` (non-zero) or ``signal``; ``ended_at`` epoch seconds."""

    node: int
    rank: int
    exit_code: int | None
    signal: int | None
    ended_at: float

    kind: ClassVar[str] = "rank_failed"

    @property
    def implicates_node(self) -> bool:
        """Killed by a signal: maybe the node's fault (OOM killer, SIGBUS); an exit code is the program's."""
        return self.signal is not None

    def describe(self) -> str:
        if self.signal is not None:
            return f"node {self.node} rank {self.rank} killed by signal {self.signal}"
        return f"node {self.node} rank {self.rank} exited with code {self.exit_code}"


@dataclass(frozen=True)
class AgentLost:
    """A node's agent is gone or silent; ``how`` says which; ``silent_s`` since its last heartbeat."""

    node: int
    how: str
    silent_s: float = 0.0

    kind: ClassVar[str] = "agent_lost"

    implicates_node: ClassVar[bool] = True  # a lost agent or a hung rank is blamed on its node

    def describe(self) -> str:
        return f"node {self.node} agent lost: {self.how}"


@dataclass(frozen=True)
class RankHung:
    """A live rank reported no new step for ``silent_s`` (> ``timeout_s``); ``last_step`` it reached."""

    node: int
    rank: int
    last_step: int | None
    silent_s: float
    timeout_s: float
    reason: str = ""

    kind: ClassVar[str] = "rank_hung"

    implicates_node: ClassVar[bool] = True  # a lost agent or a hung rank is blamed on its node

    def describe(self) -> str:
        extra = f"; {self.reason}" if self.reason else ""
        if self.last_step is None:
            return (f"node {self.node} rank {self.rank} hung: no progress reported in {self.silent_s:.1f}s "
                    f"since it started (startup_timeout_s {self.timeout_s:g}){extra}")
        return (f"node {self.node} rank {self.rank} hung: no progress for {self.silent_s:.1f}s "
                f"(hang_timeout_s {self.timeout_s:g}) after step {self.last_step}{extra}")


@dataclass(frozen=True)
class Straggler:
    """A rank whose median step time over ``window`` steps is ``ratio`` x the median of the other ranks."""

    node: int
    rank: int
    step_time_s: float
    median_s: float
    ratio: float
    factor: float
    window: int

    kind: ClassVar[str] = "straggler"

    def describe(self) -> str:
        return (f"node {self.node} rank {self.rank} is a straggler: "
                f"step time {self.step_time_s * 1000:.0f} ms "
                f"= {self.ratio:.1f}x the median {self.median_s * 1000:.0f} ms of the other ranks "
                f"(threshold {self.factor:g}x over {self.window} steps)")


Failure = RankCrashed | AgentLost | RankHung


class HeartbeatMonitor:
    """Declares a node silent after ``misses`` heartbeat intervals without a heartbeat (see module doc)."""

    def __init__(self, interval_s: float, misses: float = 3.0) -> None:
        self.deadline_s = interval_s * misses
        self._last: OrderedDict[int, float] = OrderedDict()

    def beat(self, node: int, now: float) -> None:
        """A heartbeat (or any message) from ``node`` at ``now``."""
        self._last[node] = now
        self._last.move_to_end(node)

    def forget(self, node: int) -> None:
        """Stop watching ``node`` (it finished or is already declared lost)."""
        self._last.pop(node, None)

    def silent(self, now: float) -> list[tuple[int, float]]:
        """``(node, seconds since its last heartbeat)`` for each node past the deadline, oldest first."""
        out = []
        for node, last in self._last.items():
            if now - last <= self.deadline_s:
                break
            out.append((node, now - last))
        return out

    def __len__(self) -> int:
        return len(self._last)


@dataclass
class _RankProgress:
    node: int
    step: int | None = None
    started: float | None = None  # monotonic time the process started
    last_progress: float | None = None  # monotonic time of the last new step (None: never reported)
    last_ts: float | None = None  # the rank's own timestamp of that step
    times: deque[float] = field(default_factory=deque)
    straggling: bool = False


class ProgressMonitor:
    """Per-rank progress: hang detection and step-time stragglers (see module doc).

    A rank is only watched for hangs after its first report (startup and scripts that never report are
    not hangs). Step time is the rank's own compute time: the reported ``compute_s`` (time before it waits
    for the others, e.g. the forward pass of a DDP step), else ``step_time_s``, else the time between its
    consecutive reports.
    """

    def __init__(self, hang_timeout_s: float, *, straggler_factor: float = 2.0, window: int = 8,
                 startup_timeout_s: float | None = None) -> None:
        self.hang_timeout_s = hang_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.factor = straggler_factor
        self.window = window
        self.ranks: dict[int, _RankProgress] = {}
        self.paused = False

    def started(self, rank: int, node: int, now: float | None = None) -> None:
        """A rank's process is running on ``node`` since ``now`` (monotonic)."""
        self.ranks.setdefault(rank, _RankProgress(node, started=now))

    def timeout_for(self, rank: int) -> float:
        """The timeout that applies to ``rank`` now: ``startup_timeout_s`` before its first report."""
        rp = self.ranks.get(rank)
        if rp is not None and rp.last_progress is None and self.startup_timeout_s is not None:
            return self.startup_timeout_s
        return self.hang_timeout_s

    def exited(self, rank: int) -> None:
        """A rank is gone: it can no longer hang."""
        self.ranks.pop(rank, None)

    def progress(self, rank: int, step: int | None, ts: float, values: dict[str, float], now: float) -> None:
        """A report from ``rank``: a higher ``step`` is progress; step times feed straggler detection."""
        rp = self.ranks.get(rank)
        if rp is None or step is None:
            return
        if rp.step is not None and step <= rp.step:
            return
        explicit = values.get("compute_s", values.get("step_time_s"))
        if explicit is not None and explicit > 0:
            rp.times.append(float(explicit))
        elif rp.step is not None and rp.last_ts is not None and ts > rp.last_ts:
            rp.times.append((ts - rp.last_ts) / (step - rp.step))
        while len(rp.times) > self.window:
            rp.times.popleft()
        rp.step, rp.last_ts, rp.last_progress = step, ts, now

    def hung(self, now: float) -> list[tuple[int, _RankProgress, float]]:
        """``(rank, progress, silent seconds)`` of live ranks past the hang timeout, longest silent first."""
        if self.paused:
            return []
        out = [(rank, rp, now - rp.last_progress) for rank, rp in self.ranks.items()
               if rp.last_progress is not None and now - rp.last_progress > self.hang_timeout_s]
        if self.startup_timeout_s is not None:  # never reported since it started
            out += [(rank, rp, now - rp.started) for rank, rp in self.ranks.items()
                    if rp.last_progress is None and rp.started is not None
                    and now - rp.started > self.startup_timeout_s]
        return sorted(out, key=lambda item: -item[2])

    def last_step(self, rank: int) -> int | None:
        """The newest step ``rank`` reported in this attempt."""
        rp = self.ranks.get(rank)
        return rp.step if rp else None

    def stragglers(self) -> list[Straggler]:
        """Ranks that just became stragglers (each is reported once until it recovers)."""
        medians = {rank: statistics.median(rp.times) for rank, rp in self.ranks.items()
                   if len(rp.times) >= self.window}
        if len(medians) < 2:
            return []
        found = []
        for rank, mine in medians.items():
            others = statistics.median(v for r, v in medians.items() if r != rank)
            rp = self.ranks[rank]
            slow = others > 0 and mine > self.factor * others
            if slow and not rp.straggling:
                found.append(Straggler(rp.node, rank, mine, others, mine / others, self.factor, self.window))
            rp.straggling = slow
        return found

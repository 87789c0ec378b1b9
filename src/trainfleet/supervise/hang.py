"""A hang in progress: ask every agent for its ranks' stacks, wait for the answers, name the rank to blame.

When a rank is past ``hang_timeout_s`` (``supervise.monitor.ProgressMonitor``) the attempt is not torn down at
once: ``HangDump.start`` sends ``DumpStacks`` to every live agent, which writes one file per rank (py-spy, or
faulthandler through SIGUSR1). Once every agent answered or ``STACK_DUMP_WAIT_S`` passed, ``HangDump.verdict``
reads the dumps back (``supervise.stacks.blame_hang``: a stopped rank, else the odd one out, else the longest
silent), records a ``stacks_dumped`` event and returns the ``RankHung`` failure for the attempt to record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from trainfleet.runtime.protocol import DumpStacks, StacksDumped
from trainfleet.runtime.stackdump import DUMP_TIMEOUT_S, FALLBACK_TIMEOUT_S
from trainfleet.store import Store
from trainfleet.supervise.monitor import RankHung
from trainfleet.supervise.stacks import blame_hang

# How long a hang waits for the agents' stack dumps before tearing down: an agent's worst case (py-spy timing
# out, then the faulthandler fallback) plus a second for the answer to arrive.
STACK_DUMP_WAIT_S = DUMP_TIMEOUT_S + FALLBACK_TIMEOUT_S + 1.0


class HangDump:
    """One stack dump in progress: the hung ranks ``(rank, step, silent_s)``, the directory, who answered."""

    def __init__(self, hung: list[tuple[int, Any, float]], directory: str) -> None:
        self.hung = hung
        self.directory = directory
        self.detected_ts = time.time()
        self.deadline = time.monotonic() + STACK_DUMP_WAIT_S
        self.asked: set[int] = set()
        self.answers: dict[int, StacksDumped] = {}

    def start(self, agents: Iterable[tuple[int, Any]], send: Callable[[Any, DumpStacks], None]) -> None:
        """Ask each ``(node rank, connection)`` for its ranks' stacks."""
        for node, conn in agents:
            self.asked.add(node)
            send(conn, DumpStacks("hang", self.directory))

    def answered(self, msg: StacksDumped) -> None:
        """Record an agent's answer."""
        self.answers[msg.node_rank] = msg

    def done(self, now: float) -> bool:
        """Every agent asked has answered, or the wait is over."""
        return len(self.answers) >= len(self.asked) or now >= self.deadline

    def verdict(self, store: Store, job_id: str, attempt: int, *, node_of: Callable[[int], int],
                last_step: Callable[[int], int | None], timeout_of: Callable[[int], float]
                ) -> tuple[RankHung, float, dict[str, Any]]:
        """Name the hung rank, record the ``stacks_dumped`` event; returns the failure, when the hang began
        (epoch seconds) and the failure event's extra data."""
        files = {rank: path for answer in self.answers.values() for rank, path in answer.files.items()}
        silent = {rank: s for rank, _, s in self.hung}
        rank, why, stacks, odd = blame_hang(files, list(silent))
        silent_s = silent.get(rank, self.hung[0][2])
        hang = RankHung(node_of(rank), rank, last_step(rank), silent_s, timeout_of(rank), why)
        paths = {str(r): s.path for r, s in sorted(stacks.items())}
        store.add_event(job_id, "stacks_dumped", f"stacks of {len(stacks)} ranks in {self.directory}; "
                        f"odd rank out: {', '.join(map(str, odd)) or 'none'}", attempt=attempt,
                        data={"directory": self.directory, "files": paths, "odd_ranks": odd,
                              "tool": sorted({a.tool for a in self.answers.values()})})
        return hang, self.detected_ts - silent_s, {"silent_s": silent_s, "stacks": self.directory,
                                                   "odd_ranks": odd}

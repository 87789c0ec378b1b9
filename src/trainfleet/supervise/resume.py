"""Where a restarted attempt resumed and when it caught up: the ``resumed`` and ``caught_up`` events.

Goodput (``supervise.goodput``) counts the steps a restart had to redo and the time it took to get back to
where the failure left the job. ``ResumeTracker`` sees every reported step of one attempt: the first report
says where it resumed from (the GPT demo and the fixtures report the checkpoint step before training, without
a loss), and the first step at or past ``lost_step`` (the newest step before the failure) says it caught up.
"""

from __future__ import annotations

from trainfleet.store import Store


class ResumeTracker:
    """The steps of one attempt: ``max_step`` reached, and its resume / catch-up events (attempts > 0)."""

    def __init__(self, store: Store, job_id: str, attempt: int, lost_step: int | None) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.lost_step = lost_step
        self.max_step: int | None = None
        self.first_report_ts: float | None = None
        self.resumed_step: int | None = None
        self.caught_up = False

    def step(self, step: int, ts: float, values: dict[str, float]) -> None:
        """One reported ``step`` (at epoch ``ts``, with its metric ``values``)."""
        self.max_step = step if self.max_step is None else max(self.max_step, step)
        lost = self.lost_step
        if self.first_report_ts is None:
            self.first_report_ts = ts
            self.resumed_step = step if "loss" not in values else step - 1
            if lost is not None and lost < self.resumed_step:  # progress not yet recorded when it was lost
                lost = self.lost_step = self.resumed_step
            if self.attempt > 0:
                recomputed = max(0, lost - self.resumed_step) if lost is not None else 0
                message = (f"attempt {self.attempt} resumed from step {self.resumed_step} "
                           f"({recomputed} steps to redo)")
                data = {"resumed_step": self.resumed_step, "lost_step": lost, "recomputed_steps": recomputed,
                        "first_report_ts": ts}
                self.store.add_event(self.job_id, "resumed", message, attempt=self.attempt, data=data)
        if (not self.caught_up and self.attempt > 0 and lost is not None and self.resumed_step is not None
                and self.resumed_step < lost <= step):
            self.caught_up = True
            recompute_s = ts - self.first_report_ts
            self.store.add_event(self.job_id, "caught_up", f"back at step {lost} after {recompute_s:.1f}s of "
                                 "recompute", attempt=self.attempt,
                                 data={"step": lost, "recompute_s": recompute_s})

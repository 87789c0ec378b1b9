"""The foreground ``run`` view: total steps found in the command or env, and the per-rank table."""

from __future__ import annotations

import pytest
from rich.console import Console

from trainfleet.cli.run import render_view, total_steps
from trainfleet.spec import JobState
from trainfleet.supervise.live import JobView, RankView


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["python", "train.py", "--steps", "300"], {}, 300),
    (["python", "train.py", "--max-steps=40"], {}, 40),
    (["python", "train.py"], {"TRAINFLEET_TOTAL_STEPS": "12"}, 12),
    (["python", "train.py", "--steps"], {}, None),
    (["python", "train.py", "--steps", "abc"], {"TOTAL_STEPS": "0"}, None),
])
def test_total_steps(argv: list[str], env: dict[str, str], expected: int | None) -> None:
    assert total_steps(argv, env) == expected


def render(view: JobView, total: int | None) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(render_view(view, total))
    return console.export_text()


def test_the_table_shows_every_rank_with_step_loss_metrics_and_progress() -> None:
    view = JobView(job_id="0123abcd", name="gpt", state=JobState.RUNNING, attempt=1, restarts=1, ranks={
        0: RankView(0, 0, JobState.RUNNING, step=50, values={"loss": 2.345678, "tokens_per_s": 123456.0}),
        1: RankView(1, 1, JobState.FAILED, step=49, values={"loss": 2.4}, exit_code=3),
    })
    text = render(view, 100)
    assert "gpt 0123abcd: running, attempt 1" in text
    rows = [line for line in text.splitlines() if line.lstrip("│ ").startswith(("0:0", "1:1"))]
    assert len(rows) == 2
    assert "running" in rows[0] and "50" in rows[0] and "2.346" in rows[0] and "123,456" in rows[0]
    assert "failed (exit 3)" in rows[1]
    assert "progress" in text


def test_without_a_known_total_there_is_no_progress_column() -> None:
    view = JobView(job_id="0123abcd", name="x", state=JobState.PENDING,
                   ranks={0: RankView(0, 0, signal=9, state=JobState.CANCELLED)})
    text = render(view, None)
    assert "progress" not in text and "cancelled (signal 9)" in text

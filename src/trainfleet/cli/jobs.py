"""``trainfleet list``, ``status JOB [--json]`` and ``logs JOB``: reading jobs back from the database."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import typer

from trainfleet.cli import app
from trainfleet.cli._jobs_view import console, jobs_table, status_view
from trainfleet.errors import UsageError
from trainfleet.spec.state import JobState

if TYPE_CHECKING:  # the store (SQLAlchemy) is imported by the commands that read it, not by `import cli`
    from trainfleet.store import Store
    from trainfleet.store.logfiles import LogLine

FOLLOW_POLL_S = 0.25
STATES = ", ".join(s.value for s in JobState)


@app.command("list")
def list_cmd(
    limit: int = typer.Option(20, "--limit", "-n", help="Show at most this many jobs."),
    state: str | None = typer.Option(None, "--state", help="Only jobs in this state: " + STATES + "."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List jobs, newest first: id, name, state, restarts, shape, created, duration, latest step and loss."""
    from trainfleet.store import open_store
    from trainfleet.store.status import job_summary

    _at_least("--limit", limit, 1)
    wanted = _state_option(state)
    with open_store() as store:
        jobs = store.list_jobs(limit=limit, state=wanted)
        now = time.time()
        summaries = [job_summary(job, store.latest_metrics(job.id), now=now) for job in jobs]
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
    elif not summaries:
        print("no jobs" + (f" in state {wanted}" if wanted else ""), file=sys.stderr)
    else:
        console().print(jobs_table(summaries))


@app.command("status")
def status_cmd(
    job: str = typer.Argument(..., help="Job id or a unique prefix of at least 4 characters."),
    as_json: bool = typer.Option(False, "--json", help="Print the status document as JSON."),
) -> None:
    """Show a job: state and reason, attempts, ranks with exit codes or signals, latest metrics, logs."""
    from trainfleet.store import open_store
    from trainfleet.store.status import job_status

    with open_store() as store:
        doc = job_status(store, job)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        console().print(status_view(doc))


@app.command("logs")
def logs_cmd(
    job: str = typer.Argument(..., help="Job id or a unique prefix of at least 4 characters."),
    rank: int | None = typer.Option(None, "--rank", "-r", help="Only this (global) rank."),
    attempt: int | None = typer.Option(None, "--attempt", "-a", help="Attempt (default: latest)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends."),
    tail: int | None = typer.Option(None, "--tail", "-n", help="Only the last N lines."),
) -> None:
    """Print the job's rank logs merged in time order, each line prefixed with node:rank."""
    from trainfleet.store import open_store
    from trainfleet.store.logfiles import attempt_dirs, log_sources, read_merged

    for option, value in (("--rank", rank), ("--attempt", attempt), ("--tail", tail)):
        _at_least(option, value, 0)
    with open_store() as store:
        record = store.get_job(job)
        attempts = attempt_dirs(record.run_dir)
        if attempt is not None and attempt not in attempts and not follow:
            known = ", ".join(str(k) for k in sorted(attempts)) or "none yet"
            raise UsageError(f"job {record.id} has no logs for attempt {attempt} (attempts: {known})")
        if follow:
            _follow(store, record.id, record.run_dir, attempt=attempt, rank=rank, tail=tail)
            return
        which = attempt if attempt is not None else max(attempts, default=None)
        if which is None:
            print(f"trainfleet: job {record.id} has no logs yet", file=sys.stderr)
            return
        sources = log_sources(record.run_dir, which, rank=rank)
        if rank is not None and not sources:
            raise UsageError(f"job {record.id} has no logs for rank {rank} in attempt {which}")
        _write(read_merged(sources, tail=tail))


def _at_least(option: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise UsageError(f"{option}: must be >= {low}, got {value}")


def _state_option(value: str | None) -> JobState | None:
    if value is None:
        return None
    try:
        return JobState(value.strip().lower())
    except ValueError:
        raise UsageError(f"--state: must be one of {STATES}, got {value!r}") from None


def _follow(store: Store, job_id: str, run_dir: str, *, attempt: int | None, rank: int | None,
            tail: int | None) -> None:
    from trainfleet.store.logfiles import LogFollower

    follower = LogFollower(run_dir, attempt=attempt, rank=rank, tail=tail)
    shown = [follower.attempt]  # the attempt whose lines are being printed; a new one gets a header
    while True:
        # Read the state before polling: once it is terminal, one more empty poll means fully drained.
        done = store.get_job(job_id).state.is_terminal
        lines = follower.poll()
        _write(lines, shown_attempt=shown)
        if done and not lines:
            _write(follower.drain(), shown_attempt=shown)
            return
        time.sleep(FOLLOW_POLL_S)


def _write(lines: Iterable[LogLine], *, shown_attempt: list[int | None] | None = None) -> None:
    try:
        for line in lines:
            if shown_attempt is not None and line.source.attempt != shown_attempt[0]:
                if shown_attempt[0] is not None:
                    sys.stdout.write(f"--- attempt {line.source.attempt} ---\n")
                shown_attempt[0] = line.source.attempt
            sys.stdout.write(line.render() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `trainfleet logs JOB | head`: the reader left; stop quietly like other Unix tools.
        sys.stderr.close()
        raise typer.Exit(0) from None

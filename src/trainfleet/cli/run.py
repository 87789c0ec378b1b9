"""``trainfleet run SPEC [--set k=v ...] [--detach] [--dry-run]`` and ``trainfleet cancel JOB``.

Foreground ``run`` supervises the job in this process with a live view (per rank: step, loss, other
metrics, a progress bar when the total number of steps is known); Ctrl-C cancels it cleanly. Exit status:
0 iff the job succeeded, 1 when it failed, 130 when it was cancelled; 2 for a bad spec.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from trainfleet.cli import app
from trainfleet.spec.state import JobState

if TYPE_CHECKING:
    from trainfleet.spec.model import JobSpec

EXIT_FAILED = 1
EXIT_CANCELLED = 130
_TOTAL_STEP_ENV = ("TRAINFLEET_TOTAL_STEPS", "TOTAL_STEPS", "MAX_STEPS")
_METRIC_COLUMNS = 2  # besides loss: the first few other reported values


@app.command("run")
def run_cmd(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec (YAML)."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a spec field (dotted keys: restart.max_restarts=2)."),
    detach: bool = typer.Option(False, "--detach", help="Start a background supervisor; print the job id."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be started; start nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: print JSON instead of YAML."),
) -> None:
    """Launch a training job: one agent per node, each starting procs_per_node ranks."""
    from trainfleet import service
    from trainfleet.store import open_store

    spec = service.prepare_spec(spec_path, sets)
    if dry_run:
        request = service.dry_run(spec).to_dict()
        if as_json:
            typer.echo(json.dumps(request, indent=2))
        elif request.get("script"):  # a batch backend (slurm): the script exactly as it would be submitted
            typer.echo(request["script"].rstrip())
        else:
            import yaml

            text = yaml.safe_dump(request, sort_keys=False, width=1_000_000, default_flow_style=None)
            typer.echo(text.rstrip())
        return
    with open_store() as store:
        if detach:
            job_id = service.submit_detached(spec, store)
            print(f"started job {job_id} ({spec.name}); follow it with: trainfleet logs {job_id} --follow",
                  file=sys.stderr)
            typer.echo(job_id)
            return
        job_id = service.create_job(spec, store)
        run_dir = store.get_job(job_id).run_dir
        print(f"job {job_id} ({spec.name}): {spec.nodes} node(s) x {spec.procs_per_node}, logs in {run_dir}",
              file=sys.stderr)
        state = _supervise_with_view(service, job_id, store, spec)
        record = store.get_job(job_id)
    tail = f": {record.reason}" if record.reason else ""
    print(f"job {job_id} {state.value}{tail}", file=sys.stderr)
    if state is not JobState.SUCCEEDED:
        # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which drops Exit codes.
        raise SystemExit(EXIT_CANCELLED if state is JobState.CANCELLED else EXIT_FAILED)


@app.command("cancel")
def cancel_cmd(
    job: str = typer.Argument(..., metavar="JOB", help="Job id or a unique prefix (>= 4 chars)."),
) -> None:
    """Cancel a job: stop every process of it (SIGTERM, SIGKILL after its grace) and mark it cancelled."""
    from trainfleet import service
    from trainfleet.store import open_store

    with open_store() as store:
        job_id = store.get_job(job).id
        state = service.cancel(job_id, store)
    if state is JobState.CANCELLED:
        typer.echo(f"job {job_id} cancelled")
    else:
        print(f"job {job_id} had already ended: {state.value}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED)


def _supervise_with_view(service, job_id: str, store, spec: JobSpec) -> JobState:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=False)
    total = total_steps(spec.argv, spec.env)
    with Live(console=console, auto_refresh=False, transient=False) as live:

        def observe(view) -> None:  # type: ignore[no-untyped-def]
            live.update(render_view(view, total), refresh=True)

        state = service.supervise(job_id, store, observer=observe)
    if not console.is_terminal:
        console.line()  # Live leaves the cursor after the last frame
    return state


def total_steps(argv: Sequence[str], env: dict[str, str]) -> int | None:
    """The job's total steps, when the command says ``--steps N`` / ``--max-steps N`` or the env does."""
    for i, arg in enumerate(argv):
        for flag in ("--steps", "--max-steps", "--max_steps", "--total-steps"):
            value = argv[i + 1] if arg == flag and i + 1 < len(argv) else None
            if arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            if value is not None and value.isdigit() and int(value) > 0:
                return int(value)
    for key in _TOTAL_STEP_ENV:
        if env.get(key, "").isdigit() and int(env[key]) > 0:
            return int(env[key])
    return None


def render_view(view, total: int | None):  # type: ignore[no-untyped-def]
    """A Rich table of the job's ranks: node:rank, state, step, loss, a couple of metrics, progress."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    extra: list[str] = []
    for rank in view.ranks.values():
        for key in rank.values:
            if key not in ("loss", "step") and key not in extra and len(extra) < _METRIC_COLUMNS:
                extra.append(key)
    title = f"{view.name} {view.job_id}: {view.state.value}, attempt {view.attempt}"
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("node:rank", "state", "step", "loss", *extra):
        table.add_column(col, justify="right" if col not in ("node:rank", "state") else "left")
    if total:
        table.add_column(f"progress (of {total})")
    for rank in sorted(view.ranks.values(), key=lambda r: r.rank):
        state = rank.state.value
        if rank.signal is not None:
            state += f" (signal {rank.signal})"
        elif rank.exit_code not in (None, 0):
            state += f" (exit {rank.exit_code})"
        cells = [f"{rank.node_rank}:{rank.rank}", state, "" if rank.step is None else str(rank.step),
                 _fmt(rank.values.get("loss")), *(_fmt(rank.values.get(k)) for k in extra)]
        if total:
            table.add_row(*cells, ProgressBar(total=total, completed=min(rank.step or 0, total), width=24))
        else:
            table.add_row(*cells)
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"

"""``trainfleet doctor PATH... [--json] [--html FILE]``: judge node captures and diff the fleet.

Exit codes: 0 no finding of severity ``error``; 1 at least one; 2 usage error or unreadable input (one
line naming the path, printed by the CLI entry point).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from trainfleet.cli import app
from trainfleet.errors import UsageError

TABLE_WIDTH = 160  # when piped: wide enough for messages, narrow enough for a log viewer


@app.command("doctor")
def doctor(
    paths: list[str] | None = typer.Argument(None, metavar="PATH...",
                                      help="Node bundle dirs, directories of bundles, or lspci text files."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object {nodes, findings} on stdout."),
    html_file: Path | None = typer.Option(None, "--html", metavar="FILE", help="Also write an HTML report."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes (default: up to 2)."),
    save: bool = typer.Option(False, "--save",
                              help="Also save the JSON report as $TRAINFLEET_HOME/fleet/latest.json "
                                   "(the dashboard's fleet page and /metrics read it)."),
) -> None:
    """Name the wrong PCIe / BIOS / kernel setting across a fleet from lspci captures."""
    from trainfleet.health import report
    from trainfleet.health.doctor import run_doctor

    if not paths:
        raise UsageError("doctor needs a PATH: a node bundle, a directory of bundles or an lspci file")
    result = run_doctor(paths, workers=workers)
    if json_out:
        sys.stdout.write(json.dumps(report.to_json(result)) + "\n")  # one write: stdout may be unbuffered
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=TABLE_WIDTH)
        report.render(result, console)
    if html_file is not None:
        report.write_html(result, html_file)
    if save:
        _save_latest(report.to_json(result))
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which drops Exit codes.
    raise SystemExit(result.exit_code)


def _save_latest(doc: dict) -> Path:
    """Write the report atomically, so the dashboard never reads half of one."""
    import os

    from trainfleet.store.db import trainfleet_home

    target = trainfleet_home() / "fleet" / "latest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".latest.json.{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, target)
    return target

"""``trainfleet debug JOB``: the Python stacks dumped before a hung attempt was torn down.

Every rank's main-thread stack is printed innermost frame first; the odd rank out (not where the
majority waits, or a stopped process) is marked and printed first, in full.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from trainfleet.cli import app

FRAMES_SHOWN = 12


@app.command("debug")
def debug_cmd(
    job: str = typer.Argument(..., metavar="JOB", help="Job id or a unique prefix (>= 4 chars)."),
    attempt: int = typer.Option(None, "--attempt", help="Which attempt's dump (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Ranks, signatures and frames as JSON."),
) -> None:
    """Print every rank's stacks from the newest dump of a job, the odd rank out highlighted."""
    from rich.text import Text

    from trainfleet.cli._jobs_view import console
    from trainfleet.errors import InputError
    from trainfleet.store import open_store
    from trainfleet.supervise.stacks import load_dump, odd_ranks

    with open_store() as store:
        record = store.get_job(job)
        dumps = [e for e in store.events(record.id, kinds=["stacks_dumped"])
                 if attempt is None or e.attempt == attempt]
    if not dumps:
        raise InputError(f"job {record.id} has no stack dump" + (f" for attempt {attempt}" if attempt else "")
                         + " (stacks are dumped when a rank hangs)")
    event = dumps[-1]
    files = (event.data or {}).get("files", {})
    stacks = {int(r): s for r, path in files.items() if (s := load_dump(path)) is not None}
    odd = odd_ranks(stacks)
    if as_json:
        ranks = [{"rank": r, "node": s.node, "pid": s.pid, "state": s.state, "tool": s.tool, "path": s.path,
                  "signature": s.signature, "frames": [f.short() for f in s.frames]}
                 for r, s in sorted(stacks.items())]
        typer.echo(json.dumps({"job": record.id, "attempt": event.attempt, "odd_ranks": odd, "ranks": ranks},
                              indent=2))
        return
    con = console()
    con.print(Text(f"job {record.id} attempt {event.attempt}: {event.message}", style="bold"))
    if len(stacks) < len(files):
        missing = sorted(set(map(int, files)) - set(stacks))
        con.print(Text(f"unreadable dumps for ranks {missing}", style="yellow"))
    order = sorted(stacks, key=lambda r: (r not in odd, r))
    for rank in order:
        s = stacks[rank]
        mark = "  <== ODD RANK OUT" if rank in odd else ""
        state = " (stopped)" if s.state == "T" else ""
        con.print(Text(f"rank {rank} node {s.node} pid {s.pid} state {s.state}{state} [{s.tool}]: "
                       f"{s.signature}{mark}", style="bold red" if rank in odd else "bold"))
        frames = s.frames if rank in odd else s.frames[:FRAMES_SHOWN]
        for frame in frames:
            con.print(Text(f"    {frame.short()}"), highlight=False)
        if not s.frames:
            con.print(Text("    " + (s.text.strip().splitlines() or ["(empty)"])[0]))
        con.print(Text(f"    file: {Path(s.path)}", style="dim"))

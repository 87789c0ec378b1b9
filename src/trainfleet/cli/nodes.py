"""``trainfleet nodes`` (nodes with their failure history) and ``trainfleet nodes release NODE``."""

from __future__ import annotations

import json
import time

import typer

from trainfleet.cli import app

nodes_app = typer.Typer(help="Nodes blamed for failures: suspect, quarantined, and their history.",
                        invoke_without_command=True, no_args_is_help=False)
app.add_typer(nodes_app, name="nodes")


@nodes_app.callback()
def nodes_cmd(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print nodes and history as JSON."),
    history: int = typer.Option(5, "--history", min=0, help="History lines shown per node."),
) -> None:
    """List every node ever blamed: its state (suspect / quarantined / healthy), blames, last failures."""
    if ctx.invoked_subcommand is not None:
        return
    from trainfleet.cli._jobs_view import console, fmt_time
    from trainfleet.store import open_store

    with open_store() as store:
        nodes = store.nodes()
        events = store.recent_node_events([n.name for n in nodes], max(history, 1))
    if as_json:
        doc = [{"name": n.name, "state": n.state.value, "blames": n.blames, "last_reason": n.last_reason,
                "last_job_id": n.last_job_id, "updated_at": n.updated_at,
                "history": [e.to_dict() for e in events.get(n.name, [])]} for n in nodes]
        typer.echo(json.dumps(doc, indent=2))
        return
    con = console()
    if not nodes:
        con.print("no node has been blamed for a failure")
        return
    for n in nodes:
        con.print(f"[bold]{n.name}[/bold]  {n.state.value}  blames {n.blames}  "
                  f"(updated {fmt_time(n.updated_at)})", highlight=False)
        for e in events.get(n.name, [])[-history:] if history else []:
            job = ""
            if e.job_id:
                job = f" job {e.job_id}" + (f" attempt {e.attempt}" if e.attempt is not None else "")
            con.print(f"  {fmt_time(e.ts)} {e.kind}{job}: {e.reason or ''}", highlight=False, markup=False)


@nodes_app.command("release")
def release_cmd(node: str = typer.Argument(..., metavar="NODE", help="Node name, e.g. local-3.")) -> None:
    """Make a suspect or quarantined node usable again (its history is kept)."""
    from trainfleet.errors import InputError
    from trainfleet.store import open_store

    with open_store() as store:
        before = store.node(node)
        if before is None:
            known = ", ".join(n.name for n in store.nodes()) or "none"
            raise InputError(f"nodes release: unknown node {node!r} (nodes with a history: {known})")
        record = store.release_node(node, reason=f"released by user at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    was = before.state.value
    typer.echo(f"{record.name}: {was} -> {record.state.value}")

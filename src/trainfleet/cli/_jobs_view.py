"""Rich rendering of jobs for ``list`` and ``status`` (the JSON forms come from ``store.status``)."""

from __future__ import annotations

import signal as signals
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from trainfleet.spec.state import JobState

_STATE_STYLE = {
    JobState.PENDING.value: "yellow",
    JobState.RUNNING.value: "cyan",
    JobState.SUCCEEDED.value: "green",
    JobState.FAILED.value: "bold red",
    JobState.CANCELLED.value: "magenta",
}
MAX_RANK_ROWS = 64
RECENT_EVENTS = 8


def console() -> Console:
    """A stdout console; fixed width when piped so output does not depend on an absent terminal."""
    con = Console()
    return con if con.is_terminal else Console(width=160, color_system=None)


def fmt_duration(seconds: float | None) -> str:
    """``42.0s``, ``3m05s``, ``2h07m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_time(epoch: float | None) -> str:
    """Local ``YYYY-MM-DD HH:MM:SS``; ``-`` when unknown."""
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def fmt_loss(loss: Any) -> str:
    """Loss with 4 significant digits; ``-`` when not reported."""
    return f"{loss:.4g}" if isinstance(loss, int | float) else "-"


def fmt_exit(exit_code: int | None, signal: int | None) -> str:
    """``0``, ``1``, ``SIGKILL`` (or ``signal 64``), ``-`` while still running."""
    if signal is not None:
        try:
            return signals.Signals(signal).name
        except ValueError:
            return f"signal {signal}"
    return "-" if exit_code is None else str(exit_code)


def state_text(state: str) -> Text:
    """A state word, coloured by what it means."""
    return Text(state, style=_STATE_STYLE.get(state, ""))


def jobs_table(summaries: list[dict[str, Any]]) -> Table:
    """The ``list`` table: one row per job summary (``store.status.job_summary``)."""
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("ID", "NAME", "STATE", "RESTARTS", "SHAPE", "CREATED", "DURATION", "STEP", "LOSS"):
        right = col in {"RESTARTS", "STEP", "LOSS"}
        table.add_column(col, no_wrap=True, justify="right" if right else "left")
    for s in summaries:
        table.add_row(
            s["id"], s["name"], state_text(s["state"]), str(s["restarts"]),
            f"{s['nodes']}x{s['procs_per_node']}", fmt_time(s["created_at"]), fmt_duration(s["duration_s"]),
            "-" if s["step"] is None else str(s["step"]), fmt_loss(s["loss"]),
        )
    return table


def status_view(doc: dict[str, Any]) -> Group:
    """The human ``status`` view of a status document (``store.status.job_status``)."""
    events = doc.get("events") or []
    head = Text.assemble(("job ", "bold"), (doc["id"], "bold"), "  ", doc["name"], "  ",
                         state_text(doc["state"]), f"  restarts {doc['restarts']}")
    lines: list[Any] = [head]
    if doc.get("reason"):
        lines.append(Text(f"reason:     {doc['reason']}"))
    world = doc["nodes"] * doc["procs_per_node"]
    lines.append(Text(f"shape:      {doc['nodes']} nodes x {doc['procs_per_node']} procs "
                      f"(world {world}), backend {doc['backend']}"))
    lines.append(Text(f"times:      created {fmt_time(doc['created_at'])}, "
                      f"started {fmt_time(doc['started_at'])}, ended {fmt_time(doc['ended_at'])}, "
                      f"duration {fmt_duration(doc['duration_s'])}"))
    if doc["step"] is not None:
        lines.append(Text(f"progress:   step {doc['step']}, loss {fmt_loss(doc['loss'])}"))
    lines.append(Text(f"run dir:    {doc['run_dir']}"))
    sup = doc["supervisor"]
    if sup["pid"] is not None or sup["addr"]:
        lines.append(Text(f"supervisor: pid {sup['pid'] or '-'}, {sup['addr'] or '-'}"))
        if sup.get("alive") is False:
            hint = f"its process is gone: continue with `trainfleet resume {doc['id']}`"
            lines.append(Text(f"            {hint}", style="bold red"))
    goodput = doc.get("goodput") or {}
    if goodput.get("ratio") is not None:
        lost = goodput["lost_s"]
        productive, wall = fmt_duration(goodput["productive_s"]), fmt_duration(goodput["wall_s"])
        lines.append(Text(f"goodput:    {goodput['ratio']:.1%} ({productive} productive of {wall}); "
                          f"lost: detection {lost['detection']:.1f}s, "
                          f"teardown {lost['teardown']:.1f}s, restart {lost['restart']:.1f}s, recompute "
                          f"{lost['recompute']:.1f}s ({goodput['recomputed_steps']} steps)"))
    if doc.get("stacks"):
        st = doc["stacks"]
        odd = ", ".join(map(str, st["odd_ranks"])) or "none"
        lines.append(Text(f"stacks:     {st['directory']} "
                          f"(odd rank out: {odd}; trainfleet debug {doc['id']})"))
    if doc.get("story") and (doc["restarts"] or doc.get("stacks") or len(doc["story"]) > 1
                             or doc["state"] == JobState.FAILED.value):
        lines.append(Text("story:", style="bold"))
        lines.extend(Text(f"  {line}") for line in doc["story"])
    if doc["attempts"]:
        lines.extend([Text(""), _attempts_table(doc["attempts"])])
    if doc["ranks"]:
        lines.extend([Text(""), _ranks_table(doc)])
        lines.append(Text(""))
        lines.append(Text("logs:", style="bold"))
        for rank in doc["ranks"][:MAX_RANK_ROWS]:
            for path in (rank["log_out"], rank["log_err"]):
                if path:
                    lines.append(Text(f"  {path}"))
    if events:
        lines.extend([Text(""), Text("recent events:", style="bold")])
        for ev in events[-RECENT_EVENTS:]:
            where = "".join(f" {k} {ev[k]}" for k in ("attempt", "node", "rank") if ev.get(k) is not None)
            lines.append(Text(f"  {fmt_time(ev['ts'])} {ev['kind']}{where}: {ev['message']}"))
    return Group(*lines)


def _attempts_table(attempts: list[dict[str, Any]]) -> Table:
    table = Table(title="attempts", title_justify="left", box=None, header_style="bold", show_edge=False)
    for col in ("#", "STATE", "STARTED", "DURATION", "MASTER", "REASON"):
        table.add_column(col)
    for a in attempts:
        dur = None
        if a["started_at"] is not None:
            dur = (a["ended_at"] if a["ended_at"] is not None else time.time()) - a["started_at"]
        master = f"{a['master_addr']}:{a['master_port']}" if a["master_addr"] else "-"
        table.add_row(str(a["attempt"]), state_text(a["state"]), fmt_time(a["started_at"]), fmt_duration(dur),
                      master, a["reason"] or "")
    return table


def _ranks_table(doc: dict[str, Any]) -> Table:
    ranks = doc["ranks"]
    title = f"ranks of attempt {ranks[0]['attempt']}"
    table = Table(title=title, title_justify="left", box=None, header_style="bold", show_edge=False)
    for col in ("RANK", "NODE", "LOCAL", "HOST", "PID", "STATE", "EXIT", "STEP", "LOSS"):
        table.add_column(col, justify="right" if col in {"RANK", "NODE", "LOCAL", "PID", "STEP"} else "left")
    for r in ranks[:MAX_RANK_ROWS]:
        latest = doc["latest"].get(str(r["rank"]), {})
        table.add_row(str(r["rank"]), str(r["node_rank"]), str(r["local_rank"]), r["host"] or "-",
                      "-" if r["pid"] is None else str(r["pid"]), state_text(r["state"]),
                      fmt_exit(r["exit_code"], r["signal"]), str(latest.get("step", "-")),
                      fmt_loss(latest.get("loss")))
    if len(ranks) > MAX_RANK_ROWS:
        table.caption = f"... and {len(ranks) - MAX_RANK_ROWS} more ranks (status --json lists all)"
    return table

"""``trainfleet probe allreduce|pairs|compute``: measure the fabric (or the devices) the way a job uses it.

Each probe runs as a job (recorded in the job database, results stored per node) on the ``local`` backend,
across the namespaced testbed (``--backend netns``) or on Slurm nodes (``--backend slurm``: pinned to
``--hosts``, else to the first ``--nodes`` usable nodes of ``--partition`` as ``sinfo`` lists them), then
judges the numbers against the fleet median and a hardware class (``--class``; shipped table overridable
with ``--expected FILE``). Rich tables, or one JSON object with ``--json``. Exit status: 0 nothing blamed,
1 a node/link/group blamed or the probe job failed, 2 bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from trainfleet.cli import app
from trainfleet.errors import UsageError

TABLE_WIDTH = 140


@app.command("probe")
def probe_cmd(
    kind: str = typer.Argument(..., metavar="allreduce|pairs|compute", help="What to measure."),
    nodes: int | None = typer.Option(None, "--nodes", "-n", min=1,
                                     help="Nodes, one agent each (default 2, or the --hosts count)."),
    procs_per_node: int = typer.Option(1, "--procs-per-node", min=1, help="Ranks per node."),
    backend: str = typer.Option("local", "--backend",
                                help="local, netns (the namespaced testbed) or slurm (a Slurm cluster)."),
    hosts: str | None = typer.Option(None, "--hosts", metavar="H1,H2,...",
                                     help="Node names to use (netns: testbed hosts, default tfh1..tfhN; "
                                     "slurm: node names, default the first usable nodes)."),
    partition: str | None = typer.Option(None, "--partition", help="slurm: pick nodes of this partition."),
    sizes: str = typer.Option("1K..64M", "--sizes", help="allreduce: sizes, a range (1K..1G) or a list."),
    factor: int = typer.Option(4, "--factor", min=2, help="allreduce: step between sizes of a range."),
    ops: str = typer.Option("all_reduce,all_gather,reduce_scatter", "--ops", help="allreduce: collectives."),
    size: str = typer.Option("8M", "--size", help="pairs: bytes per transfer."),
    matrix: int = typer.Option(0, "--matrix", min=0, help="compute: matrix side (0: 2048 CPU, 8192 GPU)."),
    iters: int = typer.Option(5, "--iters", min=1, help="Timed iterations (median reported)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed iterations first."),
    timeout_s: float = typer.Option(180.0, "--timeout-s", min=1, help="Deadline of each probe job."),
    bisect: bool = typer.Option(False, "--bisect", help="allreduce: narrow a slow all-reduce to its nodes."),
    min_busbw: float | None = typer.Option(None, "--min-busbw", metavar="GB/S",
                                           help="--bisect threshold (default: the class's expected low)."),
    hw_class: str = typer.Option("cpu-gloo", "--class",
                                 help="Hardware class to judge by (none: the fleet median only)."),
    expected: Path | None = typer.Option(None, "--expected", metavar="FILE",
                                         help="YAML adding/overriding hardware classes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Probe all-reduce / pairwise bandwidth / matmul throughput across nodes and name the slow ones."""
    from trainfleet.health.probes.judge import load_expectations
    from trainfleet.health.probes.run import PROBE_BACKENDS, ProbeRequest, node_labels, run_bisect, run_probe
    from trainfleet.store import open_store

    if kind not in ("allreduce", "pairs", "compute"):
        raise UsageError(f"probe {kind!r}: expected allreduce, pairs or compute")
    if backend not in PROBE_BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected {', '.join(PROBE_BACKENDS)}")
    if partition is not None and backend != "slurm":
        raise UsageError("--partition goes with --backend slurm")
    if bisect and kind != "allreduce":
        raise UsageError("--bisect goes with the allreduce probe")
    classes = load_expectations(expected)
    hw = None
    if hw_class != "none":
        if hw_class not in classes:
            raise UsageError(f"--class {hw_class!r}: known classes are {', '.join(sorted(classes))}, none")
        hw = classes[hw_class]
    host_list = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else None
    if host_list and nodes is not None and nodes != len(host_list):
        raise UsageError(f"--nodes {nodes} but --hosts names {len(host_list)} nodes")
    nodes = len(host_list) if host_list else (nodes or 2)
    request = ProbeRequest(kind=kind, nodes=nodes, procs_per_node=procs_per_node, sizes=sizes,  # type: ignore[arg-type]
                           factor=factor, ops=ops, pair_size=size, matrix=matrix, warmup=warmup, iters=iters,
                           timeout_s=timeout_s)
    request.check()
    with open_store() as store:
        if bisect:
            gate = min_busbw
            if gate is None:
                exp = hw.expectations.get("all_reduce_busbw_gbps") if hw else None
                if exp is None:
                    raise UsageError("--bisect needs --min-busbw (the class has no all-reduce expectation)")
                gate = exp.low
            names = node_labels(backend, nodes, host_list, partition=partition)
            report = run_bisect(request, store=store, backend=backend, hosts=names, min_busbw_gbps=gate,
                                partition=partition)
        else:
            report = run_probe(request, store=store, backend=backend, hosts=host_list, hw=hw,
                               partition=partition)
    if as_json:
        sys.stdout.write(json.dumps(report_json(report)) + "\n")
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=TABLE_WIDTH)
        render(report, console)
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which drops Exit codes.
    raise SystemExit(0 if report.ok and not report.findings else 1)


def report_json(report: Any) -> dict[str, Any]:
    """The report as plain JSON data: job, nodes, records, findings (worst first), blamed names."""
    from dataclasses import asdict

    from trainfleet.health.probes.records import pair_matrix

    data: dict[str, Any] = {
        "probe": report.kind, "backend": report.backend, "job_id": report.job_id, "state": report.state,
        "reason": report.reason, "ok": report.ok, "nodes": report.nodes,
        "elapsed_s": round(report.elapsed_s, 3),
        "records": [asdict(r) for r in report.records],
        "findings": [{**asdict(f), "ratio": round(f.ratio, 4)} for f in report.findings],
        "blamed": [f.subject for f in report.findings if f.kind == "node"],
        "node_values": {n: {"metric": m, "value": v} for n, (m, v) in report.node_values().items()},
    }
    if report.kind == "pairs":
        matrix = pair_matrix(report.records)
        data["matrix"] = [{"src": s, "dst": d, "bw_gbps": v} for (s, d), v in matrix.items()]
    if report.bisect is not None:
        data["bisect"] = {"rounds": report.bisect.rounds, "culprits": report.bisect.culprits,
                          "unresolved": [list(g) for g in report.bisect.unresolved],
                          "measurements": [asdict(m) for m in report.bisect.measurements]}
    return data


def render(report: Any, console: Console) -> None:
    """Rich tables: the measurements of the probe kind, then the findings (or a line saying none)."""
    head = (f"probe {report.kind} on {report.backend}: {len(set(report.nodes))} nodes "
            f"({', '.join(dict.fromkeys(report.nodes))}), job {report.job_id} {report.state} "
            f"in {report.elapsed_s:.1f} s")
    console.print(head + (f": {report.reason}" if report.reason else ""), highlight=False)
    if report.kind in ("allreduce", "bisect") and report.bisect is None:
        console.print(_collective_table(report))
    elif report.kind == "pairs":
        console.print(_matrix_table(report))
    elif report.kind == "compute":
        console.print(_compute_table(report))
    if report.bisect is not None:
        console.print(_bisect_table(report.bisect))
    if report.findings:
        console.print(_findings_table(report.findings))
    elif report.ok:
        console.print("no blame: every node within the fleet median and the hardware class", highlight=False)


def _collective_table(report: Any) -> Table:
    from trainfleet.health.probes.busbw import format_size

    table = Table(title="collectives (slowest rank, median of iterations)", title_justify="left")
    for col in ("op", "size", "time ms", "algbw GB/s", "busbw GB/s", "ok"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        for r in report.collectives(op):
            table.add_row(op, format_size(r.bytes), f"{r.time_s * 1e3:.3f}", f"{r.algbw_gbps:.3f}",
                          f"{r.busbw_gbps:.3f}", "yes" if r.ok else "WRONG")
    return table


def _matrix_table(report: Any) -> Table:
    from trainfleet.health.probes.records import pair_matrix

    matrix = pair_matrix(report.records)
    names = list(dict.fromkeys(report.nodes))
    blamed = {f.subject for f in report.findings if f.kind == "node"}
    table = Table(title="pairs GB/s, row -> column", title_justify="left")
    table.add_column("src\\dst")
    for n in names:
        table.add_column(n + (" !" if n in blamed else ""), justify="right")
    for a in names:
        table.add_row(a + (" !" if a in blamed else ""),
                      *(f"{matrix[(a, b)]:.3f}" if (a, b) in matrix else "-" for b in names))
    return table


def _compute_table(report: Any) -> Table:
    from trainfleet.health.probes.records import ComputeRecord

    table = Table(title="matmul throughput", title_justify="left")
    for col in ("node", "rank", "device", "dtype", "n", "time ms", "TFLOP/s", "ok"):
        table.add_column(col, justify="left" if col in ("node", "device", "dtype") else "right")
    for r in sorted((r for r in report.records if isinstance(r, ComputeRecord)), key=lambda r: r.rank):
        table.add_row(r.node, str(r.rank), r.device, r.dtype, str(r.n), f"{r.time_s * 1e3:.2f}",
                      f"{r.tflops:.4f}", "yes" if r.ok else "WRONG")
    return table


def _bisect_table(result: Any) -> Table:
    table = Table(title=f"bisection: {result.rounds} rounds", title_justify="left")
    for col in ("round", "group", "busbw GB/s", "verdict"):
        table.add_column(col, justify="right" if col in ("round", "busbw GB/s") else "left")
    for m in result.measurements:
        table.add_row(str(m.round), ",".join(m.group), f"{m.busbw_gbps:.4f}", "pass" if m.passed else "SLOW")
    return table


def _findings_table(findings: list[Any]) -> Table:
    table = Table(title="blamed (worst first)", title_justify="left")
    for col in ("kind", "subject", "metric", "value", "reference", "ratio", "reason"):
        table.add_column(col, justify="right" if col in ("value", "reference", "ratio") else "left")
    for f in findings:
        table.add_row(f.kind, f.subject, f.metric, f"{f.value:.4f}", f"{f.reference:.4f}", f"{f.ratio:.2f}",
                      f.reason)
    return table


@app.command("probe-history")
def probe_history_cmd(
    node: str = typer.Argument(..., metavar="NODE",
                               help="Node name as probes report it (tfh3, local-0, a Slurm node)."),
    metric: str | None = typer.Option(None, "--metric", help="Only this metric (e.g. pair_bw_gbps)."),
    limit: int = typer.Option(50, "--limit", min=1, help="Newest results to show."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """A node's stored probe results, oldest first: is it getting worse?"""
    from dataclasses import asdict
    from datetime import UTC, datetime

    from trainfleet.health.probes.store import node_history
    from trainfleet.store import open_store

    with open_store() as store:
        rows = node_history(store, node, metric=metric, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps([asdict(r) for r in rows]) + "\n")
        return
    table = Table(title=f"probe results of {node}", title_justify="left")
    for col in ("when (UTC)", "probe", "backend", "metric", "value", "verdict", "job"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        when = datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(when, r.probe, r.backend, r.metric, f"{r.value:.4g}", r.verdict, r.job_id)
    Console(width=TABLE_WIDTH).print(table)

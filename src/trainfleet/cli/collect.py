"""``trainfleet collect``: write this node's bundle (raw lspci and friends + manifest) for the doctor."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from trainfleet.cli import app
from trainfleet.health.collect import DEFAULT_TIMEOUT_S, MANIFEST, OK, collect_bundle


@app.command("collect")
def collect(
    out: Path = typer.Option(Path("fleet-bundles"), "--out", "-o",
                             help="Directory that receives the bundle OUT/<hostname>/."),
    timeout_s: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout-s", min=0.1,
                                    help="Time limit for each command, in seconds."),
    slurm: bool = typer.Option(False, "--slurm", help="Collect on every usable Slurm node (one job; drained "
                               "and down nodes are skipped) into OUT/<node>/, then run the doctor on them."),
    partition: str | None = typer.Option(None, "--partition", help="With --slurm: only this partition."),
    nodes: int | None = typer.Option(None, "--nodes", min=1, help="With --slurm: at most this many nodes."),
) -> None:
    """Gather this node's PCIe/RDMA/BIOS facts into OUT/<hostname>/ (run as root: lspci hides capabilities
    otherwise). Missing tools are recorded in manifest.json, never fatal; exit 2 when OUT is not writable."""
    if slurm:
        _collect_slurm(out, partition=partition, nodes=nodes, timeout_s=timeout_s)
        return
    result = collect_bundle(out, timeout_s=timeout_s)
    for warning in result.warnings:
        print(f"trainfleet: warning: {warning}", file=sys.stderr)
    parts = []
    for rec in result.records:
        parts.append(rec.file if rec.status == OK else f"{rec.file} ({rec.status})")
    typer.echo(f"wrote {result.bundle_dir}: " + ", ".join(parts) + f"; see {result.bundle_dir / MANIFEST}")


def _collect_slurm(out: Path, *, partition: str | None, nodes: int | None, timeout_s: float) -> None:
    """``collect --slurm``: one Slurm job collects on the usable nodes, then ``doctor`` judges the bundles."""
    from trainfleet.backends.slurm.collect import collect_fleet
    from trainfleet.cli.doctor import doctor

    fleet = collect_fleet(out, partition=partition, nodes=nodes, timeout_s=timeout_s)
    for skipped in fleet.skipped:
        print(f"trainfleet: skipped {skipped.name} ({skipped.why})", file=sys.stderr)
    for name in fleet.missing:
        print(f"trainfleet: warning: no bundle came back from {name} (Slurm job {fleet.slurm_job_id} "
              f"{fleet.native_state}; see {fleet.out_dir / '.logs'})", file=sys.stderr)
    print(f"collected {len(fleet.bundles)} of {len(fleet.nodes)} node(s) in Slurm job {fleet.slurm_job_id} "
          f"into {fleet.out_dir}", file=sys.stderr)
    doctor([str(bundle) for bundle in fleet.bundles], json_out=False, html_file=None, workers=None)

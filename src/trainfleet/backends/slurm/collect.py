"""Fleet collection through Slurm: one batch job runs ``trainfleet collect`` on every usable node.

``collect_fleet(out_dir, partition=..., nodes=...)`` reads ``sinfo --json``, skips nodes that are drained,
draining, down or not responding (and says why), submits one job pinned to the chosen nodes with one task
per node, waits for it, and returns the bundles found under ``out_dir`` (a directory on the shared
filesystem). Each task writes ``out_dir/<Slurm node name>/``: Slurm node names are the node identities
(several slurmd may share one host name). ``trainfleet collect --slurm`` then runs the doctor on them.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainfleet.backends.slurm.backend import slurm_command, squeue_jobs
from trainfleet.backends.slurm.parse import SlurmNode, parse_sbatch_output, parse_sinfo_json
from trainfleet.backends.slurm.render import check_node_names
from trainfleet.errors import BackendError, InputError

JOB_NAME = "tf-collect"
WAIT_S = 600.0
_PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Skipped:
    """A node left out of the collection, and why (``drained: maintenance``)."""

    name: str
    why: str


@dataclass
class FleetCollection:
    """What ``collect_fleet`` did: the Slurm job, the nodes asked, the bundles that came back."""

    out_dir: Path
    slurm_job_id: int
    nodes: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    bundles: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # asked, but no manifest.json came back
    native_state: str = ""


def choose_nodes(nodes: list[SlurmNode], *, partition: str | None, count: int | None
                 ) -> tuple[list[str], list[Skipped]]:
    """The usable nodes of ``partition`` (all partitions when None), the first ``count`` of them; the rest
    of the partition's nodes come back as ``Skipped`` with the reason."""
    chosen: list[str] = []
    skipped: list[Skipped] = []
    for node in nodes:
        if partition is not None and partition not in node.partitions:
            continue
        if not node.is_usable:
            skipped.append(Skipped(node.name, node.condition))
        elif count is not None and len(chosen) >= count:
            skipped.append(Skipped(node.name, f"--nodes {count} already chosen"))
        else:
            chosen.append(node.name)
    return chosen, skipped


def render_collect_script(out_dir: Path, nodes: list[str], *, python: str, partition: str | None,
                          timeout_s: float) -> str:
    """The sbatch script: one task per chosen node running the node-side collector; pure."""
    names = check_node_names(nodes)
    directives = [f"--job-name={JOB_NAME}", f"--nodes={len(names)}", "--ntasks-per-node=1",
                  f"--nodelist={','.join(names)}", "--output=/dev/null"]
    if partition is not None:
        if not _PARTITION.fullmatch(partition):
            raise InputError(f"--partition: {partition!r} is not a Slurm partition name")
        directives.append(f"--partition={partition}")
    q = shlex.quote
    body = [q(python), "-m", "trainfleet.backends.slurm.collect", "--out", q(str(out_dir)),
            "--timeout-s", q(repr(float(timeout_s)))]
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        "# trainfleet collect --slurm: one collector per node; each bundle is named by $SLURMD_NODENAME.",
        f"srun --nodes={len(names)} --ntasks-per-node=1 --output={q(str(out_dir / '.logs' / 'task-%t.log'))} "
        + " ".join(body),
    ]) + "\n"


def collect_fleet(out_dir: Path, *, partition: str | None = None, nodes: int | None = None,
                  timeout_s: float = 60.0, wait_s: float = WAIT_S, python: str = sys.executable
                  ) -> FleetCollection:
    """Run the collector on every usable node of ``partition`` (or the first ``nodes``); see module doc.

    Raises ``InputError`` when no node is usable or ``out_dir`` is not writable, ``BackendError`` when Slurm
    refuses the job or it does not end within ``wait_s``.
    """
    out_dir = Path(out_dir).resolve()
    try:
        (out_dir / ".logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory: {exc.strerror}", path=str(out_dir)) from None
    chosen, skipped = choose_nodes(parse_sinfo_json(slurm_command(["sinfo", "--json"])),
                                   partition=partition, count=nodes)
    if not chosen:
        where = f"partition {partition!r}" if partition else "the cluster"
        raise InputError(f"no usable node in {where} "
                         f"({', '.join(f'{s.name} {s.why}' for s in skipped) or 'no nodes'})")
    script = render_collect_script(out_dir, chosen, python=python, partition=partition, timeout_s=timeout_s)
    output = slurm_command(["sbatch", "--parsable"], stdin=script, cwd=str(out_dir))
    job_id = parse_sbatch_output(output).job_id
    result = FleetCollection(out_dir=out_dir, slurm_job_id=job_id, nodes=chosen, skipped=skipped)
    deadline = time.monotonic() + wait_s
    while True:
        job = next((j for j in squeue_jobs() if j.job_id == job_id), None)
        if job is None or (job.state.is_terminal and job.native_state != "COMPLETING"):
            result.native_state = job.native_state if job is not None else "gone"
            break
        if time.monotonic() >= deadline:
            slurm_command(["scancel", str(job_id)])
            raise BackendError(f"collect job {job_id} still {job.native_state} after {wait_s:g}s; cancelled")
        time.sleep(0.2)
    for name in chosen:
        if (out_dir / name / "manifest.json").is_file():
            result.bundles.append(out_dir / name)
        else:
            result.missing.append(name)
    return result


def _node_main(argv: list[str] | None = None) -> int:
    """One Slurm task: collect this node's bundle into ``--out/$SLURMD_NODENAME``."""
    from trainfleet.health.collect import collect_bundle

    ap = argparse.ArgumentParser(prog="python -m trainfleet.backends.slurm.collect")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    result = collect_bundle(Path(args.out), hostname=os.environ.get("SLURMD_NODENAME"),
                            timeout_s=args.timeout_s)
    for warning in result.warnings:
        print(f"trainfleet: warning: {warning}", file=sys.stderr)
    print(f"wrote {result.bundle_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(_node_main())

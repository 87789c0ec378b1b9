"""Submit-to-first-step on 2 Slurm nodes: ``trainfleet run`` vs a hand-written ``sbatch`` + ``srun``.

Both sides run the same training script (the GPT demo, tiny sizes, gloo on CPU) across 2 nodes of the dev
cluster (``scripts/slurm-dev-cluster``), one rank per node. The clock starts when the command is launched
(``trainfleet run SPEC`` / ``sbatch job.sh``) and stops when this process first sees rank 0's ``step 1``
line in its output file (both files polled the same way, every 10 ms). Runs alternate between the two so
that caches warm both equally; prints every run, the medians and the ratio (target <= 1.2).

    .venv/bin/python benchmarks/slurm_overhead.py [--runs 3] [--steps 3] [--workload gpt|print]

``--workload print`` replaces training by a rank that prints ``step 1 loss 0`` at once: what is left is the
launch path alone (CLI, supervisor, agent vs sbatch + srun).

Needs root (the dev cluster); brings the cluster up if it is down and takes it down again afterwards.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEV_CLUSTER = REPO / "scripts" / "slurm-dev-cluster"
TRAINFLEET = Path(sys.executable).parent / "trainfleet"
TRAIN = REPO / "examples" / "gpt" / "train.py"
TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
    "--corpus-chars", "50000", "--eval-every", "0", "--eval-batches", "2", "--log-every", "1",
    "--pg-timeout-s", "30",
]  # fmt: skip
PRINT_STEP = ["-c", "print('step 1 loss 0.0', flush=True)"]
FIRST_STEP = re.compile(r"(?:^|Z )step 1 loss ", re.M)
TIMEOUT_S = 120.0


def clean_env(home: Path) -> dict[str, str]:
    prefixes = ("TRAINFLEET_", "SLURM_", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | {"TRAINFLEET_HOME": str(home), "OMP_NUM_THREADS": "1"}


def wait_first_step(find_file, t0: float, proc: subprocess.Popen | None = None) -> float:  # type: ignore[no-untyped-def]
    """Seconds from ``t0`` until ``find_file()`` names a file holding rank 0's first step line."""
    deadline = t0 + TIMEOUT_S
    while time.monotonic() < deadline:
        path = find_file()
        if path is not None:
            try:
                if FIRST_STEP.search(path.read_text(errors="replace")):
                    return time.monotonic() - t0
            except OSError:
                pass
        if proc is not None and proc.poll() not in (None, 0):
            raise SystemExit(f"command failed with status {proc.returncode}")
        time.sleep(0.01)
    raise SystemExit(f"no first step within {TIMEOUT_S:g}s")


def workload(kind: str, steps: int) -> list[str]:
    """The rank command of both sides."""
    return [sys.executable, *PRINT_STEP] if kind == "print" else [sys.executable, str(TRAIN), *TINY,
                                                                   "--steps", str(steps)]


def run_trainfleet(work: Path, command: list[str]) -> float:
    home = work / "home"
    spec = work / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "bench-slurm", "backend": "slurm", "nodes": 2, "procs_per_node": 1, "workdir": str(REPO),
        "command": command, "grace_s": 2,
    }))

    def rank0() -> Path | None:
        runs = home / "runs"
        found = list(runs.glob("*/attempt-0/node-0/rank-0.out")) if runs.exists() else []
        return found[0] if found else None

    t0 = time.monotonic()
    proc = subprocess.Popen([str(TRAINFLEET), "run", str(spec)], cwd=REPO, env=clean_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = wait_first_step(rank0, t0, proc)
    if proc.wait(timeout=TIMEOUT_S) != 0:
        raise SystemExit(f"trainfleet run failed ({proc.returncode}); see {home}")
    return elapsed


def run_plain(work: Path, command: list[str]) -> float:
    """The script a user would write by hand: torchrun-style env from Slurm's, one srun, no agent."""
    out = work / "plain"
    out.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    train = " ".join(shlex.quote(a) for a in command)
    script = out / "job.sh"
    script.write_text("\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=bench-plain",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --output={out}/slurm-%j.out",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MASTER_PORT={port} OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1",
        f"srun --output={out}/task-%t.out bash -c "
        + shlex.quote(f"RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=0 exec {train}"),
        "",
    ]))
    task0 = out / "task-0.out"
    t0 = time.monotonic()
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], cwd=REPO, env=clean_env(work / "h"),
                               capture_output=True, text=True, check=True)
    elapsed = wait_first_step(lambda: task0 if task0.exists() else None, t0)
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + TIMEOUT_S
    while subprocess.run(["squeue", "-h", "-j", job_id, "-t", "PENDING,RUNNING,COMPLETING", "-o", "%i"],
                         capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise SystemExit(f"plain job {job_id} did not finish")
        time.sleep(0.1)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each (alternating)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per run")
    ap.add_argument("--workload", choices=("gpt", "print"), default="gpt", help="what each rank runs")
    args = ap.parse_args()
    # trainfleet's modules as an installed package has them: byte-compiled (the peer's are, in site-packages;
    # an editable checkout under PYTHONDONTWRITEBYTECODE=1 would recompile them in every process)
    compileall.compile_dir(str(REPO / "src"), quiet=1)
    was_up = subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True).returncode == 0
    subprocess.run([str(DEV_CLUSTER), "up"], check=True, capture_output=True)
    times: dict[str, list[float]] = {"trainfleet": [], "plain": []}
    try:
        with tempfile.TemporaryDirectory(prefix="tf-slurm-bench-") as tmp:
            for index in range(args.runs):
                for kind, runner in (("trainfleet", run_trainfleet), ("plain", run_plain)):
                    work = Path(tmp) / f"{kind}-{index}"
                    work.mkdir()
                    seconds = runner(work, workload(args.workload, args.steps))
                    times[kind].append(seconds)
                    print(f"run {index + 1} {kind:<10} submit -> first step {seconds:6.2f} s", flush=True)
    finally:
        if not was_up:
            subprocess.run([str(DEV_CLUSTER), "down"], capture_output=True)
    tf, plain = statistics.median(times["trainfleet"]), statistics.median(times["plain"])
    what = "GPT demo, tiny" if args.workload == "gpt" else "a rank that prints its first step at once"
    print(f"median over {args.runs} runs, 2 Slurm nodes x 1 rank ({what}):")
    print(f"  trainfleet run     {tf:6.2f} s")
    print(f"  sbatch + srun      {plain:6.2f} s")
    print(f"  ratio              {tf / plain:6.2f}  (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

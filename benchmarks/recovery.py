"""Recovery from injected faults on the GPT demo, trainfleet beside ``torchrun --max-restarts``.

Scenarios (each launcher runs the same ``examples/gpt/train.py`` argv on one host, 2 ranks, gloo on CPU):

- ``crash``: rank 1 ``os._exit(13)`` before step ``--fault-step`` on the first attempt. Printed per launcher:
  time to detect (fault -> the launcher acting on it), time from detection to the first new training step
  (every rank's ``first step done`` line of the next attempt), steps recomputed (last step reached before
  the fault - the checkpoint step the restart resumed from).
- ``hang``: rank 1 sleeps forever before ``--fault-step``. trainfleet notices after ``hang_timeout_s`` of no
  progress, dumps stacks and restarts; torchrun only learns of it when gloo's collective timeout
  (``--pg-timeout-s``) makes a rank fail, or never within ``--limit-s``.
- ``reliability``: ``--cycles`` crash-and-restart cycles of a plain 2-rank gloo job (``init_process_group``
  from the environment, no per-attempt store prefix) under each launcher; a cycle is clean when the job
  succeeds after exactly one restart within ``--cycle-limit-s``. Printed: clean / needed more restarts /
  failed / hung, for both launchers from the same run.

trainfleet's times come from its events (the agent's exit time of the rank, the supervisor's detection
time, the rank's own ``first step done`` epoch); torchrun's from the arrival time of its output lines (the
``injected crash`` line printed just before the exit, torchrun's ``exitcode`` / ``FAILED`` log line).
Targets: crash detected < 2 s; hang detected <= hang_timeout_s + 2 s; training resumed < 15 s after detection.

    .venv/bin/python benchmarks/recovery.py                          # crash and hang, both launchers
    .venv/bin/python benchmarks/recovery.py --scenarios reliability --cycles 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "gpt" / "train.py"
BIN = Path(sys.executable).parent
FIRST_STEP = re.compile(r"rank (\d+) first step done at (\d+\.\d+)")
TORCHRUN_NOTICED = re.compile(r"exitcode: -?\d+|Worker group FAILED|Sending process \d+ closing signal")
RESUMED = re.compile(r"resumed from step (\d+)")

RELIABILITY_WORKER = '''
import os, sys, torch, torch.distributed as dist
from datetime import timedelta
attempt = int(os.environ.get("TRAINFLEET_ATTEMPT", os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
dist.init_process_group("gloo", timeout=timedelta(seconds=20))
rank = dist.get_rank()
for step in range(1, 21):
    t = torch.ones(4096)
    dist.all_reduce(t)
    if step == 10 and attempt == 0 and rank == 1:
        os._exit(13)
dist.barrier()
print(f"OK attempt {attempt} rank {rank}", flush=True)
dist.destroy_process_group()
'''


@dataclass
class Result:
    """One launcher's figures for one fault."""

    launcher: str
    detect_s: float | None = None
    resume_s: float | None = None
    recomputed: int | None = None
    finished: bool = False
    note: str = ""

    def line(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:6.2f}s"

        rec = "-" if self.recomputed is None else str(self.recomputed)
        return (f"  {self.launcher:10s} detect {f(self.detect_s)}   first new step {f(self.resume_s)} after "
                f"detection   recomputed {rec:>3s} steps   finished {self.finished}  {self.note}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLEET_", "TORCHELASTIC_"))}
    env.update(TRAINFLEET_HOME=str(home), OMP_NUM_THREADS="1", PYTHONHASHSEED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


Lines = list[tuple[float, str]]


def stream(argv: list[str], env: dict[str, str], limit_s: float,
           cwd: Path = REPO) -> tuple[Lines, int | None]:
    """Run ``argv``; every output line with its arrival time; exit code ``None`` when killed at the limit."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    lines: list[tuple[float, str]] = []
    buf = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.2):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        now = time.time()
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines.extend((now, line.decode(errors="replace")) for line in done)
    try:
        code: int | None = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
        os.killpg(proc.pid, 9)
        proc.wait()
    return lines, code


def gpt_args(steps: int, fault: str, fault_step: int, pg_timeout_s: float) -> list[str]:
    return ["--steps", str(steps), "--ckpt-every", "20", "--eval-every", "0", "--eval-batches", "1",
            "--log-every", "5", "--pg-timeout-s", str(pg_timeout_s), f"--{fault}-at-step", str(fault_step),
            f"--{fault}-rank", "1", f"--{fault}-attempt", "0"]


def run_torchrun(args: list[str], work: Path, limit_s: float, fault_word: str, last_step: int) -> Result:
    argv = [str(BIN / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", str(TRAIN), *args,
            "--ckpt-dir", str(work / "ckpt-torchrun")]
    lines, code = stream(argv, base_env(work / "home-torchrun"), limit_s)
    res = Result("torchrun", finished=code == 0)
    if code != 0:
        print("\n".join(line for _, line in lines[-15:]))
    fault_t = next((t for t, line in lines if f"injected {fault_word}" in line), None)
    after = [(t, line) for t, line in lines if fault_t and t >= fault_t]
    noticed = next((t for t, line in after if TORCHRUN_NOTICED.search(line)), None)
    if fault_t and noticed:
        res.detect_s = noticed - fault_t
    elif fault_t:
        res.note = f"(never noticed within the {limit_s:g}s limit)"
    firsts = [(int(m.group(1)), float(m.group(2))) for _, line in lines for m in FIRST_STEP.finditer(line)]
    second = [ts for (rank, ts) in firsts[2:]]  # the first two are attempt 0's
    if noticed and len(second) >= 2:
        res.resume_s = max(second[:2]) - noticed
    resumed = [int(m.group(1)) for _, line in lines if (m := RESUMED.search(line))]
    if resumed and fault_t:
        res.recomputed = max(0, last_step - resumed[-1])  # the fault is injected right after last_step
    return res


def run_trainfleet(args: list[str], work: Path, limit_s: float, hang_timeout_s: float) -> Result:
    home = work / "home-trainfleet"
    spec = {"name": "gpt-recovery", "command": [sys.executable, str(TRAIN), *args], "nodes": 1,
            "procs_per_node": 2, "workdir": str(REPO), "checkpoint_dir": str(work / "ckpt-trainfleet"),
            "restart": {"max_restarts": 2, "backoff_s": 0}, "hang_timeout_s": hang_timeout_s, "grace_s": 2}
    path = work / "spec.yaml"
    path.write_text(json.dumps(spec))
    lines, code = stream([str(BIN / "trainfleet"), "run", str(path)], base_env(home), limit_s)
    res = Result("trainfleet", finished=code == 0)
    if code != 0:
        print("\n".join(line for _, line in lines[-15:]))
    sys.path.insert(0, str(REPO / "src"))
    from trainfleet.store import open_store

    with open_store(f"sqlite:///{home}/trainfleet.db") as store:
        job = store.list_jobs(limit=1)[0]
        events = store.events(job.id)
        ranks = store.ranks(job.id, 1)
    failure = next((e for e in events if e.kind in ("rank_failed", "rank_hung")), None)
    if failure is None:
        res.note = "(no failure recorded)"
        return res
    detected = failure.data["detected_ts"]
    res.detect_s = detected - failure.data["fault_ts"]
    firsts = [float(m.group(1)) for r in ranks if r.log_out
              for m in re.finditer(r"first step done at (\d+\.\d+)", Path(r.log_out).read_text())]
    if len(firsts) == 2:
        res.resume_s = max(firsts) - detected
    resumed = next((e for e in events if e.kind == "resumed"), None)
    if resumed:
        res.recomputed = resumed.data["recomputed_steps"]
    if failure.kind == "rank_hung":
        res.note = f"(stacks: {failure.data.get('stacks')}; odd rank out {failure.data.get('odd_ranks')})"
    return res


def reliability(cycles: int, work: Path, limit_s: float) -> None:
    work.mkdir(parents=True, exist_ok=True)
    script = work / "gloo_restart.py"
    script.write_text(RELIABILITY_WORKER)
    tally = {"trainfleet": {"clean": 0, "more restarts": 0, "failed": 0, "hung": 0},
             "torchrun": {"clean": 0, "more restarts": 0, "failed": 0, "hung": 0}}
    for cycle in range(cycles):
        for launcher in ("trainfleet", "torchrun") if cycle % 2 == 0 else ("torchrun", "trainfleet"):
            cwork = work / f"cycle-{cycle}-{launcher}"
            cwork.mkdir(parents=True)
            if launcher == "torchrun":
                argv = [str(BIN / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2",
                        "--max-restarts", "3",
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", str(script)]
            else:
                spec = {"name": "gloo-restart", "command": [sys.executable, str(script)], "nodes": 1,
                        "procs_per_node": 2, "restart": {"max_restarts": 3, "backoff_s": 0}, "grace_s": 2}
                (cwork / "spec.yaml").write_text(json.dumps(spec))
                argv = [str(BIN / "trainfleet"), "run", str(cwork / "spec.yaml")]
            t0 = time.monotonic()
            lines, code = stream(argv, base_env(cwork / "home"), limit_s, cwd=cwork)
            text = "\n".join(line for _, line in lines)
            if launcher == "trainfleet" and code is not None:
                for p in (cwork / "home" / "runs").glob("*/attempt-*/node-*/rank-*.out"):
                    text += "\n" + p.read_text()
            oks = set(re.findall(r"OK attempt (\d+) rank (\d+)", text))
            if code is None:
                verdict = "hung"
            elif code != 0:
                verdict = "failed"
            else:
                verdict = "clean" if {("1", "0"), ("1", "1")} <= oks else "more restarts"
            tally[launcher][verdict] += 1
            took = time.monotonic() - t0
            print(f"  cycle {cycle + 1:2d} {launcher:10s} {verdict:13s} {took:5.1f}s", flush=True)
    for launcher, counts in tally.items():
        print(f"{launcher:10s} clean {counts['clean']}/{cycles}  "
              f"(needed more restarts {counts['more restarts']}, "
              f"failed {counts['failed']}, hung {counts['hung']})")
    print("RELIABILITY " + json.dumps(tally))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="crash,hang", help="comma list of crash, hang, reliability")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--fault-step", type=int, default=45)
    ap.add_argument("--hang-timeout-s", type=float, default=10.0)
    ap.add_argument("--pg-timeout-s", type=float, default=30.0)
    ap.add_argument("--limit-s", type=float, default=150.0, help="bound of every single run")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--cycle-limit-s", type=float, default=60.0)
    ap.add_argument("--launchers", default="trainfleet,torchrun")
    args = ap.parse_args()
    launchers = args.launchers.split(",")
    with tempfile.TemporaryDirectory(prefix="tf-recovery-") as tmp:
        work = Path(tmp)
        for scenario in args.scenarios.split(","):
            if scenario == "reliability":
                print(f"restart reliability: {args.cycles} crash-and-restart cycles of a 2-rank gloo job")
                reliability(args.cycles, work / "reliability", args.cycle_limit_s)
                continue
            fault = {"crash": "crash", "hang": "hang"}[scenario]
            print(f"{scenario}: rank 1 of 2 at step {args.fault_step} of {args.steps} (checkpoint every 20), "
                  f"hang_timeout_s {args.hang_timeout_s:g}, gloo timeout {args.pg_timeout_s:g}s")
            for launcher in launchers:
                lwork = work / f"{scenario}-{launcher}"
                lwork.mkdir(parents=True)
                gargs = gpt_args(args.steps, fault, args.fault_step, args.pg_timeout_s)
                if launcher == "torchrun":
                    res = run_torchrun(gargs, lwork, args.limit_s, fault, args.fault_step - 1)
                else:
                    res = run_trainfleet(gargs, lwork, args.limit_s, args.hang_timeout_s)
                print(res.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

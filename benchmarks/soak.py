"""Soak: the GPT demo under trainfleet with a random fault every ``--fault-every-s`` seconds.

A short calibration run measures the demo's step rate; the soak job then gets enough steps to train for
about ``--minutes``. While it runs, every ``--fault-every-s`` seconds one fault is injected into the live
attempt, chosen at random (seeded): kill -9 a rank, SIGSTOP a rank (a hang), kill -9 an agent, SIGSTOP an
agent (a silent node). At the end it prints the job's goodput (target >= 0.85 on this machine), the faults
injected against the failures trainfleet recorded (each with its cause), and checks that the job succeeded
with every rank at the final step.

    .venv/bin/python benchmarks/soak.py                     # 3 minutes
    .venv/bin/python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
BIN = Path(sys.executable).parent
TRAIN = REPO / "examples" / "gpt" / "train.py"
TRAIN_ARGS = ["--ckpt-every", "20", "--eval-every", "0", "--eval-batches", "1", "--log-every", "50"]
FAULTS = ("kill_rank", "stop_rank", "kill_agent", "stop_agent")


def tf(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINFLEET_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("TRAINFLEET_DB_URL", None)
    argv = [str(BIN / "trainfleet"), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def start(home: Path, work: Path, steps: int, hang_timeout_s: float) -> str:
    spec = {"name": "gpt-soak", "command": [sys.executable, str(TRAIN), "--steps", str(steps), *TRAIN_ARGS],
            "nodes": 2, "procs_per_node": 1, "workdir": str(REPO), "checkpoint_dir": str(work / "ckpt"),
            "env": {"PYTHONHASHSEED": "0"}, "restart": {"max_restarts": 1000, "backoff_s": 0.5},
            "hang_timeout_s": hang_timeout_s, "grace_s": 2, "spare_nodes": 1}
    path = work / "soak.yaml"
    path.write_text(json.dumps(spec))
    out = tf(home, "run", str(path), "--detach")
    if out.returncode != 0:
        raise SystemExit(f"cannot start the soak job: {out.stderr}")
    return out.stdout.strip()


def doc(home: Path, job: str) -> dict:
    from trainfleet.store import open_store
    from trainfleet.store.status import job_status

    with open_store(f"sqlite:///{home}/trainfleet.db") as store:
        return json.loads(json.dumps(job_status(store, job)))


def agent_pid(job: str, attempt: int, node: int) -> int | None:
    want = {"--job-id": job, "--attempt": str(attempt), "--node-rank": str(node)}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_text().split("\0")
        except OSError:
            continue
        opts = dict(itertools.pairwise(argv))
        if "trainfleet.runtime.agent" in argv and all(opts.get(k) == v for k, v in want.items()):
            return int(entry)
    return None


def inject(rng: random.Random, home: Path, job: str) -> str | None:
    """One random fault into the running attempt (once every rank trains); a description, or None."""
    d = doc(home, job)
    ranks = [r for r in d["ranks"] if r["attempt"] == d["attempt"] and r["state"] == "running" and r["pid"]]
    if d["state"] != "running" or len(ranks) < 2:
        return None
    fault = rng.choice(FAULTS)
    victim = rng.choice(ranks)
    pid = victim["pid"] if fault.endswith("rank") else agent_pid(job, d["attempt"], victim["node_rank"])
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGKILL if fault.startswith("kill") else signal.SIGSTOP)
    except ProcessLookupError:
        return None
    return f"{fault} attempt {d['attempt']} rank {victim['rank']} node {victim['node_rank']} pid {pid}"


def calibrate(work: Path) -> float:
    """Steps per second of the demo on this machine (a 40-step run, timed from its reported metrics)."""
    home = work / "calibrate"
    home.mkdir()
    job = start(home, home, 40, 60)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and doc(home, job)["state"] in ("pending", "running"):
        time.sleep(1)
    from trainfleet.store import open_store

    with open_store(f"sqlite:///{home}/trainfleet.db") as store:
        rows = [row for _, _, row in store.metrics(job, rank=0)]
    steps = [r for r in rows if "loss" in r.values]
    return (steps[-1].step - steps[0].step) / (steps[-1].ts - steps[0].ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--fault-every-s", type=float, default=60.0)
    ap.add_argument("--hang-timeout-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", type=int, default=None, help="default: calibrated to last about --minutes")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="tf-soak-") as tmp:
        work = Path(tmp)
        steps = args.steps
        if steps is None:
            rate = calibrate(work)
            steps = max(100, int(rate * args.minutes * 60))
            print(f"calibration: {rate:.2f} steps/s fault-free -> {steps} steps for ~{args.minutes:g} min")
        home = work / "home"
        job = start(home, work, steps, args.hang_timeout_s)
        t0 = time.monotonic()
        injected: list[str] = []
        next_fault = t0 + args.fault_every_s
        limit = t0 + args.minutes * 60 * 3 + 300
        while time.monotonic() < limit:
            d = doc(home, job)
            if d["state"] not in ("pending", "running"):
                break
            if time.monotonic() >= next_fault:
                what = inject(rng, home, job)
                if what:
                    injected.append(what)
                    print(f"  t={time.monotonic() - t0:6.1f}s injected {what}", flush=True)
                    next_fault += args.fault_every_s
            time.sleep(1.0)
        else:
            tf(home, "cancel", job)
        d = doc(home, job)
        from trainfleet.store import open_store

        with open_store(f"sqlite:///{home}/trainfleet.db") as store:
            failures = [e for e in store.events(job) if e.kind in ("rank_failed", "rank_hung", "agent_lost")]
        gp = d["goodput"]
        print(f"job {job} {d['state']} after {d['duration_s']:.0f}s, {d['restarts']} restarts, "
              f"final step {d['step']} of {steps}")
        print(f"faults injected {len(injected)}, failures recorded {len(failures)}:")
        for e in failures:
            print(f"  attempt {e.attempt}: {e.kind}: {e.message}")
        lost = gp["lost_s"]
        print(f"goodput {gp['ratio']:.3f}: productive {gp['productive_s']:.1f}s of {gp['wall_s']:.1f}s; "
              f"lost detection {lost['detection']:.1f}s, teardown {lost['teardown']:.1f}s, "
              f"restart {lost['restart']:.1f}s, recompute {lost['recompute']:.1f}s "
              f"({gp['recomputed_steps']} steps)")
        ok = (d["state"] == "succeeded" and d["step"] == steps and len(failures) >= len(injected)
              and all(r["state"] == "succeeded" for r in d["ranks"]))
        print(json.dumps({"goodput": gp, "injected": len(injected), "recorded": len(failures),
                          "final_step": d["step"], "steps": steps, "state": d["state"]}))
        print(f"RESULT {'PASS' if ok and gp['ratio'] >= 0.85 else 'FAIL'} (job finished: {ok}, "
              f"goodput target 0.85)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

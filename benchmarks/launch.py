"""Launch overhead: time from command start to the first training step on every rank, trainfleet vs torchrun.

Both launchers start the same script (examples/gpt/train.py, which prints ``rank R first step done at
<epoch>`` once per rank after its first optimizer step) on one node with N ranks:

    torchrun --nproc-per-node N --master-port P examples/gpt/train.py ARGS
    trainfleet run SPEC            (nodes: 1, procs_per_node: N, same argv)

One launch's figure is ``max over ranks(first-step time) - command start``, so it includes the launcher's
own start-up, spawning, rendezvous, ``import torch``, process-group init and the first DDP step. Launchers
alternate within each repetition (the order flips every repetition) so that drift in machine load hits both;
the median of the repetitions is compared. Target: trainfleet / torchrun <= 1.10.

    .venv/bin/python benchmarks/launch.py                 # 2, 4 and 8 ranks, 3 repetitions each
    .venv/bin/python benchmarks/launch.py --ranks 2 --reps 1 --launchers torchrun
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "gpt" / "train.py"
BIN = Path(sys.executable).parent
MARKER = re.compile(r"rank (\d+) first step done at (\d+\.\d+)")
TRAIN_ARGS = ["--steps", "2", "--ckpt-every", "0", "--eval-batches", "1", "--log-every", "1000"]
TARGET_RATIO = 1.10


@dataclass(frozen=True)
class Launch:
    """One measured launch: seconds until every rank finished its first step, and until the command exited."""

    launcher: str
    ranks: int
    to_first_step_s: float
    total_s: float


class LaunchFailed(RuntimeError):
    """A launch exited non-zero, timed out, or did not show a first step on every rank."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_step_times(text: str) -> dict[int, float]:
    """Per rank, the epoch time its first step finished, from the markers in ``text``."""
    return {int(m.group(1)): float(m.group(2)) for m in MARKER.finditer(text)}


def _run(argv: list[str], env: dict[str, str], timeout_s: float, out_path: Path) -> tuple[float, float, int]:
    """Run ``argv`` in its own session with stdout+stderr to ``out_path``; returns (start, end, exit code)."""
    with open(out_path, "w") as out:
        start = time.time()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise LaunchFailed(f"{argv[0]} timed out after {timeout_s:.0f} s (log: {out_path})") from None
        return start, time.time(), code


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLEET_", "TORCHELASTIC_"))}
    env["TRAINFLEET_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "1"  # what both launchers would set; explicit so neither is favoured
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def launch_torchrun(ranks: int, work: Path, timeout_s: float) -> Launch:
    torchrun = BIN / "torchrun"
    head = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    argv = [*head, f"--nproc-per-node={ranks}", f"--master-port={free_port()}", str(TRAIN), *TRAIN_ARGS]
    log = work / f"torchrun-{ranks}-{time.monotonic_ns()}.log"
    start, end, code = _run(argv, base_env(work / "home"), timeout_s, log)
    text = log.read_text(errors="replace")
    if code != 0:
        raise LaunchFailed(f"torchrun exited {code}: {text[-1500:]}")
    return Launch("torchrun", ranks, _to_all_ranks(first_step_times(text), ranks, start, log), end - start)


def launch_trainfleet(ranks: int, work: Path, timeout_s: float) -> Launch:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    spec = {
        "name": f"bench-launch-{ranks}", "command": [sys.executable, str(TRAIN), *TRAIN_ARGS],
        "nodes": 1, "procs_per_node": ranks, "backend": "local", "workdir": str(REPO),
        "restart": {"max_restarts": 0, "backoff_s": 1}, "hang_timeout_s": timeout_s,
    }  # fmt: skip
    spec_path = home / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    argv = [str(BIN / "trainfleet"), "run", str(spec_path)]
    log = work / f"trainfleet-{ranks}-{time.monotonic_ns()}.log"
    start, end, code = _run(argv, base_env(home), timeout_s, log)
    if code != 0:
        raise LaunchFailed(f"trainfleet run exited {code}: {log.read_text(errors='replace')[-1500:]}")
    text = "".join(
        p.read_text(errors="replace") for p in sorted(home.glob("runs/*/attempt-*/node-*/rank-*.out"))
    )
    return Launch("trainfleet", ranks, _to_all_ranks(first_step_times(text), ranks, start, log), end - start)


def _to_all_ranks(times: dict[int, float], ranks: int, start: float, log: Path) -> float:
    missing = sorted(set(range(ranks)) - set(times))
    if missing:
        raise LaunchFailed(f"no first-step marker from ranks {missing} (log: {log})")
    return max(times.values()) - start


LAUNCHERS = {"torchrun": launch_torchrun, "trainfleet": launch_trainfleet}


def measure(
    sizes: list[int], reps: int, launchers: list[str], work: Path, timeout_s: float
) -> tuple[dict[tuple[str, int], list[Launch]], bool]:
    """Each launcher at each size ``reps`` times, order alternating; returns results, whether any failed."""
    results: dict[tuple[str, int], list[Launch]] = {}
    failed = False
    for ranks in sizes:
        for rep in range(reps):
            order = launchers if rep % 2 == 0 else launchers[::-1]
            for name in order:
                try:
                    launch = LAUNCHERS[name](ranks, work, timeout_s)
                except LaunchFailed as exc:
                    print(f"{name:>10} ranks={ranks} rep={rep + 1}: FAILED: {exc}", flush=True)
                    failed = True
                    continue
                results.setdefault((name, ranks), []).append(launch)
                print(
                    f"{name:>10} ranks={ranks} rep={rep + 1}: first step on all ranks "
                    f"{launch.to_first_step_s:6.2f} s, exit {launch.total_s:6.2f} s",
                    flush=True,
                )
    return results, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8], help="ranks per run (one node)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per launcher and size (median taken)")
    ap.add_argument("--launchers", default="torchrun,trainfleet", help="comma-separated subset")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="limit for one launch")
    args = ap.parse_args(argv)
    # trainfleet's modules as an installed package has them: byte-compiled (the peer's are, in site-packages;
    # an editable checkout under PYTHONDONTWRITEBYTECODE=1 would recompile them in every process)
    compileall.compile_dir(str(REPO / "src"), quiet=1)
    launchers = [name.strip() for name in args.launchers.split(",") if name.strip()]
    unknown = [n for n in launchers if n not in LAUNCHERS]
    if unknown or not launchers:
        ap.error(f"--launchers: unknown {unknown}; choose from {sorted(LAUNCHERS)}")

    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}, "
          f"script {TRAIN.relative_to(REPO)} {' '.join(TRAIN_ARGS)}", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="trainfleet-bench-launch-"))
    (work / "home").mkdir()
    results, failed = measure(args.ranks, args.reps, launchers, work, args.timeout_s)
    if failed:
        print(f"logs of every launch kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print("\nmedian seconds from command start to the first step on every rank")
    print(
        f"{'ranks':>5} "
        + " ".join(f"{n:>11}" for n in launchers)
        + ("    ratio  verdict" if len(launchers) == 2 else "")
    )
    verdicts = []
    for ranks in args.ranks:
        medians = {}
        for name in launchers:
            runs = results.get((name, ranks), [])
            medians[name] = statistics.median(r.to_first_step_s for r in runs) if runs else float("nan")
        row = f"{ranks:>5} " + " ".join(f"{medians[n]:>11.2f}" for n in launchers)
        if set(launchers) == {"torchrun", "trainfleet"}:
            ratio = medians["trainfleet"] / medians["torchrun"]
            ok = ratio <= TARGET_RATIO
            verdicts.append(ok)
            row += f"  {ratio:7.3f}  {'PASS' if ok else 'FAIL'}"
        print(row)
    if verdicts:
        overall = all(verdicts) and not failed
        why = " (some launches failed, see above)" if failed else ""
        print(f"target trainfleet/torchrun <= {TARGET_RATIO:.2f}: {'PASS' if overall else 'FAIL'}{why}")
        return 0 if overall else 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

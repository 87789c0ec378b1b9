"""The GPT demo (examples/gpt): real DDP training under torchrun, checkpoints, resume, fallback, atomicity.

Every run is a real training job on tiny sizes (one layer, 32-wide) so that a 2-rank run takes a few seconds
on two cores. The checkpoint module is loaded from the example itself, not copied.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GPT_DIR = REPO / "examples" / "gpt"
TRAIN = GPT_DIR / "train.py"
TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
    "--corpus-chars", "50000", "--eval-every", "0", "--eval-batches", "2", "--log-every", "1", "--lr", "1e-2",
    "--pg-timeout-s", "30",
]  # fmt: skip
STEP_LINE = re.compile(r"(?:^|Z )step (\d+) loss ([0-9.]+) tok/s (\d+)", re.M)  # bare or log-prefixed

pytestmark = pytest.mark.torch


def _load_checkpoint_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpt_demo_checkpoint", GPT_DIR / "checkpoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


ckpt = _load_checkpoint_module()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLEET_", "TORCHELASTIC_"))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(ckpt_dir: Path, *args: str, nproc: int = 2, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run train.py under torchrun (standalone rendezvous on a free port) with the tiny model."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(TRAIN), *TINY, "--ckpt-dir", str(ckpt_dir), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def single(
    ckpt_dir: Path, *args: str, timeout: float = 60, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run train.py as one plain process (no distributed environment at all)."""
    cmd = [sys.executable, str(TRAIN), *TINY, "--ckpt-dir", str(ckpt_dir), *args]
    env = _env() | (extra_env or {})
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def losses(out: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in STEP_LINE.finditer(out)}


def steps_on_disk(directory: Path) -> list[int]:
    return sorted(c.step for c in ckpt.list_checkpoints(directory))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real 2-rank run of 30 steps, checkpointing every 10 steps."""
    directory = tmp_path_factory.mktemp("gpt") / "ckpt"
    proc = torchrun(directory, "--steps", "30", "--ckpt-every", "10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return directory, proc


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_rank_run_trains_and_keeps_last_two_checkpoints(trained) -> None:
    directory, proc = trained
    loss = losses(proc.stdout)
    assert sorted(loss) == list(range(1, 31)), proc.stdout
    first, last5 = loss[1], sum(loss[s] for s in range(26, 31)) / 5
    assert first > 4.0  # ~ln(96): an untrained model
    assert last5 < first - 0.8, f"loss did not fall: step 1 {first}, steps 26-30 {last5}"
    assert "rank 0 first step done at" in proc.stdout and "rank 1 first step done at" in proc.stdout
    assert steps_on_disk(directory) == [20, 30]  # step 10 was pruned: keep the last two
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(directory, 30))
    assert state["step"] == 30 and state["config"]["world"] == 2
    assert {"model", "optimizer", "rng"} <= state.keys()
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_second_run_resumes_from_latest_checkpoint(trained, tmp_path: Path) -> None:
    directory = copy_dir(trained[0], tmp_path / "ckpt")
    proc = torchrun(directory, "--steps", "36", "--ckpt-every", "10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 30" in proc.stdout
    loss = losses(proc.stdout)
    assert min(loss) == 31 and max(loss) == 36
    # The resumed model is the trained one, not a fresh one (which would start near ln(96) = 4.56).
    assert loss[31] < trained_loss_at(trained[1].stdout, 1) - 0.5
    assert steps_on_disk(directory) == [30, 36]


def trained_loss_at(out: str, step: int) -> float:
    return losses(out)[step]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_corrupt_latest_checkpoint_falls_back_to_previous(trained, tmp_path: Path) -> None:
    directory = copy_dir(trained[0], tmp_path / "ckpt")
    latest = ckpt.checkpoint_path(directory, 30)
    blob = bytearray(latest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped bit-pattern in the payload: size unchanged, checksum not
    latest.write_bytes(bytes(blob))
    proc = single(directory, "--steps", "22", "--ckpt-every", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping corrupt checkpoint" in proc.stderr and "sha256 mismatch" in proc.stderr
    assert "resumed from step 20" in proc.stdout
    assert sorted(losses(proc.stdout)) == [21, 22]


def test_truncated_or_foreign_checkpoint_is_rejected(tmp_path: Path) -> None:
    import torch

    good = ckpt.save_checkpoint(tmp_path, 5, {"step": 5, "w": torch.arange(1000.0)})
    assert ckpt.read_checkpoint(good)["w"].sum().item() == sum(range(1000))
    blob = good.read_bytes()
    good.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(ckpt.CheckpointCorrupt, match="truncated"):
        ckpt.read_checkpoint(good)
    good.write_bytes(b"PK\x03\x04 a zip, not ours")
    with pytest.raises(ckpt.CheckpointCorrupt, match="bad header"):
        ckpt.read_checkpoint(good)
    assert ckpt.find_latest_valid(tmp_path) is None


def test_save_keeps_newest_two_and_latest_valid_skips_damaged(tmp_path: Path) -> None:
    import torch

    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((4,), float(step))})
    assert steps_on_disk(tmp_path) == [30, 40]
    ckpt.checkpoint_path(tmp_path, 40).write_bytes(b"")  # a zero-length file, as after a full disk
    skipped: list[int] = []
    found = ckpt.find_latest_valid(tmp_path, on_skip=lambda c, _exc: skipped.append(c.step))
    assert found is not None and found[0].step == 30 and found[1]["w"][0].item() == 30.0
    assert skipped == [40]


WRITER = textwrap.dedent(
    """
    import importlib.util, sys, torch
    spec = importlib.util.spec_from_file_location("c", sys.argv[1])
    c = importlib.util.module_from_spec(spec); sys.modules["c"] = c; spec.loader.exec_module(c)
    payload = torch.randn(8 * 1024 * 1024)  # 32 MiB: each write takes a while, so kills land mid-write
    step = int(sys.argv[3])
    print("ready", flush=True)
    while True:
        step += 1
        c.save_checkpoint(__import__("pathlib").Path(sys.argv[2]), step, {"step": step, "w": payload})
    """
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_checkpoint_write_is_atomic_under_sigkill(tmp_path: Path) -> None:
    """A writer killed at arbitrary moments never leaves a partial file under a final name."""
    seen_tmp = 0
    verified = 0
    start_step = 0
    for delay in (0.05, 0.2, 0.45, 0.7):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(GPT_DIR / "checkpoint.py"), str(tmp_path), str(start_step)],
            stdout=subprocess.PIPE, env=_env(), text=True,
        )  # fmt: skip
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        wait_until = time.monotonic() + 30  # the first save of this writer, however loaded the machine is
        while max(steps_on_disk(tmp_path), default=0) <= start_step and time.monotonic() < wait_until:
            time.sleep(0.005)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            names = os.listdir(tmp_path)
            seen_tmp += sum(n.startswith(".ckpt-") for n in names)
            for c in ckpt.list_checkpoints(tmp_path):
                try:
                    ckpt.read_checkpoint(c.path)
                    verified += 1
                except ckpt.CheckpointCorrupt:
                    assert not c.path.exists(), f"partial file visible under final name {c.path.name}"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        on_disk = ckpt.list_checkpoints(tmp_path)
        assert 1 <= len(on_disk) <= 3  # killed between rename and prune: one extra at most
        for c in on_disk:
            ckpt.read_checkpoint(c.path)  # every final-named file verifies
        start_step = on_disk[0].step
    assert verified > 0 and seen_tmp > 0  # the reader really raced the writer mid-write
    ckpt.remove_stale_temp_files(tmp_path)
    assert all(not n.startswith(".") for n in os.listdir(tmp_path))
    ckpt.save_checkpoint(tmp_path, start_step + 1, {"step": start_step + 1})
    assert steps_on_disk(tmp_path) == [start_step, start_step + 1]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_single_process_crash_then_resume(tmp_path: Path) -> None:
    """Without a distributed env: an injected crash exits 13; the restart resumes from the last checkpoint."""
    directory = tmp_path / "ckpt"
    crashed = single(directory, "--steps", "12", "--ckpt-every", "4", "--crash-at-step", "10")
    assert crashed.returncode == 13, crashed.stderr[-2000:]
    assert "injected crash at step 10 (rank 0, attempt 0)" in crashed.stderr
    assert steps_on_disk(directory) == [4, 8]
    # The restart is attempt 1: the fault is armed for attempt 0 only, so this time training completes.
    again = single(directory, "--steps", "12", "--ckpt-every", "4", "--crash-at-step", "10",
                   extra_env={"TRAINFLEET_ATTEMPT": "1"})  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step 8" in again.stdout and sorted(losses(again.stdout)) == [9, 10, 11, 12]
    assert steps_on_disk(directory) == [8, 12]


TRAINFLEET = Path(sys.executable).parent / "trainfleet"


def trainfleet_run(
    home: Path, ckpt_dir: Path, steps: int, *extra: str, max_restarts: int = 0
) -> tuple[subprocess.CompletedProcess, Path]:
    """``trainfleet run examples/gpt/job.yaml`` made tiny with ``--set``; returns result and run dir."""
    command = [sys.executable, str(TRAIN), *TINY, "--steps", str(steps), "--ckpt-every", "10", *extra]
    before = set((home / "runs").glob("*"))
    argv = [str(TRAINFLEET), "run", str(GPT_DIR / "job.yaml"),
            "--set", "command=" + yaml.safe_dump(command, default_flow_style=True, width=10_000).strip(),
            "--set", f"checkpoint_dir={ckpt_dir}", "--set", f"restart.max_restarts={max_restarts}",
            "--set", "restart.backoff_s=0"]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, env=_env() | {"TRAINFLEET_HOME": str(home)},
                          capture_output=True, text=True, timeout=80)  # fmt: skip
    new = set((home / "runs").glob("*")) - before
    assert len(new) == 1, (proc.stdout[-2000:], proc.stderr[-2000:])
    return proc, new.pop()


def story(job: dict) -> str:
    """What happened to a job, for assertion messages: reason, attempts, events, latest metrics."""
    events = [f"{e.get('kind')}: {e.get('message')}" for e in job.get("events", [])]
    return json.dumps({"reason": job.get("reason"), "attempts": job.get("attempts"), "events": events,
                       "latest": job.get("latest")}, indent=1)  # fmt: skip


def status_json(home: Path, job_id: str) -> dict:
    status = subprocess.run(
        [str(TRAINFLEET), "status", job_id, "--json"],
        cwd=REPO, env=_env() | {"TRAINFLEET_HOME": str(home)}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_trains_and_resumes_through_trainfleet_run(tmp_path: Path) -> None:
    home, directory = tmp_path / "home", tmp_path / "ckpt"
    proc, run_dir = trainfleet_run(home, directory, steps=30)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = (run_dir / "attempt-0" / "node-0" / "rank-0.out").read_text()
    rank1 = (run_dir / "attempt-0" / "node-1" / "rank-1.out").read_text()
    loss = losses(rank0)
    assert sorted(loss) == list(range(1, 31)) and loss[30] < loss[1] - 0.8, rank0[-2000:]
    assert "rank 1 first step done at" in rank1
    assert steps_on_disk(directory) == [20, 30]

    job = status_json(home, run_dir.name)
    assert job["state"] == "succeeded" and job["restarts"] == 0, story(job)
    assert [r["exit_code"] for r in job["ranks"]] == [0, 0]
    for rank in ("0", "1"):  # trainfleet.report reached the job database from both ranks
        latest = job["latest"][rank]
        assert latest["step"] == 30 and latest["loss"] > 0 and latest["tokens_per_s"] > 0

    again, run_dir2 = trainfleet_run(home, directory, steps=36)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = (run_dir2 / "attempt-0" / "node-0" / "rank-0.out").read_text()
    assert "resumed from step 30" in out and sorted(losses(out)) == list(range(31, 37))
    assert steps_on_disk(directory) == [30, 36]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_crash_restart_through_trainfleet_resumes_and_matches_uninterrupted_run(
    trained, tmp_path: Path
) -> None:
    """Rank 1 dies at step 15 of attempt 0; attempt 1 resumes from step 10 and ends exactly where a run
    without the crash ends (same data order, optimizer state and RNG), which the torchrun run gives."""
    home, directory = tmp_path / "home", tmp_path / "ckpt"
    proc, run_dir = trainfleet_run(home, directory, 30, "--crash-at-step", "15", "--crash-rank", "1",
                                   max_restarts=1)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    crashed = (run_dir / "attempt-0" / "node-1" / "rank-1.err").read_text()
    assert "injected crash at step 15 (rank 1, attempt 0)" in crashed
    assert "resumed from step 10" in (run_dir / "attempt-1" / "node-0" / "rank-0.out").read_text()
    job = status_json(home, run_dir.name)
    assert job["state"] == "succeeded" and job["restarts"] == 1, story(job)
    assert [a["state"] for a in job["attempts"]] == ["failed", "succeeded"], story(job)
    uninterrupted = losses(trained[1].stdout)[30]  # rank 0's loss at step 30 (printed with 3 decimals)
    assert f"{job['latest']['0']['loss']:.3f}" == f"{uninterrupted:.3f}", story(job)

"""The ``run``/``cancel`` CLI contract: dry-run starts nothing, bad input is one line and exit 2, Ctrl-C on a
foreground run cancels the job cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

JOBS = Path(__file__).parents[1] / "fixtures" / "jobs"
TRAINFLEET = str(Path(sys.executable).parent / "trainfleet")


def cli_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    return env


def tf(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAINFLEET, *args], env=cli_env(home), capture_output=True, text=True,
                          timeout=timeout)


def spec_file(tmp_path: Path, script: str = "env_dump.py", **fields: object) -> Path:
    spec = {"name": "cli", "command": [sys.executable, str(JOBS / script)], "nodes": 2, "procs_per_node": 1,
            "grace_s": 2, **fields}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def job_pids(job_id: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TRAINFLEET_JOB_ID={job_id}".encode() in environ:
            found.append(int(entry))
    return found


@pytest.mark.timeout(30)
def test_dry_run_prints_the_request_and_starts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tf(home, "run", str(spec_file(tmp_path)), "--dry-run", "--set", "nodes=3")
    assert out.returncode == 0, out.stderr
    request = yaml.safe_load(out.stdout)
    assert request["backend"] == "local" and request["world_size"] == 3
    assert [a["node_rank"] for a in request["agents"]] == [0, 1, 2]
    assert all(a["argv"][-1] == str(JOBS / "env_dump.py") for a in request["agents"])
    as_json = json.loads(tf(home, "run", str(spec_file(tmp_path)), "--dry-run", "--json").stdout)
    assert len(as_json["agents"]) == 2
    assert not (home / "runs").exists()
    assert not (home / "trainfleet.db").exists()  # nothing recorded: no job, no database


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "needle"), [
    (["run", "{spec}", "--set", "nodes=0"], "nodes: must be >= 1"),
    (["run", "{tmp}/missing.yaml"], "missing.yaml"),
    (["run", "{spec}", "--set", "workdir=/no/such/dir"], "workdir"),
    (["cancel", "ffffffff"], "no such job: ffffffff"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    spec = spec_file(tmp_path)
    argv = [a.format(spec=spec, tmp=tmp_path) for a in args]
    out = tf(tmp_path / "home", *argv)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainfleet: error:") and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ctrl_c_on_a_foreground_run_cancels_the_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.Popen([TRAINFLEET, "run", str(spec_file(tmp_path, "sleeper.py"))], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _interrupt_and_check(proc, home)
    finally:  # never leave a job behind, even when an assertion failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for run_dir in home.glob("runs/*"):
            for pid in job_pids(run_dir.name):
                os.kill(pid, signal.SIGKILL)


def _interrupt_and_check(proc: subprocess.Popen, home: Path) -> None:
    deadline = time.monotonic() + 30
    while len(list(home.glob("runs/*/attempt-0/node-*/rank-*.out"))) < 2 or not all(
            "ready" in f.read_text() for f in home.glob("runs/*/attempt-0/node-*/rank-*.out")):
        assert time.monotonic() < deadline, "ranks never became ready"
        time.sleep(0.1)
    job = next(home.glob("runs/*")).name
    assert len(job_pids(job)) == 4
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert re.search(rf"job {job} cancelled", err)
    assert job_pids(job) == []
    st = json.loads(tf(home, "status", job, "--json").stdout)
    assert st["state"] == "cancelled"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cancel_of_a_finished_job_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = tf(home, "run", str(spec_file(tmp_path)))
    assert done.returncode == 0, done.stderr
    job = re.search(r"job ([0-9a-f]{8})", done.stderr).group(1)  # type: ignore[union-attr]
    out = tf(home, "cancel", job)
    assert out.returncode == 1
    assert f"job {job} had already ended: succeeded" in out.stderr

"""Shared helpers for the tests that run real jobs through the ``trainfleet`` CLI on the local backend.

Imported as ``from job_helpers import ...`` (pytest puts this directory on ``sys.path``, as for
``web_support``). Everything here is independent of the code under test where it matters: survivors are
found by scanning ``/proc`` for the job id in a process's environment or command line, not through
trainfleet's own process scan.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

JOBS = Path(__file__).parents[1] / "fixtures" / "jobs"
TRAINFLEET = str(Path(sys.executable).parent / "trainfleet")
FINAL_STATES = ("succeeded", "failed", "cancelled")

T = TypeVar("T")


def cli_env(home: Path) -> dict[str, str]:
    """This process's environment with ``TRAINFLEET_HOME=home`` and no ``TRAINFLEET_DB_URL``."""
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    return env


def tf(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``trainfleet ARGS`` against ``home`` and return the finished process (text output captured)."""
    return subprocess.run([TRAINFLEET, *args], env=cli_env(home), capture_output=True, text=True,
                          timeout=timeout)


def write_spec(tmp_path: Path, script: str, *args: str, as_yaml: bool = False, **fields: object) -> Path:
    """Write ``tmp_path/job.yaml``: every rank runs ``python JOBS/script ARGS``; 2 nodes x 2 ranks, grace 2 s
    and name ``t`` unless ``fields`` say otherwise. JSON is YAML; ``as_yaml`` writes block YAML instead."""
    spec = {"name": "t", "command": [sys.executable, str(JOBS / script), *args], "nodes": 2,
            "procs_per_node": 2, "grace_s": 2, **fields}
    path = tmp_path / "job.yaml"
    if as_yaml:
        import yaml

        path.write_text(yaml.safe_dump(spec))
    else:
        path.write_text(json.dumps(spec))
    return path


def start_detached(home: Path, spec: Path, *, timeout: float = 30) -> str:
    """``trainfleet run SPEC --detach``; asserts it started and returns the job id it printed."""
    out = tf(home, "run", str(spec), "--detach", timeout=timeout)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().splitlines()[-1]
    assert len(job) == 8 and all(c in "0123456789abcdef" for c in job), out.stdout
    return job


def status(home: Path, job: str) -> dict:
    """``status --json`` computed in this process (the CLI's own code; a subprocess per poll is slow)."""
    from trainfleet.store import open_store
    from trainfleet.store.status import job_status

    with open_store(f"sqlite:///{home}/trainfleet.db") as store:
        return json.loads(json.dumps(job_status(store, job)))


def cli_status(home: Path, job: str) -> dict:
    """``trainfleet status JOB --json`` run as a user runs it; asserts it exits 0."""
    out = tf(home, "status", job, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` every 0.1 s until it returns something truthy (returned); AssertionError after
    ``timeout`` seconds, naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_final(home: Path, job: str, timeout: float = 60, *,
               read: Callable[[Path, str], dict] = status) -> dict:
    """The status document of ``job`` once its state is final (``read`` it: in process, or ``cli_status``)."""
    def final() -> dict | None:
        doc = read(home, job)
        return doc if doc["state"] in FINAL_STATES else None
    return wait_for(final, timeout, f"job {job} to end")


def _proc_entries() -> list[str]:
    return [entry for entry in os.listdir("/proc") if entry.isdigit()]


def job_pids(job_id: str) -> list[int]:
    """Every live process whose environment says it belongs to ``job_id`` (an independent /proc scan)."""
    needle = f"TRAINFLEET_JOB_ID={job_id}".encode()
    pids = []
    for entry in _proc_entries():
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            pids.append(int(entry))
    return pids


def cmdline(pid: int | str) -> list[str]:
    """The argv of ``pid`` ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def supervisor_pids(job_id: str) -> list[int]:
    """Live supervisor daemons (``python -m trainfleet.supervise --job JOB``) of ``job_id``."""
    out = []
    for entry in _proc_entries():
        argv = cmdline(entry)
        if "trainfleet.supervise" in argv and job_id in argv:
            out.append(int(entry))
    return out


def reap_jobs(home: Path, *, cancel_first: bool = False) -> None:
    """After a test: no process of any job started under ``home`` is left, even after a failed assertion.

    With ``cancel_first``, a job that still has a supervisor or processes is first cancelled through the CLI
    (the clean path); whatever is left, stopped processes included, is then killed with SIGKILL.
    """
    for run_dir in home.glob("runs/*"):
        job = run_dir.name
        if cancel_first and (supervisor_pids(job) or job_pids(job)):
            tf(home, "cancel", job, timeout=40)
        for pid in job_pids(job) + supervisor_pids(job):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break


def events(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The events of a status document of one ``kind``, oldest first."""
    return [e for e in doc["events"] if e["kind"] == kind]

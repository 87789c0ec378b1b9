"""The preemption / time-limit notice path of the agent, on the local backend (real processes, no Slurm).

SIGUSR1 to an agent makes it send SIGUSR2 to each rank (its leader process) and report a
``checkpoint_notice``; a helper the rank started after installing its handler is not signalled (the default
action would kill it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TRAINFLEET = Path(sys.executable).parent / "trainfleet"
RANK = """
import os, signal, subprocess, sys, time
got = []
signal.signal(getattr(signal, os.environ["TRAINFLEET_CHECKPOINT_SIGNAL"]), lambda s, f: got.append(s))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
print("ready", flush=True)
deadline = time.monotonic() + 20
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.3)  # the child got the group's signal too by now
print(f"notice {got} child alive {child.poll() is None}", flush=True)
child.kill()
"""


def trainfleet(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLEET_", "SLURM_"))}
    return subprocess.run([str(TRAINFLEET), *args], env=env | {"TRAINFLEET_HOME": str(home)},
                          capture_output=True, text=True, timeout=30, check=False)


def wait_for(what: str, check, timeout_s: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def agent_pids(job_id: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "trainfleet.runtime.agent" in cmd and job_id in cmd:
            found.append(proc.info["pid"])
    return found


def test_a_notice_to_the_agent_reaches_the_rank_handler_and_spares_the_rest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = tmp_path / "notice.yaml"
    spec.write_text(yaml.safe_dump({"name": "notice", "nodes": 1, "procs_per_node": 2, "grace_s": 1,
                                    "workdir": str(tmp_path), "command": [sys.executable, "-c", RANK]}))
    started = trainfleet(home, "run", str(spec), "--detach")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    outs = [home / "runs" / job_id / "attempt-0" / "node-0" / f"rank-{r}.out" for r in (0, 1)]
    wait_for("both ranks ready", lambda: all(p.exists() and "ready" in p.read_text() for p in outs))
    (agent,) = wait_for("the agent", lambda: agent_pids(job_id))
    os.kill(agent, signal.SIGUSR1)

    def final() -> dict | None:
        doc = json.loads(trainfleet(home, "status", job_id, "--json").stdout)
        return doc if doc["state"] in ("succeeded", "failed", "cancelled") else None

    doc = wait_for("the job to end", final)
    assert doc["state"] == "succeeded", doc.get("reason")
    for out in outs:  # the handler ran; the child (SIGUSR2 at its default action: terminate) was spared
        assert f"notice [{int(signal.SIGUSR2)}] child alive True" in out.read_text()
    (notice,) = [e for e in doc["events"] if e["kind"] == "checkpoint_notice"]
    assert notice["data"]["ranks"] == [0, 1] and notice["data"]["host"] == "local-0"
    assert notice["data"]["source"] == "SIGUSR1" and notice["data"]["rank_signal"] == signal.SIGUSR2
    assert "preemption/time-limit notice (SIGUSR1) passed to ranks [0, 1] as SIGUSR2" in notice["message"]

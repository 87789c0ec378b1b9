"""Preemption on Slurm without daemons: which recorded Slurm states excuse the nodes, and the batch script's
notice function run by real bash against a real socket (the supervisor's side of ``/dev/tcp``)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from trainfleet.backends.base import AttemptPlan
from trainfleet.backends.slurm import parse_squeue_json
from trainfleet.backends.slurm.backend import engine_interruption
from trainfleet.backends.slurm.render import render_script
from trainfleet.runtime.protocol import LineBuffer, PreemptNotice
from trainfleet.spec import JobSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slurm"
SPEC = JobSpec.model_validate({"name": "p", "backend": "slurm", "command": ["python", "x.py"], "nodes": 2})


def test_slurm_ending_the_job_itself_excuses_the_nodes_and_a_node_failure_does_not() -> None:
    """Recorded on the dev cluster (SOURCES.md): a time limit, a node failure, an admin requeue, the rest."""
    recorded = (FIXTURES / "squeue_timeout_requeue.json").read_text()
    jobs = {job.name: job for job in parse_squeue_json(recorded)}
    assert engine_interruption(jobs["time-limit"]) == "TIMEOUT"
    assert engine_interruption(jobs["requeued"]) == "REQUEUED"  # PENDING again with restart_cnt 1
    assert engine_interruption(jobs["node-fail"]) is None  # the node failed: its lost agent gets the blame
    for name in ("two-node", "will-fail", "to-cancel", "pending-4n"):
        assert engine_interruption(jobs[name]) is None, name


def notice_function(script: str) -> str:
    lines = script.splitlines()
    start = lines.index("tf_notice() {")
    return "\n".join(lines[start:lines.index("}", start) + 1])


def test_the_trap_function_tells_the_supervisor_over_tcp(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        plan = AttemptPlan(job_id="0badcafe", attempt=2, run_dir=str(tmp_path), master_addr="127.0.0.1",
                           master_port=29500, supervisor_addr=f"127.0.0.1:{port}")
        script = render_script(SPEC, plan)
        assert "trap tf_notice USR1\n" in script
        notice_file = tmp_path / "preempt-notice"
        env = dict(os.environ, TRAINFLEET_PREEMPT_NOTICE=str(notice_file))
        done = subprocess.run(["bash", "-c", notice_function(script) + "\ntf_notice"], env=env,
                              capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 0 and "preemption/time-limit notice" in done.stdout, done.stderr
        server.settimeout(5)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    assert LineBuffer().feed(data) == [PreemptNotice(source="slurm --signal USR1")]
    assert notice_file.read_text().strip()


def test_an_unreachable_supervisor_is_one_line_on_stderr(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nobody listens there once closed
    plan = AttemptPlan(job_id="0badcafe", attempt=0, run_dir=str(tmp_path), master_addr="127.0.0.1",
                       master_port=29500, supervisor_addr=f"127.0.0.1:{port}")
    env = dict(os.environ, TRAINFLEET_PREEMPT_NOTICE=str(tmp_path / "preempt-notice"))
    done = subprocess.run(["bash", "-c", notice_function(render_script(SPEC, plan)) + "\ntf_notice"], env=env,
                          capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0
    assert done.stderr.strip().splitlines() == ["trainfleet: the notice did not reach the supervisor"]

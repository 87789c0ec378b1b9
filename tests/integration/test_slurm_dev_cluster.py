"""The Slurm dev cluster and trainfleet's Slurm parsers against real daemons (munged, slurmctld, 4 slurmd)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest

from slurm_fixtures import DEV_CLUSTER, SlurmCluster, dev_cluster, dev_cluster_is_up, run
from trainfleet.spec.state import JobState

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

TWO_NODE_JOB = """#!/bin/bash
srun bash -c 'echo "task=$SLURM_PROCID node=$SLURMD_NODENAME"'
"""
SLEEP_JOB = """#!/bin/bash
srun sleep 300
"""


def write_job(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def processes_of_job(job_id: int) -> list[psutil.Process]:
    """Live processes whose environment says they belong to Slurm job ``job_id`` (on any fake node)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SLURM_JOB_ID") == str(job_id) and process.status() != "zombie":
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def daemon_alive(pid_file: Path) -> bool:
    """The pid in ``pid_file`` is a live process (zombies count as gone: PID 1 here reaps late)."""
    try:
        return psutil.Process(int(pid_file.read_text())).status() != psutil.STATUS_ZOMBIE
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        return False


def test_all_nodes_idle_after_up(slurm_cluster: SlurmCluster) -> None:
    nodes = slurm_cluster.sinfo()
    assert [node.name for node in nodes] == list(slurm_cluster.nodes)
    assert all(node.state == "idle" and node.is_usable for node in nodes)
    status = run([str(DEV_CLUSTER), "status"])
    assert "4 of 4 nodes ready" in status.stdout


def test_up_twice_keeps_the_running_daemons(slurm_cluster: SlurmCluster) -> None:
    controller_pid = Path("/run/slurmctld.pid").read_text().strip()
    done = dev_cluster("up")
    assert done.stdout.startswith("slurm dev cluster up: 4 nodes node[1-4] ready")
    assert Path("/run/slurmctld.pid").read_text().strip() == controller_pid
    hosts = Path("/etc/hosts").read_text().splitlines()
    assert sum("slurm-dev-cluster" in line for line in hosts) == 1


def test_two_node_job_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_job(tmp_path, "two_node.sh", TWO_NODE_JOB)
    job_id = slurm_cluster.sbatch(
        script, "-J", "tf-two-node", "-N", "2", "-w", "node1,node2", "--ntasks-per-node=1",
        f"--output={tmp_path}/out-%j.txt",
    )  # fmt: skip
    job = slurm_cluster.wait_for_job(job_id, lambda job: job.state.is_terminal, what="a final state")
    assert (job.native_state, job.state, job.exit_code) == ("COMPLETED", JobState.SUCCEEDED, 0)
    assert job.nodes == ("node1", "node2")
    lines = (tmp_path / f"out-{job_id}.txt").read_text().splitlines()
    assert sorted(lines) == ["task=0 node=node1", "task=1 node=node2"]


def test_scancel_sleeping_job_is_cancelled_and_leaves_nothing(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    script = write_job(tmp_path, "sleep.sh", SLEEP_JOB)
    job_id = slurm_cluster.sbatch(script, "-J", "tf-sleeper", "-N", "1", f"--output={tmp_path}/sleep-%j.txt")
    running = slurm_cluster.wait_for_job(job_id, lambda job: job.state is JobState.RUNNING, what="RUNNING")
    assert len(running.nodes) == 1
    deadline = time.monotonic() + 10
    while not any(process.name() == "sleep" for process in processes_of_job(job_id)):
        assert time.monotonic() < deadline, "the job's `sleep` never started"
        time.sleep(0.1)
    run(["scancel", str(job_id)])
    job = slurm_cluster.wait_for_job(job_id, lambda job: job.state.is_terminal, what="a final state")
    assert (job.native_state, job.state) == ("CANCELLED", JobState.CANCELLED)
    assert job.ended_at is not None
    deadline = time.monotonic() + 15  # KillWait=5 s, then SIGKILL
    while survivors := processes_of_job(job_id):
        assert time.monotonic() < deadline, f"processes of job {job_id} survived scancel: {survivors}"
        time.sleep(0.2)


def test_drained_node_shows_drained_and_resumes(slurm_cluster: SlurmCluster) -> None:
    run(["scontrol", "update", "nodename=node3", "state=drain", "reason=trainfleet-test"])
    try:
        node3 = slurm_cluster.node("node3")
        assert (node3.is_drained, node3.is_usable, node3.reason) == (True, False, "trainfleet-test")
        usable = [node.name for node in slurm_cluster.sinfo() if node.is_usable]
        assert usable == ["node1", "node2", "node4"]
    finally:
        run(["scontrol", "update", "nodename=node3", "state=resume"])
    # Right after resume the controller pings node3 and flags it NOT_RESPONDING until the answer arrives.
    node3 = slurm_cluster.wait_for_node("node3", lambda node: node.is_usable, what="usable")
    assert (node3.state, node3.flags) == ("idle", frozenset())


def test_down_twice_then_up_again(slurm_cluster: SlurmCluster) -> None:
    first = dev_cluster("down")
    second = dev_cluster("down")
    assert first.stdout.startswith("slurm dev cluster down") and second.stdout.startswith(
        "slurm dev cluster down"
    )
    assert not dev_cluster_is_up()
    status = subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True, text=True, timeout=30)
    assert (status.returncode, status.stdout.strip()) == (
        1,
        "slurm dev cluster down (slurmctld not answering)",
    )
    assert "slurm-dev-cluster" not in Path("/etc/hosts").read_text()
    pid_files = [
        Path("/run/slurmctld.pid"),
        Path("/run/munge/munged.pid"),
        *Path("/run").glob("slurmd-node*.pid"),
    ]
    assert not [pid_file for pid_file in pid_files if daemon_alive(pid_file)]
    dev_cluster("up")  # the module fixture's teardown takes it down again
    assert [node.state for node in slurm_cluster.sinfo()] == ["idle"] * 4

"""pytest fixtures for tests that run against the real Slurm dev cluster (``scripts/slurm-dev-cluster``).

Loaded from tests/conftest.py with ``pytest_plugins = ["slurm_fixtures"]``. Tests using ``slurm_cluster``
must carry ``@pytest.mark.slurm``; the fixture needs root (it starts daemons), and fails (never skips) with
the script's own message when the cluster cannot come up.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainfleet.backends.slurm import (
    SlurmJob,
    SlurmNode,
    parse_sbatch_output,
    parse_sinfo_json,
    parse_squeue_json,
)

REPO = Path(__file__).resolve().parents[1]
DEV_CLUSTER = REPO / "scripts" / "slurm-dev-cluster"
NODES = ("node1", "node2", "node3", "node4")


def run(argv: list[str], *, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell) capturing text; fail the test with its stderr if it exits non-zero."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done


def dev_cluster(command: str) -> subprocess.CompletedProcess[str]:
    """Run ``slurm-dev-cluster COMMAND``; fail the test with the script's message if it fails."""
    return run([str(DEV_CLUSTER), command], timeout_s=120)


def dev_cluster_is_up() -> bool:
    return subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True, timeout=30).returncode == 0


@dataclass(frozen=True)
class SlurmCluster:
    """The running dev cluster, with the commands tests need; output goes through trainfleet's parsers."""

    nodes: tuple[str, ...]

    def sbatch(self, script: Path, *options: str) -> int:
        """Submit ``script`` with sbatch ``options``; return the job id."""
        return parse_sbatch_output(run(["sbatch", "--parsable", *options, str(script)]).stdout).job_id

    def squeue(self) -> list[SlurmJob]:
        return parse_squeue_json(run(["squeue", "--json"]).stdout)

    def sinfo(self) -> list[SlurmNode]:
        return parse_sinfo_json(run(["sinfo", "--json"]).stdout)

    def node(self, name: str) -> SlurmNode:
        return next(node for node in self.sinfo() if node.name == name)

    def wait_for_node(
        self, name: str, until: Callable[[SlurmNode], bool], *, timeout_s: float = 15, what: str = "state"
    ) -> SlurmNode:
        """Poll sinfo until ``until(node)`` holds; fail with the last state seen after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not until(node := self.node(name)):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{name} did not become {what} in {timeout_s}s: {node.state} {sorted(node.flags)}"
                )
            time.sleep(0.1)
        return node

    def job(self, job_id: int) -> SlurmJob:
        jobs = [job for job in self.squeue() if job.job_id == job_id]
        assert jobs, f"job {job_id} is not listed by squeue"
        return jobs[0]

    def wait_for_job(
        self, job_id: int, until: Callable[[SlurmJob], bool], *, timeout_s: float = 30, what: str = "state"
    ) -> SlurmJob:
        """Poll squeue until ``until(job)`` holds; fail with the last state seen after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(
                    f"job {job_id} did not reach {what} in {timeout_s}s; last state {job.native_state}"
                )
            time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Bring the dev cluster up for a test module and take it down afterwards (left up if it already was)."""
    was_up = dev_cluster_is_up()
    try:
        dev_cluster("up")
    except pytest.fail.Exception:
        if not was_up:  # leave no half-started daemons behind; the failure already carries the log tail
            subprocess.run([str(DEV_CLUSTER), "down"], capture_output=True, timeout=120)
        raise
    yield SlurmCluster(nodes=NODES)
    if not was_up:
        dev_cluster("down")

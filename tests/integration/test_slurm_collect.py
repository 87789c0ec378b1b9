"""``trainfleet collect --slurm``: one Slurm job collects a bundle per usable node; the doctor reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_fixtures import SlurmCluster, run

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(120)]

TRAINFLEET = Path(sys.executable).parent / "trainfleet"


def collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLEET_", "SLURM_"))}
    return subprocess.run([str(TRAINFLEET), "collect", "--slurm", "--out", str(tmp_path / "fleet"), *args],
                          env=env | {"TRAINFLEET_HOME": str(tmp_path / "home")}, capture_output=True,
                          text=True, timeout=100, check=False)


@pytest.fixture
def drained_node3(slurm_cluster: SlurmCluster) -> Iterator[str]:
    run(["scontrol", "update", "nodename=node3", "state=drain", "reason=tf-collect-test"])
    try:
        slurm_cluster.wait_for_node("node3", lambda node: node.is_drained, what="drained")
        yield "node3"
    finally:
        run(["scontrol", "update", "nodename=node3", "state=resume"])
        slurm_cluster.wait_for_node("node3", lambda node: node.is_usable, what="usable")


def test_collect_skips_the_drained_node_and_runs_the_doctor(drained_node3: str, tmp_path: Path) -> None:
    done = collect(tmp_path)
    assert done.returncode in (0, 1), done.stderr  # the doctor's verdict on this machine's PCIe
    assert f"skipped {drained_node3} (drained: tf-collect-test)" in done.stderr
    assert "collected 3 of 3 node(s)" in done.stderr
    assert "3 nodes checked" in done.stdout
    fleet = tmp_path / "fleet"
    bundles = sorted(p.name for p in fleet.iterdir() if not p.name.startswith("."))
    assert bundles == ["node1", "node2", "node4"]
    for name in ("node1", "node2", "node4"):
        manifest = json.loads((fleet / name / "manifest.json").read_text())
        assert manifest["hostname"] == name and (fleet / name / "lspci.txt").is_file()


def test_collect_takes_at_most_n_nodes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    done = collect(tmp_path, "--nodes", "2")
    assert done.returncode in (0, 1), done.stderr
    assert "collected 2 of 2 node(s)" in done.stderr
    bundles = sorted(p.name for p in (tmp_path / "fleet").iterdir() if not p.name.startswith("."))
    assert bundles == ["node1", "node2"]


def test_unknown_partition_is_one_clear_line(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    done = collect(tmp_path, "--partition", "nosuch")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "trainfleet: error: no usable node in partition 'nosuch' (no nodes)"]

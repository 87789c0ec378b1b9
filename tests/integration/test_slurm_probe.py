"""Probes on Slurm against the real dev cluster: ``trainfleet probe --backend slurm`` pins a probe job to
usable Slurm nodes and names its results by them, and a Slurm job's all-reduce preflight runs its probe jobs
on the job's candidate nodes before the job trains.

Bandwidth on the dev cluster is loopback (every fake node is a slurmd on this host), so these tests check
structure (names, pinning, stored rows, no error), never speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm_fixtures import NODES, SlurmCluster
from trainfleet.backends.slurm import SlurmJob
from trainfleet.health.probes.store import job_results, node_history
from trainfleet.store import open_store

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TRAINFLEET = Path(sys.executable).parent / "trainfleet"
TRAINER = REPO / "tests" / "fixtures" / "jobs" / "trainer.py"


def trainfleet(home: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINFLEET_", "SLURM_"))}
    env |= {"TRAINFLEET_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(TRAINFLEET), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def status(home: Path, job_id: str) -> dict:
    done = trainfleet(home, "status", job_id, "--json", timeout_s=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def slurm_job_of(cluster: SlurmCluster, job_id: str) -> SlurmJob:
    """The Slurm job that ran attempt 0 of trainfleet job ``job_id`` (named tf-<name>-<id>-a0)."""
    found = [job for job in cluster.squeue() if job.name.endswith(f"-{job_id}-a0")]
    assert len(found) == 1, [job.name for job in cluster.squeue()]
    return found[0]


def sbatch_of(home: Path, job_id: str) -> str:
    return (home / "runs" / job_id / "attempt-0" / "job.sbatch").read_text()


def probe_json(home: Path, *args: str) -> dict:
    done = trainfleet(home, "probe", *args, "--backend", "slurm", "--iters", "2", "--timeout-s", "40",
                      "--json", timeout_s=50)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]  # 1: noisy loopback blamed
    return json.loads(done.stdout)


@pytest.mark.timeout(90)
def test_probe_pairs_on_three_slurm_nodes_names_and_stores_them(slurm_cluster: SlurmCluster,
                                                                tmp_path: Path) -> None:
    report = probe_json(tmp_path, "pairs", "--nodes", "3", "--size", "1M")
    nodes = report["nodes"]
    assert report["state"] == "succeeded" and report["backend"] == "slurm" and report["reason"] is None
    assert len(set(nodes)) == 3 and set(nodes) <= set(NODES), nodes
    assert report["records"] and all(r["ok"] for r in report["records"])
    links = sorted((m["src"], m["dst"]) for m in report["matrix"])
    assert links == sorted((a, b) for a in nodes for b in nodes if a != b)
    assert set(report["node_values"]) == set(nodes)

    job_id = report["job_id"]
    assert f"#SBATCH --nodelist={','.join(sorted(nodes))}\n" in sbatch_of(tmp_path, job_id)
    ran = slurm_job_of(slurm_cluster, job_id)
    assert ran.native_state == "COMPLETED" and list(ran.nodes) == nodes  # named by the allocation
    job = status(tmp_path, job_id)
    assert (job["name"], job["state"], job["backend"]) == ("probe-pairs", "succeeded", "slurm")
    with open_store(f"sqlite:///{tmp_path / 'trainfleet.db'}") as store:
        for node in nodes:
            rows = node_history(store, node)
            assert [(r.job_id, r.probe, r.backend, r.metric) for r in rows] == [
                (job_id, "pairs", "slurm", "pair_bw_gbps")]
            assert set(rows[0].data["links"]) == set(nodes) - {node} and rows[0].value > 0

    # named nodes, given out of order: Slurm numbers the allocation its way and the records follow it
    given = probe_json(tmp_path, "allreduce", "--hosts", "node4,node2", "--sizes", "64K..256K",
                       "--ops", "all_reduce")
    assert given["state"] == "succeeded" and given["nodes"] == ["node2", "node4"], given["reason"]
    assert given["records"] and all(r["nodes"] == ["node2", "node4"] for r in given["records"])
    assert "#SBATCH --nodelist=node2,node4\n" in sbatch_of(tmp_path, given["job_id"])
    history = json.loads(trainfleet(tmp_path, "probe-history", "node4", "--json").stdout)
    runs_on_node4 = [job_id, given["job_id"]] if "node4" in nodes else [given["job_id"]]
    assert [(h["job_id"], h["backend"]) for h in history] == [(j, "slurm") for j in runs_on_node4]


@pytest.mark.timeout(90)
def test_slurm_job_with_an_allreduce_preflight_probes_its_candidates_then_trains(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """node4 is suspect in the node history: the backend avoids it, so the preflight probes the other
    usable nodes in one Slurm job pinned to them, none is slow, and the job trains with node4 excluded."""
    home = tmp_path / "home"
    home.mkdir()
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store:
        store.blame_node("node4", job_id="00000000", attempt=0, reason="test: made suspect")
    spec = tmp_path / "gated.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "gated", "backend": "slurm", "nodes": 2, "grace_s": 2, "workdir": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ckpt"), "restart": {"max_restarts": 0, "backoff_s": 0},
        "command": [sys.executable, str(TRAINER), "--steps", "5", "--step-s", "0.02", "--ckpt-every", "5"],
        "preflight": {"allreduce": {"min_busbw_gbps": 0.0001, "size": "256K"}, "timeout_s": 60},
    }, sort_keys=False))
    done = trainfleet(home, "run", str(spec), timeout_s=80)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    job_id = next(p.name for p in (home / "runs").iterdir()
                  if yaml.safe_load((p / "spec.yaml").read_text())["name"] == "gated")
    job = status(home, job_id)
    assert job["state"] == "succeeded"
    assert {rank: row["step"] for rank, row in job["latest"].items()} == {"0": 5, "1": 5}

    (pre,) = [e for e in job["events"] if e["kind"] == "preflight"]
    data = pre["data"]
    assert data["ok"] and data["excluded"] == {} and len(data["probe_jobs"]) == 1, data
    (measured,) = data["measurements"]
    group = measured["group"]
    assert "node4" not in group and len(group) >= 2 and set(group) <= set(NODES)
    assert measured["busbw_gbps"] > 0
    assert data["healthy"] == group

    (probe_id,) = data["probe_jobs"]
    assert f"#SBATCH --nodelist={','.join(sorted(group))}\n" in sbatch_of(home, probe_id)
    assert status(home, probe_id)["state"] == "succeeded"
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store:
        rows = job_results(store, [probe_id])
    assert sorted(r.node for r in rows) == sorted(group)
    assert {(r.probe, r.backend, r.metric, r.verdict) for r in rows} == {
        ("allreduce", "slurm", "all_reduce_busbw_gbps", "ok")}

    assert "#SBATCH --exclude=node4\n" in sbatch_of(home, job_id)
    ran = slurm_job_of(slurm_cluster, job_id)
    assert ran.native_state == "COMPLETED" and "node4" not in ran.nodes and len(ran.nodes) == 2


@pytest.mark.timeout(60)
def test_a_probe_job_slurm_refuses_fails_the_preflight_and_blames_no_node(
        slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three ranks per node on nodes with two CPUs: sbatch refuses the probe job (--cpus-per-task=3), so
    the preflight fails with Slurm's word and no node lands in the node history."""
    from trainfleet.backends.slurm.backend import SlurmBackend
    from trainfleet.spec import JobSpec
    from trainfleet.supervise.preflight import run_preflight

    monkeypatch.setenv("TRAINFLEET_HOME", str(tmp_path))
    spec = JobSpec.model_validate({
        "name": "wide", "backend": "slurm", "nodes": 2, "procs_per_node": 3, "workdir": str(tmp_path),
        "command": ["true"], "preflight": {"allreduce": {"min_busbw_gbps": 0.0001, "size": "64K"},
                                           "timeout_s": 40}})
    with open_store(f"sqlite:///{tmp_path / 'trainfleet.db'}") as store:
        result = run_preflight(spec, ["node1", "node2"], SlurmBackend(), store, job_id=None)
        assert not result.ok and result.excluded == {} and len(result.probe_jobs) == 1, result.to_json()
        started = f"preflight: probe job {result.probe_jobs[0]} over node1,node2 did not start on slurm"
        assert result.reason.startswith(f"{started}: sbatch exited 1:"), result.reason
        assert "\n" not in result.reason
        assert store.nodes() == [] and job_results(store, result.probe_jobs) == []

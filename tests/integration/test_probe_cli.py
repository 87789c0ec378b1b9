"""``trainfleet probe`` on the local backend, for real: each probe is a supervised job of agents and torch
ranks; records come back from the rank logs with nccl-tests bandwidths, node names by placement, results
stored per node; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainfleet.health.probes.busbw import bus_factor
from trainfleet.health.probes.store import node_history
from trainfleet.store import open_store

pytestmark = pytest.mark.slow
TRAINFLEET = str(Path(sys.executable).parent / "trainfleet")


def tf(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    return subprocess.run([TRAINFLEET, *args], env=env, capture_output=True, text=True, timeout=timeout)


def probe_json(home: Path, *args: str) -> dict:
    proc = tf(home, "probe", *args, "--json", "--iters", "2", "--timeout-s", "90")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(150)
def test_allreduce_probe_runs_as_a_job_and_stores_each_node(tmp_path: Path) -> None:
    report = probe_json(tmp_path, "allreduce", "--nodes", "2", "--sizes", "64K..1M", "--factor", "16")
    assert report["state"] == "succeeded" and report["ok"] and report["nodes"] == ["local-0", "local-1"]
    seen = {(r["op"], r["bytes"]) for r in report["records"]}
    ops = ("all_reduce", "all_gather", "reduce_scatter")
    assert seen == {(op, s) for op in ops for s in (65536, 1 << 20)}
    for r in report["records"]:
        assert r["ok"] and r["world"] == 2 and r["nodes"] == ["local-0", "local-1"]
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * bus_factor(r["op"], 2))
    status = json.loads(tf(tmp_path, "status", report["job_id"], "--json").stdout)
    assert status["name"] == "probe-allreduce" and status["state"] == "succeeded"
    with open_store(f"sqlite:///{tmp_path / 'trainfleet.db'}") as store:
        rows = node_history(store, "local-1", metric="all_reduce_busbw_gbps")
    busbw_1m = [r["busbw_gbps"] for r in report["records"]
                if r["op"] == "all_reduce" and r["bytes"] == 1 << 20]
    assert [(r.job_id, r.value) for r in rows] == [(report["job_id"], busbw_1m[0])]
    history = json.loads(tf(tmp_path, "probe-history", "local-1", "--json").stdout)
    assert [(h["job_id"], h["probe"], h["verdict"]) for h in history] == [
        (report["job_id"], "allreduce", "ok")]
    assert "all_reduce_busbw_gbps" in tf(tmp_path, "probe-history", "local-0").stdout


@pytest.mark.timeout(150)
def test_pairs_probe_measures_every_direction_and_names_nodes(tmp_path: Path) -> None:
    report = probe_json(tmp_path, "pairs", "--nodes", "3", "--size", "1M")
    assert report["state"] == "succeeded" and all(r["ok"] for r in report["records"])
    links = sorted((m["src"], m["dst"]) for m in report["matrix"])
    names = ["local-0", "local-1", "local-2"]
    assert links == [(a, b) for a in names for b in names if a != b]
    assert sorted({r["round"] for r in report["records"]}) == [1, 2, 3]  # 3 nodes: a bye in each round
    assert set(report["node_values"]) == set(names)
    for finding in report["findings"]:  # loopback on a shared CPU may be noisy; any blame names real links
        assert finding["kind"] in ("node", "link") and finding["value"] < finding["reference"]


@pytest.mark.timeout(150)
def test_compute_probe_tables_and_bad_input(tmp_path: Path) -> None:
    proc = tf(tmp_path, "probe", "compute", "--nodes", "2", "--matrix", "128", "--iters", "2")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    out = proc.stdout
    assert "probe compute on local: 2 nodes (local-0, local-1)" in out and "matmul throughput" in out
    assert out.count("float32") == 2
    expected = tmp_path / "expected.yaml"
    expected.write_text("classes:\n  cpu-gloo:\n    matmul_tflops: {low: 1000000}\n")
    report = probe_json(tmp_path, "compute", "--nodes", "2", "--matrix", "128", "--expected", str(expected))
    assert sorted(f["subject"] for f in report["findings"]) == ["local-0", "local-1"]  # nobody does a PFLOP/s
    assert {f["reason"] for f in report["findings"]} == {"below expected for cpu-gloo"}
    for args, needle in (
        (["probe", "bogus"], "probe 'bogus': expected allreduce, pairs or compute"),
        (["probe", "pairs", "--backend", "k8s"], "--backend 'k8s': expected local, netns, slurm"),
        (["probe", "pairs", "--size", "lots"], "--size: cannot read 'lots' as a size"),
        (["probe", "pairs", "--bisect"], "--bisect goes with the allreduce probe"),
        (["probe", "compute", "--expected", str(tmp_path / "nope.yaml")], "nope.yaml: cannot read"),
    ):
        bad = tf(tmp_path, *args, timeout=30)
        assert bad.returncode == 2 and needle in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.timeout(150)
def test_run_with_a_preflight_no_node_can_pass_fails_fast_before_any_rank(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    job = Path(__file__).parents[1] / "fixtures" / "jobs" / "where_allreduce.py"
    spec.write_text(json.dumps({
        "name": "gated", "command": [sys.executable, str(job)], "nodes": 2, "grace_s": 2,
        "preflight": {"allreduce": {"min_busbw_gbps": 100000, "size": "64K"}, "timeout_s": 120},
    }))
    proc = tf(tmp_path, "run", str(spec))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "preflight: 0 healthy node(s), 2 needed (excluded local-0: allreduce:" in proc.stderr
    job_id = proc.stderr.split()[1]
    status = json.loads(tf(tmp_path, "status", job_id, "--json").stdout)
    assert status["state"] == "failed" and status["reason"].startswith("preflight: 0 healthy")
    assert status["ranks"] == []  # the job's own ranks never started

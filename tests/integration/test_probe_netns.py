"""Probes across 4 namespaced hosts on the netns backend (needs root, iproute2): one agent per namespace,
the supervisor on the bridge's host-side address. A healthy testbed blames nobody; with tfh3's link cut to
500 Mbit/s the pairs report names tfh3 first (and only tfh3), and preflight excludes tfh3 by bisection so a
spare takes its place before a real job starts. The namespaces are removed even when a test fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns_support import testbed

from trainfleet.backends.netns import NetnsBackend
from trainfleet.health.probes.run import run_job
from trainfleet.spec import JobSpec
from trainfleet.store import open_store
from trainfleet.supervise.preflight import run_preflight
from trainfleet.testbed import netns

__all__ = ["testbed"]  # the fixture

pytestmark = pytest.mark.slow
TRAINFLEET = str(Path(sys.executable).parent / "trainfleet")
JOBS = Path(__file__).parents[1] / "fixtures" / "jobs"
DEGRADED_MBIT = 500  # 0.0625 GB/s; healthy namespace links carry 0.4-2.8 GB/s here


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def probe(home: Path, *args: str) -> dict:
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    argv = [TRAINFLEET, "probe", *args, "--backend", "netns", "--json", "--timeout-s", "90"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(240)
def test_pairs_blame_nobody_when_healthy_and_name_the_degraded_host_first(
    testbed: list[netns.Host], home: Path
) -> None:
    healthy = probe(home, "pairs", "--nodes", "4", "--size", "8M", "--iters", "5")
    assert healthy["state"] == "succeeded" and healthy["nodes"] == ["tfh1", "tfh2", "tfh3", "tfh4"]
    assert len(healthy["matrix"]) == 12 and healthy["findings"] == [], healthy["findings"]

    netns.degrade("tfh3", DEGRADED_MBIT)
    degraded = probe(home, "pairs", "--nodes", "4", "--size", "8M", "--iters", "3")
    assert degraded["state"] == "succeeded" and all(r["ok"] for r in degraded["records"])
    assert degraded["blamed"][:1] == ["tfh3"]
    assert [f["subject"] for f in degraded["findings"]] == ["tfh3"]  # its links are explained by it
    shaped = [m["bw_gbps"] for m in degraded["matrix"] if "tfh3" in (m["src"], m["dst"])]
    assert all(v < 1.05 * DEGRADED_MBIT / 8 / 1000 for v in shaped), shaped


@pytest.mark.timeout(300)
def test_preflight_excludes_the_degraded_host_and_the_job_starts_on_a_spare(
    testbed: list[netns.Host], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINFLEET_HOME", str(home))
    netns.degrade("tfh3", DEGRADED_MBIT)
    spec = JobSpec.model_validate({
        "name": "train", "command": [sys.executable, str(JOBS / "where_allreduce.py")], "nodes": 3,
        "spare_nodes": 1, "grace_s": 2,
        "preflight": {"allreduce": {"min_busbw_gbps": 0.2, "size": "8M"}, "timeout_s": 200},
    })
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store:
        # the supervisor runs the preflight over tfh1..tfh4 (3 nodes + 1 spare) before the first attempt
        job_id, state, reason = run_job(spec, NetnsBackend(), store, timeout_s=240)
        assert state == "succeeded", reason
        events = {e.kind: e for e in store.events(job_id)}
        assert list(events["preflight"].data["excluded"]) == ["tfh3"], events["preflight"].message
        assert events["attempt_started"].data["nodes"] == {"0": "tfh1", "1": "tfh2", "2": "tfh4"}
        assert store.node("tfh3").state == "suspect"
        ran_on = sorted(line.split()[4] for r in store.ranks(job_id) for line in Path(r.log_out).read_text()
                        .splitlines() if " on tfh" in line)
        assert ran_on == ["tfh1", "tfh2", "tfh4"]  # where the ranks really were (TRAINFLEET_NODE_NAME)


@pytest.mark.timeout(240)
def test_preflight_alone_names_the_host_and_chooses_the_spare(testbed: list[netns.Host], home: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINFLEET_HOME", str(home))
    netns.degrade("tfh2", DEGRADED_MBIT)
    spec = JobSpec.model_validate({"name": "t", "command": ["true"], "nodes": 3, "spare_nodes": 1,
                                   "preflight": {"allreduce": {"min_busbw_gbps": 0.2, "size": "8M"}}})
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store:
        result = run_preflight(spec, [h.name for h in testbed], "netns", store)
    assert list(result.excluded) == ["tfh2"] and result.ok and result.chosen == ["tfh1", "tfh3", "tfh4"]
    assert len(result.probe_jobs) == len(result.measurements) >= 3

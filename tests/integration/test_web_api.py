"""The dashboard's JSON twins through an in-process HTTP client against a real SQLite store."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from web_support import FLEET_DIR, PROBES_DIR, save_fleet_report, seed_job, seed_pairs_probe, seed_stack_dump

from trainfleet.spec.state import JobState
from trainfleet.store import Store, open_store
from trainfleet.store.status import job_status
from trainfleet.web import create_app
from trainfleet.web.auth import load_or_create_token

PROBES = PROBES_DIR / "pairs_4hosts_tfh3_1000mbit.jsonl"
CLI = [sys.executable, "-c", "from trainfleet.cli import main; main()"]


@pytest.fixture(scope="module")
def doctor_report() -> dict:
    from trainfleet.health import report
    from trainfleet.health.doctor import run_doctor

    doc = report.to_json(run_doctor([str(FLEET_DIR)], workers=1))
    doc["probes"] = [json.loads(line) for line in PROBES.read_text().splitlines() if line.strip()]
    return doc


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRAINFLEET_HOME", str(tmp_path))
    monkeypatch.delenv("TRAINFLEET_DB_URL", raising=False)
    return tmp_path


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as s:
        yield s


@pytest.fixture
def client(store: Store, home: Path) -> Iterator[TestClient]:
    token = load_or_create_token(home)
    with TestClient(create_app(store, home, token)) as c:
        c.token = token  # type: ignore[attr-defined]
        yield c


def test_token_file_is_private_and_stable(home: Path) -> None:
    token = load_or_create_token(home)
    assert len(token) >= 40
    assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
    assert load_or_create_token(home) == token


def test_jobs_list_and_filter(client: TestClient, store: Store, home: Path) -> None:
    running = seed_job(store, home, name="alpha", restart_at=12)
    done = seed_job(store, home, name="beta", state=JobState.SUCCEEDED)
    doc = client.get("/api/jobs").json()
    assert [j["id"] for j in doc["jobs"]] == [done.id, running.id]
    assert doc["counts"]["running"] == 1 and doc["counts"]["succeeded"] == 1
    alpha = doc["jobs"][1]
    assert alpha["restarts"] == 1 and alpha["step"] == 20 and alpha["throughput"] == 1020.0
    assert alpha["goodput"]["failures"] == 1 and 0 < alpha["goodput"]["ratio"] < 1
    assert doc["jobs"][0]["goodput"]["ratio"] == 1.0  # no failure: nothing lost
    only = client.get("/api/jobs", params={"state": "succeeded"}).json()
    assert [j["id"] for j in only["jobs"]] == [done.id]
    assert client.get("/api/jobs", params={"state": "bogus"}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 100000}).status_code == 422


def test_goodput_is_the_one_status_json_shows(client: TestClient, store: Store, home: Path) -> None:
    job = seed_job(store, home, name="eps", restart_at=12, state=JobState.FAILED)
    # wall 21 s; lost: detection 0.5 + teardown 1.0 + restart 2.5 + recompute 2.5 (web_support.seed_job)
    env = {**os.environ, "TRAINFLEET_HOME": str(home), "TRAINFLEET_DB_URL": str(store.engine.url)}
    done = subprocess.run([*CLI, "status", job.id, "--json"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)["goodput"]
    assert cli["ratio"] == round(14.5 / 21, 4)
    assert cli["lost_s"] == {"detection": 0.5, "teardown": 1.0, "restart": 2.5, "recompute": 2.5}
    assert client.get(f"/api/jobs/{job.id}").json()["goodput"] == cli
    row = next(j for j in client.get("/api/jobs").json()["jobs"] if j["id"] == job.id)
    assert row["goodput"] == cli
    assert f"{100 * cli['ratio']:.1f} %" in client.get("/").text
    assert f"{100 * cli['ratio']:.1f} %" in client.get(f"/jobs/{job.id}").text


def test_jobs_list_reads_goodput_events_in_one_query(client: TestClient, store: Store, home: Path) -> None:
    import sqlalchemy as sa

    def statements_for_list() -> list[str]:
        seen: list[str] = []

        def record(conn: object, cursor: object, statement: str, *args: object) -> None:
            seen.append(statement)

        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            assert client.get("/api/jobs", params={"limit": 500}).status_code == 200
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        return seen

    seed_job(store, home, name="one", restart_at=8)
    few = statements_for_list()
    for i in range(12):
        seed_job(store, home, name=f"many{i}", restart_at=8, steps=10, state=JobState.SUCCEEDED)
    many = statements_for_list()
    assert len(many) == len(few)
    assert sum("FROM events" in q for q in many) == 1


def test_job_twin_matches_status_json(client: TestClient, store: Store, home: Path) -> None:
    job = seed_job(store, home, restart_at=8)
    doc = client.get(f"/api/jobs/{job.id[:5]}").json()
    cli = json.loads(json.dumps(job_status(store, job.id)))
    keys = ("id", "name", "state", "reason", "restarts", "run_dir", "attempts", "ranks", "latest", "spec")
    for key in keys:
        assert doc[key] == cli[key], key
    assert doc["attempts"][0]["reason"] == "rank 1 exited with code 1"
    assert client.get("/api/jobs/ffffffff").status_code == 404
    assert client.get("/jobs/ffffffff").status_code == 404


def test_metrics_are_incremental(client: TestClient, store: Store, home: Path) -> None:
    job = seed_job(store, home, steps=10)
    first = client.get(f"/api/jobs/{job.id}/metrics").json()
    assert [p["step"] for p in first["points"]] == list(range(1, 11))
    assert first["points"][0]["loss"] == pytest.approx(4.9)
    again = client.get(f"/api/jobs/{job.id}/metrics", params={"since": first["next"]}).json()
    assert again["points"] == [] and again["next"] == first["next"]


def test_logs_tail_and_rank_filter(client: TestClient, store: Store, home: Path) -> None:
    job = seed_job(store, home, steps=30, restart_at=10)
    doc = client.get(f"/api/jobs/{job.id}/logs", params={"tail": 5, "rank": 1}).json()
    assert doc["attempt"] == 1 and doc["ranks"] == [0, 1]
    assert [line["text"] for line in doc["lines"]] == [f"rank 1 step {s}" for s in range(26, 31)]
    both = client.get(f"/api/jobs/{job.id}/logs", params={"tail": 4, "attempt": 0}).json()
    assert {line["rank"] for line in both["lines"]} == {0, 1} and len(both["lines"]) == 4
    assert client.get(f"/api/jobs/{job.id}/logs", params={"tail": 10**6}).status_code == 422


def test_pages_render_from_the_same_documents(client: TestClient, store: Store, home: Path,
                                              doctor_report: dict) -> None:
    job = seed_job(store, home, name="gamma")
    page = client.get("/")
    assert page.status_code == 200 and job.id in page.text and "gamma" in page.text
    page = client.get(f"/jobs/{job.id}")
    assert page.status_code == 200 and 'id="loss-chart"' in page.text
    assert "no doctor report saved yet" in client.get("/fleet").text.lower()
    save_fleet_report(home, doctor_report)
    page = client.get("/fleet")
    assert "gpu-node-05" in page.text and "acs-redirect" in page.text and "tfh3" in page.text
    for asset in ("/static/chart.js", "/static/app.css", "/static/job.js"):
        assert client.get(asset).status_code == 200


def test_fleet_twin_heat_map_and_evidence(client: TestClient, home: Path, doctor_report: dict) -> None:
    assert client.get("/api/fleet").json()["saved"] is False
    save_fleet_report(home, doctor_report)
    doc = client.get("/api/fleet").json()
    assert doc["nodes"] == 8 and doc["error_nodes"] == ["gpu-node-05"] and doc["suspects"] == []
    assert doc["rows"][0]["node"] == "gpu-node-05" and doc["rows"][0]["worst"] == "error"
    assert doc["rows"][0]["cells"]["acs-redirect"] == {"severity": "error", "count": 1}
    assert doc["severity_counts"]["error"] == sum(f["severity"] == "error" for f in doctor_report["findings"])
    pairs = doc["pairs"]
    names = pairs["nodes"]
    at = {(a, b): pairs["gbps"][i][j] for i, a in enumerate(names) for j, b in enumerate(names)}
    slow = [v for (a, b), v in at.items() if v is not None and "tfh3" in (a, b)]
    fast = [v for (a, b), v in at.items() if v is not None and "tfh3" not in (a, b)]
    assert slow and fast and max(slow) * 5 < min(fast)
    node = client.get("/api/fleet/nodes/gpu-node-05").json()
    assert any("ACSCtl" in f["evidence"] for f in node["findings"])
    assert node["error"] is True and node["history"] is None
    assert client.get("/api/fleet/nodes/nope").status_code == 404
    page = client.get("/api/fleet", params={"offset": 2, "limit": 3}).json()
    assert len(page["rows"]) == 3 and page["total_rows"] == 8


def test_node_history_and_release_through_the_store(client: TestClient, store: Store, home: Path,
                                                     doctor_report: dict) -> None:
    save_fleet_report(home, doctor_report)
    job = seed_job(store, home, name="zeta", restart_at=8)
    store.blame_node("gpu-node-05", job_id=job.id, attempt=0, reason="rank 1 exited with code 1")
    for other in ("a", "b", "c"):
        store.blame_node("local-3", job_id=other * 8, attempt=1, reason=f"agent lost in job {other}")
    doc = client.get("/api/fleet").json()
    history = doc["node_history"]
    assert history["counts"] == {"healthy": 0, "suspect": 1, "quarantined": 1}
    assert [n["name"] for n in history["nodes"]] == ["local-3", "gpu-node-05"]  # quarantined first
    q = history["nodes"][0]
    assert q["state"] == "quarantined" and q["blames"] == 3 and q["last_job_id"] == "c" * 8
    assert q["last_reason"] == "agent lost in job c"
    assert [e["kind"] for e in q["history"]] == ["blamed", "blamed", "blamed", "quarantined"][-5:]
    assert doc["suspects"] == ["local-3", "gpu-node-05"]
    assert doc["rows"][0]["node"] == "gpu-node-05" and doc["rows"][0]["history_state"] == "suspect"
    page = client.get("/fleet").text
    assert 'class="node-quarantined" data-node="local-3"' in page and f'href="/jobs/{job.id}"' in page
    assert client.get("/api/fleet/nodes/local-3").json()["history"]["state"] == "quarantined"

    url = "/api/fleet/nodes/local-3/release"
    assert client.post(url).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert store.node("local-3").state.value == "quarantined"
    ok = client.post(url, headers={"Authorization": f"Bearer {client.token}"})  # type: ignore[attr-defined]
    assert ok.status_code == 200
    assert ok.json() == {"node": "local-3", "was": "quarantined", "state": "healthy"}
    assert store.node("local-3").state.value == "healthy"
    assert store.node_events("local-3")[-1].kind == "released"
    after = client.get("/api/fleet").json()
    assert after["suspects"] == ["gpu-node-05"] and after["node_history"]["counts"]["healthy"] == 1
    assert not (home / "fleet" / "released.json").exists()
    # the CLI reads the same verdict
    env = {**os.environ, "TRAINFLEET_HOME": str(home), "TRAINFLEET_DB_URL": str(store.engine.url)}
    done = subprocess.run([*CLI, "nodes", "--json"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    states = {n["name"]: n["state"] for n in json.loads(done.stdout)}
    assert states == {"local-3": "healthy", "gpu-node-05": "suspect"}
    unknown = client.post("/api/fleet/nodes/gpu-node-01/release",
                          headers={"Authorization": f"Bearer {client.token}"})  # type: ignore[attr-defined]
    assert unknown.status_code == 404 and "no history" in unknown.json()["detail"]


def test_probe_matrix_from_the_store(client: TestClient, store: Store, home: Path) -> None:
    from trainfleet.health.probes.records import pair_matrix, parse_probe_output
    from trainfleet.health.probes.store import ProbeResultRow, save_results

    assert client.get("/api/fleet").json()["probe_matrix"] is None
    assert "no pairs probe stored yet" in client.get("/fleet").text
    job_id = seed_pairs_probe(store, home, PROBES)
    pm = client.get("/api/fleet").json()["probe_matrix"]
    assert pm["job_id"] == job_id and pm["source"] == "store" and pm["slow_nodes"] == ["tfh3"]
    assert pm["nodes"] == ["tfh1", "tfh2", "tfh3", "tfh4"]
    expected = pair_matrix(parse_probe_output(PROBES.read_text(), source=str(PROBES)))
    for i, a in enumerate(pm["nodes"]):
        for j, b in enumerate(pm["nodes"]):
            assert pm["gbps"][i][j] == (pytest.approx(expected[(a, b)]) if (a, b) in expected else None)
            assert pm["slow"][i][j] == ((a, b) in expected and "tfh3" in (a, b)), (a, b)
    page = client.get("/fleet").text
    assert page.count('<td class="slow"') == sum("tfh3" in link for link in expected)
    assert f'href="/jobs/{job_id}"' in page

    # a newer run whose rows carry their links replaces it
    links = {"n1": {"n2": 10.0}, "n2": {"n1": 2.0}}
    save_results(store, [ProbeResultRow(job_id="feedf00d", ts=4e9, probe="pairs", backend="local", node=n,
                                        metric="pair_bw_gbps", value=v, verdict="ok",
                                        data={"links": links[n]}) for n, v in (("n1", 6.0), ("n2", 6.0))])
    pm = client.get("/api/fleet").json()["probe_matrix"]
    assert pm["job_id"] == "feedf00d" and pm["source"] == "store"
    assert pm["gbps"] == [[None, 10.0], [2.0, None]] and pm["slow"] == [[False, False], [True, False]]


def test_stack_dumps_with_the_odd_rank(client: TestClient, store: Store, home: Path) -> None:
    job = seed_job(store, home, name="hung", restart_at=10)
    assert client.get(f"/api/jobs/{job.id}").json()["stack_dumps"] == []
    seed_stack_dump(store, job, attempt=0, odd=1)
    doc = client.get(f"/api/jobs/{job.id}").json()
    (dump,) = doc["stack_dumps"]
    assert dump["attempt"] == 0 and dump["odd_ranks"] == [1]
    assert [(f["rank"], f["odd"]) for f in dump["files"]] == [(0, False), (1, True)]
    assert doc["stacks"]["odd_ranks"] == [1]  # status --json's newest dump, unchanged
    odd = client.get(dump["files"][1]["url"]).json()
    assert odd["odd"] is True and "compute (trainer.py" in odd["text"] and odd["truncated"] is False
    calm = client.get(f"/api/jobs/{job.id}/stacks/0/0").json()
    assert calm["odd"] is False and "collective (trainer.py" in calm["text"]
    assert client.get(f"/api/jobs/{job.id}/stacks/0/5").status_code == 404
    assert client.get(f"/api/jobs/{job.id}/stacks/1/0").status_code == 404
    page = client.get(f"/jobs/{job.id}").text
    assert 'class="stack-rank odd"' in page and "rank 1 (odd one out)" in page
    assert 'id="tput-chart"' in page and 'id="timeline"' in page
    assert "rank 1 exited with code 1" in page  # the attempt's cause


def test_bad_report_is_one_clear_line(client: TestClient, home: Path) -> None:
    path = save_fleet_report(home, {"findings": "nope"})
    r = client.get("/api/fleet")
    assert r.status_code == 400 and r.json()["detail"].startswith(f"{path}: not a doctor report")


def test_prometheus_exposition(client: TestClient, store: Store, home: Path, doctor_report: dict) -> None:
    job = seed_job(store, home, name="delta", restart_at=12)
    seed_job(store, home, name="old", state=JobState.FAILED)
    save_fleet_report(home, doctor_report)
    store.blame_node("local-3", job_id=job.id, attempt=0, reason="rank 1 exited with code 1")
    for other in ("a", "b", "c"):
        store.blame_node("local-5", job_id=other * 8, attempt=0, reason="lost")
    store.blame_node("local-7", job_id=job.id, attempt=0, reason="hung")
    store.release_node("local-7")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'trainfleet_jobs{state="running"} 1.0' in text
    assert 'trainfleet_jobs{state="failed"} 1.0' in text
    assert f'trainfleet_job_restarts{{job="{job.id}",name="delta"}} 1.0' in text
    assert f'trainfleet_job_step{{job="{job.id}",name="delta"}} 20.0' in text
    assert f'trainfleet_job_throughput{{job="{job.id}",name="delta"}} 1020.0' in text
    assert f'trainfleet_job_step_time_seconds{{job="{job.id}",name="delta"}} 0.25' in text
    ratio = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith(f'trainfleet_job_goodput_ratio{{job="{job.id}"'))
    # the job runs, so its wall time grows between the two reads: equal to status's to within 0.1 %
    assert ratio == pytest.approx(job_status(store, job.id)["goodput"]["ratio"], rel=1e-3)
    assert "trainfleet_suspect_nodes 2.0" in text  # local-3 suspect, local-5 quarantined, local-7 released
    assert 'trainfleet_nodes{state="quarantined"} 1.0' in text
    assert 'trainfleet_nodes{state="suspect"} 1.0' in text
    assert 'trainfleet_nodes{state="healthy"} 1.0' in text
    errors = sum(f["severity"] == "error" for f in doctor_report["findings"])
    assert f'trainfleet_doctor_findings{{severity="error"}} {float(errors)}' in text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    assert names and all(n.startswith("trainfleet_") and not n.endswith("_total") for n in names)
    assert all(line.startswith("# HELP trainfleet_") or line.startswith("# TYPE trainfleet_")
               for line in text.splitlines() if line.startswith("#"))


def test_diverged_loss_is_null_in_json(client: TestClient, store: Store, home: Path) -> None:
    from trainfleet.store import MetricRow

    job = seed_job(store, home, steps=2)
    store.add_metrics(job.id, 0, [MetricRow(0, 3, 3.0, {"loss": float("nan"), "tokens_per_s": float("inf")})])
    points = client.get(f"/api/jobs/{job.id}/metrics").json()["points"]
    assert points[-1]["step"] == 3 and points[-1]["loss"] is None and points[-1]["throughput"] is None
    assert client.get(f"/api/jobs/{job.id}").json()["loss"] is None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_goodput_node_history_and_probe_matrix_on_postgres(pg_url: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINFLEET_HOME", str(tmp_path))
    with open_store(pg_url) as store:
        job = seed_job(store, tmp_path, name="pg", restart_at=12, state=JobState.FAILED)
        live = seed_job(store, tmp_path, name="pg-live", restart_at=8)
        seed_pairs_probe(store, tmp_path, PROBES)
        for other in ("a", "b", "c"):
            store.blame_node("local-3", job_id=other * 8, attempt=0, reason=f"lost in {other}")
        store.blame_node("local-4", job_id=job.id, attempt=0, reason="rank 1 exited with code 1")
        token = load_or_create_token(tmp_path)
        with TestClient(create_app(store, tmp_path, token)) as client:
            rows = {j["id"]: j for j in client.get("/api/jobs").json()["jobs"]}
            assert rows[job.id]["goodput"] == job_status(store, job.id)["goodput"]
            assert rows[job.id]["goodput"]["ratio"] == round(14.5 / 21, 4)
            fleet = client.get("/api/fleet").json()
            assert [n["name"] for n in fleet["node_history"]["nodes"]] == ["local-3", "local-4"]
            assert [e["kind"] for e in fleet["node_history"]["nodes"][0]["history"]] == [
                "blamed", "blamed", "blamed", "quarantined"]
            assert fleet["probe_matrix"]["slow_nodes"] == ["tfh3"]
            auth = {"Authorization": f"Bearer {token}"}
            assert client.post("/api/fleet/nodes/local-3/release", headers=auth).json()["state"] == "healthy"
            text = client.get("/metrics").text
            assert "trainfleet_suspect_nodes 1.0" in text
            assert f'trainfleet_job_goodput_ratio{{job="{live.id}",name="pg-live"}}' in text

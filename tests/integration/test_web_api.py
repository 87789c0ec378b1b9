"""The dashboard's JSON twins through an in-process HTTP client against a real SQLite store."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from web_support import FLEET_DIR, REPO, save_fleet_report, seed_job

from trainfleet.spec.state import JobState
from trainfleet.store import Store, open_store
from trainfleet.store.status import job_status
from trainfleet.web import create_app
from trainfleet.web.auth import load_or_create_token

PROBES = REPO / "tests" / "fixtures" / "probes" / "pairs_4hosts_tfh3_1000mbit.jsonl"


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
    # attempt 0 ran 1..12, attempt 1 re-ran 7..20: 20 useful of 12 + 14 executed steps
    assert alpha["goodput"] == pytest.approx(20 / 26)
    only = client.get("/api/jobs", params={"state": "succeeded"}).json()
    assert [j["id"] for j in only["jobs"]] == [done.id]
    assert client.get("/api/jobs", params={"state": "bogus"}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 100000}).status_code == 422


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
    assert doc["nodes"] == 8 and doc["suspects"] == ["gpu-node-05"]
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
    assert client.get("/api/fleet/nodes/nope").status_code == 404
    page = client.get("/api/fleet", params={"offset": 2, "limit": 3}).json()
    assert len(page["rows"]) == 3 and page["total_rows"] == 8


def test_release_needs_token_and_clears_suspect(client: TestClient, home: Path, doctor_report: dict) -> None:
    save_fleet_report(home, doctor_report)
    url = "/api/fleet/nodes/gpu-node-05/release"
    assert client.post(url).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = client.post(url, headers={"Authorization": f"Bearer {client.token}"})  # type: ignore[attr-defined]
    assert ok.status_code == 200
    assert client.get("/api/fleet").json()["suspects"] == []


def test_bad_report_is_one_clear_line(client: TestClient, home: Path) -> None:
    path = save_fleet_report(home, {"findings": "nope"})
    r = client.get("/api/fleet")
    assert r.status_code == 400 and r.json()["detail"].startswith(f"{path}: not a doctor report")


def test_prometheus_exposition(client: TestClient, store: Store, home: Path, doctor_report: dict) -> None:
    job = seed_job(store, home, name="delta", restart_at=12)
    seed_job(store, home, name="old", state=JobState.FAILED)
    save_fleet_report(home, doctor_report)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'trainfleet_jobs{state="running"} 1.0' in text
    assert 'trainfleet_jobs{state="failed"} 1.0' in text
    assert f'trainfleet_job_restarts{{job="{job.id}",name="delta"}} 1.0' in text
    assert f'trainfleet_job_step{{job="{job.id}",name="delta"}} 20.0' in text
    assert f'trainfleet_job_throughput{{job="{job.id}",name="delta"}} 1020.0' in text
    assert f'trainfleet_job_goodput_ratio{{job="{job.id}",name="delta"}} {20 / 26}' in text
    assert "trainfleet_suspect_nodes 1.0" in text
    errors = sum(f["severity"] == "error" for f in doctor_report["findings"])
    assert f'trainfleet_doctor_findings{{severity="error"}} {float(errors)}' in text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    assert names and all(n.startswith("trainfleet_") for n in names)


def test_diverged_loss_is_null_in_json(client: TestClient, store: Store, home: Path) -> None:
    from trainfleet.store import MetricRow

    job = seed_job(store, home, steps=2)
    store.add_metrics(job.id, 0, [MetricRow(0, 3, 3.0, {"loss": float("nan"), "tokens_per_s": float("inf")})])
    points = client.get(f"/api/jobs/{job.id}/metrics").json()["points"]
    assert points[-1]["step"] == 3 and points[-1]["loss"] is None and points[-1]["throughput"] is None
    assert client.get(f"/api/jobs/{job.id}").json()["loss"] is None

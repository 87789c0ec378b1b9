"""Dashboard security: Bearer token on state changes, no path traversal through logs, bounded requests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from web_support import seed_job, seed_stack_dump

from trainfleet.spec.state import JobState
from trainfleet.store import Store, open_store
from trainfleet.web import create_app
from trainfleet.web.app import MAX_BODY_BYTES
from trainfleet.web.auth import load_or_create_token


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Store, Path, str]]:
    monkeypatch.setenv("TRAINFLEET_HOME", str(tmp_path))
    with open_store(f"sqlite:///{tmp_path / 'trainfleet.db'}") as store:
        token = load_or_create_token(tmp_path)
        with TestClient(create_app(store, tmp_path, token)) as client:
            yield client, store, tmp_path, token


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cancel_needs_the_right_token(env: tuple[TestClient, Store, Path, str]) -> None:
    client, store, home, token = env
    job = seed_job(store, home)
    # Its supervisor is gone, so service.cancel marks the job cancelled itself (as `trainfleet cancel` does).
    store.update_job(job.id, supervisor_pid=_gone_pid())
    url = f"/api/jobs/{job.id}/cancel"
    missing = client.post(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post(url, headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer " + token[:-1] + "x"}).status_code == 403
    assert client.post(url, headers={"Authorization": "Bearer "}).status_code == 401
    assert store.get_job(job.id).state is JobState.RUNNING
    ok = client.post(url, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == {"id": job.id, "state": "cancelled"}
    assert store.get_job(job.id).state is JobState.CANCELLED
    assert client.get(url).status_code == 405


def test_release_needs_the_right_token_and_a_small_body(env: tuple[TestClient, Store, Path, str]) -> None:
    client, store, home, token = env
    job = seed_job(store, home)
    store.blame_node("gpu-07", job_id=job.id, attempt=0, reason="rank 1 exited with code 1")
    url = "/api/fleet/nodes/gpu-07/release"
    missing = client.post(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post(url, headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert client.post(url, headers={"Authorization": "Bearer " + token[:-1] + "x"}).status_code == 403
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post(url, content=b"x" * (MAX_BODY_BYTES + 1), headers=auth).status_code == 413
    assert client.get(url).status_code == 405
    assert store.node("gpu-07").state.value == "suspect"
    assert [e.kind for e in store.node_events("gpu-07")] == ["blamed"]
    assert client.post(url, headers=auth).json()["state"] == "healthy"
    assert client.post("/api/fleet/nodes/..%2F..%2Fetc/release", headers=auth).status_code in (404, 422)


def test_stack_dump_files_only_from_the_run_dir(env: tuple[TestClient, Store, Path, str]) -> None:
    client, store, home, _ = env
    job = seed_job(store, home, steps=3)
    secret = home / "secret.txt"
    secret.write_text("root:x:0:0 secret\n")
    stacks = job.run_dir / "attempt-0" / "stacks"
    stacks.mkdir(parents=True)
    (stacks / "rank-3.txt").symlink_to(secret)
    dotdot = str(stacks / ".." / ".." / ".." / ".." / "secret.txt")
    seed_stack_dump(store, job, attempt=0, odd=1, files={2: dotdot, 3: str(stacks / "rank-3.txt"),
                                                         4: str(secret), 5: "../../secret.txt",
                                                         6: str(stacks)})
    assert client.get(f"/api/jobs/{job.id}/stacks/0/1").status_code == 200  # a real dump inside the run dir
    for rank in (2, 3, 4, 5, 6):
        r = client.get(f"/api/jobs/{job.id}/stacks/0/{rank}")
        assert r.status_code == 404 and "secret" not in r.text, rank
    for path in ("0/..%2F..%2Fsecret.txt", "0/-1", "../0/1", "0/1e3", "%2e%2e/1"):
        r = client.get(f"/api/jobs/{job.id}/stacks/{path}")
        assert r.status_code in (404, 422) and "secret" not in r.text, path


def test_token_never_appears_in_pages(env: tuple[TestClient, Store, Path, str]) -> None:
    client, store, home, token = env
    job = seed_job(store, home)
    for url in ("/", f"/jobs/{job.id}", "/fleet", "/api/jobs", f"/api/jobs/{job.id}", "/metrics"):
        assert token not in client.get(url).text, url


@pytest.mark.parametrize("rank", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                                  "/etc/passwd", "0/../../../../etc/passwd", "1e9", "-1", "0x1"])
def test_logs_rank_cannot_name_a_path(env: tuple[TestClient, Store, Path, str], rank: str) -> None:
    client, store, home, _ = env
    job = seed_job(store, home)
    r = client.get(f"/api/jobs/{job.id}/logs?rank={rank}")
    assert r.status_code == 422
    assert "root:" not in r.text


@pytest.mark.parametrize("path", ["/api/jobs/..%2F..%2Fetc%2Fpasswd/logs", "/api/jobs/../../etc/passwd",
                                  "/api/jobs/%2e%2e%2f%2e%2e/logs", "/jobs/..%2f..%2fetc%2fpasswd",
                                  "/static/../../../../etc/passwd",
                                  "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"])
def test_traversal_in_paths_is_refused(env: tuple[TestClient, Store, Path, str], path: str) -> None:
    client = env[0]
    r = client.get(path)
    assert r.status_code in (404, 422)
    assert "root:" not in r.text


def test_logs_only_read_the_jobs_own_files(env: tuple[TestClient, Store, Path, str], tmp_path: Path) -> None:
    client, store, home, _ = env
    job = seed_job(store, home, steps=3)
    secret = home / "runs" / "outside.txt"
    secret.write_text("2026-12-03T07:53:03.123456Z secret\n")
    (job.run_dir / "attempt-0" / "node-0" / "rank-7.out").symlink_to(secret)
    (job.run_dir / "attempt-0" / "node-0" / "notes.out").write_text("ignored\n")
    doc = client.get(f"/api/jobs/{job.id}/logs", params={"rank": 0}).json()
    assert [line["text"] for line in doc["lines"]] == [f"rank 0 step {s}" for s in (1, 2, 3)]
    assert client.get(f"/api/jobs/{job.id}/logs", params={"rank": 7}).json()["lines"] == []
    every = client.get(f"/api/jobs/{job.id}/logs").json()["lines"]
    assert len(every) == 6 and all("secret" not in line["text"] for line in every)


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    from trainfleet.errors import InputError

    load_or_create_token(tmp_path)
    (tmp_path / "token").chmod(0o644)
    with pytest.raises(InputError, match=r"token: the dashboard token is readable by other users"):
        load_or_create_token(tmp_path)


def test_request_sizes_are_bounded(env: tuple[TestClient, Store, Path, str]) -> None:
    client, store, home, token = env
    job = seed_job(store, home)
    url = f"/api/jobs/{job.id}/cancel"
    auth = {"Authorization": f"Bearer {token}"}
    big = client.post(url, content=b"x" * (MAX_BODY_BYTES + 1), headers=auth)
    assert big.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"y" * 1024

    streamed = client.post(url, content=chunks(), headers=auth)
    assert streamed.status_code == 413
    assert client.get("/api/jobs?state=" + "r" * 5000).status_code == 414
    assert store.get_job(job.id).state is JobState.RUNNING


def test_ui_binds_loopback_by_default() -> None:
    from trainfleet.cli.ui import ui_cmd

    defaults = {p.name: p.default for p in __import__("inspect").signature(ui_cmd).parameters.values()}
    assert defaults["host"].default == "127.0.0.1"

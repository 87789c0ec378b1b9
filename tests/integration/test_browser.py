"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against `trainfleet ui` serving
real detached jobs (tests/fixtures/web/reporting_rank.py reporting a falling loss; the GPT demo crashing once
and resuming; the torch-free trainer with a SIGSTOPped rank, a hang whose stacks are dumped), the doctor's
report of examples/fleet, the node history and a stored pairs probe. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from job_helpers import reap_jobs, status, wait_final, wait_for
from web_support import FLEET_DIR, PROBES_DIR, REPO, save_fleet_report, seed_pairs_probe

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "tests" / "artifacts"
RANK_SCRIPT = REPO / "tests" / "fixtures" / "web" / "reporting_rank.py"
CLI = [sys.executable, "-c", "from trainfleet.cli import main; main()"]
TRAINER = REPO / "tests" / "fixtures" / "jobs" / "trainer.py"
GPT_TRAIN = REPO / "examples" / "gpt" / "train.py"
GPT_TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
            "--corpus-chars", "20000", "--eval-every", "0", "--eval-batches", "1", "--log-every", "10",
            "--pg-timeout-s", "30"]


@dataclass
class Dashboard:
    url: str
    token: str
    home: Path
    env: dict[str, str]


def _cli(env: dict[str, str], *args: str, cwd: Path) -> str:
    done = subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    home = tmp_path / "home"
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    proc = subprocess.Popen([*CLI, "ui", "--host", "127.0.0.1", "--port", "0"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.match(r"trainfleet ui: (http://127\.0\.0\.1:\d+/)#token=(\S+)", line)
        assert match, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield Dashboard(match.group(1), match.group(2), home, env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reap_jobs(home)


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _points(page: object) -> int:
    return int(page.get_attribute("#loss-chart", "data-points") or 0)  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_live_job_chart_and_cancel(dashboard: Dashboard, browser: object, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"name": "web-demo", "command": [sys.executable, str(RANK_SCRIPT)],
                                "nodes": 1, "procs_per_node": 2, "grace_s": 2}))
    job_id = _cli(dashboard.env, "run", str(spec), "--detach", cwd=tmp_path).strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{8}", job_id), job_id
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]

    page.goto(dashboard.url)
    page.wait_for_selector(f"#jobs-body a[href='/jobs/{job_id}']")
    page.wait_for_function(f"document.querySelector(\"#jobs-body a[href='/jobs/{job_id}']\")"
                           ".closest('tr').textContent.includes('running')", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)

    page.goto(f"{dashboard.url}jobs/{job_id}")
    page.wait_for_function("Number(document.getElementById('loss-chart').dataset.points) >= 3",
                           timeout=30_000)
    first = _points(page)
    page.wait_for_function(f"Number(document.getElementById('loss-chart').dataset.points) >= {first + 10}",
                           timeout=30_000)
    assert _points(page) > first  # the chart gained points while the job ran
    page.wait_for_function("Number(document.getElementById('tput-chart').dataset.points) >= 10")
    assert page.text_content("#job-goodput") == "100.0 %"  # no failure yet: nothing lost
    assert page.locator("#timeline .bar").count() == 1
    page.wait_for_function("document.getElementById('logs').textContent.includes('loss')", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "job.png"), full_page=True)

    page.click("#cancel")  # no token in this browser yet
    page.wait_for_function("document.getElementById('cancel-msg').textContent.startsWith('refused')")
    assert "401" in page.text_content("#cancel-msg")
    page.fill("#token-input", "not-the-token")
    page.click("#token-form button")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('cancel-msg').textContent.includes('403')")
    status = json.loads(_cli(dashboard.env, "status", job_id, "--json", cwd=tmp_path))
    assert status["state"] == "running"

    page.fill("#token-input", dashboard.token)
    page.click("#token-form button")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('cancel-msg').textContent.startsWith('cancelled')",
                           timeout=40_000)
    page.wait_for_function("document.getElementById('job-state').textContent === 'cancelled'")
    status = json.loads(_cli(dashboard.env, "status", job_id, "--json", cwd=tmp_path))
    assert status["state"] == "cancelled"
    assert all(r["state"] != "running" for r in status["ranks"])
    page.screenshot(path=str(ARTIFACTS / "job-cancelled.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fleet_heat_map_history_probes_and_release(dashboard: Dashboard, browser: object) -> None:
    from trainfleet.health import report
    from trainfleet.health.doctor import run_doctor
    from trainfleet.store import open_store

    save_fleet_report(dashboard.home, report.to_json(run_doctor([str(FLEET_DIR)], workers=1)))
    with open_store(f"sqlite:///{dashboard.home / 'trainfleet.db'}") as store:
        probe = seed_pairs_probe(store, dashboard.home, PROBES_DIR / "pairs_4hosts_tfh3_1000mbit.jsonl")
        store.blame_node("gpu-node-05", job_id=probe, attempt=0, reason="rank 1 exited with code 1")
        for job in ("a1a1a1a1", "b2b2b2b2", "c3c3c3c3"):
            store.blame_node("local-3", job_id=job, attempt=0, reason=f"agent lost in {job}")
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
    page.goto(f"{dashboard.url}fleet")
    assert "1 of 8 nodes differ from the fleet" in page.text_content("main")
    page.click("td.cell[data-node='gpu-node-05'][data-check='acs-redirect']")
    page.wait_for_selector("#evidence .evidence")
    assert "ACSCtl" in page.text_content("#evidence")
    assert "suspect" in page.text_content("#evidence h2")

    assert "1 quarantined, 1 suspect" in page.text_content("#node-counts")
    row = "#node-history tr[data-node='local-3']"
    assert "quarantined" in page.text_content(row) and "agent lost in c3c3c3c3" in page.text_content(row)
    slow = page.locator("#probe-matrix td.slow")
    assert slow.count() == 6  # every measured link to or from tfh3
    assert all("tfh3" in (c.get_attribute("data-src"), c.get_attribute("data-dst")) for c in slow.all())
    page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)

    button = f"{row} button.release"
    page.click(button)  # no token in this browser yet
    page.wait_for_function(f"document.querySelector(\"{row} .msg\").textContent !== ''")
    assert "401" in page.text_content(f"{row} .msg")
    page.fill("#token-input", "not-the-token")
    page.click("#token-form button")
    page.click(button)
    page.wait_for_function(f"document.querySelector(\"{row} .msg\").textContent.includes('403')")
    page.fill("#token-input", dashboard.token)
    page.click("#token-form button")
    page.click(button)
    page.wait_for_function(f"document.querySelector(\"{row} .msg\").textContent.startsWith('released')")
    assert page.text_content(f"{row} .node-state") == "healthy"
    nodes = {n["name"]: n for n in json.loads(_cli(dashboard.env, "nodes", "--json", cwd=dashboard.home))}
    assert nodes["local-3"]["state"] == "healthy" and nodes["local-3"]["history"][-1]["kind"] == "released"
    assert nodes["gpu-node-05"]["state"] == "suspect"
    page.screenshot(path=str(ARTIFACTS / "fleet-released.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_gpt_demo_crash_timeline_curves_and_goodput(dashboard: Dashboard, browser: object,
                                                    tmp_path: Path) -> None:
    command = [sys.executable, str(GPT_TRAIN), "--steps", "60", "--ckpt-every", "10", *GPT_TINY,
               "--crash-at-step", "25", "--crash-rank", "1", "--crash-attempt", "0"]
    spec = tmp_path / "gpt.yaml"
    spec.write_text(json.dumps({"name": "gpt-web", "command": command, "nodes": 2, "procs_per_node": 1,
                                "grace_s": 2, "checkpoint_dir": str(tmp_path / "ckpt"), "workdir": str(REPO),
                                "restart": {"max_restarts": 1, "backoff_s": 1}, "hang_timeout_s": 60,
                                "env": {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}}))
    job_id = _cli(dashboard.env, "run", str(spec), "--detach", cwd=tmp_path).strip().splitlines()[-1]
    page = browser.new_page(viewport={"width": 1280, "height": 1100})  # type: ignore[attr-defined]
    page.goto(f"{dashboard.url}jobs/{job_id}")
    page.wait_for_function("Number(document.getElementById('loss-chart').dataset.points) >= 5",
                           timeout=90_000)
    page.wait_for_function("Number(document.getElementById('tput-chart').dataset.points) >= 5")
    first = _points(page)
    page.wait_for_function("document.querySelectorAll('#timeline .bar').length === 2", timeout=120_000)
    page.wait_for_function(f"Number(document.getElementById('loss-chart').dataset.points) > {first}")
    doc = wait_final(dashboard.home, job_id, timeout=120)
    assert doc["state"] == "succeeded", doc["reason"]
    page.wait_for_function("document.getElementById('job-state').textContent === 'succeeded'", timeout=15_000)
    cause = page.text_content("#attempts-body tr:first-child td:last-child")
    assert "exited with code 13" in cause
    assert "exited with code 13" in page.text_content("#story")
    assert "resumed at step 20" in page.text_content("#story")
    cli = json.loads(_cli(dashboard.env, "status", job_id, "--json", cwd=tmp_path))["goodput"]
    assert 0 < cli["ratio"] < 1
    assert page.text_content("#job-goodput") == f"{100 * cli['ratio']:.1f} %"
    assert "restart" in page.text_content("#job-lost")
    page.wait_for_selector("#events-body tr[data-kind='resumed']")  # the event table updates live too
    page.screenshot(path=str(ARTIFACTS / "job-restarted.png"), full_page=True)
    page.goto(dashboard.url)
    row = page.locator(f"#jobs-body tr:has(a[href='/jobs/{job_id}'])")
    page.wait_for_function(f"document.querySelector(\"#jobs-body a[href='/jobs/{job_id}']\") !== null")
    assert f"{100 * cli['ratio']:.1f} %" in row.text_content()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_hung_attempt_stack_dumps_with_the_odd_rank(dashboard: Dashboard, browser: object,
                                                    tmp_path: Path) -> None:
    spec = tmp_path / "hang.yaml"
    spec.write_text(json.dumps({
        "name": "hang-web", "command": [sys.executable, str(TRAINER), "--steps", "100", "--step-s", "0.06"],
        "nodes": 2, "procs_per_node": 2, "grace_s": 2, "checkpoint_dir": str(tmp_path / "ckpt"),
        "restart": {"max_restarts": 1, "backoff_s": 0.5}, "hang_timeout_s": 3}))
    job_id = _cli(dashboard.env, "run", str(spec), "--detach", cwd=tmp_path).strip().splitlines()[-1]

    def at_step() -> dict | None:
        doc = status(dashboard.home, job_id)
        steps = [v["step"] for v in doc["latest"].values()]
        return doc if len(steps) == 4 and min(steps) >= 20 and doc["attempt"] == 0 else None

    doc = wait_for(at_step, 60, "attempt 0 at step 20")
    victim = next(r for r in doc["ranks"] if r["rank"] == 2)
    os.kill(victim["pid"], signal.SIGSTOP)
    page = browser.new_page(viewport={"width": 1280, "height": 1100})  # type: ignore[attr-defined]
    page.goto(f"{dashboard.url}jobs/{job_id}")
    page.wait_for_selector("#stacks button.stack-rank.odd", timeout=60_000)  # shown live, without a reload
    page.wait_for_selector("#events-body tr[data-kind='stacks_dumped']")
    odd = page.locator("#stacks button.stack-rank.odd")
    assert odd.count() == 1 and odd.get_attribute("data-rank") == "2"
    assert page.locator("#stacks button.stack-rank").count() == 4
    odd.click()
    page.wait_for_function("document.getElementById('stack-text').textContent.includes('compute')")
    text = page.text_content("#stack-text")
    assert text.startswith("rank 2 attempt 0 (odd rank out)") and "compute (trainer.py" in text
    assert "odd" in (page.get_attribute("#stack-text", "class") or "")
    page.click("#stacks button.stack-rank[data-rank='0']")
    page.wait_for_function("document.getElementById('stack-text').textContent.startsWith('rank 0')")
    assert "collective (trainer.py" in page.text_content("#stack-text")
    page.screenshot(path=str(ARTIFACTS / "job-stacks.png"), full_page=True)
    doc = wait_final(dashboard.home, job_id, timeout=90)
    assert doc["state"] == "succeeded", doc["reason"]
    page.wait_for_function("document.getElementById('job-state').textContent === 'succeeded'", timeout=15_000)
    assert "hung" in page.text_content("#attempts-body tr:first-child td:last-child").lower()

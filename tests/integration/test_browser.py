"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against `trainfleet ui` serving
a real detached job (tests/fixtures/web/reporting_rank.py reporting a falling loss) and the doctor's report
of examples/fleet. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from web_support import FLEET_DIR, REPO, save_fleet_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "tests" / "artifacts"
RANK_SCRIPT = REPO / "tests" / "fixtures" / "web" / "reporting_rank.py"
CLI = [sys.executable, "-c", "from trainfleet.cli import main; main()"]


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
def test_fleet_heat_map_shows_evidence(dashboard: Dashboard, browser: object) -> None:
    from trainfleet.health import report
    from trainfleet.health.doctor import run_doctor

    save_fleet_report(dashboard.home, report.to_json(run_doctor([str(FLEET_DIR)], workers=1)))
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(f"{dashboard.url}fleet")
    assert "1 of 8 nodes differ from the fleet" in page.text_content("main")
    page.click("td.cell[data-node='gpu-node-05'][data-check='acs-redirect']")
    page.wait_for_selector("#evidence .evidence")
    assert "ACSCtl" in page.text_content("#evidence")
    page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)
    page.click("button.release[data-node='gpu-node-05']")
    page.wait_for_function("document.querySelector('button.release').nextElementSibling.textContent !== ''")
    assert "401" in page.text_content("button.release + .msg")

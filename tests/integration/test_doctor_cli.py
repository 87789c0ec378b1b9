"""``trainfleet doctor`` through a real subprocess: JSON contract, exit codes 0/1/2, and the headline naming
the fault planted in examples/fleet (see examples/fleet/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "examples" / "fleet"
FIX = REPO / "tests" / "fixtures" / "lspci"
TRAINFLEET = Path(sys.executable).with_name("trainfleet")
FINDING_KEYS = {"node", "device", "check", "severity", "field", "value", "expected", "message"}


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRAINFLEET), "doctor", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_sample_fleet_json_contract_and_planted_fault() -> None:
    proc = doctor(str(FLEET), "--json")
    assert proc.returncode == 1, proc.stderr  # the planted ACS redirect is an error
    data = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert data["nodes"] == 8
    for f in data["findings"]:
        assert set(f) >= FINDING_KEYS and f["severity"] in ("error", "warning", "info")
    errors = [(f["node"], f["device"], f["check"]) for f in data["findings"] if f["severity"] == "error"]
    assert errors == [("gpu-node-05", "02:01.0", "acs-redirect")]
    diff = [f for f in data["findings"] if f["check"].startswith("diff")]
    assert [(f["node"], f["device"], f["field"]) for f in diff] == [("gpu-node-05", "02:01.0", "ACSCtl")]


def test_sample_fleet_human_headline_names_the_setting() -> None:
    proc = doctor(str(FLEET))
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first == ("1 of 8 nodes differ from the fleet: ACSCtl SrcValid+ ReqRedir+ CmpltRedir+ "
                     "UpstreamFwd+ on 0000:02:01.0 (switch port above GPU 0000:04:00.0), known to break "
                     "GPUDirect RDMA; 7 nodes have SrcValid- ReqRedir- CmpltRedir- UpstreamFwd-")
    assert "on 8 nodes:" in proc.stdout  # identical findings collapsed across nodes


def test_clean_nodes_exit_zero_and_write_html(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    proc = doctor(str(FLEET / "gpu-node-01"), str(FLEET / "gpu-node-02"), str(FLEET / "gpu-node-03"),
                  "--json", "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nodes"] == 3
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_lone_lspci_file_is_a_node_named_by_its_stem() -> None:
    proc = doctor(str(FIX / "12_hgx-h100-pmc-switch-nvswitch_nn-vv-unprivileged-fixture.txt"), "--json")
    assert proc.returncode == 0
    (f,) = json.loads(proc.stdout)["findings"]
    assert f["node"] == "12_hgx-h100-pmc-switch-nvswitch_nn-vv-unprivileged-fixture"
    assert f["check"] == "capture-unprivileged"


def test_unreadable_input_exits_2_with_one_line() -> None:
    proc = doctor(str(FLEET), "/nonexistent/bundle", "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "trainfleet: error: /nonexistent/bundle: no such file or directory"]


def test_missing_path_is_a_usage_error() -> None:
    proc = doctor()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_save_writes_latest_report_for_the_dashboard(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "TRAINFLEET_HOME": str(tmp_path)}
    proc = subprocess.run([str(TRAINFLEET), "doctor", str(FLEET), "--save"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 1, proc.stderr
    saved = json.loads((tmp_path / "fleet" / "latest.json").read_text())
    assert saved["nodes"] == 8
    assert any(f["check"] == "acs-redirect" and f["node"] == "gpu-node-05" for f in saved["findings"])
    assert not [p for p in (tmp_path / "fleet").iterdir() if p.name.startswith(".latest")]  # no temp left

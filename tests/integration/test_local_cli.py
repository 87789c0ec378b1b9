"""The ``run``/``cancel`` CLI contract: dry-run starts nothing, bad input is one line and exit 2, Ctrl-C on a
foreground run cancels the job cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from job_helpers import JOBS, TRAINFLEET, cli_env, job_pids, reap_jobs, tf, write_spec


def spec_file(tmp_path: Path, script: str = "env_dump.py", **fields: object) -> Path:
    return write_spec(tmp_path, script, as_yaml=True, **{"name": "cli", "procs_per_node": 1, **fields})


@pytest.mark.timeout(30)
def test_dry_run_prints_the_request_and_starts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tf(home, "run", str(spec_file(tmp_path)), "--dry-run", "--set", "nodes=3")
    assert out.returncode == 0, out.stderr
    request = yaml.safe_load(out.stdout)
    assert request["backend"] == "local" and request["world_size"] == 3
    assert [a["node_rank"] for a in request["agents"]] == [0, 1, 2]
    assert all(a["argv"][-1] == str(JOBS / "env_dump.py") for a in request["agents"])
    as_json = json.loads(tf(home, "run", str(spec_file(tmp_path)), "--dry-run", "--json").stdout)
    assert len(as_json["agents"]) == 2
    assert not (home / "runs").exists()
    assert not (home / "trainfleet.db").exists()  # nothing recorded: no job, no database


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "needle"), [
    (["run", "{spec}", "--set", "nodes=0"], "nodes: must be >= 1"),
    (["run", "{tmp}/missing.yaml"], "missing.yaml"),
    (["run", "{spec}", "--set", "workdir=/no/such/dir"], "workdir"),
    (["cancel", "ffffffff"], "no such job: ffffffff"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    spec = spec_file(tmp_path)
    argv = [a.format(spec=spec, tmp=tmp_path) for a in args]
    out = tf(tmp_path / "home", *argv)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainfleet: error:") and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ctrl_c_on_a_foreground_run_cancels_the_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.Popen([TRAINFLEET, "run", str(spec_file(tmp_path, "sleeper.py"))], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _interrupt_and_check(proc, home)
    finally:  # never leave a job behind, even when an assertion failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reap_jobs(home)


def _interrupt_and_check(proc: subprocess.Popen, home: Path) -> None:
    deadline = time.monotonic() + 30
    while len(list(home.glob("runs/*/attempt-0/node-*/rank-*.out"))) < 2 or not all(
            "ready" in f.read_text() for f in home.glob("runs/*/attempt-0/node-*/rank-*.out")):
        assert time.monotonic() < deadline, "ranks never became ready"
        time.sleep(0.1)
    job = next(home.glob("runs/*")).name
    assert len(job_pids(job)) == 4
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert re.search(rf"job {job} cancelled", err)
    assert job_pids(job) == []
    st = json.loads(tf(home, "status", job, "--json").stdout)
    assert st["state"] == "cancelled"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_cancel_of_a_finished_job_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = tf(home, "run", str(spec_file(tmp_path)))
    assert done.returncode == 0, done.stderr
    job = re.search(r"job ([0-9a-f]{8})", done.stderr).group(1)  # type: ignore[union-attr]
    out = tf(home, "cancel", job)
    assert out.returncode == 1
    assert f"job {job} had already ended: succeeded" in out.stderr


@pytest.mark.timeout(30)
def test_a_netns_job_dry_runs_without_a_testbed_and_is_refused_when_its_hosts_are_not_up(tmp_path: Path,
                                                                                         ) -> None:
    home = tmp_path / "home"
    spec = str(spec_file(tmp_path, backend="netns"))
    out = tf(home, "run", spec, "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    request = json.loads(out.stdout)
    assert request["backend"] == "netns" and request["master_addr"] == "10.231.0.1"
    assert [a["argv"][:4] for a in request["agents"]] == [["ip", "netns", "exec", f"tfh{n}"] for n in (1, 2)]
    # tfh1..tfh200 are never all up here (the testbed tests bring up 4 at most).
    refused = tf(home, "run", spec, "--set", "nodes=199", "--set", "spare_nodes=1")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainfleet: error: netns backend: "), refused.stderr
    assert tf(home, "list", "--json").stdout.strip() == "[]"  # nothing was recorded


@pytest.mark.timeout(30)
def test_importing_the_cli_loads_no_store_and_help_lists_every_command(tmp_path: Path) -> None:
    heavy = ("sqlalchemy", "pydantic", "yaml", "trainfleet.store")
    code = f"import sys, trainfleet.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    helped = tf(tmp_path / "home", "--help")
    assert helped.returncode == 0, helped.stderr
    listed = set(re.findall(r"^│ ([a-z][a-z-]+) ", helped.stdout, flags=re.MULTILINE))
    assert listed == {"collect", "debug", "doctor", "list", "status", "logs", "probe", "probe-history",
                      "resume", "run", "cancel", "schema", "ui", "nodes"}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_netns_job_runs_each_node_in_its_testbed_host(tmp_path: Path) -> None:
    """Needs root and iproute2, like tests/integration/test_probe_netns.py; the testbed is removed after."""
    from trainfleet.testbed import netns

    home = tmp_path / "home"
    netns.down()
    try:
        netns.up(2)
        out = tf(home, "run", str(spec_file(tmp_path, backend="netns")), timeout=60)
    finally:
        netns.down()
        reap_jobs(home)
    assert out.returncode == 0, out.stderr
    job = re.search(r"job ([0-9a-f]{8}) succeeded", out.stderr).group(1)  # type: ignore[union-attr]
    doc = json.loads(tf(home, "status", job, "--json").stdout)
    assert (doc["backend"], doc["supervisor"]["addr"].split(":")[0]) == ("netns", "10.231.0.254")
    assert sorted((r["rank"], r["host"], r["exit_code"]) for r in doc["ranks"]) == [(0, "tfh1", 0),
                                                                                   (1, "tfh2", 0)]
    for node in (0, 1):
        text = Path(doc["run_dir"], "attempt-0", f"node-{node}", f"rank-{node}.out").read_text()
        env = json.loads(text.split("ENV ", 1)[1].splitlines()[0])
        assert env["MASTER_ADDR"] == "10.231.0.1"  # the rendezvous is tfh1's namespace address

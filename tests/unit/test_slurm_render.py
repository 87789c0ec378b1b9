"""The Slurm backend's render step: pure, golden-tested, every user value quoted for the shell body."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trainfleet.backends.base import AttemptPlan
from trainfleet.backends.slurm.backend import SlurmBackend
from trainfleet.backends.slurm.render import render_request, render_script
from trainfleet.errors import BackendError
from trainfleet.spec import JobSpec

GOLDEN = Path(__file__).parents[1] / "fixtures" / "slurm" / "golden"
HOSTILE = ["$(touch /tmp/pwned)", "'; rm -rf ~ #", "line1\nline2", "`id`", "a b", "*", "\\", '"$HOME"']

SPEC = JobSpec.model_validate({
    "name": "golden", "backend": "slurm", "command": ["python", "train.py", "--steps", "300", *HOSTILE],
    "nodes": 2, "procs_per_node": 2, "env": {"EXTRA": "1; rm -rf ~", "NL": "a\nb", "TICK": "`id`$(id)"},
    "workdir": "/work/demo dir/$(x)", "checkpoint_dir": "/work/demo/ckpt", "grace_s": 2.5,
    "heartbeat_interval_s": 0.5,
})
PLAN = AttemptPlan(job_id="0123abcd", attempt=1, run_dir="/home/u/.trainfleet/runs/0123abcd",
                   master_addr="127.0.0.1", master_port=29555, supervisor_addr="127.0.0.1:40001",
                   python="/usr/bin/python3")


def golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("TRAINFLEET_UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


def test_script_matches_the_golden_file() -> None:
    script = render_script(SPEC, PLAN)
    assert script == golden("attempt1.sbatch", script)


def test_script_with_exclusions_and_partition_matches_the_golden_file() -> None:
    script = render_script(SPEC, PLAN, exclude=["node3", "node1", "node3"], partition="debug")
    assert script == golden("attempt1_exclude.sbatch", script)
    assert "#SBATCH --exclude=node1,node3\n" in script


def test_script_pinned_to_a_nodelist_matches_the_golden_file() -> None:
    script = render_script(SPEC, PLAN, nodelist=["node3", "node1", "node3"], partition="debug")
    assert script == golden("attempt1_nodelist.sbatch", script)
    pinned = "#SBATCH --nodelist=node1,node3\n"
    assert pinned in script
    # the only difference from the same attempt without a nodelist is that one directive
    assert script.replace(pinned, "") == render_script(SPEC, PLAN, partition="debug")
    assert "--nodelist" not in render_script(SPEC, PLAN) and "--nodelist" not in render_script(
        SPEC, PLAN, exclude=["node2"])
    with_exclude = render_script(SPEC, PLAN, nodelist=["node1"], exclude=["node2"])
    assert "#SBATCH --nodelist=node1\n#SBATCH --exclude=node2\n" in with_exclude


@pytest.mark.parametrize(("nodelist", "exclude", "message"), [
    (["node 1"], [], "nodelist: 'node 1' is not a Slurm node name"),
    (["node1\n#SBATCH --uid=0"], [], r"nodelist: 'node1\\n#SBATCH --uid=0' is not a Slurm node name"),
    (["$(x)"], [], r"nodelist: '\$\(x\)' is not a Slurm node name"),
    (["node1", "node2", "node3"], [], r"nodelist: 3 nodes named \(node1,node2,node3\) but the job asks "
                                      "for 2"),
    (["node1", "node2"], ["node2"], "nodelist: node2 also excluded; Slurm cannot run the job"),
])
def test_bad_nodelists_are_refused(nodelist: list[str], exclude: list[str], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        render_script(SPEC, PLAN, nodelist=nodelist, exclude=exclude)


def test_backend_pinned_to_nodes_renders_them_and_never_excludes_one() -> None:
    backend = SlurmBackend(nodelist=["node4", "node2"], partition="debug")
    script = backend.render(SPEC, PLAN).script
    assert "#SBATCH --nodelist=node2,node4\n" in script and "#SBATCH --partition=debug\n" in script
    backend.exclude_nodes(["node2"], wanted=2)  # the supervisor blames a pinned node: it stays pinned
    assert backend.exclude == () and "--exclude" not in backend.render(SPEC, PLAN).script
    with pytest.raises(BackendError, match="node2 both in nodelist and exclude"):
        SlurmBackend(nodelist=["node2"], exclude=["node2"])
    with pytest.raises(BackendError, match="nodelist: 'node 2' is not a Slurm node name"):
        SlurmBackend(nodelist=["node 2"])


def test_request_matches_the_golden_json() -> None:
    request = render_request(SPEC, PLAN).to_dict()
    text = json.dumps(request, indent=2) + "\n"
    assert text == golden("request.json", text)
    assert [agent["log_path"] for agent in request["agents"]] == [
        "/home/u/.trainfleet/runs/0123abcd/attempt-1/node-0/agent.log",
        "/home/u/.trainfleet/runs/0123abcd/attempt-1/node-1/agent.log",
    ]


def test_render_is_pure_and_deterministic(tmp_path: Path) -> None:
    plan = AttemptPlan(**{**PLAN.__dict__, "run_dir": str(tmp_path / "runs" / "x")})
    backend = SlurmBackend()
    assert backend.render(SPEC, plan) == backend.render(SPEC, plan)
    assert not (tmp_path / "runs").exists()


def test_directives_come_before_any_command_and_carry_the_contract() -> None:
    lines = render_script(SPEC, PLAN).splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH ")]
    assert lines[1:1 + len(directives)] == directives  # sbatch stops reading at the first command
    for wanted in ("--job-name=tf-golden-0123abcd-a1", "--nodes=2", "--ntasks-per-node=1", "--no-requeue",
                   "--signal=B:USR1@60", "--cpus-per-task=2",
                   "--output=/home/u/.trainfleet/runs/0123abcd/attempt-1/slurm-%j.out"):
        assert f"#SBATCH {wanted}" in directives


def test_srun_line_gives_back_the_exact_agent_argv() -> None:
    """The agent line, parsed the way bash parses it, is the agent argv with MASTER_ADDR from the script."""
    script = render_script(SPEC, PLAN)
    start = script.index("srun ")
    end = script.index(" &\n", start)
    argv = shlex.split(script[start:end].replace("\\\n", " ").replace('"$MASTER_ADDR"', "MASTERHOST"))
    agent = argv[argv.index("/usr/bin/python3"):]
    assert agent[agent.index("--") + 1:] == SPEC.argv
    assert agent[agent.index("--master-addr") + 1] == "MASTERHOST"
    assert agent[agent.index("--workdir") + 1] == "/work/demo dir/$(x)"
    assert "--node-rank" not in agent  # each agent reads $SLURM_NODEID


def test_exports_evaluate_to_the_values_and_run_nothing(tmp_path: Path) -> None:
    """Real bash evaluates the script's export lines: the values come back unchanged, nothing is executed."""
    exports = [line for line in render_script(SPEC, PLAN).splitlines() if line.startswith("export ") and
               "MASTER_ADDR" not in line]
    # Values with a newline continue on the next line(s) inside their quotes: rebuild them as bash would.
    script = render_script(SPEC, PLAN)
    body = script[script.index("export "):script.index("mapfile")]
    probe = (f"cd {shlex.quote(str(tmp_path))}\n{body}\n"
             f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'\n")
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=10, check=True,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    env = json.loads(done.stdout)
    assert {k: env[k] for k in SPEC.env} == SPEC.env
    assert env["TRAINFLEET_JOB_ID"] == "0123abcd" and env["TRAINFLEET_ATTEMPT"] == "1"
    assert len(exports) >= len(SPEC.env)
    assert list(tmp_path.iterdir()) == [] and not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("bad", ["node 1", "node1\n#SBATCH --uid=0", "$(x)", ""])
def test_bad_exclude_names_are_refused(bad: str) -> None:
    with pytest.raises(BackendError, match="exclude"):
        render_script(SPEC, PLAN, exclude=[bad])


def test_run_dir_sbatch_would_misread_is_one_clear_error() -> None:
    plan = AttemptPlan(**{**PLAN.__dict__, "run_dir": "/home/u/my runs/x"})
    with pytest.raises(BackendError, match="#SBATCH"):
        render_script(SPEC, plan)


def test_backend_excludes_given_nodes() -> None:
    backend = SlurmBackend(exclude=["node2"])
    assert "#SBATCH --exclude=node2\n" in backend.render(SPEC, PLAN).script


# ---- fleet collection: node choice on recorded sinfo output, and the collect script -------------------
RECORDED = Path(__file__).parents[1] / "fixtures" / "slurm"


def recorded_nodes(name: str) -> list:
    from trainfleet.backends.slurm import parse_sinfo_json

    return parse_sinfo_json((RECORDED / name).read_text())


def test_collect_skips_drained_and_down_nodes_with_the_reason() -> None:
    from trainfleet.backends.slurm.collect import Skipped, choose_nodes

    chosen, skipped = choose_nodes(recorded_nodes("sinfo_idle_drained_down.json"), partition=None, count=None)
    assert chosen == ["node1", "node2"]
    assert skipped == [Skipped("node3", "drained: test"), Skipped("node4", "down: test-down")]


def test_collect_skips_a_draining_node_and_honours_partition_and_count() -> None:
    from trainfleet.backends.slurm.collect import Skipped, choose_nodes

    nodes = recorded_nodes("sinfo_alloc_draining.json")
    chosen, skipped = choose_nodes(nodes, partition="debug", count=1)
    assert chosen == ["node1"]
    assert Skipped("node2", "draining: draining-test") in skipped
    assert Skipped("node3", "--nodes 1 already chosen") in skipped
    assert choose_nodes(nodes, partition="gpu", count=None) == ([], [])


def test_collect_script_pins_the_chosen_nodes_and_quotes_the_output_dir() -> None:
    from trainfleet.backends.slurm.collect import render_collect_script

    script = render_collect_script(Path("/shared/fleet $(x)"), ["node2", "node1"], python="/usr/bin/python3",
                                   partition="debug", timeout_s=30)
    assert script == golden("collect.sbatch", script)
    assert "#SBATCH --nodelist=node1,node2\n" in script and "#SBATCH --nodes=2\n" in script
    srun = shlex.split(script.splitlines()[-1])
    assert srun[srun.index("--out") + 1] == "/shared/fleet $(x)"


def test_dry_run_prints_the_sbatch_script_and_starts_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: dry\nbackend: slurm\nnodes: 2\ncommand: [python, train.py, '$(touch pwned)']\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFLEET_")}
    done = subprocess.run([str(Path(sys.executable).parent / "trainfleet"), "run", str(spec), "--dry-run"],
                          cwd=tmp_path, env=env | {"TRAINFLEET_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --nodes=2" in lines
    assert "#SBATCH --job-name=tf-dry-<job-id>-a0" in lines
    assert "-- python train.py '$(touch pwned)' &" in done.stdout
    assert not (tmp_path / "home" / "runs").exists() and not (tmp_path / "pwned").exists()

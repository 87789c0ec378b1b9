"""The local backend's render step: pure, golden-tested, and what ``--dry-run`` prints."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainfleet.backends.base import AttemptPlan
from trainfleet.backends.local import LocalBackend
from trainfleet.spec import JobSpec

GOLDEN = Path(__file__).parents[1] / "fixtures" / "jobs" / "local_request.golden.json"

SPEC = JobSpec.model_validate({
    "name": "golden", "command": ["python", "train.py", "--steps", "300", "$(touch /tmp/pwned)", "a b"],
    "nodes": 2, "procs_per_node": 2, "env": {"EXTRA": "1; rm -rf ~"}, "workdir": "/work/demo",
    "checkpoint_dir": "/work/demo/ckpt", "grace_s": 2.5, "heartbeat_interval_s": 0.5,
})
PLAN = AttemptPlan(job_id="0123abcd", attempt=1, run_dir="/home/u/.trainfleet/runs/0123abcd",
                   master_addr="127.0.0.1", master_port=29555, supervisor_addr="127.0.0.1:40001",
                   python="/usr/bin/python3")


def test_render_matches_the_golden_request() -> None:
    rendered = LocalBackend().render(SPEC, PLAN).to_dict()
    if os.environ.get("TRAINFLEET_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(rendered, indent=2) + "\n")
    assert rendered == json.loads(GOLDEN.read_text())


def test_render_is_pure_and_deterministic(tmp_path: Path) -> None:
    plan = AttemptPlan(**{**PLAN.__dict__, "run_dir": str(tmp_path / "runs" / "x")})
    first = LocalBackend().render(SPEC, plan)
    assert first == LocalBackend().render(SPEC, plan)
    assert not (tmp_path / "runs").exists()  # no directories, files or processes


def test_user_values_stay_single_argv_items_after_the_separator() -> None:
    agent = LocalBackend().render(SPEC, PLAN).agents[0]
    tail = agent.argv[agent.argv.index("--") + 1:]
    assert tail == SPEC.argv
    assert agent.env["EXTRA"] == "1; rm -rf ~"


def test_one_agent_per_node_with_its_node_rank_and_log() -> None:
    request = LocalBackend().render(SPEC, PLAN)
    assert [a.node_rank for a in request.agents] == [0, 1]
    for agent in request.agents:
        argv = agent.argv
        assert argv[argv.index("--node-rank") + 1] == str(agent.node_rank)
        assert argv[argv.index("--master-port") + 1] == "29555"
        assert agent.log_path == f"{PLAN.run_dir}/attempt-1/node-{agent.node_rank}/agent.log"
    assert request.world_size == 4


def test_omp_threads_default_to_one_unless_the_spec_sets_them() -> None:
    assert LocalBackend().render(SPEC, PLAN).agents[0].env["OMP_NUM_THREADS"] == "1"
    custom = SPEC.model_copy(update={"env": {"OMP_NUM_THREADS": "4"}})
    assert LocalBackend().render(custom, PLAN).agents[0].env["OMP_NUM_THREADS"] == "4"


def test_the_agent_parser_accepts_the_rendered_command_line() -> None:
    from trainfleet.runtime.agent import build_parser

    argv = LocalBackend().render(SPEC, PLAN).agents[1].argv
    args = build_parser().parse_args(argv[3:])  # drop "python -m trainfleet.runtime.agent"
    assert (args.node_rank, args.nnodes, args.nproc_per_node, args.attempt) == (1, 2, 2, 1)
    assert (args.grace_s, args.heartbeat_interval_s) == (2.5, 0.5)
    assert args.command[1:] == SPEC.argv

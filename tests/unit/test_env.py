"""The rank environment: the torchrun-compatible contract plus trainfleet's own variables."""

from __future__ import annotations

import pytest

from trainfleet.runtime.env import CONTRACT_VARS, Placement, rank_env, rank_log_paths

PLACEMENT = Placement(job_id="0123abcd", attempt=2, node_rank=1, nnodes=2, nproc_per_node=4,
                      master_addr="10.0.0.1", master_port=29555, run_dir="/runs/0123abcd",
                      checkpoint_dir="/ckpt")


def test_every_contract_variable_is_set_for_a_rank() -> None:
    env = rank_env({"PATH": "/bin"}, PLACEMENT, 3, report_addr="127.0.0.1:4000")
    assert set(CONTRACT_VARS) <= set(env)
    assert env["PATH"] == "/bin"
    assert (env["RANK"], env["ROLE_RANK"], env["WORLD_SIZE"]) == ("7", "7", "8")
    assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4")
    assert (env["NODE_RANK"], env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == ("1", "1", "2")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29555")
    assert env["TORCHELASTIC_RESTART_COUNT"] == env["TRAINFLEET_ATTEMPT"] == "2"
    assert env["TRAINFLEET_JOB_ID"] == env["TORCHELASTIC_RUN_ID"] == "0123abcd"
    assert (env["ROLE_NAME"], env["ROLE_WORLD_SIZE"]) == ("default", "8")
    assert env["TRAINFLEET_CHECKPOINT_DIR"] == "/ckpt"
    assert env["TRAINFLEET_RUN_DIR"] == "/runs/0123abcd"
    assert env["TRAINFLEET_REPORT_ADDR"] == "127.0.0.1:4000"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_omp_threads_default_to_one_but_an_explicit_value_wins() -> None:
    assert rank_env({}, PLACEMENT, 0)["OMP_NUM_THREADS"] == "1"
    assert rank_env({"OMP_NUM_THREADS": "8"}, PLACEMENT, 0)["OMP_NUM_THREADS"] == "8"


def test_stale_trainfleet_values_from_the_parent_do_not_leak() -> None:
    no_ckpt = Placement(**{**PLACEMENT.__dict__, "checkpoint_dir": None})
    base = {"TRAINFLEET_CHECKPOINT_DIR": "/old", "TRAINFLEET_REPORT_ADDR": "1.2.3.4:5", "RANK": "99"}
    env = rank_env(base, no_ckpt, 0)
    assert "TRAINFLEET_CHECKPOINT_DIR" not in env
    assert "TRAINFLEET_REPORT_ADDR" not in env
    assert env["RANK"] == "4"
    assert base["RANK"] == "99"  # the input is not modified


def test_ranks_are_contiguous_per_node_and_cover_the_world_once() -> None:
    seen = []
    for node in range(3):
        p = Placement(job_id="j", attempt=0, node_rank=node, nnodes=3, nproc_per_node=2, master_addr="h",
                      master_port=1, run_dir="/r")
        seen += [int(rank_env({}, p, lr)["RANK"]) for lr in range(2)]
    assert seen == list(range(6))


@pytest.mark.parametrize("local_rank", [-1, 4])
def test_local_rank_outside_the_node_is_rejected(local_rank: int) -> None:
    with pytest.raises(ValueError, match="local_rank"):
        rank_env({}, PLACEMENT, local_rank)


def test_log_paths_follow_the_run_dir_layout() -> None:
    assert rank_log_paths("/runs/j", 1, 0, 5) == ("/runs/j/attempt-1/node-0/rank-5.out",
                                                  "/runs/j/attempt-1/node-0/rank-5.err")

"""The environment of one rank: the torchrun-compatible variables plus trainfleet's own.

Pure functions: ``rank_env(base, placement, local_rank)`` returns a new mapping and touches nothing.
A script written for ``torchrun`` finds everything it expects (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, NODE_RANK/GROUP_RANK, ROLE_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Variables trainfleet always sets for a rank (the job contract); anything else comes from the agent's env.
CONTRACT_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT", "TRAINFLEET_JOB_ID", "TRAINFLEET_ATTEMPT", "TRAINFLEET_CHECKPOINT_DIR",
    "TRAINFLEET_RUN_DIR", "TRAINFLEET_REPORT_ADDR", "PYTHONUNBUFFERED",
)


@dataclass(frozen=True)
class Placement:
    """Where one node's ranks sit in the job: the facts every rank environment is built from."""

    job_id: str
    attempt: int
    node_rank: int
    nnodes: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    run_dir: str
    checkpoint_dir: str | None = None

    @property
    def world_size(self) -> int:
        """Total ranks in the job."""
        return self.nnodes * self.nproc_per_node

    def global_rank(self, local_rank: int) -> int:
        """Global rank of ``local_rank`` on this node (nodes hold contiguous blocks of ranks)."""
        return self.node_rank * self.nproc_per_node + local_rank


def rank_env(
    base: Mapping[str, str], placement: Placement, local_rank: int, *, report_addr: str | None = None
) -> dict[str, str]:
    """The full environment for ``local_rank``: ``base`` (the agent's env, spec env included) + the contract.

    ``OMP_NUM_THREADS`` is set to 1 unless ``base`` already has it (as torchrun does: several ranks on one
    host otherwise oversubscribe the cores). ``TRAINFLEET_CHECKPOINT_DIR`` is set only when known.
    """
    if not 0 <= local_rank < placement.nproc_per_node:
        raise ValueError(f"local_rank {local_rank} outside 0..{placement.nproc_per_node - 1}")
    env = dict(base)
    env.setdefault("OMP_NUM_THREADS", "1")
    rank = str(placement.global_rank(local_rank))
    env.update(
        RANK=rank,
        ROLE_RANK=rank,
        WORLD_SIZE=str(placement.world_size),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(placement.nproc_per_node),
        NODE_RANK=str(placement.node_rank),
        GROUP_RANK=str(placement.node_rank),
        GROUP_WORLD_SIZE=str(placement.nnodes),
        ROLE_NAME="default",
        ROLE_WORLD_SIZE=str(placement.world_size),
        TORCHELASTIC_RUN_ID=placement.job_id,
        MASTER_ADDR=placement.master_addr,
        MASTER_PORT=str(placement.master_port),
        TORCHELASTIC_RESTART_COUNT=str(placement.attempt),
        TRAINFLEET_JOB_ID=placement.job_id,
        TRAINFLEET_ATTEMPT=str(placement.attempt),
        TRAINFLEET_RUN_DIR=placement.run_dir,
        PYTHONUNBUFFERED="1",
    )
    if placement.checkpoint_dir:
        env["TRAINFLEET_CHECKPOINT_DIR"] = placement.checkpoint_dir
    else:
        env.pop("TRAINFLEET_CHECKPOINT_DIR", None)
    if report_addr:
        env["TRAINFLEET_REPORT_ADDR"] = report_addr
    else:
        env.pop("TRAINFLEET_REPORT_ADDR", None)
    return env


def rank_log_paths(run_dir: str, attempt: int, node_rank: int, rank: int) -> tuple[str, str]:
    """``(stdout, stderr)`` file paths of a rank: ``<run_dir>/attempt-<k>/node-<n>/rank-<r>.out|.err``."""
    stem = f"{run_dir}/attempt-{attempt}/node-{node_rank}/rank-{rank}"
    return f"{stem}.out", f"{stem}.err"

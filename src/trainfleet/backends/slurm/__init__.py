"""The Slurm backend: states table, output parsers and hostlists; ``render`` (the sbatch script, pure),
``backend.SlurmBackend`` (sbatch / squeue / scancel behind the ``Backend`` seam) and ``collect`` (one job
that runs ``trainfleet collect`` on every usable node).

Tested against real Slurm 22.05 daemons started by ``scripts/slurm-dev-cluster up``.
"""

from __future__ import annotations

from trainfleet.backends.slurm.hostlist import expand_hostlist
from trainfleet.backends.slurm.parse import (
    SlurmJob,
    SlurmNode,
    SubmittedJob,
    parse_sbatch_output,
    parse_sinfo_json,
    parse_squeue_json,
)
from trainfleet.backends.slurm.states import SLURM_JOB_STATES, job_state_from_slurm

__all__ = [
    "SLURM_JOB_STATES",
    "SlurmJob",
    "SlurmNode",
    "SubmittedJob",
    "expand_hostlist",
    "job_state_from_slurm",
    "parse_sbatch_output",
    "parse_sinfo_json",
    "parse_squeue_json",
]

"""The one table from Slurm job states to trainfleet's ``JobState``.

Slurm reports a job's state as one name (``job_state`` in ``squeue --json``, ``squeue -o %T``, ``sacct``):
a flag name when a flag is set (COMPLETING, CONFIGURING, REQUEUED, ...), else the base state. The names below
are every string Slurm 22.05's ``job_state_string()`` can return. Newer Slurm versions (data_parser, 23.02+)
give a list such as ``["PENDING", "REQUEUED"]``; ``job_state_from_slurm`` reads both forms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from trainfleet.errors import EngineOutputError
from trainfleet.spec.state import JobState

P, R, S, F, C = JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED

SLURM_JOB_STATES: Mapping[str, JobState] = MappingProxyType(
    {
        # Waiting: no rank of ours runs yet, or none will until Slurm (or an admin) lets it.
        "PENDING": P,
        "CONFIGURING": P,  # allocated, nodes still booting/being set up: our ranks have not started
        "REQUEUED": P,  # going back to the queue (preemption, node failure, scontrol requeue)
        "REQUEUE_FED": P,
        "REQUEUE_HOLD": P,  # requeued and held until released
        "SPECIAL_EXIT": P,  # requeued and held after a special exit code
        "RESV_DEL_HOLD": P,  # held because its reservation was deleted
        # Stopped with SIGSTOP but holding its allocation: pending, so no hang detector fires while frozen.
        "SUSPENDED": P,
        "STOPPED": P,
        # Running: processes may exist on the allocation (cancel must still reach them).
        "RUNNING": R,
        "COMPLETING": R,  # the batch script ended, epilogs or stray processes still run on some node
        "RESIZING": R,
        "SIGNALING": R,
        "STAGE_OUT": R,  # burst-buffer stage-out after the script ended; the outcome is not final yet
        # Finished.
        "COMPLETED": S,
        "FAILED": F,
        "TIMEOUT": F,
        "NODE_FAIL": F,
        "PREEMPTED": F,  # preempted without requeue; the supervisor may resubmit
        "OUT_OF_MEMORY": F,
        "BOOT_FAIL": F,
        "DEADLINE": F,
        "CANCELLED": C,
        "REVOKED": C,  # federation: this sibling was removed because another cluster ran the job
    }
)


def job_state_from_slurm(native: str | Sequence[str]) -> JobState:
    """Map a Slurm job state (``"RUNNING"``, ``"CANCELLED by 0"``) or a 23.02+ list of them to a ``JobState``.

    In a list the flags (COMPLETING, REQUEUED, ...) decide over the base state, as in Slurm's own
    ``job_state_string()``. Raises ``EngineOutputError`` for a name not in ``SLURM_JOB_STATES``.
    """
    names = [native] if isinstance(native, str) else list(native)
    if not names or not all(isinstance(name, str) for name in names):
        raise EngineOutputError(f"job state must be a name or a list of names, got {native!r}")
    # `sacct` appends the canceller ("CANCELLED by 0") and squeue never does: keep the first word.
    words = [name.split(" ", 1)[0].upper() for name in names]
    unknown = [word for word in words if word not in SLURM_JOB_STATES]
    if unknown:
        raise EngineOutputError(f"unknown Slurm job state {unknown[0]!r}")
    flag = next((name for name in _FLAGS_BY_PRIORITY if name in words), None)
    return SLURM_JOB_STATES[flag or words[0]]


# The state flags in the order Slurm's job_state_string() tests them; the other names are base states.
_FLAGS_BY_PRIORITY = (
    "COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING",
)  # fmt: skip

"""The job spec: what a user asks trainfleet to run, validated at the YAML edge.

``JobSpec`` is frozen; build a changed copy with ``model_copy(update=...)`` or ``with_resolved_paths``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Strict: YAML's `yes`/`true` must not silently become 1 node.
Count = Annotated[int, Field(strict=True)]
Seconds = Annotated[float, Field(strict=True)]
Rate = Annotated[float, Field(strict=True)]
# Growth factors and caps: .inf / .nan in YAML would make the arithmetic on them meaningless.
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class RestartPolicy(BaseModel):
    """How often, and how slowly, a failed attempt is restarted.

    The wait before restart ``k`` (1 for the first) is ``backoff_s * backoff_factor**(k-1)``, never more than
    ``max_backoff_s`` (but never less than ``backoff_s``: the cap bounds the growth, not the first wait).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_restarts: Count = Field(0, ge=0, description="Restarts allowed after the first attempt fails.")
    backoff_s: Finite = Field(1.0, ge=0, description="Seconds to wait before the first restart.")
    backoff_factor: Finite = Field(
        1.0, ge=1, description="Each further restart waits this many times longer than the one before "
        "(1: always backoff_s).")
    max_backoff_s: Finite = Field(
        300.0, ge=0, description="Upper bound, in seconds, of the growing wait (never below backoff_s).")
    max_preemptions: Count | None = Field(
        None, ge=0, description="New attempts allowed after the engine itself ended one (preempted, timed "
        "out, requeued); these do not count against max_restarts. null: no limit.")


class AllreduceGate(BaseModel):
    """The all-reduce a node set must pass before launch: busbw at ``size`` >= ``min_busbw_gbps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_busbw_gbps: Rate = Field(gt=0, description="Lowest acceptable all-reduce bus bandwidth, GB/s.")
    size: str = Field("16M", description="Message size measured (binary units: 1M, 64M, 1G).")

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]+\s*[KMGkmg]?(?:i?B)?", value.strip()):
            raise ValueError(f"cannot read {value!r} as a size (examples: 1M, 64M, 1G)")
        return value.strip()


class Preflight(BaseModel):
    """Checks of the chosen nodes before launch: nodes that fail are excluded, spares take their place."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    doctor: bool = Field(False, description="Judge each node's captured bundle with the fleet doctor.")
    doctor_fail_on: Literal["error", "warning"] = Field(
        "error", description="Doctor findings of this severity or worse exclude a node.")
    allreduce: AllreduceGate | None = Field(None, description="All-reduce bandwidth gate (probe, bisection).")
    timeout_s: Seconds = Field(300.0, gt=0, description="Seconds the whole preflight may take.")
    before_restart: bool = Field(False, description="Run the preflight again before every restart.")


class JobSpec(BaseModel):
    """A training job: the command every rank runs, the shape of the world, and how to keep it alive.

    Promises after validation: ``argv`` is a non-empty list of strings (a string ``command`` is split with
    ``shlex.split``, never run through a shell), counts are >= 1 (or >= 0 where stated), durations are
    non-negative numbers of seconds, and ``env`` maps valid variable names to strings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, title="trainfleet job spec")

    name: str = Field(
        pattern=NAME_PATTERN, description="Job name: letters, digits, '.', '_', '-'; 1-64 chars."
    )
    command: list[str] | str = Field(
        description="Command every rank runs: a list of arguments, or a string split like a shell would "
        "(but never run through one)."
    )
    nodes: Count = Field(ge=1, description="Logical nodes (one agent each).")
    procs_per_node: Count = Field(1, ge=1, description="Ranks per node (GPUs per node on a GPU cluster).")
    backend: Literal["local", "slurm", "netns"] = Field(
        "local", description="Where the ranks run: local processes, a Slurm allocation, or the namespaced "
        "testbed hosts tfh1..tfhN (scripts/testbed up N; needs root).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every rank.")
    workdir: str = Field(".", description="Working directory of every rank; relative to where `run` starts.")
    checkpoint_dir: str | None = Field(
        None, description="Passed to ranks as TRAINFLEET_CHECKPOINT_DIR; relative to where `run` starts."
    )
    restart: RestartPolicy = Field(default_factory=RestartPolicy, description="Restart policy.")
    hang_timeout_s: Seconds = Field(300.0, gt=0, description="A rank without progress this long is hung.")
    startup_timeout_s: Seconds | None = Field(
        None, gt=0, description="A rank that has not reported any progress this long after it started is "
        "hung (e.g. stuck in rendezvous or NCCL init). Off by default: a script that never calls "
        "trainfleet.report() is not a hang.")
    straggler_factor: Finite = Field(
        2.0, gt=1, description="A rank is a straggler when its median step time over the window exceeds "
        "this many times the median of the other ranks.")
    straggler_window: Count = Field(
        8, ge=2, description="Steps in the window: the most recent step times per rank that are compared "
        "(no rank is judged before it has this many).")
    spare_nodes: Count = Field(0, ge=0, description="Extra nodes that can replace a node blamed for failure.")
    heartbeat_interval_s: Seconds = Field(1.0, gt=0, description="Agent heartbeat period.")
    grace_s: Seconds = Field(5.0, ge=0, description="Seconds from SIGTERM to SIGKILL when stopping ranks.")
    preflight: Preflight | None = Field(None, description="Node checks before launch (and restarts).")

    @field_validator("command", mode="before")
    @classmethod
    def _check_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                parts = shlex.split(value)
            except ValueError as exc:  # unbalanced quotes
                raise ValueError(f"cannot split command: {exc}") from None
            if not parts:
                raise ValueError("must not be empty")
            return value
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("must not be empty")
            out = []
            for i, item in enumerate(value):
                # YAML turns `--steps, 300` into an int; accept numbers, but not booleans or nulls.
                if isinstance(item, bool) or item is None or not isinstance(item, str | int | float):
                    raise ValueError(f"item {i} must be a string, got {_kind(item)}")
                out.append(str(item))
            return out
        raise ValueError(f"must be a list of strings or a string, got {_kind(value)}")

    @field_validator("env", mode="before")
    @classmethod
    def _check_env(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic reports the type
        out: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if isinstance(item, bool):
                out[key] = "1" if item else "0"
            elif isinstance(item, str | int | float):
                out[key] = str(item)
            else:
                raise ValueError(f"{key}: must be a string, got {_kind(item)}")
        return out

    @property
    def argv(self) -> list[str]:
        """The command as an argument list, ready for ``subprocess`` without a shell."""
        if isinstance(self.command, str):
            return shlex.split(self.command)
        return list(self.command)

    @property
    def world_size(self) -> int:
        """Total number of ranks: ``nodes * procs_per_node``."""
        return self.nodes * self.procs_per_node

    def with_resolved_paths(self, base: str | Path | None = None) -> JobSpec:
        """A copy whose ``workdir`` and ``checkpoint_dir`` are absolute, resolved against ``base`` (cwd).

        A relative ``checkpoint_dir`` is resolved against ``base`` too, not against ``workdir``.
        """
        root = Path(base) if base is not None else Path.cwd()
        update: dict[str, Any] = {"workdir": str((root / self.workdir).resolve())}
        if self.checkpoint_dir is not None:
            update["checkpoint_dir"] = str((root / self.checkpoint_dir).resolve())
        return self.model_copy(update=update)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)

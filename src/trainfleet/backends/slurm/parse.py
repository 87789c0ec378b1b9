"""Parsers for Slurm command output: text in, frozen dataclasses out, no subprocess.

Written against Slurm 22.05 (``squeue --json`` / ``sinfo --json`` are openapi v0.0.38) and tested on outputs
recorded from the dev cluster (tests/fixtures/slurm/). Anything unexpected raises ``EngineOutputError`` with
the command (or file) and the JSON path of the offending field; nothing else escapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from trainfleet.backends.slurm.hostlist import expand_hostlist
from trainfleet.backends.slurm.states import job_state_from_slurm
from trainfleet.errors import EngineOutputError, InputError
from trainfleet.spec.state import JobState

__all__ = [
    "SlurmJob",
    "SlurmNode",
    "SubmittedJob",
    "expand_hostlist",
    "parse_sbatch_output",
    "parse_sinfo_json",
    "parse_squeue_json",
]

T = TypeVar("T")


@dataclass(frozen=True)
class SlurmJob:
    """One job as ``squeue --json`` reports it (finished jobs stay listed for ``MinJobAge`` seconds).

    ``state`` is trainfleet's view; ``native_state`` is Slurm's word, kept for policy (PREEMPTED vs TIMEOUT).
    ``exit_code`` is the batch script's exit status and ``exit_signal`` the signal that ended it; at most one
    is set, neither while the job runs. ``started_at`` is None while pending (Slurm's value is then only an
    estimate) and ``ended_at`` is None until the state is final.
    """

    job_id: int
    name: str
    native_state: str
    state: JobState
    state_reason: str
    partition: str
    user: str
    nodes: tuple[str, ...]
    node_count: int
    batch_host: str | None
    exit_code: int | None
    exit_signal: int | None
    restart_count: int
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    excluded_nodes: tuple[str, ...]
    stdout_path: str
    work_dir: str


@dataclass(frozen=True)
class SlurmNode:
    """One node as ``sinfo --json`` reports it: a base state (``idle``, ``mixed``, ``allocated``, ``down``,
    ``unknown``, ...) plus flags (``DRAIN``, ``NOT_RESPONDING``, ...), and the admin's reason."""

    name: str
    hostname: str
    address: str
    state: str
    flags: frozenset[str]
    reason: str
    cpus: int
    alloc_cpus: int
    real_memory_mb: int
    partitions: tuple[str, ...]

    @property
    def is_drained(self) -> bool:
        """Drain was asked and no job is left on it (what ``sinfo`` shows as ``drained``)."""
        return "DRAIN" in self.flags and not self.is_busy

    @property
    def is_draining(self) -> bool:
        """Drain was asked but jobs still run on it (``sinfo``: ``draining``)."""
        return "DRAIN" in self.flags and self.is_busy

    @property
    def is_down(self) -> bool:
        """Down, or the controller has lost contact with its slurmd."""
        return self.state == "down" or "NOT_RESPONDING" in self.flags

    @property
    def is_busy(self) -> bool:
        """Some job holds CPUs on it or is still finishing there."""
        return self.state in ("allocated", "mixed") or "COMPLETING" in self.flags

    @property
    def is_usable(self) -> bool:
        """Up and taking new jobs now or once its current jobs end: preflight and collect may use it."""
        return self.state in ("idle", "mixed", "allocated") and not (self.flags & _UNUSABLE_FLAGS)

    @property
    def condition(self) -> str:
        """What keeps it from new jobs, for messages: ``drained: <reason>``, ``down``, ``draining``..."""
        state = ("drained" if self.is_drained else "draining" if self.is_draining
                 else "down" if self.is_down else self.state)
        return f"{state}: {self.reason}" if self.reason else state


_UNUSABLE_FLAGS = frozenset({"DRAIN", "FAIL", "NOT_RESPONDING", "MAINTENANCE", "REBOOT_ISSUED"})


@dataclass(frozen=True)
class SubmittedJob:
    """What ``sbatch`` said it queued."""

    job_id: int
    cluster: str | None


def parse_squeue_json(text: str | bytes, *, source: str = "squeue --json") -> list[SlurmJob]:
    """Parse ``squeue --json`` output into jobs, in Slurm's order."""
    document = _load_document(text, source)
    return [_job(raw, source, f"jobs[{index}]") for index, raw in enumerate(_list(document, "jobs", source))]


def parse_sinfo_json(text: str | bytes, *, source: str = "sinfo --json") -> list[SlurmNode]:
    """Parse ``sinfo --json`` output into nodes, in Slurm's order."""
    document = _load_document(text, source)
    return [
        _node(raw, source, f"nodes[{index}]") for index, raw in enumerate(_list(document, "nodes", source))
    ]


_SBATCH_LINE = re.compile(r"(?:Submitted batch job (\d+)(?: on cluster (\S+))?|(\d+)(?:;(\S+))?)")


def parse_sbatch_output(text: str, *, source: str = "sbatch") -> SubmittedJob:
    """The job id in sbatch's stdout: ``Submitted batch job 12``, or ``12[;cluster]`` with --parsable."""
    if not isinstance(text, str):
        raise EngineOutputError(f"expected text, got {type(text).__name__}", source=source)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _SBATCH_LINE.fullmatch(line)
        if match is not None:
            job_id = int(match.group(1) or match.group(3))
            return SubmittedJob(job_id=job_id, cluster=match.group(2) or match.group(4))
    shown = lines[-1][:120] if lines else "(nothing)"
    raise EngineOutputError(f"no job id in the output; last line: {shown!r}", source=source)


def _load_document(text: str | bytes, source: str) -> Mapping[str, Any]:
    if not isinstance(text, str | bytes):
        raise EngineOutputError(f"expected text, got {type(text).__name__}", source=source)
    if not text.strip():
        raise EngineOutputError("no output (is slurmctld up?)", source=source)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineOutputError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", source=source
        ) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise EngineOutputError(f"not valid JSON: {type(exc).__name__}", source=source) from None
    if not isinstance(document, dict):
        raise EngineOutputError(f"expected a JSON object, got {_kind(document)}", source=source)
    errors = document.get("errors") or []
    if errors:
        raise EngineOutputError(
            f"Slurm reported an error: {_error_text(errors)}", source=source, field="errors"
        )
    return document


def _error_text(errors: Any) -> str:
    """Slurm's first error on one line, e.g. ``Failed while looking for jobs (Unspecified error, ...)``."""
    first = errors[0] if isinstance(errors, list) else errors
    if not isinstance(first, dict):
        return str(first)[:200]
    words = [str(first[key]) for key in ("description", "error", "source") if first.get(key)]
    text = f"{words[0]} ({', '.join(words[1:])})" if len(words) > 1 else (words[0] if words else str(first))
    return text[:200]


def _job(raw: Any, source: str, path: str) -> SlurmJob:
    job = _object(raw, source, path)
    native = _field(job, "job_state", (str, list), source, path)
    try:
        state = job_state_from_slurm(native)
    except EngineOutputError as exc:
        raise EngineOutputError(str(exc), source=source, field=f"{path}.job_state") from None
    native_state = native if isinstance(native, str) else ",".join(native)
    nodes = _hosts(job, "nodes", source, path)
    status = _optional(job, "exit_code", int, source, path)
    # A job cancelled while pending never ran: Slurm's 0 there is not an exit status.
    ran = state.is_terminal and bool(nodes)
    exit_code, exit_signal = _decode_wait_status(status) if ran else (None, None)
    started = _time(job, "start_time", source, path) if state is not JobState.PENDING else None
    return SlurmJob(
        job_id=_field(job, "job_id", int, source, path),
        name=_field(job, "name", str, source, path),
        native_state=native_state,
        state=state,
        state_reason=_optional(job, "state_reason", str, source, path) or "",
        partition=_optional(job, "partition", str, source, path) or "",
        user=_optional(job, "user_name", str, source, path) or "",
        nodes=nodes,
        node_count=_optional(job, "node_count", int, source, path) or 0,
        batch_host=_optional(job, "batch_host", str, source, path) or None,
        exit_code=exit_code,
        exit_signal=exit_signal,
        restart_count=_optional(job, "restart_cnt", int, source, path) or 0,
        submitted_at=_time(job, "submit_time", source, path),
        started_at=started,
        ended_at=_time(job, "end_time", source, path) if state.is_terminal else None,
        excluded_nodes=_hosts(job, "excluded_nodes", source, path),
        stdout_path=_optional(job, "standard_output", str, source, path) or "",
        work_dir=_optional(job, "current_working_directory", str, source, path) or "",
    )


def _decode_wait_status(status: int | None) -> tuple[int | None, int | None]:
    """22.05 reports the raw wait(2) status: exit 3 is 768 (3 << 8), SIGTERM is 15."""
    if status is None or status < 0:
        return None, None
    signal = status & 0x7F
    return (None, signal) if signal else (status >> 8 & 0xFF, None)


def _node(raw: Any, source: str, path: str) -> SlurmNode:
    node = _object(raw, source, path)
    flags = _optional(node, "state_flags", list, source, path) or []
    if not all(isinstance(flag, str) for flag in flags):
        raise EngineOutputError("expected a list of flag names", source=source, field=f"{path}.state_flags")
    partitions = _optional(node, "partitions", list, source, path) or []
    if not all(isinstance(partition, str) for partition in partitions):
        raise EngineOutputError(
            "expected a list of partition names", source=source, field=f"{path}.partitions"
        )
    return SlurmNode(
        name=_field(node, "name", str, source, path),
        hostname=_optional(node, "hostname", str, source, path) or "",
        address=_optional(node, "address", str, source, path) or "",
        state=_field(node, "state", str, source, path).lower(),
        flags=frozenset(flag.upper() for flag in flags),
        reason=_optional(node, "reason", str, source, path) or "",
        cpus=_optional(node, "cpus", int, source, path) or 0,
        alloc_cpus=_optional(node, "alloc_cpus", int, source, path) or 0,
        real_memory_mb=_optional(node, "real_memory", int, source, path) or 0,
        partitions=tuple(partitions),
    )


def _object(raw: Any, source: str, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise EngineOutputError(f"expected an object, got {_kind(raw)}", source=source, field=path)
    return raw


def _list(document: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        what = "missing" if value is None else f"expected a list, got {_kind(value)}"
        raise EngineOutputError(what, source=source, field=key)
    return value


def _field(obj: Mapping[str, Any], key: str, kind: type[T] | tuple[type, ...], source: str, path: str) -> T:
    if key not in obj:
        raise EngineOutputError("missing", source=source, field=f"{path}.{key}")
    value = _optional(obj, key, kind, source, path)
    if value is None:
        raise EngineOutputError("is null", source=source, field=f"{path}.{key}")
    return value


def _optional(
    obj: Mapping[str, Any], key: str, kind: type[T] | tuple[type, ...], source: str, path: str
) -> T | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python; a job id of `true` is garbage, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise EngineOutputError(
            f"expected {expected}, got {_kind(value)}", source=source, field=f"{path}.{key}"
        )
    return value


def _time(obj: Mapping[str, Any], key: str, source: str, path: str) -> datetime | None:
    """Epoch seconds -> aware UTC datetime; Slurm writes 0 for 'not set'."""
    seconds = _optional(obj, key, int, source, path)
    if not seconds:
        return None
    return _checked(lambda: datetime.fromtimestamp(seconds, UTC), source, f"{path}.{key}")


def _hosts(obj: Mapping[str, Any], key: str, source: str, path: str) -> tuple[str, ...]:
    text = _optional(obj, key, str, source, path) or ""
    try:
        return tuple(expand_hostlist(text))
    except InputError as exc:
        raise EngineOutputError(str(exc), source=source, field=f"{path}.{key}") from None


def _checked(make: Callable[[], T], source: str, field: str) -> T:
    try:
        return make()
    except (OverflowError, OSError, ValueError) as exc:
        raise EngineOutputError(f"out of range ({exc})", source=source, field=field) from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__

"""Typed messages between a node agent and its supervisor: one JSON object per line over TCP.

Agent -> supervisor: ``Hello`` (once, first), ``RankStarted``, ``RankExited``, ``Heartbeat`` (every
``heartbeat_interval_s``, carrying each rank's latest step and the progress rows reported since the last
one), ``AgentDone`` (every rank has exited; last message), ``StacksDumped`` (answer to ``DumpStacks``),
``CheckpointNotice`` (the agent got a preemption / time-limit notice and passed it on to its ranks).
Supervisor -> agent: ``Stop``, ``DumpStacks`` (write every rank's Python stacks before a teardown),
``Checkpoint`` (pass a preemption / time-limit notice on to the ranks).
A client such as ``trainfleet cancel`` -> supervisor: ``CancelRequest``; the Slurm batch script's trap ->
supervisor: ``PreemptNotice`` (one line written to ``/dev/tcp`` by bash).

The supervisor decides only from these messages (and from the connection closing), never from log text.
Deliberately stdlib only: the agent imports this module and must start fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hello:
    """An agent introduces itself: which logical node it is, its pid and host."""

    node_rank: int
    pid: int
    host: str


@dataclass(frozen=True)
class RankStarted:
    """A rank's process is running; its process group id equals ``pid``."""

    node_rank: int
    rank: int
    local_rank: int
    pid: int
    started_at: float
    log_out: str
    log_err: str


@dataclass(frozen=True)
class RankExited:
    """A rank's leader process ended with ``exit_code`` (normal exit) or ``signal`` (killed)."""

    node_rank: int
    rank: int
    exit_code: int | None
    signal: int | None
    ended_at: float

    @property
    def ok(self) -> bool:
        """True when the rank exited normally with status 0."""
        return self.exit_code == 0 and self.signal is None

    def describe(self) -> str:
        """Human cause, e.g. ``node 1 rank 3 exited with code 3`` or ``... killed by signal 9``."""
        if self.signal is None:
            return f"node {self.node_rank} rank {self.rank} exited with code {self.exit_code}"
        return f"node {self.node_rank} rank {self.rank} killed by signal {self.signal}"


@dataclass(frozen=True)
class ProgressRow:
    """One ``trainfleet.report`` call: rank, step, time and the numeric values reported."""

    rank: int
    step: int | None
    ts: float
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    """The agent is alive; ``steps`` maps rank -> latest reported step, ``rows`` are new progress rows."""

    node_rank: int
    ts: float
    steps: dict[int, int] = field(default_factory=dict)
    rows: list[ProgressRow] = field(default_factory=list)


@dataclass(frozen=True)
class AgentDone:
    """Every rank of this node has exited and been reaped; the agent is about to exit."""

    node_rank: int


@dataclass(frozen=True)
class Stop:
    """Supervisor asks the agent to stop all its ranks (SIGTERM, then SIGKILL after grace) and exit."""

    reason: str


@dataclass(frozen=True)
class DumpStacks:
    """Supervisor asks the agent to write each rank's Python stacks into ``directory`` (one file per rank)."""

    reason: str
    directory: str


@dataclass(frozen=True)
class StacksDumped:
    """The agent's answer: rank -> stack file, rank -> process state letter (``T`` = stopped), the tool."""

    node_rank: int
    files: dict[int, str] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)
    tool: str = ""


@dataclass(frozen=True)
class CheckpointNotice:
    """The agent got a preemption / time-limit notice (``source``: ``supervisor`` or the signal's name) and
    sent ``rank_signal`` to each rank in ``ranks`` so they checkpoint before the engine stops them."""

    node_rank: int
    source: str
    rank_signal: int
    ranks: list[int] = field(default_factory=list)
    ts: float = 0.0


@dataclass(frozen=True)
class Checkpoint:
    """Supervisor asks the agent to pass a preemption / time-limit notice on to its ranks."""

    reason: str


@dataclass(frozen=True)
class PreemptNotice:
    """The engine warned that it will stop the job soon (``source`` says how, e.g. ``slurm USR1``)."""

    source: str = ""


@dataclass(frozen=True)
class CancelRequest:
    """A client asks the supervisor to cancel the job."""

    reason: str = "cancelled by user"


Message = (Hello | RankStarted | RankExited | Heartbeat | AgentDone | Stop | DumpStacks | StacksDumped
           | CheckpointNotice | Checkpoint | PreemptNotice | CancelRequest)

_TYPES: dict[str, type] = {
    "hello": Hello,
    "rank_started": RankStarted,
    "rank_exited": RankExited,
    "heartbeat": Heartbeat,
    "agent_done": AgentDone,
    "stop": Stop,
    "dump_stacks": DumpStacks,
    "stacks_dumped": StacksDumped,
    "checkpoint_notice": CheckpointNotice,
    "checkpoint": Checkpoint,
    "preempt_notice": PreemptNotice,
    "cancel": CancelRequest,
}
_TAGS: dict[type, str] = {cls: tag for tag, cls in _TYPES.items()}


class ProtocolError(ValueError):
    """A line that is not a valid message."""


def encode(msg: Message) -> bytes:
    """One message as a JSON line (UTF-8, ending in a newline)."""
    body = asdict(msg)
    body["type"] = _TAGS[type(msg)]
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> Message:
    """Parse one JSON line back into its message; raises ``ProtocolError`` on anything else."""
    try:
        body = json.loads(line)
        cls = _TYPES[body.pop("type")]
        if cls is Heartbeat:
            body["steps"] = {int(k): int(v) for k, v in body.get("steps", {}).items()}
            body["rows"] = [ProgressRow(**row) for row in body.get("rows", [])]
        elif cls is StacksDumped:
            body["files"] = {int(k): str(v) for k, v in body.get("files", {}).items()}
            body["states"] = {int(k): str(v) for k, v in body.get("states", {}).items()}
        return cls(**body)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"bad message: {exc}") from None


class LineBuffer:
    """Accumulates bytes from a stream socket and yields the complete messages in them."""

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return every complete message (undecodable lines raise ``ProtocolError``)."""
        self._buf += data
        out: list[Message] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self._max:
                    raise ProtocolError("line too long")
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.strip():
                out.append(decode(line))


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` -> ``(host, port)``; raises ``ValueError`` with the address in the message."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {addr!r}")
    return host.strip("[]"), int(port)


def as_dict(msg: Message) -> dict[str, Any]:
    """The message as a plain dict (for events and display)."""
    return asdict(msg)

"""``trainfleet.report(step=..., loss=..., **metrics)``: one UDP datagram to the node agent.

Promises: never raises, never blocks (the socket is non-blocking; a full buffer drops the datagram), costs
a few microseconds, and does nothing at all when ``TRAINFLEET_REPORT_ADDR`` is not set (not under trainfleet).
Values that are not plain numbers (numpy/torch scalars) are converted with ``float()``; what cannot be
converted is dropped. Wire format: ``{"r": rank, "t": epoch_s, "step": n, "<name>": value, ...}``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

_MAX_DATAGRAM = 8192


class _Reporter:
    """Lazily opened sender; ``enabled`` is False outside trainfleet (or after the address proved bad)."""

    def __init__(self) -> None:
        self.ready = False
        self.enabled = False
        self.sock: socket.socket | None = None
        self.addr: tuple = ()
        self.rank = 0
        self.pid = 0

    def setup(self) -> None:
        self.ready = True
        self.pid = os.getpid()
        addr = os.environ.get("TRAINFLEET_REPORT_ADDR", "")
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            return
        try:
            self.rank = int(os.environ.get("RANK", "0"))
            # Resolve once here: sendto() with a host name would look it up (and may block) on every call.
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            self.addr = sockaddr
            self.enabled = True
        except (OSError, ValueError):
            self.enabled = False

    def send(self, metrics: dict[str, Any]) -> None:
        body: dict[str, Any] = {"r": self.rank, "t": time.time()}
        for key, value in metrics.items():
            if isinstance(value, bool):
                body[key] = int(value)
            elif isinstance(value, int | float | str):
                body[key] = value
            else:
                try:
                    body[key] = float(value)
                except (TypeError, ValueError):
                    continue
        data = json.dumps(body, separators=(",", ":"), allow_nan=True).encode()
        if len(data) > _MAX_DATAGRAM:
            return
        try:
            self.sock.sendto(data, self.addr)  # type: ignore[union-attr]
        except OSError:  # full buffer, agent gone: progress is best effort
            pass


_reporter = _Reporter()


def report(**metrics: Any) -> None:
    """Send ``metrics`` (typically ``step``, ``loss``, ``tokens_per_s``) to the agent; see module doc."""
    try:
        if not _reporter.ready or _reporter.pid != os.getpid():
            _reporter.setup()  # again after fork: children get their own socket state
        if _reporter.enabled:
            _reporter.send(metrics)
    except Exception:  # a metrics call must never break training
        pass


def decode_report(data: bytes) -> tuple[int, int | None, float, dict[str, float]] | None:
    """Agent side: a datagram -> ``(rank, step, ts, numeric values)``; None when it is not a report."""
    try:
        body = json.loads(data)
        rank = int(body.pop("r"))
        ts = float(body.pop("t"))
        step_raw = body.pop("step", None)
        step = None if step_raw is None else int(step_raw)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    values = {k: float(v) for k, v in body.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return rank, step, ts, values

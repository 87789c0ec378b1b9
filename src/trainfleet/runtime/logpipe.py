"""Turning a rank's stdout/stderr pipe into a file of timestamped lines.

Every line is written as ``<UTC ISO-8601 with microseconds>Z <text>\\n``, stamped when the agent read it, so
``trainfleet logs`` can merge ranks in time order. A partial last line is written when the pipe closes.
"""

from __future__ import annotations

import os
import time
from typing import BinaryIO

_CHUNK = 65536


def utc_stamp(ts: float | None = None) -> str:
    """``2026-12-03T07:53:03.123456Z`` for ``ts`` (epoch seconds; now by default)."""
    ts = time.time() if ts is None else ts
    secs = int(ts)
    micros = round((ts - secs) * 1_000_000)
    if micros >= 1_000_000:
        secs, micros = secs + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{micros:06d}Z"


class LineStamper:
    """Writes the bytes fed to it as timestamped lines to ``sink``; keeps an unfinished line until closed."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._partial = b""
        self.lines = 0

    def feed(self, data: bytes, ts: float | None = None) -> None:
        """Write every complete line in ``partial + data`` with one timestamp; flush so readers see it."""
        if not data:
            return
        buf = self._partial + data
        *complete, self._partial = buf.split(b"\n")
        if complete:
            stamp = utc_stamp(ts).encode() + b" "
            self._sink.write(b"".join(stamp + line + b"\n" for line in complete))
            self._sink.flush()
            self.lines += len(complete)

    def close(self, ts: float | None = None) -> None:
        """Write a pending partial line (with a newline) and close the sink."""
        if self._partial:
            self._sink.write(utc_stamp(ts).encode() + b" " + self._partial + b"\n")
            self._partial = b""
            self.lines += 1
        self._sink.close()


class PipeLog:
    """One non-blocking pipe read end feeding a ``LineStamper`` that writes ``path``."""

    def __init__(self, fd: int, path: str) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.path = path
        self.stamper = LineStamper(open(path, "ab"))  # noqa: SIM115 - closed in close()
        self.closed = False

    def pump(self) -> bool:
        """Read what is available; returns False once the pipe reached EOF (then the log is closed)."""
        while True:
            try:
                data = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self.close()
                return False
            self.stamper.feed(data)
            if len(data) < _CHUNK:
                return True

    def close(self) -> None:
        """Flush the partial line, close the file and the pipe (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.stamper.close()
        try:
            os.close(self.fd)
        except OSError:
            pass

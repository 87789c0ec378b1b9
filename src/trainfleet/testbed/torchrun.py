"""Run one ``torchrun`` per testbed host, the way a multi-node job starts: node rank ``N-1`` in ``tfhN``,
rendezvous at host 1's address, gloo bound to the namespace's ``eth0`` (the namespaces share one hostname,
which resolves to 127.0.0.1, so gloo must be told which interface to use).

Each host's torchrun runs under ``ip netns exec`` with an outer deadline: a gloo peer that vanished can hang
its partners beyond the process-group timeout, so the whole group is killed when the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from trainfleet.testbed.netns import Host, in_host


@dataclass(frozen=True)
class HostRun:
    """How one host's torchrun ended: exit code (None if killed at the deadline) and its output."""

    host: Host
    returncode: int | None
    stdout: str
    stderr: str


def torchrun_path() -> str:
    """The torchrun next to the running interpreter (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("torchrun")
    return str(beside) if beside.exists() else "torchrun"


def torchrun_argv(
    hosts: Sequence[Host], index: int, module_args: Sequence[str], *, master_port: int
) -> list[str]:
    """The argv (already wrapped in ``ip netns exec``) that starts node ``index`` of ``hosts``."""
    env = [
        "env",
        "GLOO_SOCKET_IFNAME=eth0",
        "OMP_NUM_THREADS=1",
        "PYTHONUNBUFFERED=1",
        f"TRAINFLEET_NODE_NAME={hosts[index].name}",
    ]
    launcher = [
        torchrun_path(),
        "--nnodes",
        str(len(hosts)),
        "--nproc-per-node",
        "1",
        "--node-rank",
        str(index),
        "--master-addr",
        hosts[0].address,
        "--master-port",
        str(master_port),
        "--max-restarts",
        "0",
        "-m",
        *module_args,
    ]
    return in_host(hosts[index], [*env, *launcher])


def run_on_hosts(
    hosts: Sequence[Host],
    module_args: Sequence[str],
    *,
    master_port: int = 29400,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> list[HostRun]:
    """Start ``torchrun -m <module_args>`` on every host at once and wait for all (or the deadline)."""
    with ExitStack() as stack:
        started = []
        for i in range(len(hosts)):
            out = stack.enter_context(tempfile.TemporaryFile("w+"))
            err = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(
                torchrun_argv(hosts, i, module_args, master_port=master_port),
                stdout=out,
                stderr=err,
                text=True,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group, so the deadline can kill all of it
            )
            started.append((proc, out, err))
        deadline = time.monotonic() + timeout_s
        results = []
        for h, (proc, out, err) in zip(hosts, started, strict=True):
            try:
                code: int | None = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
            out.seek(0)
            err.seek(0)
            results.append(HostRun(h, code, out.read(), err.read()))
        return results

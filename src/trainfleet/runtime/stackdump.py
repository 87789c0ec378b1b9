"""Agent side of stack dumps: write the Python stacks of this node's ranks to files before a teardown.

py-spy (``py-spy dump --nonblocking``) is used when installed: it reads a process's memory without
stopping or signalling it, so it works on a SIGSTOPped rank too. Otherwise each rank has faulthandler
registered on SIGUSR1 (``runtime/stack_site/sitecustomize.py``, put on its ``PYTHONPATH``); the agent
sends SIGCONT (a stopped process cannot run its handler) and SIGUSR1 and collects what it wrote.
``TRAINFLEET_STACK_TOOL=faulthandler`` forces the fallback. Each file starts with one header line:
``# rank R pid P node N state S tool T`` (state is the /proc letter before the dump: ``T`` = stopped).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SITE_DIR = str(Path(__file__).with_name("stack_site"))
DUMP_TIMEOUT_S = 8.0
FALLBACK_TIMEOUT_S = 3.0  # at most this long for the faulthandler (SIGUSR1) dumps after py-spy


@dataclass(frozen=True)
class RankTarget:
    """One rank to dump: its global rank, leader pid and faulthandler file."""

    rank: int
    pid: int
    stack_file: str


def process_state(pid: int) -> str:
    """The /proc state letter of ``pid`` (R, S, D, T stopped, Z zombie), ``?`` when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


def stack_tool() -> str:
    """``py-spy`` (its path) when usable, else ``faulthandler``."""
    if os.environ.get("TRAINFLEET_STACK_TOOL") == "faulthandler":
        return "faulthandler"
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else (shutil.which("py-spy") or "faulthandler")


def stack_env(stack_file: str, base_pythonpath: str | None) -> dict[str, str]:
    """Environment additions that make a rank dump its stacks to ``stack_file`` on SIGUSR1."""
    path = SITE_DIR if not base_pythonpath else f"{SITE_DIR}{os.pathsep}{base_pythonpath}"
    return {"PYTHONPATH": path, "TRAINFLEET_STACK_FILE": stack_file}


def dump_ranks(targets: list[RankTarget], directory: str, node_rank: int,
               timeout_s: float = DUMP_TIMEOUT_S) -> tuple[dict[int, str], dict[int, str], str]:
    """Dump every target into ``directory/rank-R.txt``; returns (files, states, tool). Never raises."""
    os.makedirs(directory, exist_ok=True)
    tool = stack_tool()
    states = {t.rank: process_state(t.pid) for t in targets}
    texts = _py_spy(tool, targets, timeout_s) if tool != "faulthandler" else {}
    missing = [t for t in targets if not texts.get(t.rank)]
    if missing:
        texts.update(_faulthandler(missing, timeout_s))
    files = {}
    for target in targets:
        path = os.path.join(directory, f"rank-{target.rank}.txt")
        used = "py-spy" if target.rank not in {m.rank for m in missing} else "faulthandler"
        header = (f"# rank {target.rank} pid {target.pid} node {node_rank} state {states[target.rank]} "
                  f"tool {used}\n")
        try:
            with open(path, "w") as fh:
                fh.write(header + (texts.get(target.rank) or "(no stack could be read)\n"))
            files[target.rank] = path
        except OSError:
            continue
    return files, states, "py-spy" if tool != "faulthandler" and not missing else "faulthandler"


def _py_spy(tool: str, targets: list[RankTarget], timeout_s: float) -> dict[int, str]:
    procs = {}
    for target in targets:
        try:
            procs[target.rank] = subprocess.Popen(
                [tool, "dump", "--pid", str(target.pid), "--nonblocking"], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        except OSError:
            continue
    deadline = time.monotonic() + timeout_s
    out = {}
    for rank, proc in procs.items():
        try:
            text, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            if proc.returncode == 0 and text.strip():
                out[rank] = text
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return out


def _faulthandler(targets: list[RankTarget], timeout_s: float) -> dict[int, str]:
    sizes = {}
    for target in targets:
        sizes[target.rank] = _size(target.stack_file)
        for sig in (signal.SIGCONT, signal.SIGUSR1):
            try:
                os.kill(target.pid, sig)
            except OSError:
                break
    deadline = time.monotonic() + min(timeout_s, FALLBACK_TIMEOUT_S)
    out: dict[int, str] = {}
    while time.monotonic() < deadline and len(out) < len(targets):
        time.sleep(0.05)
        for target in targets:
            now = _size(target.stack_file)
            if target.rank not in out and now > sizes[target.rank]:
                time.sleep(0.05)  # let the handler finish writing
                with open(target.stack_file, errors="replace") as fh:
                    fh.seek(sizes[target.rank])
                    out[target.rank] = fh.read()
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0

"""Finding the processes of a job on this host by their environment (``TRAINFLEET_JOB_ID``).

The local backend's last line of defence: after a graceful stop, anything whose initial environment names
the job (and attempt) is killed, whatever process group or session it moved to. Linux ``/proc`` only.
"""

from __future__ import annotations

import os
import signal
import time


def job_processes(job_id: str, attempt: int | None = None, *, proc_root: str = "/proc") -> list[int]:
    """Pids whose environment has ``TRAINFLEET_JOB_ID=job_id`` (and ``TRAINFLEET_ATTEMPT=attempt`` if given).

    Zombies (empty environment) and processes we may not read are skipped; our own pid never appears.
    """
    want = [f"TRAINFLEET_JOB_ID={job_id}".encode()]
    if attempt is not None:
        want.append(f"TRAINFLEET_ATTEMPT={attempt}".encode())
    me = os.getpid()
    found = []
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return []
    for name in entries:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"{proc_root}/{name}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if all(item in environ for item in want):
            found.append(int(name))
    return found


def kill_job_processes(job_id: str, attempt: int | None = None, *, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process of the job (and its process group) until none is left or ``timeout_s`` passes.

    Returns the pids that were found (and killed).
    """
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = job_processes(job_id, attempt)
        if not pids or time.monotonic() >= deadline:
            return killed
        for pid in pids:
            killed.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (a killed daemon may wait long for init to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True

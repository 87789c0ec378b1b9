"""Linux process-lifetime backstops: die with the parent (PR_SET_PDEATHSIG) and reap orphans (subreaper).

These keep ``kill -9`` of a supervisor or an agent from leaving processes behind: the child gets ``sig``
when the thread that started it dies. On other systems they are no-ops (the TCP connection loss and the
supervisor's sweep remain).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = None


def _load() -> None:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    _load()
    return _libc.prctl(option, arg, 0, 0, 0) == 0  # type: ignore[union-attr]


def die_with_parent_hook(sig: int, parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child receives ``sig`` when ``parent_pid`` dies.

    Closes the race where the parent died before the call by exiting at once if it is already gone.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    _load()  # before fork: nothing is imported in the child

    def hook() -> None:
        _prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (so it can reap and kill them)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask for ``sig`` when this process's parent dies (call early; the parent must still be alive)."""
    return _prctl(_PR_SET_PDEATHSIG, sig)

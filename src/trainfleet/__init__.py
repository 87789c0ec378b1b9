"""trainfleet: launch, keep alive and debug large training jobs and the GPU fleet they run on."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "report"]


def report(**metrics: float | int | str) -> None:
    """Report training progress (``step=...``, ``loss=...``, any other scalars) to trainfleet.

    Cheap and non-blocking; a no-op when the process was not started by trainfleet.
    """
    from trainfleet.runtime.report import report as _report

    _report(**metrics)

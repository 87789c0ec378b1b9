"""Execution engines behind one narrow seam (``base.Backend``): render a request, then submit/cancel it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainfleet.backends.base import Backend

BACKENDS = ("local", "slurm", "netns")


def get_backend(name: str) -> Backend:
    """A new backend by name: ``local``, ``slurm`` or ``netns`` (the namespaced testbed), else BackendError.

    The Slurm backend reads node history (suspect / quarantined nodes) from trainfleet's store.
    """
    from trainfleet.errors import BackendError

    if name == "local":
        from trainfleet.backends.local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from trainfleet.backends.slurm.backend import SlurmBackend, default_store_factory

        return SlurmBackend(store_factory=default_store_factory)
    if name == "netns":
        from trainfleet.backends.netns import NetnsBackend

        return NetnsBackend()
    raise BackendError(f"backend {name!r} is not available (known: {', '.join(BACKENDS)})")

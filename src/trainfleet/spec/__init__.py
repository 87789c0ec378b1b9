"""Job specs: the validated ``JobSpec``, loading it from YAML, and the one ``JobState`` enum.

``JobState`` is imported at once (it is a small enum); the pydantic model and the YAML loader are imported
on first use of ``JobSpec``, ``RestartPolicy``, ``load_spec``, ``validate_spec`` or ``apply_overrides``, so
code that only needs states (the CLI's table views, the doctor) does not pay for pydantic and PyYAML.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainfleet.spec.state import JobState

if TYPE_CHECKING:
    from trainfleet.spec.load import apply_overrides, load_spec, validate_spec
    from trainfleet.spec.model import JobSpec, RestartPolicy

_LAZY = {
    "JobSpec": "trainfleet.spec.model",
    "RestartPolicy": "trainfleet.spec.model",
    "apply_overrides": "trainfleet.spec.load",
    "load_spec": "trainfleet.spec.load",
    "validate_spec": "trainfleet.spec.load",
}

__all__ = ["JobSpec", "JobState", "RestartPolicy", "apply_overrides", "load_spec", "validate_spec"]


def __getattr__(name: str) -> Any:
    """Import the module that holds ``name`` on first access (PEP 562) and cache the value here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

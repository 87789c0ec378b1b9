"""Job specs: the validated ``JobSpec``, loading it from YAML, and the one ``JobState`` enum."""

from __future__ import annotations

from trainfleet.spec.load import apply_overrides, load_spec, validate_spec
from trainfleet.spec.model import JobSpec, RestartPolicy
from trainfleet.spec.state import JobState

__all__ = ["JobSpec", "JobState", "RestartPolicy", "apply_overrides", "load_spec", "validate_spec"]

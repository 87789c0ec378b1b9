"""``trainfleet schema``: print the JSON Schema of the job spec (for editors and validators)."""

from __future__ import annotations

import json
from typing import Any

import typer

from trainfleet.cli import app

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def job_spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``JobSpec``, as generated from the model itself."""
    from trainfleet.spec.model import JobSpec

    return {"$schema": JSON_SCHEMA_DIALECT, **JobSpec.model_json_schema()}


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the job spec YAML."""
    typer.echo(json.dumps(job_spec_schema(), indent=2))

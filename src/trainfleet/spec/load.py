"""Load a job spec from YAML, apply ``--set`` overrides, and turn every problem into one readable line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainfleet.errors import SpecError, UnreadableInput
from trainfleet.spec.model import JobSpec

OVERRIDE_SOURCE = "--set"


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read ``path`` (YAML), apply ``key=value`` overrides (dotted keys, YAML-parsed values), validate.

    Raises ``SpecError`` whose ``str`` is one line naming the file (or ``--set``) and the field path,
    e.g. ``job.yaml: nodes: must be >= 1``, and ``UnreadableInput`` when the file cannot be read.
    """
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnreadableInput(f"cannot read: {reason}", path=label) from None
    data = parse_spec_text(text, label=label)
    return validate_spec(data, overrides=overrides, label=label)


def parse_spec_text(text: str, *, label: str = "<spec>") -> dict[str, Any]:
    """Parse YAML text into the raw spec mapping; syntax errors name ``label:line``."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark is not None and exc.problem:
            problem += f" {exc.context} started at line {exc.context_mark.line + 1}"
        raise SpecError(f"invalid YAML: {problem}", path=where) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", path=label) from None
    if data is None:
        raise SpecError("is empty; expected a mapping of spec fields", path=label)
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of spec fields, got {type(data).__name__}", path=label)
    return data


def validate_spec(
    data: Mapping[str, Any], *, overrides: Sequence[str] = (), label: str = "<spec>"
) -> JobSpec:
    """Apply overrides to a raw mapping and validate it; errors name ``label`` or ``--set``."""
    merged, override_keys = apply_overrides(data, overrides)
    try:
        return JobSpec.model_validate(merged)
    except ValidationError as exc:
        raise _spec_error(exc, label=label, override_keys=override_keys) from None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Return a deep copy of ``data`` with every ``a.b.c=value`` applied, and the dotted keys set."""
    merged = _deep_copy(data)
    keys: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"expected key=value, got {item!r}", path=OVERRIDE_SOURCE)
        parts = key.split(".")
        if any(not p for p in parts):
            raise SpecError("empty part in dotted key", path=OVERRIDE_SOURCE, field=key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError(f"cannot parse value {raw!r}", path=OVERRIDE_SOURCE, field=key) from None
        node: dict[str, Any] = merged
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                parent = ".".join(parts[: depth + 1])
                raise SpecError(f"{parent} is not a mapping", path=OVERRIDE_SOURCE, field=key)
            node = child
        node[parts[-1]] = value
        keys.append(key)
    return merged, keys


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else (list(v) if isinstance(v, list) else v)
            for k, v in data.items()}


def _spec_error(exc: ValidationError, *, label: str, override_keys: Sequence[str]) -> SpecError:
    problems = [(field_path(err["loc"]), readable_message(err)) for err in exc.errors()]
    field, message = problems[0]
    from_override = any(field == k or field.startswith(k + ".") or field.startswith(k + "[")
                        or k.startswith(field + ".") for k in override_keys)
    rest = "".join(f"; {f}: {m}" for f, m in problems[1:])
    error = SpecError(message + rest, path=OVERRIDE_SOURCE if from_override else label, field=field)
    error.problems = problems  # every (field, message), for callers that want them all
    return error


def field_path(loc: Sequence[int | str]) -> str:
    """``('restart', 'max_restarts')`` -> ``restart.max_restarts``; list indices as ``command[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<spec>"


def readable_message(err: Mapping[str, Any]) -> str:
    """A short message for one pydantic error: ``must be >= 1``, ``unknown field``, ``required``."""
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    simple = {
        "missing": "required field is missing",
        "extra_forbidden": "unknown field",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "bool_type": "must be true or false",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind]
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx.get(key)
        return f"must be {op} {bound:g}" if isinstance(bound, int | float) else f"must be {op} {bound}"
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {choices}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "value_error":
        return str(err.get("msg", "")).removeprefix("Value error, ")
    return str(err.get("msg", kind)).removeprefix("Input should be ").removeprefix("Value error, ")

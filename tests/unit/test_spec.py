"""Job spec validation: good specs load, every bad field is named by its path, overrides apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainfleet.errors import SpecError, UnreadableInput
from trainfleet.spec import JobSpec, JobState, load_spec
from trainfleet.spec.load import field_path

GOOD = """\
name: gpt-demo
command: [python, examples/gpt/train.py, --steps, "300"]
nodes: 2
procs_per_node: 2
backend: local
env: {KEY: value, OMP_NUM_THREADS: 4}
workdir: .
checkpoint_dir: runs/gpt-demo/ckpt
restart: {max_restarts: 3, backoff_s: 1}
hang_timeout_s: 60
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_spec_loads_with_every_field(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.name == "gpt-demo"
    assert spec.argv == ["python", "examples/gpt/train.py", "--steps", "300"]
    assert (spec.nodes, spec.procs_per_node, spec.world_size) == (2, 2, 4)
    assert spec.env == {"KEY": "value", "OMP_NUM_THREADS": "4"}
    assert spec.restart.max_restarts == 3 and spec.restart.backoff_s == 1.0
    assert spec.hang_timeout_s == 60.0
    assert spec.checkpoint_dir == "runs/gpt-demo/ckpt"
    # defaults from the contract
    assert (spec.spare_nodes, spec.heartbeat_interval_s, spec.grace_s) == (0, 1.0, 5.0)


def test_minimal_spec_gets_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "name: a\ncommand: [echo]\nnodes: 1\n"))
    assert spec.backend == "local" and spec.workdir == "." and spec.checkpoint_dir is None
    assert spec.restart.max_restarts == 0 and spec.hang_timeout_s == 300.0 and spec.procs_per_node == 1
    restart = spec.restart
    assert (restart.backoff_factor, restart.max_backoff_s, restart.max_preemptions) == (1.0, 300.0, None)
    assert (spec.straggler_factor, spec.straggler_window) == (2.0, 8)


def test_straggler_and_backoff_growth_fields_load(tmp_path: Path) -> None:
    text = ("name: a\ncommand: [echo]\nnodes: 1\nbackend: netns\nstraggler_factor: 1.5\nstraggler_window: 2\n"
            "restart: {max_restarts: 5, backoff_s: 2, backoff_factor: 3, max_backoff_s: 60}\n")
    spec = load_spec(write(tmp_path, text))
    assert (spec.backend, spec.straggler_factor, spec.straggler_window) == ("netns", 1.5, 2)
    assert (spec.restart.backoff_s, spec.restart.backoff_factor, spec.restart.max_backoff_s) == (2, 3, 60)


@pytest.mark.parametrize(("override", "expected"), [
    ("restart.backoff_factor=.inf", "--set: restart.backoff_factor: must be a finite number"),
    ("restart.max_backoff_s=.nan", "--set: restart.max_backoff_s: must be a finite number"),
    ("straggler_factor=.inf", "--set: straggler_factor: must be a finite number"),
    ("straggler_window=true", "--set: straggler_window: must be an integer"),
])
def test_growth_and_straggler_values_must_be_finite_numbers(tmp_path: Path, override: str,
                                                            expected: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "name: a\ncommand: [echo]\nnodes: 1\n"), [override])
    assert str(err.value) == expected


def test_string_command_is_split_without_a_shell(tmp_path: Path) -> None:
    text = "name: a\nnodes: 1\ncommand: 'python train.py --msg \"hello world\" ; rm -rf / | cat $HOME'\n"
    spec = load_spec(write(tmp_path, text))
    # Shell syntax stays literal arguments: nothing is interpreted.
    assert spec.argv == ["python", "train.py", "--msg", "hello world", ";", "rm", "-rf", "/", "|", "cat",
                         "$HOME"]


def test_numbers_in_command_list_become_strings(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "name: a\nnodes: 1\ncommand: [python, t.py, --steps, 300, --lr, 0.5]\n"))
    assert spec.argv == ["python", "t.py", "--steps", "300", "--lr", "0.5"]


BASE = {"name": "a", "command": ["python"], "nodes": 1}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"nodes": 0}, "job.yaml: nodes: must be >= 1"),
        ({"nodes": True}, "job.yaml: nodes: must be an integer"),
        ({"nodes": 1.5}, "job.yaml: nodes: must be an integer"),
        ({"procs_per_node": -1}, "job.yaml: procs_per_node: must be >= 1"),
        ({"colour": "red"}, "job.yaml: colour: unknown field"),
        ({"backend": "k8s"}, "job.yaml: backend: must be one of local, slurm, netns"),
        ({"name": "bad name!"}, "job.yaml: name: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
        ({"command": []}, "job.yaml: command: must not be empty"),
        ({"command": ""}, "job.yaml: command: must not be empty"),
        ({"command": 'python "unclosed'}, "job.yaml: command: cannot split command: No closing quotation"),
        ({"command": ["python", None]}, "job.yaml: command: item 1 must be a string, got null"),
        ({"command": ["python", True]}, "job.yaml: command: item 1 must be a string, got a boolean"),
        ({"command": {"a": 1}}, "job.yaml: command: must be a list of strings or a string, got a mapping"),
        ({"env": {"1BAD": "x"}}, "job.yaml: env: '1BAD' is not a valid environment variable name"),
        ({"env": ["A=1"]}, "job.yaml: env: must be a mapping"),
        ({"restart": {"max_restarts": -1}}, "job.yaml: restart.max_restarts: must be >= 0"),
        ({"restart": {"max_restart": 2}}, "job.yaml: restart.max_restart: unknown field"),
        ({"restart": 3}, "job.yaml: restart: must be a mapping"),
        ({"hang_timeout_s": 0}, "job.yaml: hang_timeout_s: must be > 0"),
        ({"hang_timeout_s": "soon"}, "job.yaml: hang_timeout_s: must be a number"),
        ({"grace_s": -1}, "job.yaml: grace_s: must be >= 0"),
        ({"spare_nodes": -2}, "job.yaml: spare_nodes: must be >= 0"),
        ({"straggler_factor": 1}, "job.yaml: straggler_factor: must be > 1"),
        ({"straggler_factor": "twice"}, "job.yaml: straggler_factor: must be a number"),
        ({"straggler_window": 1}, "job.yaml: straggler_window: must be >= 2"),
        ({"straggler_window": 8.5}, "job.yaml: straggler_window: must be an integer"),
        ({"restart": {"backoff_factor": 0.5}}, "job.yaml: restart.backoff_factor: must be >= 1"),
        ({"restart": {"max_backoff_s": -1}}, "job.yaml: restart.max_backoff_s: must be >= 0"),
        ({"restart": {"max_preemptions": -1}}, "job.yaml: restart.max_preemptions: must be >= 0"),
    ],
)
def test_each_bad_field_names_its_path(tmp_path: Path, change: dict, expected: str) -> None:
    path = write(tmp_path, json.dumps({**BASE, **change}))  # JSON is YAML
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value) == str(path.parent / expected)
    assert "\n" not in str(err.value)


def test_missing_field_and_several_errors_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nnodes: 0\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}: command: required field is missing; nodes: must be >= 1"
    assert err.value.field == "command"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nnodes: 1\ncommand: [python\n  x: : y\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}:4: invalid YAML: ")


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("- a\n- b\n", "got list")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, text))


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput) as err:
        load_spec(tmp_path / "nope.yaml")
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"


def test_overrides_dotted_keys_and_yaml_values(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    spec = load_spec(path, ["nodes=4", "restart.max_restarts=0", "env.EXTRA=yes", "command=python -V",
                            "checkpoint_dir=", "hang_timeout_s=2.5"])
    assert spec.nodes == 4 and spec.restart.max_restarts == 0 and spec.restart.backoff_s == 1.0
    assert spec.env["EXTRA"] == "1" and spec.env["KEY"] == "value"
    assert spec.argv == ["python", "-V"] and spec.checkpoint_dir is None and spec.hang_timeout_s == 2.5
    # the file itself is untouched by overrides
    assert load_spec(path).nodes == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("nodes=0", "--set: nodes: must be >= 1"),
        ("colour=red", "--set: colour: unknown field"),
        ("restart.max_restarts=lots", "--set: restart.max_restarts: must be an integer"),
        ("nodes.count=2", "--set: nodes.count: nodes is not a mapping"),
        ("nodes", "--set: expected key=value, got 'nodes'"),
        ("=3", "--set: expected key=value, got '=3'"),
        ("restart..x=1", "--set: restart..x: empty part in dotted key"),
        ("nodes=[1", "--set: nodes: cannot parse value '[1'"),
    ],
)
def test_bad_override_names_the_key(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD), [override])
    assert str(err.value) == expected


def test_spec_is_frozen_and_paths_resolve(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    with pytest.raises(ValueError):
        spec.nodes = 3  # type: ignore[misc]
    resolved = spec.with_resolved_paths(tmp_path)
    assert resolved.workdir == str(tmp_path.resolve())
    assert resolved.checkpoint_dir == str((tmp_path / "runs/gpt-demo/ckpt").resolve())
    assert spec.workdir == "."


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_field_path_formats_indices() -> None:
    assert field_path(("command", 2)) == "command[2]"
    assert field_path(("restart", "backoff_s")) == "restart.backoff_s"


def test_job_state_terminal() -> None:
    assert [s.value for s in JobState if s.is_terminal] == ["succeeded", "failed", "cancelled"]
    assert JobState("running") is JobState.RUNNING and not JobState.PENDING.is_terminal


def test_schema_command_prints_the_json_schema() -> None:
    from trainfleet.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["required"]) == {"name", "command", "nodes"}
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["nodes"]["minimum"] == 1 and props["hang_timeout_s"]["exclusiveMinimum"] == 0
    assert props["backend"]["enum"] == ["local", "slurm", "netns"]
    restart = schema["$defs"]["RestartPolicy"]["properties"]
    assert set(restart) == {"max_restarts", "backoff_s", "backoff_factor", "max_backoff_s", "max_preemptions"}
    assert (restart["backoff_factor"]["minimum"], restart["max_backoff_s"]["default"]) == (1, 300.0)
    assert props["straggler_factor"]["exclusiveMinimum"] == 1 and props["straggler_window"]["minimum"] == 2
    assert all("description" in p for p in props.values())
    assert all("description" in p for p in restart.values())

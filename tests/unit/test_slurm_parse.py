"""Slurm parsers and the state table, on outputs recorded from the real dev cluster (tests/fixtures/slurm)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainfleet.backends.slurm import (
    SLURM_JOB_STATES,
    SlurmJob,
    expand_hostlist,
    job_state_from_slurm,
    parse_sbatch_output,
    parse_sinfo_json,
    parse_squeue_json,
)
from trainfleet.backends.slurm.hostlist import MAX_HOSTS
from trainfleet.errors import EngineOutputError, InputError
from trainfleet.spec.state import JobState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
JSON_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.json"))
GOOD_JSON_FIXTURES = [name for name in JSON_FIXTURES if "controller_down" not in name]


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def jobs_by_name(name: str) -> dict[str, SlurmJob]:
    return {job.name: job for job in parse_squeue_json(read(name), source=name)}


# --- squeue --json -----------------------------------------------------------------------------------------


def test_squeue_running_completed_cancelled_failed_pending() -> None:
    jobs = jobs_by_name("squeue_mixed.json")
    seen = {
        name: (job.native_state, job.state, job.nodes, job.exit_code, job.exit_signal)
        for name, job in jobs.items()
    }
    assert seen == {
        "two-node": ("COMPLETED", JobState.SUCCEEDED, ("node1", "node2"), 0, None),
        "will-fail": ("FAILED", JobState.FAILED, ("node1",), 3, None),
        "to-cancel": ("CANCELLED", JobState.CANCELLED, ("node2",), None, 15),
        "running-2n": ("RUNNING", JobState.RUNNING, ("node3", "node4"), None, None),
        "pending-4n": ("PENDING", JobState.PENDING, (), None, None),
    }
    assert [job.job_id for job in jobs.values()] == [1, 2, 3, 4, 5]
    assert jobs["will-fail"].state_reason == "NonZeroExitCode"
    assert jobs["pending-4n"].state_reason == "Resources"
    assert jobs["two-node"].batch_host == "node1"
    assert jobs["two-node"].node_count == 2
    assert jobs["two-node"].partition == "debug"
    assert jobs["two-node"].stdout_path == "/tmp/slurmrec/two-%j.out"


def test_squeue_times_are_only_reported_when_they_are_facts() -> None:
    jobs = jobs_by_name("squeue_mixed.json")
    running, pending, cancelled = jobs["running-2n"], jobs["pending-4n"], jobs["to-cancel"]
    assert running.started_at is not None and running.ended_at is None  # Slurm's end_time is a projection
    assert pending.started_at is None and pending.ended_at is None
    assert pending.submitted_at is not None
    assert cancelled.ended_at is not None and cancelled.started_at is not None
    assert (cancelled.ended_at - cancelled.started_at).total_seconds() == 6
    assert cancelled.ended_at.tzinfo is not None


def test_squeue_timeout_node_fail_and_requeue() -> None:
    jobs = jobs_by_name("squeue_timeout_requeue.json")
    timeout, node_fail, requeued = jobs["time-limit"], jobs["node-fail"], jobs["requeued"]
    assert (timeout.native_state, timeout.state, timeout.exit_signal) == ("TIMEOUT", JobState.FAILED, 15)
    assert timeout.state_reason == "TimeLimit"
    assert (node_fail.native_state, node_fail.state, node_fail.state_reason) == (
        "NODE_FAIL",
        JobState.FAILED,
        "NodeDown",
    )
    assert (requeued.state, requeued.restart_count, requeued.state_reason) == (
        JobState.PENDING,
        1,
        "BeginTime",
    )
    assert requeued.nodes == () and requeued.started_at is None
    never_ran = jobs["pending-4n"]
    assert never_ran.state is JobState.CANCELLED
    assert (never_ran.nodes, never_ran.exit_code, never_ran.exit_signal) == ((), None, None)


@pytest.mark.parametrize("name", ["squeue_controller_down.json", "sinfo_controller_down.json"])
def test_controller_down_output_is_one_clear_error(name: str) -> None:
    parse = parse_squeue_json if name.startswith("squeue") else parse_sinfo_json
    with pytest.raises(EngineOutputError) as info:
        parse(read(name), source=name)
    assert str(info.value).startswith(f"{name}: errors: Slurm reported an error: ")
    assert "\n" not in str(info.value)


# --- sinfo --json ------------------------------------------------------------------------------------------


def test_sinfo_idle_drained_down() -> None:
    nodes = {node.name: node for node in parse_sinfo_json(read("sinfo_idle_drained_down.json"))}
    assert list(nodes) == ["node1", "node2", "node3", "node4"]
    node1, node3, node4 = nodes["node1"], nodes["node3"], nodes["node4"]
    assert (node1.state, node1.flags, node1.is_usable, node1.is_drained, node1.is_down) == (
        "idle",
        frozenset(),
        True,
        False,
        False,
    )
    assert (node3.state, node3.flags, node3.reason) == ("idle", frozenset({"DRAIN"}), "test")
    assert node3.is_drained and not node3.is_draining and not node3.is_usable and not node3.is_down
    assert (node4.state, node4.reason, node4.is_down, node4.is_usable) == ("down", "test-down", True, False)
    assert (node1.cpus, node1.real_memory_mb, node1.address, node1.partitions) == (
        2,
        2000,
        "127.0.0.1",
        ("debug",),
    )


def test_sinfo_allocated_and_draining() -> None:
    nodes = {node.name: node for node in parse_sinfo_json(read("sinfo_alloc_draining.json"))}
    node1, node2 = nodes["node1"], nodes["node2"]
    assert (node1.state, node1.alloc_cpus, node1.is_busy, node1.is_usable) == ("allocated", 2, True, True)
    assert (node2.state, node2.reason) == ("mixed", "draining-test")
    assert node2.is_draining and not node2.is_drained and not node2.is_usable
    assert [name for name, node in nodes.items() if node.is_usable] == ["node1", "node3"]


# --- sbatch ------------------------------------------------------------------------------------------------


def test_sbatch_recorded_outputs() -> None:
    assert parse_sbatch_output(read("sbatch_plain.txt")).job_id == 11
    parsable = parse_sbatch_output(read("sbatch_parsable.txt"))
    assert (parsable.job_id, parsable.cluster) == (12, None)


@pytest.mark.parametrize(
    ("text", "job_id", "cluster"),
    [
        ("Submitted batch job 42 on cluster west\n", 42, "west"),
        ("7;east\n", 7, "east"),
        ("some banner line\nSubmitted batch job 9\n\n", 9, None),
    ],
)
def test_sbatch_other_forms(text: str, job_id: int, cluster: str | None) -> None:
    submitted = parse_sbatch_output(text)
    assert (submitted.job_id, submitted.cluster) == (job_id, cluster)


@pytest.mark.parametrize(
    "text", ["", "\n", "sbatch: error: Batch job submission failed: Invalid node name", "x;"]
)
def test_sbatch_without_a_job_id(text: str) -> None:
    with pytest.raises(EngineOutputError, match=r"^sbatch: no job id in the output"):
        parse_sbatch_output(text)


# --- the state table ---------------------------------------------------------------------------------------

# Every name Slurm 22.05's job_state_string() returns (src/common/slurm_protocol_defs.c).
SLURM_2205_STATE_NAMES = [
    "COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING", "PENDING", "RUNNING", "SUSPENDED",
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
    "OUT_OF_MEMORY",
]  # fmt: skip


def test_state_table_covers_every_slurm_state_and_nothing_else() -> None:
    assert sorted(SLURM_JOB_STATES) == sorted(SLURM_2205_STATE_NAMES)
    assert set(SLURM_JOB_STATES.values()) == set(JobState)


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        ("PENDING", JobState.PENDING),
        ("CONFIGURING", JobState.PENDING),
        ("REQUEUED", JobState.PENDING),
        ("SUSPENDED", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("COMPLETED", JobState.SUCCEEDED),
        ("FAILED", JobState.FAILED),
        ("TIMEOUT", JobState.FAILED),
        ("NODE_FAIL", JobState.FAILED),
        ("PREEMPTED", JobState.FAILED),
        ("OUT_OF_MEMORY", JobState.FAILED),
        ("BOOT_FAIL", JobState.FAILED),
        ("DEADLINE", JobState.FAILED),
        ("CANCELLED", JobState.CANCELLED),
        ("CANCELLED by 0", JobState.CANCELLED),  # sacct's spelling
        ("completed", JobState.SUCCEEDED),
        (["PENDING", "REQUEUED"], JobState.PENDING),  # 23.02+ list form: flags decide
        (["RUNNING", "COMPLETING"], JobState.RUNNING),
        (["COMPLETED"], JobState.SUCCEEDED),
    ],
)
def test_state_mapping(native: str | list[str], expected: JobState) -> None:
    assert job_state_from_slurm(native) is expected


@pytest.mark.parametrize("native", ["WEIRD", "", [], ["RUNNING", 3]])
def test_unknown_state_is_a_clear_error(native: Any) -> None:
    with pytest.raises(EngineOutputError, match="state"):
        job_state_from_slurm(native)


def test_unknown_state_in_squeue_names_the_field() -> None:
    document = json.loads(read("squeue_mixed.json"))
    document["jobs"][1]["job_state"] = "LEVITATING"
    with pytest.raises(EngineOutputError) as info:
        parse_squeue_json(json.dumps(document))
    assert str(info.value) == "squeue --json: jobs[1].job_state: unknown Slurm job state 'LEVITATING'"


# --- garbled and truncated input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["jobs"][0].update(job_id="1"), "jobs[0].job_id: expected int, got str"),
        (lambda d: d["jobs"][0].update(job_id=True), "jobs[0].job_id: expected int, got bool"),
        (lambda d: d["jobs"][2].pop("name"), "jobs[2].name: missing"),
        (lambda d: d["jobs"][0].update(nodes="node[1-"), "jobs[0].nodes: hostlist 'node[1-'"),
        (lambda d: d["jobs"][0].update(submit_time=10**20), "jobs[0].submit_time: out of range"),
        (lambda d: d["jobs"].__setitem__(3, ["not", "a", "job"]), "jobs[3]: expected an object, got list"),
        (lambda d: d.pop("jobs"), "jobs: missing"),
        (lambda d: d.update(jobs={}), "jobs: expected a list, got dict"),
    ],
)
def test_garbled_squeue_names_the_field(mutate: Any, message: str) -> None:
    document = json.loads(read("squeue_mixed.json"))
    mutate(document)
    with pytest.raises(EngineOutputError) as info:
        parse_squeue_json(json.dumps(document))
    assert str(info.value).startswith(f"squeue --json: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no output"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"nodes": [{"name": "n1"}]}', "nodes[0].state: missing"),
        ('{"nodes": [{"name": "n1", "state": "idle", "state_flags": [1]}]}', "nodes[0].state_flags"),
        (b'{"nodes": "\xff"}', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_garbled_sinfo(text: str | bytes, message: str) -> None:
    with pytest.raises(EngineOutputError, match=r"^sinfo --json: ") as info:
        parse_sinfo_json(text)
    assert message in str(info.value)


@pytest.mark.parametrize("name", GOOD_JSON_FIXTURES)
def test_every_truncation_of_a_real_output_is_a_clear_error(name: str) -> None:
    text = read(name)
    parse = parse_squeue_json if name.startswith("squeue") else parse_sinfo_json
    assert parse(text, source=name)
    for cut in range(0, len(text.rstrip()), max(1, len(text) // 200)):
        with pytest.raises(EngineOutputError, match=rf"^{name}: "):
            parse(text[:cut], source=name)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_truncated_or_flipped_bytes_never_escape(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(GOOD_JSON_FIXTURES))
    raw = bytearray((FIXTURES / name).read_bytes())
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    parse = parse_squeue_json if name.startswith("squeue") else parse_sinfo_json
    try:
        parse(bytes(raw), source=name)
    except EngineOutputError as exc:
        assert str(exc).startswith(f"{name}: ")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), value=JSON_VALUES)
def test_any_json_in_any_field_parses_or_is_a_clear_error(data: st.DataObject, value: Any) -> None:
    name = data.draw(st.sampled_from(GOOD_JSON_FIXTURES))
    document = json.loads(read(name))
    key = "jobs" if name.startswith("squeue") else "nodes"
    items = document[key]
    item = items[data.draw(st.integers(0, len(items) - 1))]
    item[data.draw(st.sampled_from(sorted(item)))] = value
    parse = parse_squeue_json if key == "jobs" else parse_sinfo_json
    try:
        parsed = parse(json.dumps(document))
    except EngineOutputError as exc:
        assert f"{key}[" in str(exc)
    else:
        assert len(parsed) == len(items)


@settings(max_examples=100, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_document_parses_or_is_a_clear_error(value: Any) -> None:
    for parse, key in ((parse_squeue_json, "jobs"), (parse_sinfo_json, "nodes")):
        try:
            parsed = parse(json.dumps(value))
        except EngineOutputError as exc:
            assert str(exc).startswith(("squeue --json: ", "sinfo --json: "))
        else:
            assert isinstance(value, dict) and len(parsed) == len(value[key])


# --- hostlists ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("", []),
        ("node1", ["node1"]),
        ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
        ("node[1-2],login,gpu[08-10]", ["node1", "node2", "login", "gpu08", "gpu09", "gpu10"]),
        ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("[1-2]a", ["1a", "2a"]),
        ("host-a.example.org,node[1,1]", ["host-a.example.org", "node1", "node1"]),
        ("  node[3-4]\n", ["node3", "node4"]),
    ],
)
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node[1-", "'[' is never closed"),
        ("node1-3]", "']' without '['"),
        ("node[[1]]", "nested '['"),
        ("node[]", "empty brackets"),
        ("node[3-1]", "runs backwards"),
        ("node[a-b]", "'a-b' is not a number"),
        ("node[1-2-3]", "'1-2-3' is not a number"),
        ("node1,,node2", "empty host name"),
        ("node 1", "character ' ' is not allowed"),
        ("$(touch /tmp/x)", "character '$' is not allowed"),
        ("n[0-99999999999]", f"more than {MAX_HOSTS} hosts"),
        ("a[0-999]b[0-999]", f"more than {MAX_HOSTS} hosts"),
    ],
)
def test_bad_hostlist_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(InputError, match=r"^hostlist ") as info:
        expand_hostlist(text)
    assert message in str(info.value)


NAME_PART = st.from_regex(r"[a-z][a-z0-9._-]{0,6}", fullmatch=True).filter(lambda s: not s[-1].isdigit())
RANGE = st.tuples(st.integers(0, 300), st.integers(0, 20), st.integers(1, 4))  # low, length, pad width


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(NAME_PART, st.lists(RANGE, min_size=1, max_size=3)), min_size=1, max_size=4))
def test_expand_hostlist_matches_a_straightforward_model(
    items: list[tuple[str, list[tuple[int, int, int]]]],
) -> None:
    text_items, expected = [], []
    for prefix, ranges in items:
        parts = []
        for low, length, width in ranges:
            high = low + length
            low_text = str(low).zfill(width)
            parts.append(low_text if length == 0 else f"{low_text}-{high}")
            pad = width if low_text.startswith("0") else 0
            expected += [f"{prefix}{str(n).zfill(pad)}" for n in range(low, high + 1)]
        text_items.append(f"{prefix}[{','.join(parts)}]")
    assert expand_hostlist(",".join(text_items)) == expected


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab01-9[],. $", max_size=24))
def test_expand_hostlist_never_escapes(text: str) -> None:
    try:
        hosts = expand_hostlist(text)
    except InputError as exc:
        assert str(exc).startswith("hostlist ")
    else:
        assert all(host and "[" not in host and "," not in host for host in hosts)

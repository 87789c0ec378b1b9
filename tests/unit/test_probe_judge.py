"""Probe records and the judge: parsing real worker output, expectations YAML, blame by fleet median."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfleet.errors import InputError
from trainfleet.health.probes.judge import (
    blamed_nodes,
    judge_nodes,
    judge_pairs,
    load_expectations,
    node_scores,
)
from trainfleet.health.probes.records import (
    CollectiveRecord,
    PairRecord,
    format_matrix,
    pair_matrix,
    parse_probe_output,
    record_to_json,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"


def recorded_matrix(name: str) -> dict[tuple[str, str], float]:
    return pair_matrix(parse_probe_output((FIXTURES / name).read_text(), source=name))


def test_recorded_degraded_testbed_names_tfh3_first() -> None:
    matrix = recorded_matrix("pairs_4hosts_tfh3_1000mbit.jsonl")
    assert len(matrix) == 12  # 4 nodes, both directions of 6 pairs
    findings = judge_pairs(matrix)
    assert blamed_nodes(findings) == ["tfh3"]
    assert [f.kind for f in findings] == ["node"]  # its slow links are explained by the node
    assert findings[0].ratio < 0.15
    assert "tfh3" in format_matrix(matrix).splitlines()[3]


def test_recorded_healthy_testbed_blames_nobody() -> None:
    matrix = recorded_matrix("pairs_4hosts_healthy.jsonl")
    gloo = load_expectations()["cpu-gloo"]
    assert judge_pairs(matrix) == []
    assert judge_pairs(matrix, expected=gloo.expectations["pair_bw_gbps"], class_name="cpu-gloo") == []


def test_a_bad_link_is_named_as_a_link_not_a_node() -> None:
    nodes = [f"n{i}" for i in range(6)]
    matrix = {(a, b): 48.0 for a in nodes for b in nodes if a != b}
    matrix[("n1", "n4")] = 6.0
    findings = judge_pairs(matrix)
    assert [(f.kind, f.subject) for f in findings] == [("link", "n1->n4")]
    assert node_scores(matrix)["n1"] == 48.0


def test_expected_table_catches_a_uniformly_slow_fleet() -> None:
    ib = load_expectations()["ib-400g"].expectations["pair_bw_gbps"]
    values = {"a": 21.0, "b": 22.0, "c": 47.0}
    findings = judge_nodes(values, "pair_bw_gbps", expected=ib, class_name="ib-400g")
    assert [(f.subject, f.reason) for f in findings] == [
        ("a", "below expected for ib-400g"),
        ("b", "below expected for ib-400g"),
    ]
    assert judge_nodes(values, "pair_bw_gbps") == []  # against the median alone they look fine


def test_shipped_expectations_hold_the_published_figures() -> None:
    classes = load_expectations()
    nvlink = classes["h100-nvlink"].expectations["all_reduce_busbw_gbps"]
    assert (nvlink.low, nvlink.high) == (370, 480)
    nic = classes["ib-400g"].expectations["all_reduce_busbw_gbps"]
    assert (nic.low, nic.high) == (46, 49)
    assert "cpu-gloo" in classes


def test_override_yaml_replaces_metrics_and_adds_classes(tmp_path: Path) -> None:
    override = tmp_path / "expected.yaml"
    override.write_text(
        "classes:\n"
        "  h100-nvlink:\n"
        "    all_reduce_busbw_gbps: {low: 440, high: 480, source: NVLS on}\n"
        "  b200-nvlink:\n"
        "    description: 8x B200\n"
        "    all_reduce_busbw_gbps: {low: 600, high: 700}\n"
    )
    classes = load_expectations(override)
    assert classes["h100-nvlink"].expectations["all_reduce_busbw_gbps"].low == 440
    assert classes["h100-nvlink"].expectations["all_gather_busbw_gbps"].low == 340  # kept from defaults
    assert classes["b200-nvlink"].description == "8x B200"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes: {x: {all_reduce_busbw_gbps: {low: fast}}}", "classes.x.all_reduce_busbw_gbps.low"),
        ("classes: {x: {all_reduce_busbw_gbps: {low: 5, high: 1}}}", "high 1 is below low 5"),
        ("classes: {x: {speed: {low: 5}}}", "classes.x.speed: unknown metric"),
        ("nothing: here", "'classes' mapping"),
        ("classes: [", "not valid YAML"),
    ],
)
def test_bad_override_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=r"bad\.yaml") as caught:
        load_expectations(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_records_round_trip_and_skip_launcher_noise() -> None:
    pair = PairRecord(1, "tfh1", "tfh2", 0, 1, 8 << 20, 0.005, 1.68, True, 3)
    coll = CollectiveRecord(
        "all_reduce", 1 << 20, 4, 0.002, 0.52, 0.79, True, 5, "gloo", ("a", "b", "c", "d")
    )
    text = "\n".join(
        [
            "W1203 08:01:02.123 torch/distributed/run.py:803] Setting OMP_NUM_THREADS environment variable",
            record_to_json("pair", pair),
            '{"not": "a probe"}',
            record_to_json("collective", coll),
        ]
    )
    assert parse_probe_output(text) == [pair, coll]


def test_broken_record_names_the_line() -> None:
    with pytest.raises(InputError, match=r"run\.log:2: broken probe record"):
        parse_probe_output('noise\n{"probe":"pair","round":', source="run.log")
    with pytest.raises(InputError, match=r"run\.log:1: pair record lacks field 'src'"):
        parse_probe_output('{"probe":"pair","round":1}', source="run.log")

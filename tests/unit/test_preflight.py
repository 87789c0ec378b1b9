"""Preflight on its own: the spec block, doctor verdicts from real lspci captures, the all-reduce gate with
bisection over group bandwidths derived from pair measurements recorded on the testbed, spares, fail-fast,
node history and the deadline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainfleet.errors import SpecError
from trainfleet.health.probes.records import pair_matrix, parse_probe_output
from trainfleet.spec import JobSpec
from trainfleet.spec.load import load_spec
from trainfleet.store import Store, open_store
from trainfleet.supervise.preflight import preflight_candidates, run_preflight

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HOSTS = ["tfh1", "tfh2", "tfh3", "tfh4"]
# 04: a Dell with NICs trained at x1 of x2 (doctor: link-width warnings); 08: a clean ConnectX-7 capture
NARROW = FIXTURES / "lspci" / "04_dell-broadwell-2xp100pcie-nvme_vvv.txt"
CLEAN = FIXTURES / "lspci" / "08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv-cx7-only.txt"


def spec(nodes: int = 3, **preflight: object) -> JobSpec:
    return JobSpec.model_validate({"name": "train", "command": ["python", "train.py"], "nodes": nodes,
                                   "spare_nodes": 1, "preflight": preflight})


def group_busbw(recording: str) -> object:
    """A ring all-reduce runs at its slowest link: a group's busbw is the slowest recorded pair in it."""
    matrix = pair_matrix(parse_probe_output((FIXTURES / "probes" / recording).read_text()))

    def measure(group: tuple[str, ...]) -> float:
        return min(v for (a, b), v in matrix.items() if a in group and b in group)

    return measure


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as s:
        yield s


def test_preflight_block_loads_and_bad_values_name_their_field(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    base = {"name": "t", "command": "python x.py", "nodes": 2}
    path.write_text(json.dumps({**base, "preflight": {"doctor": True, "allreduce": {"min_busbw_gbps": 40},
                                                      "timeout_s": 120}}))
    gate = load_spec(path).preflight
    assert gate is not None and gate.doctor and gate.timeout_s == 120
    assert gate.allreduce is not None and gate.allreduce.min_busbw_gbps == 40 and gate.allreduce.size == "16M"
    assert load_spec(path, ["preflight.allreduce.size=64M"]).preflight.allreduce.size == "64M"
    for bad, field in (({"allreduce": {"min_busbw_gbps": 0}}, "preflight.allreduce.min_busbw_gbps"),
                       ({"allreduce": {"min_busbw_gbps": 1, "size": "lots"}}, "preflight.allreduce.size"),
                       ({"timeout_s": -1}, "preflight.timeout_s"), ({"doctr": True}, "preflight.doctr")):
        path.write_text(json.dumps({**base, "preflight": bad}))
        with pytest.raises(SpecError) as err:
            load_spec(path)
        assert f"job.yaml: {field}:" in str(err.value) and "\n" not in str(err.value)


def test_no_preflight_passes_every_node_and_chooses_the_first(store: Store) -> None:
    job = JobSpec(name="t", command=["x"], nodes=2)
    result = run_preflight(job, HOSTS, "netns", store)
    assert result.ok and result.chosen == ["tfh1", "tfh2"] and result.excluded == {}


def test_doctor_excludes_a_node_whose_capture_fails(store: Store, tmp_path: Path) -> None:
    for node, capture in (("tfh1", CLEAN), ("tfh2", NARROW), ("tfh3", CLEAN)):
        (tmp_path / node).mkdir()
        shutil.copy(capture, tmp_path / node / "lspci.txt")
    strict = spec(3, doctor=True, doctor_fail_on="warning")
    result = run_preflight(strict, HOSTS, "local", store, job_id="feedbeef", bundles=tmp_path)
    assert list(result.excluded) == ["tfh2"] and "link-width" in result.excluded["tfh2"]
    assert result.ok and result.chosen == ["tfh1", "tfh3", "tfh4"]  # the spare takes tfh2's place
    assert any("tfh4" in note for note in result.notes)  # no bundle: not judged
    history = store.node("tfh2")
    assert history is not None and history.state == "suspect" and "preflight: doctor" in history.last_reason
    lenient = run_preflight(spec(3, doctor=True), HOSTS, "local", store, bundles=tmp_path)
    assert lenient.excluded == {} and lenient.chosen == ["tfh1", "tfh2", "tfh3"]


def test_allreduce_gate_bisects_to_the_degraded_host_and_a_spare_replaces_it(store: Store) -> None:
    gate = {"allreduce": {"min_busbw_gbps": 0.5}}
    healthy = run_preflight(spec(3, **gate), HOSTS, "netns", store,
                            measure=group_busbw("pairs_4hosts_healthy.jsonl"))
    assert healthy.ok and healthy.excluded == {} and len(healthy.measurements) == 1

    result = run_preflight(spec(3, **gate), HOSTS, "netns", store, job_id="0badc0de",
                           measure=group_busbw("pairs_4hosts_tfh3_1000mbit.jsonl"))
    assert list(result.excluded) == ["tfh3"] and "bisection" in result.excluded["tfh3"]
    assert result.ok and result.chosen == ["tfh1", "tfh2", "tfh4"]
    assert store.node("tfh3").last_job_id == "0badc0de"

    short = run_preflight(spec(4, **gate), HOSTS, "netns", store,
                          measure=group_busbw("pairs_4hosts_tfh3_1000mbit.jsonl"))
    assert not short.ok and short.chosen == ["tfh1", "tfh2", "tfh4"]
    assert short.reason.startswith("preflight: 3 healthy node(s), 4 needed (excluded tfh3: allreduce: busbw")


def test_two_slow_nodes_are_both_excluded_and_the_job_fails_fast(store: Store) -> None:
    slow = {"tfh2", "tfh3"}
    eight = [f"tfh{i}" for i in range(1, 9)]

    def measure(group: tuple[str, ...]) -> float:
        return 0.1 if slow & set(group) else 1.0

    result = run_preflight(spec(7, allreduce={"min_busbw_gbps": 0.5}), eight, "netns", store, measure=measure)
    assert set(result.excluded) == slow and result.healthy == ["tfh1", *eight[3:]]
    assert not result.ok and "6 healthy node(s), 7 needed" in result.reason


def test_a_set_bisection_cannot_narrow_is_excluded_whole(store: Store) -> None:
    def measure(group: tuple[str, ...]) -> float:  # one slow node in each half: nobody is ever cleared
        return 0.1 if {"tfh2", "tfh4"} & set(group) else 1.0

    result = run_preflight(spec(2, allreduce={"min_busbw_gbps": 0.5}), HOSTS, "netns", store, measure=measure)
    assert sorted(result.excluded) == HOSTS and not result.ok
    assert "bisection could not narrow it" in result.excluded["tfh1"]


def test_preflight_past_its_deadline_fails_without_starting_a_probe(store: Store) -> None:
    result = run_preflight(spec(2, allreduce={"min_busbw_gbps": 0.5}, timeout_s=0.5), HOSTS, "local", store)
    assert not result.ok and result.reason == "preflight timed out after 0.5s"
    assert result.probe_jobs == [] and store.list_jobs() == []


def test_on_slurm_the_candidates_skip_nodes_the_backend_already_avoids(store: Store) -> None:
    from trainfleet.backends.netns import NetnsBackend
    from trainfleet.backends.slurm.backend import SlurmBackend

    slurm_nodes = ["node1", "node2", "node3", "node4"]
    avoiding = SlurmBackend(exclude=["node2"], partition="debug")  # static here; history suspects alike
    assert preflight_candidates(slurm_nodes, avoiding, 3) == ["node1", "node3", "node4"]
    assert preflight_candidates(slurm_nodes, avoiding, 4) == slurm_nodes  # never fewer than the job needs
    assert preflight_candidates(slurm_nodes, SlurmBackend(), 2) == slurm_nodes
    assert preflight_candidates(HOSTS, NetnsBackend(), 2) == HOSTS  # the supervisor places netns nodes

    # the gate names Slurm nodes as it names testbed hosts: the recording's tfh3 is node3 here
    by_host = group_busbw("pairs_4hosts_tfh3_1000mbit.jsonl")

    def measure(group: tuple[str, ...]) -> float:
        return by_host(tuple(name.replace("node", "tfh") for name in group))

    result = run_preflight(spec(2, allreduce={"min_busbw_gbps": 0.5}), slurm_nodes, avoiding, store,
                           job_id="5107f00d", measure=measure)
    assert list(result.excluded) == ["node3"] and result.ok and result.chosen == ["node1", "node2"]
    assert store.node("node3").state == "suspect" and store.node("node3").last_job_id == "5107f00d"

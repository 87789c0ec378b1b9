"""The pure parts of probes-as-jobs: the netns backend's rendered request, the probe job spec on each
backend, node names by placement (Slurm nodes chosen from recorded sinfo output, named by the allocation),
judging of recorded testbed output, and per-node results in the job database."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfleet.backends.base import AttemptPlan
from trainfleet.backends.netns import NetnsBackend
from trainfleet.backends.slurm import parse_sinfo_json
from trainfleet.backends.slurm.backend import SlurmBackend
from trainfleet.errors import BackendError, InputError
from trainfleet.health.probes.records import PairRecord, pair_matrix, parse_probe_output
from trainfleet.health.probes.run import (
    PROBE_BACKENDS,
    ProbeReport,
    ProbeRequest,
    judge,
    make_backend,
    node_labels,
    probe_spec,
    relabel,
)
from trainfleet.health.probes.slurm_nodes import allocation_names, pick_nodes
from trainfleet.health.probes.store import node_history, save_report
from trainfleet.spec import JobSpec
from trainfleet.store import open_store

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"
SINFO = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
PLAN = AttemptPlan(job_id="abcd1234", attempt=1, run_dir="/runs/abcd1234", master_addr="127.0.0.1",
                   master_port=29555, supervisor_addr="10.231.0.254:40000", python="/venv/bin/python")


def test_netns_render_wraps_each_agent_in_its_host_namespace() -> None:
    spec = JobSpec(name="t", command=["python", "train.py"], nodes=3, procs_per_node=2, env={"A": "1"})
    request = NetnsBackend(["tfh2", "tfh5", "7"]).render(spec, PLAN)
    assert request.backend == "netns" and request.world_size == 6
    assert request.master_addr == "10.231.0.2"  # the first host's namespace address
    for node, (agent, host) in enumerate(zip(request.agents, ["tfh2", "tfh5", "tfh7"], strict=True)):
        assert agent.argv[:5] == ["ip", "netns", "exec", host, "/venv/bin/python"]
        argv = agent.argv
        assert argv[argv.index("--master-addr") + 1] == "10.231.0.2"
        assert argv[argv.index("--supervisor") + 1] == "10.231.0.254:40000"
        assert argv[argv.index("--node-rank") + 1] == str(node)
        assert argv[-3:] == ["--", "python", "train.py"]
        assert agent.env["GLOO_SOCKET_IFNAME"] == "eth0" and agent.env["TRAINFLEET_NODE_NAME"] == host
        assert agent.env["A"] == "1" and agent.log_path == f"/runs/abcd1234/attempt-1/node-{node}/agent.log"
    default = NetnsBackend().render(spec, PLAN)
    assert [a.argv[3] for a in default.agents] == ["tfh1", "tfh2", "tfh3"]
    assert NetnsBackend().node_pool(4) == ["tfh1", "tfh2", "tfh3", "tfh4"]
    spared = NetnsBackend()
    spared.exclude(["tfh2"])  # a host to avoid: its rank goes to the spare tfh4
    with_spare = spec.model_copy(update={"spare_nodes": 1})
    assert [a.argv[3] for a in spared.render(with_spare, PLAN).agents] == ["tfh1", "tfh3", "tfh4"]
    with pytest.raises(BackendError, match=r"3 nodes asked, 2 hosts given \(1 excluded\)"):
        spared.render(spec, PLAN)


def test_netns_backend_bad_hosts_are_one_line() -> None:
    with pytest.raises(BackendError, match=r"host 'eth9': expected tfh1\.\.tfh200"):
        NetnsBackend(["tfh1", "eth9"])
    with pytest.raises(BackendError, match="a host is listed twice"):
        NetnsBackend(["tfh1", "1"])
    spec = JobSpec(name="t", command=["x"], nodes=3)
    with pytest.raises(BackendError, match="3 nodes asked, 2 hosts given"):
        NetnsBackend(["tfh1", "tfh2"]).render(spec, PLAN)


def test_probe_request_checks_and_builds_the_worker_command() -> None:
    req = ProbeRequest("allreduce", nodes=4, sizes="1M..64M", ops="all_reduce", iters=3, timeout_s=60)
    req.check()
    spec = probe_spec(req, "netns", workdir="/tmp")
    assert spec.name == "probe-allreduce" and spec.nodes == 4 and spec.backend == "netns"
    assert spec.env == {"OMP_NUM_THREADS": "1"}  # the engine is the spec's backend, not an env variable
    assert [probe_spec(req, b).backend for b in PROBE_BACKENDS] == ["local", "netns", "slurm"]
    with pytest.raises(BackendError, match="probes run on the local, netns, slurm backends, not 'k8s'"):
        probe_spec(req, "k8s")
    assert spec.argv[1:3] == ["-m", "trainfleet.health.probes.worker"]
    assert spec.argv[3:] == ["--device", "auto", "--warmup", "1", "--iters", "3", "--timeout-s", "60",
                             "collectives", "--sizes", "1M..64M", "--factor", "4", "--ops", "all_reduce"]
    assert ProbeRequest("pairs", pair_size="4M").worker_args()[-3:] == ["pairs", "--size", "4M"]
    for bad, message in ((ProbeRequest("pairs", nodes=1), "needs at least 2 ranks"),
                         (ProbeRequest("allreduce", sizes="9M..1M"), "runs backwards"),
                         (ProbeRequest("allreduce", ops="broadcast"), "unknown collective 'broadcast'"),
                         (ProbeRequest("flood"), "probe 'flood': expected one of")):  # type: ignore[arg-type]
        with pytest.raises(InputError, match=message):
            bad.check()
    assert node_labels("local", 3) == ["local-0", "local-1", "local-2"]
    assert node_labels("netns", 2) == ["tfh1", "tfh2"]


def test_recorded_testbed_pairs_are_relabelled_judged_and_stored(tmp_path: Path) -> None:
    raw = parse_probe_output((FIXTURES / "pairs_4hosts_tfh3_1000mbit.jsonl").read_text())
    names = ["n0", "n1", "n2", "n3"]
    records = relabel(raw, names, procs_per_node=1)
    assert all(isinstance(r, PairRecord) for r in records)
    assert {(r.src, r.dst) for r in records} == {(a, b) for a in names for b in names if a != b}
    report = ProbeReport(kind="pairs", backend="netns", job_id="feed0001", state="succeeded", reason=None,
                         nodes=names, records=records)
    report.findings = judge(report)
    assert [f.subject for f in report.findings] == ["n2"]  # tfh3 is node rank 2
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        rows = save_report(store, report)
        verdicts = [(r.node, r.verdict) for r in rows]
        assert verdicts == [("n0", "ok"), ("n1", "ok"), ("n2", "slow"), ("n3", "ok")]
        history = node_history(store, "n2", metric="pair_bw_gbps")
        assert [(h.job_id, h.probe, h.backend, h.verdict) for h in history] == [
            ("feed0001", "pairs", "netns", "slow")]
        assert history[0].value == pytest.approx(report.node_values()["n2"][1])
        # each row keeps the node's outgoing links, so the dashboard's matrix needs nothing but the store
        matrix = pair_matrix(records)
        assert history[0].data["links"] == pytest.approx({d: g for (s, d), g in matrix.items() if s == "n2"})
        slow_link = history[0].data["links"]["n0"]
        assert len(history[0].data["links"]) == 3 and slow_link < 0.5 * matrix[("n0", "n1")]


def recorded_sinfo(name: str) -> list:
    return parse_sinfo_json((SINFO / name).read_text())


def test_slurm_probe_nodes_are_the_usable_ones_or_the_given_ones() -> None:
    nodes = recorded_sinfo("sinfo_idle_drained_down.json")  # node1, node2 idle; node3 drained; node4 down
    assert pick_nodes(2, nodes=nodes) == ["node1", "node2"]
    assert pick_nodes(1, nodes=nodes, partition="debug") == ["node1"]
    assert pick_nodes(2, ["node2", "node1"], nodes=nodes) == ["node2", "node1"]  # the order given
    busy = recorded_sinfo("sinfo_alloc_draining.json")  # node1 allocated: usable, the probe waits for it
    assert pick_nodes(1, nodes=busy) == ["node1"]
    for count, hosts, partition, message in (
        (3, None, None,
         r"slurm: 3 nodes asked, 2 usable \(skipped: node3 drained: test; node4 down: test-down\)"),
        (1, None, "gpu", "slurm: 1 node asked, 0 usable in partition gpu"),
        (2, ["node1", "node3"], None, r"--hosts: node3 is not usable now \(drained: test\)"),
        (2, ["node1", "node9"], None, r"--hosts: node9 is not a node of this Slurm cluster \(known: node1, "),
        (1, ["node1"], "gpu", "--hosts: node1 is not in partition gpu"),
        (2, ["node1", "node 2"], None, "--hosts: 'node 2' is not a Slurm node name"),
        (2, ["node1", "node1"], None, "--hosts: a node is listed twice"),
        (3, ["node1", "node2"], None, "3 nodes asked, 2 names given"),
    ):
        with pytest.raises(InputError, match=message):
            pick_nodes(count, hosts, partition=partition, nodes=nodes)


def test_slurm_probe_backend_is_pinned_to_its_nodes() -> None:
    backend = make_backend("slurm", ["node3", "node1"], partition="debug")
    assert isinstance(backend, SlurmBackend) and backend.nodelist == ("node1", "node3")
    assert backend.partition == "debug" and backend.exclude == ()  # a probe reads no node history
    spec = probe_spec(ProbeRequest("pairs", nodes=2), "slurm", workdir="/shared/work")
    script = backend.render(spec, PLAN).script
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --nodelist=node1,node3\n" in script
    assert "#SBATCH --partition=debug\n" in script and "-m trainfleet.health.probes.worker" in script
    assert "--workdir /shared/work" in script
    with pytest.raises(BackendError, match="nodelist: 3 nodes named"):
        make_backend("slurm", ["node1", "node2", "node3"]).render(spec, PLAN)


def test_slurm_probe_ranks_are_named_by_the_allocation(tmp_path: Path) -> None:
    """Slurm numbers an allocation's nodes in its own order: the supervisor's attempt_started event says
    which node each node rank got, and that is what the records are named by."""
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        job_id = store.create_job(probe_spec(ProbeRequest("pairs", nodes=2), "slurm", workdir="/w"))
        assert allocation_names(store, job_id) is None  # no attempt started
        store.add_event(job_id, "attempt_started", "attempt 0", attempt=0,
                        data={"master_port": 1, "nodes": {"1": "node4", "0": "node2"}})
        assert allocation_names(store, job_id) == ["node2", "node4"]

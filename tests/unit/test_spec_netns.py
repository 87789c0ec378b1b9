"""``backend: netns`` is a first-class spec backend: ``service.backend_for`` builds the testbed backend, a
dry run renders ``ip netns exec`` launches without a testbed, and a job whose hosts are not up is refused
with one line before anything is recorded. (Real jobs on the testbed: tests/integration/test_probe_netns.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainfleet import service
from trainfleet.backends.netns import NetnsBackend
from trainfleet.errors import BackendError
from trainfleet.spec import JobSpec, JobState
from trainfleet.store import open_store
from trainfleet.testbed import netns


def spec(**fields: object) -> JobSpec:
    return JobSpec.model_validate({"name": "nn", "command": ["python", "train.py"], "nodes": 2,
                                   "backend": "netns", **fields})


def test_the_netns_backend_is_built_for_a_netns_spec() -> None:
    backend = service.backend_for(spec(), require_up=False)
    assert isinstance(backend, NetnsBackend) and backend.name == "netns"
    assert backend.supervisor_host == netns.HOST_SIDE_ADDRESS == "10.231.0.254"
    assert backend.node_pool(3) == ["tfh1", "tfh2", "tfh3"]


def test_a_dry_run_renders_each_node_inside_its_testbed_host(tmp_path: Path) -> None:
    request = service.dry_run(spec(procs_per_node=2), job_id="abcd1234", run_dir=str(tmp_path))
    assert (request.backend, request.world_size, request.master_addr) == ("netns", 4, "10.231.0.1")
    assert [a.argv[:4] for a in request.agents] == [["ip", "netns", "exec", "tfh1"],
                                                    ["ip", "netns", "exec", "tfh2"]]
    assert all(a.env["GLOO_SOCKET_IFNAME"] == "eth0" for a in request.agents)
    assert [a.env["TRAINFLEET_NODE_NAME"] for a in request.agents] == ["tfh1", "tfh2"]


def test_hosts_that_are_not_up_are_named_in_one_line() -> None:
    # 199 nodes + 1 spare use tfh1..tfh200: never all up here (the testbed tests bring up 4 at most).
    with pytest.raises(BackendError) as err:
        service.backend_for(spec(nodes=199, spare_nodes=1))
    message = str(err.value)
    assert "\n" not in message and message.startswith("netns backend: ")
    if os.geteuid() == 0:
        assert message.endswith(" not up (start them with: scripts/testbed up 200)")
        assert "tfh200" in message or "more" in message
    else:
        assert message == "netns backend: needs root (ranks start with `ip netns exec`)"


def test_more_hosts_than_the_testbed_can_have_is_refused_even_for_a_dry_run() -> None:
    with pytest.raises(BackendError, match=r"^netns backend: 201 hosts needed \(nodes \+ spare_nodes\), "
                                           r"the testbed has at most 200$"):
        service.backend_for(spec(nodes=200, spare_nodes=1), require_up=False)


def test_a_job_that_cannot_run_on_the_testbed_is_not_recorded(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        with pytest.raises(BackendError):
            service.create_job(spec(nodes=199, spare_nodes=1), store)
        assert store.list_jobs() == []


def test_a_netns_job_is_not_resumed_while_its_hosts_are_down(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        job = store.create_job(spec(nodes=199, spare_nodes=1), run_dir=str(tmp_path / "runs" / "{job_id}"))
        store.update_job(job, state=JobState.FAILED, reason="node 1 agent lost", ended_at=10.0)
        with pytest.raises(BackendError, match=r"^netns backend: "):
            service.prepare_resume(job, store)
        record = store.get_job(job)
        assert (record.state, record.reason, record.ended_at) == (JobState.FAILED, "node 1 agent lost", 10.0)
        assert [e.kind for e in store.events(job)] == []


def test_a_supervisor_that_cannot_get_its_backend_fails_the_job_instead_of_leaving_it_pending(
        tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        job = store.create_job(spec(nodes=199, spare_nodes=1), run_dir=str(tmp_path / "runs" / "{job_id}"))
        with pytest.raises(BackendError) as err:
            service.supervise(job, store, handle_signals=False)
        record = store.get_job(job)
        assert (record.state, record.reason) == (JobState.FAILED, str(err.value)) and record.ended_at
        assert [e.kind for e in store.events(job)] == ["job_failed"]

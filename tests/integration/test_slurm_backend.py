"""The Slurm backend end to end against real daemons: ``trainfleet run`` of a spec with ``backend: slurm``.

Every test goes through the CLI (supervisor here, agents started by srun on the dev cluster's nodes) and
checks the outcome in three places: trainfleet's store (``status --json``), Slurm (``squeue --json``) and
the processes left on the machine (all fake nodes are slurmd instances on this host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from slurm_fixtures import SlurmCluster
from trainfleet.backends.slurm import SlurmJob
from trainfleet.spec.state import JobState

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TRAINFLEET = Path(sys.executable).parent / "trainfleet"
FIXTURES = REPO / "tests" / "fixtures" / "jobs"
LSPCI = REPO / "tests" / "fixtures" / "lspci"
# 04: NICs trained at x1 of x2 (doctor: link-width warnings); 08: a clean ConnectX-7 capture
NARROW = LSPCI / "04_dell-broadwell-2xp100pcie-nvme_vvv.txt"
CLEAN = LSPCI / "08_lenovo-sd665n-v3-4xh100sxm-cx7-4chip-mezz_vvv-cx7-only.txt"
TRAIN = REPO / "examples" / "gpt" / "train.py"
TINY = [
    "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
    "--corpus-chars", "50000", "--eval-every", "0", "--eval-batches", "2", "--log-every", "1", "--lr", "1e-2",
    "--pg-timeout-s", "30",
]  # fmt: skip
STEP_LINE = re.compile(r"Z step (\d+) loss ([0-9.]+)", re.M)
NOTICE_LINE = re.compile(r"checkpoint on preemption notice at step (\d+)")


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAINFLEET_", "TORCHELASTIC_", "SLURM_"))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env | {"TRAINFLEET_HOME": str(home), "OMP_NUM_THREADS": "1"}


def write_spec(path: Path, **fields: object) -> Path:
    spec = {"backend": "slurm", "nodes": 2, "procs_per_node": 1, "grace_s": 2,
            "restart": {"max_restarts": 0, "backoff_s": 0}, **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trainfleet(home: Path, *args: str, timeout_s: float = 120, cwd: Path = REPO,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRAINFLEET), *args], cwd=cwd, env=clean_env(home) | (env or {}),
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def status(home: Path, job_id: str) -> dict:
    done = trainfleet(home, "status", job_id, "--json", timeout_s=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def only_run_dir(home: Path) -> Path:
    runs = list((home / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def slurm_job_of(cluster: SlurmCluster, job_id: str, attempt: int) -> SlurmJob:
    """The Slurm job that ran ``attempt`` of trainfleet job ``job_id`` (named tf-<name>-<id>-a<attempt>)."""
    found = [job for job in cluster.squeue() if job.name.endswith(f"-{job_id}-a{attempt}")]
    assert len(found) == 1, [job.name for job in cluster.squeue()]
    return found[0]


def survivors(job_id: str, slurm_ids: set[int]) -> list[str]:
    """Live processes of the trainfleet job or of its Slurm jobs, on any fake node (= this host)."""
    out = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if env.get("TRAINFLEET_JOB_ID") == job_id or env.get("SLURM_JOB_ID") in {str(i) for i in slurm_ids}:
            out.append(f"{proc.info['pid']} {proc.info['name']}")
    return out


def events(doc: dict, kind: str) -> list[dict]:
    return [e for e in doc["events"] if e["kind"] == kind]


def node_history(home: Path) -> list[tuple[str, str]]:
    done = trainfleet(home, "nodes", "--json", timeout_s=30)
    assert done.returncode == 0, done.stderr
    return [(node["name"], node["state"]) for node in json.loads(done.stdout)]


def slurm(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"


def wait_for(what: str, check, timeout_s: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.2)
    return value


@pytest.mark.timeout(150)
def test_gpt_demo_trains_across_two_slurm_nodes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    home, ckpt = tmp_path / "home", tmp_path / "ckpt"
    spec = write_spec(tmp_path / "gpt.yaml", name="gpt-slurm", checkpoint_dir=str(ckpt), workdir=str(REPO),
                      command=[sys.executable, str(TRAIN), *TINY, "--steps", "12", "--ckpt-every", "6"])
    done = trainfleet(home, "run", str(spec))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run_dir = only_run_dir(home)
    job = status(home, run_dir.name)
    assert job["state"] == "succeeded" and [r["exit_code"] for r in job["ranks"]] == [0, 0]
    assert {rank: row["step"] for rank, row in job["latest"].items()} == {"0": 12, "1": 12}
    rank0 = (run_dir / "attempt-0" / "node-0" / "rank-0.out").read_text()
    losses = {int(m[1]): float(m[2]) for m in STEP_LINE.finditer(rank0)}
    assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1], rank0[-1500:]
    assert (run_dir / "attempt-0" / "node-1" / "rank-1.out").read_text().strip()

    slurm = slurm_job_of(slurm_cluster, run_dir.name, 0)
    assert (slurm.native_state, slurm.exit_code) == ("COMPLETED", 0)
    assert len(set(slurm.nodes)) == 2
    script = (run_dir / "attempt-0" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --no-requeue\n" in script


def start_sleepers(home: Path, spec: Path, ranks: int) -> str:
    """``trainfleet run --detach`` a sleeper.py job; its id once ``ranks`` ranks are ready."""
    started = trainfleet(home, "run", str(spec), "--detach", timeout_s=30)
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    outs = home / "runs" / job_id / "attempt-0"

    def ready() -> bool:
        return sum("ready rank=" in p.read_text() for p in outs.glob("node-*/rank-*.out")) == ranks

    wait_for(f"{ranks} ready ranks", ready)
    return job_id


@pytest.mark.timeout(150)
def test_cancel_leaves_no_process_on_any_node(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "sleep.yaml", name="sleepers", procs_per_node=2, workdir=str(tmp_path),
                      command=[sys.executable, str(FIXTURES / "sleeper.py")])
    job_id = start_sleepers(home, spec, 4)  # every rank (2 nodes x 2) runs and has its own child
    slurm = slurm_job_of(slurm_cluster, job_id, 0)
    assert slurm.state is JobState.RUNNING and len(set(slurm.nodes)) == 2
    assert len(survivors(job_id, {slurm.job_id})) >= 8  # per node: agent + 2 ranks + 2 children at least

    cancelled = trainfleet(home, "cancel", job_id, timeout_s=90)
    assert cancelled.returncode == 0, cancelled.stderr
    assert status(home, job_id)["state"] == "cancelled"
    final = slurm_cluster.job(slurm.job_id)
    # The supervisor runs scancel before it tells the agents to stop: Slurm's own record says CANCELLED.
    assert final.native_state == "CANCELLED" and final.state is JobState.CANCELLED
    assert survivors(job_id, {slurm.job_id}) == []


@pytest.mark.timeout(120)
def test_scancel_outside_trainfleet_cancels_the_job_without_blame(slurm_cluster: SlurmCluster,
                                                                  tmp_path: Path) -> None:
    """An admin's (or the user's own) ``scancel`` of the Slurm job: the ranks die of SIGTERM, but Slurm says
    CANCELLED and trainfleet did not ask for it, so the job is cancelled: no restart, no node blamed."""
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "sleep.yaml", name="scancelled", workdir=str(tmp_path),
                      command=[sys.executable, str(FIXTURES / "sleeper.py")],
                      restart={"max_restarts": 2, "backoff_s": 0})
    job_id = start_sleepers(home, spec, 2)
    slurm_id = slurm_job_of(slurm_cluster, job_id, 0).job_id
    slurm("scancel", str(slurm_id))
    final = wait_for("the job to end", lambda: (s := status(home, job_id))["state"] in
                     ("succeeded", "failed", "cancelled") and s, 60)
    assert final["state"] == "cancelled" and final["restarts"] == 0, final.get("reason")
    assert final["reason"] == "cancelled in slurm outside trainfleet (CANCELLED)"
    assert not [e for e in final["events"] if e["kind"].startswith("node_")] and node_history(home) == []
    assert slurm_cluster.job(slurm_id).native_state == "CANCELLED"
    assert survivors(job_id, {slurm_id}) == []


@pytest.mark.timeout(200)
def test_killed_rank_resumes_with_its_node_excluded(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Rank 1 hangs at step 6 of attempt 0 and is killed with SIGKILL: attempt 1 is submitted with
    ``--exclude`` of rank 1's node, runs on other nodes and resumes from the step-4 checkpoint."""
    home, ckpt = tmp_path / "home", tmp_path / "ckpt"
    command = [sys.executable, str(TRAIN), *TINY, "--steps", "10", "--ckpt-every", "4",
               "--hang-at-step", "6", "--hang-rank", "1", "--hang-attempt", "0"]
    spec = write_spec(tmp_path / "gpt.yaml", name="gpt-kill", checkpoint_dir=str(ckpt), workdir=str(REPO),
                      command=command, restart={"max_restarts": 1, "backoff_s": 0})
    started = trainfleet(home, "run", str(spec), "--detach", timeout_s=30)
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    err1 = home / "runs" / job_id / "attempt-0" / "node-1" / "rank-1.err"
    wait_for("rank 1 to hang", lambda: err1.exists() and "injected hang at step 6" in err1.read_text(), 90)
    first = slurm_job_of(slurm_cluster, job_id, 0)
    victim_node = first.nodes[1]  # SLURM_NODEID 1 = the second host of the allocation
    pid = next(r["pid"] for r in status(home, job_id)["ranks"] if r["rank"] == 1)
    os.kill(pid, signal.SIGKILL)

    final = wait_for("the job to end", lambda: (s := status(home, job_id))["state"] in
                     ("succeeded", "failed", "cancelled") and s, 150)
    run_dir = home / "runs" / job_id
    assert final["state"] == "succeeded" and final["restarts"] == 1, final.get("reason")
    assert f"#SBATCH --exclude={victim_node}\n" in (run_dir / "attempt-1" / "job.sbatch").read_text()
    assert "--exclude" not in (run_dir / "attempt-0" / "job.sbatch").read_text()
    second = slurm_job_of(slurm_cluster, job_id, 1)
    assert second.excluded_nodes == (victim_node,) and victim_node not in second.nodes
    assert second.native_state == "COMPLETED"
    assert "resumed from step 4" in (run_dir / "attempt-1" / "node-0" / "rank-0.out").read_text()
    # Every record names Slurm's nodes: the failure, the blame, the placements, the ranks, the node history.
    failure = events(final, "rank_failed")[0]
    assert failure["attempt"] == 0 and failure["data"]["host"] == victim_node, failure
    assert failure["message"].endswith(f"killed by signal 9 [{victim_node}]"), failure
    assert [(e["node"], e["attempt"]) for e in events(final, "node_suspect")] == [(victim_node, 0)]
    placed = {e["attempt"]: {int(k): v for k, v in e["data"]["nodes"].items()}
              for e in events(final, "attempt_started")}
    assert placed == {0: dict(enumerate(first.nodes)), 1: dict(enumerate(second.nodes))}
    assert {(r["attempt"], r["host"]) for r in final["ranks"]} == {(1, n) for n in second.nodes}
    assert node_history(home) == [(victim_node, "suspect")]


@pytest.mark.timeout(150)
def test_hostile_values_are_passed_verbatim_and_never_run(slurm_cluster: SlurmCluster,
                                                          tmp_path: Path) -> None:
    # Relative names: whatever ran would create them in its working directory (checked below).
    hostile = ["$(touch pwned1)", "`touch pwned2`", "'; touch pwned3 #", "two\nlines", "a b", "*", "\\"]
    workdir = tmp_path / "w $(touch pwned4) '; x"
    workdir.mkdir()
    env_value = "$(touch pwned5)\n`touch pwned6`; \"'"
    code = ("import json, os, sys; open('argv-' + os.environ['RANK'] + '.json', 'w')"
            ".write(json.dumps({'argv': sys.argv[1:], 'env': os.environ['HOSTILE'], 'cwd': os.getcwd()}))")
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "hostile.yaml", name="hostile", workdir=str(workdir),
                      env={"HOSTILE": env_value}, command=[sys.executable, "-c", code, *hostile])
    done = trainfleet(home, "run", str(spec), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for rank in (0, 1):
        seen = json.loads((workdir / f"argv-{rank}.json").read_text())
        assert seen == {"argv": hostile, "env": env_value, "cwd": str(workdir)}
    for directory in (tmp_path, workdir, home, REPO, Path.home()):
        assert not list(directory.glob("pwned*")), directory
    job = status(home, only_run_dir(home).name)
    assert job["state"] == "succeeded"
    assert slurm_job_of(slurm_cluster, job["id"], 0).native_state == "COMPLETED"


@pytest.mark.timeout(150)
def test_preemption_notice_checkpoints_then_a_new_attempt_resumes_there(slurm_cluster: SlurmCluster,
                                                                          tmp_path: Path) -> None:
    """Slurm's notice (``--signal=B:USR1``, delivered here with ``scancel --signal=USR1 --batch``) reaches the
    ranks through the batch trap, the supervisor and the agents: they checkpoint at the end of the step. Then
    Slurm requeues the job (as on preemption): the supervisor cancels the requeued job, blames no node and
    runs a new attempt, not counted against ``max_restarts: 0``, that resumes from the notice's checkpoint."""
    home, ckpt = tmp_path / "home", tmp_path / "ckpt"
    command = [sys.executable, str(TRAIN), *TINY, "--steps", "60", "--ckpt-every", "0",
               "--step-sleep-s", "0.1"]
    spec = write_spec(tmp_path / "gpt.yaml", name="gpt-preempt", checkpoint_dir=str(ckpt), workdir=str(REPO),
                      command=command)
    started = trainfleet(home, "run", str(spec), "--detach", timeout_s=30)
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    run_dir = home / "runs" / job_id
    out0 = run_dir / "attempt-0" / "node-0" / "rank-0.out"
    wait_for("step 3 of attempt 0", lambda: out0.exists() and "Z step 3 loss" in out0.read_text(), 60)
    first = slurm_job_of(slurm_cluster, job_id, 0)

    slurm("scancel", "--signal=USR1", "--batch", str(first.job_id))
    notice = wait_for("the notice checkpoint", lambda: NOTICE_LINE.search(out0.read_text()), 20)
    notice_step = int(notice[1])
    assert notice_step < 60 and (ckpt / f"ckpt-{notice_step:08d}.pt").exists(), sorted(ckpt.iterdir())
    slurm("scontrol", "update", f"jobid={first.job_id}", "requeue=1")  # as PreemptMode=REQUEUE would
    slurm("scontrol", "requeue", str(first.job_id))

    final = wait_for("the job to end", lambda: (s := status(home, job_id))["state"] in
                     ("succeeded", "failed", "cancelled") and s, 90)
    assert final["state"] == "succeeded" and final["restarts"] == 1, final.get("reason")
    assert [a["state"] for a in final["attempts"]] == ["cancelled", "succeeded"]
    preempted = events(final, "preempted")
    assert [(e["attempt"], e["data"]["engine_state"]) for e in preempted] == [(0, "REQUEUED")], preempted
    (told,) = events(final, "preempt_notice")
    assert told["attempt"] == 0 and told["data"] == {"source": "slurm --signal USR1", "nodes": [0, 1]}, told
    noticed = events(final, "checkpoint_notice")
    assert sorted((e["data"]["host"], e["data"]["ranks"]) for e in noticed) == [(first.nodes[0], [0]),
                                                                               (first.nodes[1], [1])]
    assert not [e for e in final["events"] if e["kind"].startswith("node_")]
    assert node_history(home) == []
    assert "--exclude" not in (run_dir / "attempt-1" / "job.sbatch").read_text()
    out1 = (run_dir / "attempt-1" / "node-0" / "rank-0.out").read_text()
    assert f"resumed from step {notice_step}" in out1 and "Z step 60 loss" in out1, out1[-1500:]
    # SIGUSR1 never reached a rank (it would have dumped its stacks): only the batch shell got it.
    assert not (run_dir / "attempt-0" / "node-0" / "rank-0.stacks").read_text().strip()
    requeued = slurm_cluster.job(first.job_id)  # the supervisor owns restarts: Slurm's requeue was cancelled
    assert (requeued.native_state, requeued.restart_count) == ("CANCELLED", 1)
    assert slurm_job_of(slurm_cluster, job_id, 1).native_state == "COMPLETED"


@pytest.fixture
def drained_node1(slurm_cluster: SlurmCluster) -> Iterator[str]:
    slurm("scontrol", "update", "nodename=node1", "state=drain", "reason=tf-preflight-test")
    try:
        slurm_cluster.wait_for_node("node1", lambda node: node.is_drained, what="drained")
        yield "node1"
    finally:
        slurm("scontrol", "update", "nodename=node1", "state=resume")


@pytest.mark.timeout(120)
def test_preflight_skips_the_drained_node_and_slurm_avoids_the_one_it_excludes(
        slurm_cluster: SlurmCluster, drained_node1: str, tmp_path: Path) -> None:
    """node1 is drained: Slurm does not offer it, so the preflight never judges it. The doctor finds node2's
    links narrow: the preflight blames it, the submission excludes it, and the job runs on node3 and node4."""
    bundles = tmp_path / "bundles"
    for node, capture in (("node2", NARROW), ("node3", CLEAN), ("node4", CLEAN)):
        (bundles / node).mkdir(parents=True)
        shutil.copy(capture, bundles / node / "lspci.txt")
    home = tmp_path / "home"
    spec = write_spec(tmp_path / "pre.yaml", name="preflight", workdir=str(tmp_path),
                      preflight={"doctor": True, "doctor_fail_on": "warning"},
                      command=[sys.executable, "-c", "import os; print('on', os.environ['SLURMD_NODENAME'])"])
    done = trainfleet(home, "run", str(spec), env={"TRAINFLEET_BUNDLES": str(bundles)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    job = status(home, only_run_dir(home).name)
    assert job["state"] == "succeeded"
    (pre,) = events(job, "preflight")
    assert pre["data"]["healthy"] == ["node3", "node4"] and list(pre["data"]["excluded"]) == ["node2"], pre
    assert drained_node1 not in json.dumps(pre["data"])
    assert "#SBATCH --exclude=node2\n" in (only_run_dir(home) / "attempt-0" / "job.sbatch").read_text()
    ran = slurm_job_of(slurm_cluster, job["id"], 0)
    assert ran.nodes == ("node3", "node4") and ran.native_state == "COMPLETED"
    assert node_history(home) == [("node2", "suspect")]

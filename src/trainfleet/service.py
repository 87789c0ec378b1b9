"""The library facade for jobs: what the CLI (and later the web app) call to run, dry-run and cancel.

    spec = service.prepare_spec("job.yaml", ["nodes=2"])      # validated, paths resolved
    request = service.dry_run(spec)                           # what would start; starts nothing
    job_id = service.submit_detached(spec)                    # supervisor as a daemon
    state = service.run_foreground(spec, observer=...)        # supervisor in this process
    state = service.cancel("3fa9")                            # returns once the job is final
    attempt = service.resume("3fa9")                          # after its supervisor died: next attempt
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainfleet.backends.procscan import pid_alive
from trainfleet.errors import BackendError, InputError

if TYPE_CHECKING:
    from trainfleet.backends.base import Backend, Request
    from trainfleet.spec import JobSpec, JobState
    from trainfleet.store import Store
    from trainfleet.supervise.live import JobView

CANCEL_FIND_SUPERVISOR_S = 15.0  # a just-detached supervisor may still be starting
CANCEL_EXTRA_WAIT_S = 15.0  # beyond the spec's grace


def prepare_spec(
    path: str | Path, overrides: Sequence[str] = (), *, cwd: str | Path | None = None
) -> JobSpec:
    """Load and validate a spec, resolve ``workdir``/``checkpoint_dir`` against ``cwd``; check the workdir."""
    from trainfleet.spec import load_spec

    spec = load_spec(path, overrides).with_resolved_paths(cwd)
    if not Path(spec.workdir).is_dir():
        raise InputError(f"workdir: not a directory: {spec.workdir}", path=str(path))
    return spec


def backend_for(spec: JobSpec, *, require_up: bool = True) -> Backend:
    """The backend named by ``spec.backend``.

    For ``netns`` (the namespaced testbed) with ``require_up``, every host the job may use (``tfh1`` ..
    ``tfh<nodes + spare_nodes>``) must exist now: otherwise a one-line ``BackendError`` says which are
    missing and how to start them. ``require_up=False`` (dry runs) only renders, so it needs no testbed.
    """
    from trainfleet.backends import get_backend

    if spec.backend == "netns":
        return _netns_backend(spec, get_backend("netns"), require_up=require_up)
    return get_backend(spec.backend)


def _netns_backend(spec: JobSpec, backend: Backend, *, require_up: bool) -> Backend:
    from trainfleet.testbed import netns

    count = spec.nodes + spec.spare_nodes
    if count > netns.MAX_HOSTS:
        raise BackendError(f"netns backend: {count} hosts needed (nodes + spare_nodes), the testbed has at "
                           f"most {netns.MAX_HOSTS}")
    if not require_up:
        return backend
    if os.geteuid() != 0:
        raise BackendError("netns backend: needs root (ranks start with `ip netns exec`)")
    try:
        present = {h.name for h in netns.hosts_up()}
    except BackendError as exc:
        raise BackendError(f"netns backend: cannot list the testbed hosts: {exc}") from None
    missing = [name for name in backend.node_pool(count) if name not in present]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise BackendError(f"netns backend: testbed host{'s' if len(missing) > 1 else ''} {shown} not up "
                           f"(start them with: scripts/testbed up {count})")
    return backend


def dry_run(spec: JobSpec, *, job_id: str = "<job-id>", run_dir: str | None = None) -> Request:
    """The request of attempt 0 exactly as ``submit`` would start it, with placeholder ids; starts nothing."""
    from trainfleet.backends.base import AttemptPlan
    from trainfleet.store.db import trainfleet_home
    from trainfleet.supervise.supervisor import free_port

    plan = AttemptPlan(job_id=job_id, attempt=0, run_dir=run_dir or str(trainfleet_home() / "runs" / job_id),
                       master_addr="127.0.0.1", master_port=free_port(), supervisor_addr="127.0.0.1:<port>",
                       python=sys.executable)
    return backend_for(spec, require_up=False).render(spec, plan)


def create_job(spec: JobSpec, store: Store) -> str:
    """Check the spec's backend can run now, then ``record_job``."""
    backend_for(spec)  # fail before recording a job we cannot run
    return record_job(spec, store)


def record_job(spec: JobSpec, store: Store) -> str:
    """Record a pending job, create its run dir and write the resolved ``spec.yaml`` there; its id."""
    import yaml

    job_id = store.create_job(spec)
    run_dir = Path(store.get_job(job_id).run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return job_id


def supervise(job_id: str, store: Store, *, observer: Callable[[JobView], None] | None = None,
              handle_signals: bool = True, first_attempt: int = 0) -> JobState:
    """Run the supervisor of an existing job in this process until it is final.

    ``first_attempt`` > 0 continues a job prepared by ``prepare_resume``. With ``handle_signals``,
    SIGINT/SIGTERM/SIGHUP cancel the job cleanly (call from the main thread).
    """
    from trainfleet.spec import JobSpec, JobState
    from trainfleet.supervise.supervisor import Supervisor

    record = store.get_job(job_id)
    spec = JobSpec.model_validate(record.spec)
    lost_step = None
    if first_attempt:
        latest = store.latest_metrics(record.id)
        lost_step = max((row.step for row in latest.values()), default=None)
    try:
        backend = backend_for(spec)
    except BackendError as exc:  # e.g. the testbed went down after submit: the job must not stay pending
        store.update_job(record.id, state=JobState.FAILED, reason=str(exc), ended_at=time.time())
        store.add_event(record.id, "job_failed", str(exc), attempt=first_attempt)
        raise
    sup = Supervisor(store, record.id, spec, backend, run_dir=record.run_dir, observer=observer,
                     first_attempt=first_attempt, lost_step=lost_step)
    previous = {}
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, lambda s, _f: sup.request_cancel(f"cancelled by signal {s}"))
    try:
        return sup.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def submit_detached(spec: JobSpec, store: Store) -> str:
    """Create the job and start its supervisor as a daemon in its own session; returns the job id at once."""
    job_id = create_job(spec, store)
    _start_supervisor_daemon(job_id, store.get_job(job_id).run_dir)
    return job_id


def _start_supervisor_daemon(job_id: str, run_dir: str, first_attempt: int = 0) -> None:
    argv = [sys.executable, "-m", "trainfleet.supervise", "--job", job_id]
    if first_attempt:
        argv += ["--resume-attempt", str(first_attempt)]
    with open(os.path.join(run_dir, "supervisor.log"), "ab") as log:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)


def prepare_resume(job: str, store: Store) -> int:
    """Close what a dead supervisor left open and return the number of the next attempt to run.

    Refuses (``InputError``) a job that succeeded, or one whose supervisor is still alive. For a job left
    ``running``: the open attempt is marked failed with cause "supervisor lost" (a ``supervisor_lost`` event
    times it for goodput), its open rank rows are closed, every leftover process of the job is killed, and the
    lost attempt counts as a restart. A failed or cancelled job simply gets a new attempt. Either way the job
    is ``pending`` again with no ``reason`` and no ``ended_at``: those of its previous end no longer hold.
    """
    from trainfleet.backends.procscan import kill_job_processes
    from trainfleet.spec import JobSpec, JobState

    record = store.get_job(job)
    if record.state is JobState.SUCCEEDED:
        raise InputError(f"job {record.id} already succeeded; nothing to resume")
    if record.state is JobState.RUNNING and record.supervisor_pid and pid_alive(record.supervisor_pid):
        raise InputError(f"job {record.id} is still supervised by pid {record.supervisor_pid}")
    backend_for(JobSpec.model_validate(record.spec))  # cannot run now (testbed down): refuse, change nothing
    attempts = store.attempts(record.id)
    now = time.time()
    kill_job_processes(record.id)
    if attempts and attempts[-1].state in (JobState.RUNNING, JobState.PENDING):
        last = attempts[-1].attempt
        latest = store.latest_metrics(record.id)
        fault = max((row.ts for row in latest.values()), default=attempts[-1].started_at or now)
        cause = "supervisor lost (its process died while the attempt ran)"
        store.add_event(record.id, "supervisor_lost", cause, attempt=last,
                        data={"fault_ts": fault, "detected_ts": now, "supervisor_pid": record.supervisor_pid,
                              "last_step": max((row.step for row in latest.values()), default=None)})
        for rank in store.ranks(record.id, last):
            if not rank.state.is_terminal:
                store.upsert_rank(record.id, last, rank.rank, node_rank=rank.node_rank,
                                  local_rank=rank.local_rank, state=JobState.FAILED, ended_at=now)
        store.end_attempt(record.id, last, state=JobState.FAILED, reason=cause, ended_at=now)
        store.add_event(record.id, "attempt_failed", cause, attempt=last)
    nxt = attempts[-1].attempt + 1 if attempts else 0
    store.reopen_job(record.id, restarts=nxt)
    store.add_event(record.id, "resume", f"resume requested: attempt {nxt} from the latest checkpoint",
                    attempt=nxt)
    return nxt


def resume(job: str, store: Store) -> int:
    """``prepare_resume``, then start a detached supervisor at that attempt; returns the attempt number."""
    record = store.get_job(job)
    nxt = prepare_resume(record.id, store)
    _start_supervisor_daemon(record.id, record.run_dir, nxt)
    return nxt


def cancel(job: str, store: Store) -> JobState:
    """Cancel a job and return its final state once no process of it is left.

    Asks its supervisor (over its TCP address; SIGTERM to its pid as a fallback). When the supervisor is gone,
    the job's processes on this host are killed and the job is marked cancelled here.
    """
    from trainfleet.backends.procscan import kill_job_processes
    from trainfleet.spec import JobState

    record = store.get_job(job)
    if record.state.is_terminal:
        return record.state
    grace = float(record.spec.get("grace_s", 5.0))
    deadline = time.monotonic() + CANCEL_FIND_SUPERVISOR_S
    asked = False
    while not asked and time.monotonic() < deadline:
        record = store.get_job(record.id)
        if record.state.is_terminal:
            return record.state
        asked = _ask_supervisor(record.supervisor_addr, record.supervisor_pid)
        if not asked:
            if record.supervisor_pid is not None and not pid_alive(record.supervisor_pid):
                break
            time.sleep(0.1)
    wait_until = time.monotonic() + (grace + CANCEL_EXTRA_WAIT_S if asked else 0)
    while True:
        record = store.get_job(record.id)
        if record.state.is_terminal:
            return record.state
        if time.monotonic() >= wait_until:
            break
        time.sleep(0.1)
    # No supervisor answered: nobody else will write this job any more.
    kill_job_processes(record.id)
    store.update_job(record.id, state=JobState.CANCELLED, reason="cancelled (its supervisor was gone)",
                     ended_at=time.time())
    store.add_event(record.id, "job_cancelled", "cancelled by user; the supervisor was not running")
    return JobState.CANCELLED


def _ask_supervisor(addr: str | None, pid: int | None) -> bool:
    from trainfleet.runtime.protocol import CancelRequest, encode, parse_addr

    if addr:
        try:
            with socket.create_connection(parse_addr(addr), timeout=2) as sock:
                sock.sendall(encode(CancelRequest("cancelled by user")))
            return True
        except (OSError, ValueError):
            pass
    if pid is not None and pid_alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
            return True
        except OSError:
            return False
    return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True

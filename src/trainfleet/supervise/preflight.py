"""Preflight: check the chosen nodes before launch, exclude the ones that fail, and say whether enough remain.

    result = run_preflight(spec, ["tfh1", "tfh2", "tfh3", "tfh4"], "netns", store, job_id=job_id)
    if not result.ok: fail the job with result.reason
    else: launch on result.chosen

Checks, from the spec's ``preflight`` block, in order (a node excluded by one is not measured by the next):

* ``doctor``: each node's captured bundle (``<bundles>/<node>/lspci.txt`` as ``trainfleet collect`` writes
  it; ``$TRAINFLEET_BUNDLES``, default ``$TRAINFLEET_HOME/fleet/bundles``) is judged by the fleet doctor; a
  node with a finding of severity ``doctor_fail_on`` or worse is excluded. A node without a bundle is not
  judged (noted in ``notes``).
* ``allreduce``: one all-reduce job over all remaining nodes at ``size``; if its busbw is below
  ``min_busbw_gbps`` the slow node(s) are found by bisection (``probes.bisect``: O(log N) rounds of
  all-reduce jobs on halves) and excluded. A set that is slow only as a whole is excluded whole. A probe
  job that fails counts as slow; one the engine never started (refused, queued past the deadline) fails
  the preflight and blames nobody.

On a backend that places nodes itself (Slurm) the candidates are the engine's usable nodes (the
supervisor's pool, minus the nodes the backend already avoids: suspect or quarantined in the node history),
each probe job is pinned to the group it measures (``--nodelist``, in the backend's partition, run in the
job's workdir on the shared filesystem), and excluded nodes go to the job's submission as ``--exclude``
(the supervisor hands ``sup.blamed`` to ``backend.exclude_nodes``); Slurm then picks among the rest.

Excluded nodes are recorded in the node history (``store.blame_node``) with the reason. The job may start
when at least ``spec.nodes`` nodes pass: ``chosen`` is the first ``spec.nodes`` of them, in the order given
(so spares, listed last, take the place of excluded nodes). The whole preflight is bounded by
``timeout_s``: when it runs out, nothing more is measured and the preflight fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainfleet.errors import InputError

if TYPE_CHECKING:
    from trainfleet.spec import JobSpec
    from trainfleet.store import Store

Measure = Callable[[tuple[str, ...]], float]  # all-reduce busbw (GB/s) of a group of nodes
_SEVERITY_RANK = {"error": 2, "warning": 1, "info": 0}


class PreflightTimeout(Exception):
    """The preflight's time ran out before a measurement could start."""


class ProbeNotStarted(Exception):
    """A probe job never started (the engine refused it or never ran it): nothing is known of its nodes."""


@dataclass
class PreflightResult:
    """Verdict on the candidate nodes: who passed (in order), who was excluded and why, what was measured."""

    healthy: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # node -> reason
    chosen: list[str] = field(default_factory=list)
    needed: int = 0
    ok: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    measurements: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    probe_jobs: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain data for events and ``--json`` output."""
        return {"ok": self.ok, "reason": self.reason, "healthy": self.healthy, "excluded": self.excluded,
                "chosen": self.chosen, "needed": self.needed, "notes": self.notes,
                "measurements": [{"group": list(g), "busbw_gbps": v} for g, v in self.measurements],
                "probe_jobs": self.probe_jobs, "elapsed_s": round(self.elapsed_s, 3)}


def default_bundles_dir() -> Path:
    """``$TRAINFLEET_BUNDLES``, else ``$TRAINFLEET_HOME/fleet/bundles``: where node captures are kept."""
    import os

    from trainfleet.store.db import trainfleet_home

    env = os.environ.get("TRAINFLEET_BUNDLES")
    return Path(env) if env else trainfleet_home() / "fleet" / "bundles"


def doctor_verdicts(nodes: Sequence[str], bundles: Path,
                    fail_on: str = "error") -> tuple[dict[str, str], list[str]]:
    """``(excluded, notes)``: nodes whose bundle has a doctor finding at ``fail_on`` or worse, and the nodes
    that have no bundle to judge."""
    from trainfleet.health.bundle import LSPCI_FILE
    from trainfleet.health.doctor import run_doctor

    if fail_on not in _SEVERITY_RANK:
        raise InputError(f"preflight.doctor_fail_on: {fail_on!r} is not error, warning or info")
    present = [n for n in nodes if (bundles / n / LSPCI_FILE).is_file()]
    notes = [f"doctor: no bundle for {n} under {bundles}; not judged" for n in nodes if n not in present]
    if not present:
        return {}, notes
    result = run_doctor([str(bundles / n) for n in present])
    worst: dict[str, Any] = {}
    for f in result.findings:
        if f.node in present and _SEVERITY_RANK[str(f.severity)] >= _SEVERITY_RANK[fail_on]:
            best = worst.get(f.node)
            if best is None or _SEVERITY_RANK[str(f.severity)] > _SEVERITY_RANK[str(best.severity)]:
                worst[f.node] = f
    excluded = {n: f"doctor: {f.severity} {f.check}: {f.message}" for n, f in worst.items()}
    return excluded, notes


def probe_measure(backend: str, store: Store, size: str, deadline: float, jobs: list[str],
                  *, procs_per_node: int = 1, partition: str | None = None,
                  workdir: str | None = None) -> Measure:
    """A ``Measure`` that runs one all-reduce probe job per group on ``backend`` (pinned to the group; on
    Slurm in ``partition``, run in ``workdir``) before ``deadline``."""
    from trainfleet.health.probes.run import ProbeRequest, run_probe

    def measure(group: tuple[str, ...]) -> float:
        left = deadline - time.monotonic()
        if left < 5:
            raise PreflightTimeout
        request = ProbeRequest("allreduce", nodes=len(group), procs_per_node=procs_per_node, sizes=size,
                               ops="all_reduce", iters=3, timeout_s=left)
        report = run_probe(request, store=store, backend=backend, hosts=list(group), partition=partition,
                           workdir=workdir)
        jobs.append(report.job_id)
        if not report.started:  # e.g. sbatch refused a job that large: no node is to blame
            raise ProbeNotStarted(f"probe job {report.job_id} over {','.join(group)} did not start on "
                                  f"{backend}: {report.reason or report.state}")
        value = report.largest_busbw()
        return value if report.ok and value is not None else 0.0

    return measure


def run_preflight(spec: JobSpec, nodes: Sequence[str], backend: Any, store: Store, *,
                  job_id: str | None = None, attempt: int | None = None, bundles: Path | None = None,
                  measure: Measure | None = None) -> PreflightResult:
    """Check ``nodes`` (the job's nodes then its spares) as ``spec.preflight`` says; see module doc.

    ``backend`` is a backend name or instance (its ``name``); probes run on it. ``measure`` replaces the
    all-reduce probe job (group -> busbw GB/s), for callers that measure another way.
    """
    from trainfleet.health.probes.bisect import find_slow_nodes

    start = time.monotonic()
    result = PreflightResult(healthy=list(dict.fromkeys(nodes)), needed=spec.nodes)
    gate = spec.preflight
    if gate is not None:
        deadline = start + gate.timeout_s
        try:
            if gate.doctor:
                excluded, notes = doctor_verdicts(result.healthy, bundles or default_bundles_dir(),
                                                  gate.doctor_fail_on)
                result.notes += notes
                _exclude(result, excluded)
            if gate.allreduce is not None and len(result.healthy) >= 2:
                name = backend if isinstance(backend, str) else getattr(backend, "name", "local")
                on_slurm = name == "slurm"
                measure = measure or probe_measure(
                    name, store, gate.allreduce.size, deadline, result.probe_jobs,
                    procs_per_node=spec.procs_per_node, workdir=spec.workdir if on_slurm else None,
                    partition=getattr(backend, "partition", None) if on_slurm else None)

                def recorded(group: tuple[str, ...]) -> float:
                    value = measure(group)
                    result.measurements.append((group, value))
                    return value

                limit = gate.allreduce.min_busbw_gbps
                found = find_slow_nodes(result.healthy, recorded, limit)
                rounds = found.rounds
                _exclude(result, {n: f"allreduce: busbw {_slowest(result, n):.3g} GB/s below {limit:g} "
                                     f"(found by bisection in {rounds} rounds)" for n in found.culprits})
                for group in found.unresolved:
                    _exclude(result, {n: f"allreduce: {','.join(group)} together below {limit:g} GB/s; "
                                         "bisection could not narrow it" for n in group})
        except PreflightTimeout:
            result.ok = False
            result.reason = f"preflight timed out after {gate.timeout_s:g}s"
        except ProbeNotStarted as exc:
            result.ok = False
            result.reason = f"preflight: {exc}"
    result.chosen = result.healthy[: spec.nodes]
    if result.ok and len(result.healthy) < spec.nodes:
        result.ok = False
        excluded = "; ".join(f"{n}: {why}" for n, why in result.excluded.items())
        result.reason = (f"preflight: {len(result.healthy)} healthy node(s), {spec.nodes} needed"
                         + (f" (excluded {excluded})" if excluded else ""))
    _record(store, result, job_id or (result.probe_jobs[-1] if result.probe_jobs else None), attempt)
    result.elapsed_s = time.monotonic() - start
    return result


def _slowest(result: PreflightResult, node: str) -> float:
    return min((v for g, v in result.measurements if node in g), default=0.0)


def _exclude(result: PreflightResult, excluded: dict[str, str]) -> None:
    for node, why in excluded.items():
        if node in result.healthy:
            result.healthy.remove(node)
            result.excluded[node] = why


def _record(store: Store, result: PreflightResult, job_id: str | None, attempt: int | None) -> None:
    """Blame every excluded node in the node history (when the store keeps one and a job names it)."""
    blame = getattr(store, "blame_node", None)
    if blame is None or job_id is None:
        return
    for node, why in result.excluded.items():
        blame(node, job_id=job_id, attempt=attempt, reason=f"preflight: {why}")


def preflight_gate(sup: Any, attempt: int) -> str | None:
    """The supervisor's hook before an attempt starts: run the spec's preflight on the job's node pool
    (nodes, then spares) when it is due (the first attempt; every restart with ``before_restart``).

    Excluded nodes join ``sup.blamed``, so placement hands their node ranks to spares; the result is one
    ``preflight`` event. Returns why the job cannot start (fewer healthy nodes than it needs), else None.
    """
    gate = sup.spec.preflight
    if gate is None or (attempt > sup.first_attempt and not gate.before_restart):
        return None
    candidates = preflight_candidates(sup.pool, sup.backend, sup.spec.nodes)
    result = run_preflight(sup.spec, candidates, sup.backend, sup.store, job_id=sup.job_id, attempt=attempt)
    sup.blamed.update(result.excluded)  # placement hands their node ranks to spares
    if result.excluded and sup.places_nodes:  # an engine that places nodes itself is told to avoid them
        sup._exclude_on_engine(set(result.excluded))
    excluded = ", ".join(f"{n} ({why})" for n, why in result.excluded.items()) or "none"
    summary = (f"preflight {'passed' if result.ok else 'FAILED'} in {result.elapsed_s:.1f}s: "
               f"{len(result.healthy)} healthy of {len(candidates)}, excluded {excluded}")
    sup.store.add_event(sup.job_id, "preflight", summary, attempt=attempt, data=result.to_json())
    return None if result.ok else result.reason


def preflight_candidates(pool: Sequence[str], backend: Any, needed: int) -> list[str]:
    """The nodes a preflight measures: the pool, less the nodes an engine that places nodes already avoids
    (its ``exclude``: static, suspect and quarantined) as long as ``needed`` remain; the pool as is on a
    backend whose nodes the supervisor places (it weighs verdicts itself)."""
    avoided = getattr(backend, "exclude", ()) if getattr(backend, "places_nodes", False) else ()
    if not avoided:
        return list(pool)
    kept = [n for n in pool if n not in set(avoided)]
    return kept if len(kept) >= needed else list(pool)

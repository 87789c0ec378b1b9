"""Run a probe as a job: a ``JobSpec`` whose command is the probe worker, supervised like any job, on the
``local``, ``netns`` or ``slurm`` backend; then read the JSON lines back from the rank logs.

    report = run_probe(ProbeRequest("pairs", nodes=4), backend="netns", store=store)
    report.findings  # slow nodes first, then slow links

Node names come from the backend's placement, by rank: node ``n`` of a netns job is its host ``tfhK``; on
the local backend nodes are ``local-0..local-N-1`` (every rank shares one hostname there); on Slurm the job
is pinned to its nodes (``--nodelist``: the given ones, else the first usable ones of the partition,
``slurm_nodes``) and named by its allocation (Slurm numbers the nodes in its own order). The probe job is
recorded in the job database like any other (``trainfleet status`` shows it) and each node's result is
stored with it (``probes.store``). Judging is ``judge.py``; bisection is ``bisect.py``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trainfleet.errors import BackendError, InputError
from trainfleet.health.probes.bisect import BisectResult, find_slow_nodes
from trainfleet.health.probes.busbw import Collective, parse_size, parse_sizes
from trainfleet.health.probes.judge import (
    Finding,
    HardwareClass,
    judge_nodes,
    judge_pairs,
    node_scores,
)
from trainfleet.health.probes.records import (
    CollectiveRecord,
    ComputeRecord,
    PairRecord,
    ProbeRecord,
    pair_matrix,
    parse_probe_output,
)

if TYPE_CHECKING:
    from trainfleet.backends.base import Backend
    from trainfleet.spec import JobSpec
    from trainfleet.store import Store

ProbeKind = Literal["allreduce", "pairs", "compute"]
PROBE_KINDS: tuple[str, ...] = ("allreduce", "pairs", "compute")
WORKER_MODULE = "trainfleet.health.probes.worker"
LOCAL_NODE_PREFIX = "local-"
PROBE_BACKENDS = ("local", "netns", "slurm")
PINNED_BACKENDS = ("netns", "slurm")  # a probe job runs exactly on the nodes it names


@dataclass(frozen=True)
class ProbeRequest:
    """What to measure: the probe kind, the job's shape, and the worker's knobs.

    ``timeout_s`` bounds the whole job (it is cancelled when it runs longer); the process-group timeout of
    the ranks is the same, so a lost peer fails the ranks before the job deadline hits.
    """

    kind: ProbeKind
    nodes: int = 2
    procs_per_node: int = 1
    sizes: str = "1K..64M"
    factor: int = 4
    ops: str = "all_reduce,all_gather,reduce_scatter"
    pair_size: str = "8M"
    matrix: int = 0
    warmup: int = 1
    iters: int = 5
    device: str = "auto"
    timeout_s: float = 180.0

    def check(self) -> None:
        """Raise ``InputError`` naming the first bad field."""
        if self.kind not in PROBE_KINDS:
            raise InputError(f"probe {self.kind!r}: expected one of {', '.join(PROBE_KINDS)}")
        if self.nodes < 1 or self.procs_per_node < 1:
            raise InputError("--nodes and --procs-per-node must be >= 1")
        if self.nodes * self.procs_per_node < 2 and self.kind != "compute":
            raise InputError(f"probe {self.kind}: needs at least 2 ranks (--nodes x --procs-per-node)")
        if self.kind == "allreduce":
            parse_sizes(self.sizes, factor=self.factor, field="--sizes")
            for op in (o.strip() for o in self.ops.split(",") if o.strip()):
                if op not in ("all_reduce", "all_gather", "reduce_scatter"):
                    raise InputError(f"--ops: unknown collective {op!r} (use all_reduce, all_gather, "
                                     "reduce_scatter)")
        if self.kind == "pairs":
            parse_size(self.pair_size, field="--size")
        if self.warmup < 0 or self.iters < 1 or self.timeout_s <= 0:
            raise InputError("--warmup must be >= 0, --iters >= 1 and --timeout-s > 0")

    def worker_args(self) -> list[str]:
        """The worker's arguments (after ``python -m trainfleet.health.probes.worker``)."""
        common = ["--device", self.device, "--warmup", str(self.warmup), "--iters", str(self.iters),
                  "--timeout-s", f"{self.timeout_s:g}"]
        if self.kind == "allreduce":
            return [*common, "collectives", "--sizes", self.sizes, "--factor", str(self.factor),
                    "--ops", self.ops]
        if self.kind == "pairs":
            return [*common, "pairs", "--size", self.pair_size]
        return [*common, "compute", "--matrix", str(self.matrix)]


@dataclass
class ProbeReport:
    """One probe run: its job, the nodes by rank, the records, and the judged findings (worst first).

    ``started`` is False when the engine never started the job (sbatch refused it, it stayed queued until
    its deadline, the testbed was down): then its failure says nothing about the nodes.
    """

    kind: str
    backend: str
    job_id: str
    state: str
    reason: str | None
    nodes: list[str]
    records: list[ProbeRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    elapsed_s: float = 0.0
    bisect: BisectResult | None = None
    started: bool = True

    @property
    def ok(self) -> bool:
        """The job succeeded and every record passed its correctness check."""
        return self.state == "succeeded" and all(r.ok for r in self.records)

    def collectives(self, op: str = "all_reduce") -> list[CollectiveRecord]:
        """The collective records of ``op``, by size."""
        rows = [r for r in self.records if isinstance(r, CollectiveRecord) and r.op == op]
        return sorted(rows, key=lambda r: r.bytes)

    def largest_busbw(self, op: str = "all_reduce") -> float | None:
        """busbw (GB/s) at the largest size measured for ``op``."""
        rows = self.collectives(op)
        return rows[-1].busbw_gbps if rows else None

    def node_values(self) -> dict[str, tuple[str, float]]:
        """Each node's headline number: ``node -> (metric, value)`` (what the store keeps per run)."""
        if self.kind == "pairs":
            return {n: ("pair_bw_gbps", v) for n, v in node_scores(pair_matrix(self.records)).items()}
        if self.kind == "compute":
            per: dict[str, list[float]] = defaultdict(list)
            for r in self.records:
                if isinstance(r, ComputeRecord):
                    per[r.node].append(r.tflops)
            return {n: ("matmul_tflops", statistics.median(v)) for n, v in per.items()}
        value = self.largest_busbw()
        if value is None:
            return {}
        return {n: ("all_reduce_busbw_gbps", value) for n in dict.fromkeys(self.nodes)}


def node_labels(backend: str, nodes: int, hosts: Sequence[str] | None = None, *,
                partition: str | None = None) -> list[str]:
    """The name of each node rank: testbed hosts for ``netns``; Slurm node names for ``slurm`` (``hosts``,
    checked with sinfo, else the first usable nodes of ``partition``: ``slurm_nodes.pick_nodes``);
    ``local-<n>`` for ``local``."""
    if backend == "slurm":
        from trainfleet.health.probes.slurm_nodes import pick_nodes

        return pick_nodes(nodes, hosts, partition=partition)
    if backend == "netns":
        from trainfleet.backends.netns import NetnsBackend

        return [h.name for h in NetnsBackend(hosts).hosts_for(nodes)]
    if hosts:
        if len(hosts) < nodes:
            raise InputError(f"{nodes} nodes asked, {len(hosts)} names given")
        return list(hosts[:nodes])
    return [f"{LOCAL_NODE_PREFIX}{n}" for n in range(nodes)]


def make_backend(backend: str, hosts: Sequence[str] | None = None, *,
                 partition: str | None = None) -> Backend:
    """A backend instance that can run probe jobs: ``local``, ``netns`` (on ``hosts`` when given) or
    ``slurm`` (pinned to ``hosts`` with ``--nodelist`` when given, in ``partition``). The Slurm backend of a
    probe reads no node history: a probe measures the nodes it is given, suspect or not."""
    if backend == "slurm":
        from trainfleet.backends.slurm.backend import SlurmBackend

        return SlurmBackend(nodelist=hosts or (), partition=partition)
    if backend == "local":
        from trainfleet.backends.local import LocalBackend

        return LocalBackend()
    if backend == "netns":
        from trainfleet.backends.netns import NetnsBackend

        return NetnsBackend(hosts)
    raise BackendError(f"probes run on the {', '.join(PROBE_BACKENDS)} backends, not {backend!r}")


def probe_spec(request: ProbeRequest, backend: str, *, workdir: str | None = None) -> JobSpec:
    """The job that runs ``request`` on ``backend`` (the spec's ``backend`` field): every rank runs the probe
    worker with this interpreter, in ``workdir`` (default: here; on Slurm it must be on the shared
    filesystem)."""
    from trainfleet.spec import JobSpec

    if backend not in PROBE_BACKENDS:
        raise BackendError(f"probes run on the {', '.join(PROBE_BACKENDS)} backends, not {backend!r}")
    return JobSpec(
        name=f"probe-{request.kind}",
        command=[sys.executable, "-m", WORKER_MODULE, *request.worker_args()],
        nodes=request.nodes,
        procs_per_node=request.procs_per_node,
        backend=backend,  # type: ignore[arg-type]
        env={"OMP_NUM_THREADS": "1"},
        workdir=workdir or str(Path.cwd()),
        grace_s=2.0,
        hang_timeout_s=request.timeout_s,
    )


def run_job(spec: JobSpec, backend: Backend, store: Store, *,
            timeout_s: float) -> tuple[str, str, str | None]:
    """Supervise ``spec`` on ``backend`` to its end (cancelled after ``timeout_s``); returns
    ``(job_id, state, reason)``.

    The supervisor listens where the backend's agents can reach it (``backend.supervisor_host``, loopback
    for the local backend).
    """
    from trainfleet.service import record_job
    from trainfleet.supervise.supervisor import Supervisor

    job_id = record_job(spec, store)
    sup = Supervisor(store, job_id, spec, backend, run_dir=store.get_job(job_id).run_dir)
    timer = threading.Timer(timeout_s, sup.request_cancel, args=(f"probe timed out after {timeout_s:g}s",))
    timer.daemon = True
    timer.start()
    try:
        state = sup.run()
    finally:
        timer.cancel()
    return job_id, state.value, store.get_job(job_id).reason


def read_records(run_dir: str, attempt: int) -> list[ProbeRecord]:
    """Every probe record the ranks of ``attempt`` printed on stdout, in rank order."""
    from trainfleet.store.logfiles import log_sources, read_source

    records: list[ProbeRecord] = []
    for source in log_sources(run_dir, attempt):
        if source.stream != "out":
            continue
        text = "\n".join(line.text for line in read_source(source))
        records.extend(parse_probe_output(text, source=str(source.path)))
    return records


def relabel(records: Sequence[ProbeRecord], names: Sequence[str], procs_per_node: int) -> list[ProbeRecord]:
    """Records with node names taken from the placement (rank ``r`` is on node ``r // procs_per_node``)."""
    def node(rank: int) -> str:
        return names[rank // procs_per_node]

    out: list[ProbeRecord] = []
    for r in records:
        if isinstance(r, CollectiveRecord):
            out.append(dataclasses.replace(r, nodes=tuple(node(k) for k in range(r.world))))
        elif isinstance(r, PairRecord):
            out.append(dataclasses.replace(r, src=node(r.src_rank), dst=node(r.dst_rank)))
        else:
            out.append(dataclasses.replace(r, node=node(r.rank)))
    return out


def judge(report: ProbeReport, hw: HardwareClass | None = None, *, fraction: float = 0.5) -> list[Finding]:
    """Findings for a finished probe: nodes (and links) below the fleet median or the hardware class."""
    expect = (lambda metric: hw.expectations.get(metric)) if hw else (lambda metric: None)
    name = hw.name if hw else ""
    if report.kind == "pairs":
        matrix = {k: v for k, v in pair_matrix(report.records).items() if k[0] != k[1]}
        return judge_pairs(matrix, expected=expect("pair_bw_gbps"), class_name=name, fraction=fraction)
    if report.kind == "compute":
        values = {n: v for n, (_, v) in report.node_values().items()}
        return judge_nodes(values, "matmul_tflops", expected=expect("matmul_tflops"), class_name=name,
                           fraction=fraction)
    findings = []
    for op in (Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.REDUCE_SCATTER):
        value, exp = report.largest_busbw(op.value), expect(f"{op.value}_busbw_gbps")
        if value is not None and exp is not None and value < exp.low:
            group = ",".join(dict.fromkeys(report.nodes))
            findings.append(Finding("group", group, f"{op.value}_busbw_gbps", value, exp.low,
                                    f"below expected for {name}"))
    return findings


def run_probe(request: ProbeRequest, *, store: Store, backend: str = "local",
              hosts: Sequence[str] | None = None, hw: HardwareClass | None = None,
              partition: str | None = None, workdir: str | None = None) -> ProbeReport:
    """Run one probe job on ``backend`` (over ``hosts`` when given; on Slurm in ``partition``), read its
    records back, judge them.

    A job that fails still returns a report (``state``/``reason`` say why, ``records`` hold what arrived).
    """
    request.check()
    names = node_labels(backend, request.nodes, hosts, partition=partition)
    engine = make_backend(backend, names if backend in PINNED_BACKENDS else None, partition=partition)
    spec = probe_spec(request, backend, workdir=workdir)
    start = time.monotonic()
    job_id, state, reason = run_job(spec, engine, store, timeout_s=request.timeout_s)
    # attempt_started: written once submitted (local, netns) or once the allocation is known (Slurm)
    started_events = store.events(job_id, kinds=["attempt_started"])
    started = bool(started_events)
    if getattr(engine, "places_nodes", False):  # the engine numbered the nodes: name ranks by its allocation
        from trainfleet.health.probes.slurm_nodes import allocation_names

        allocated = allocation_names(store, job_id, events=started_events)
        if allocated is not None and len(allocated) == request.nodes:
            names = allocated
    record = store.get_job(job_id)
    attempts = store.attempts(job_id)
    raw = read_records(record.run_dir, attempts[-1].attempt) if attempts else []
    report = ProbeReport(kind=request.kind, backend=backend, job_id=job_id, state=state, reason=reason,
                         nodes=names, records=relabel(raw, names, request.procs_per_node),
                         elapsed_s=time.monotonic() - start, started=started)
    report.findings = judge(report, hw)
    from trainfleet.health.probes.store import save_report

    save_report(store, report)
    return report


def run_bisect(request: ProbeRequest, *, store: Store, backend: str, hosts: Sequence[str],
               min_busbw_gbps: float, partition: str | None = None) -> ProbeReport:
    """Bisection mode: narrow a slow all-reduce over ``hosts`` to the culprit node(s) in O(log N) rounds.

    Each measured group is one all-reduce job at the largest size of ``request.sizes``; a group whose job
    fails counts as slow (busbw 0).
    """
    sizes = parse_sizes(request.sizes, factor=request.factor, field="--sizes")
    single = dataclasses.replace(request, kind="allreduce", sizes=str(sizes[-1]), ops="all_reduce")
    start = time.monotonic()
    jobs: list[ProbeReport] = []

    def measure(group: tuple[str, ...]) -> float:
        sub = dataclasses.replace(single, nodes=len(group))
        report = run_probe(sub, store=store, backend=backend, hosts=list(group), partition=partition)
        jobs.append(report)
        value = report.largest_busbw()
        return value if report.ok and value is not None else 0.0

    result = find_slow_nodes(list(hosts), measure, min_busbw_gbps)
    findings = [Finding("node", n, "all_reduce_busbw_gbps", _slowest(result, n), min_busbw_gbps,
                        "slow all-reduce (bisection)") for n in result.culprits]
    findings += [Finding("group", ",".join(g), "all_reduce_busbw_gbps", _slowest(result, g[0]),
                         min_busbw_gbps, "slow together, fine apart (bisection could not narrow)")
                 for g in result.unresolved]
    last = jobs[-1] if jobs else None
    return ProbeReport(kind="bisect", backend=backend, job_id=",".join(j.job_id for j in jobs),
                       state="succeeded" if all(j.state == "succeeded" for j in jobs) else "failed",
                       reason=last.reason if last else None, nodes=list(hosts),
                       records=[r for j in jobs for r in j.records], findings=findings,
                       elapsed_s=time.monotonic() - start, bisect=result)


def _slowest(result: BisectResult, node: str) -> float:
    values = [m.busbw_gbps for m in result.measurements if node in m.group and not m.passed]
    return min(values, default=0.0)

"""Dashboard latency under load: p50/p99 of the JSON twins and /metrics with a fleet-sized database.

    .venv/bin/python benchmarks/ui_load.py [--jobs 10000] [--nodes 12500] [--requests 400] [--concurrency 4]

1. Builds a SQLite job database in a temp ``TRAINFLEET_HOME`` through the store's own migrations and tables:
   ``--jobs`` jobs (2% running, 1% pending, the rest final), each with 1-2 attempts, 2 ranks, 3 events (plus
   the failure events goodput reads, ``rank_failed``/``attempt_failed``/``resumed``/``caught_up``, for a job
   that restarted) and ``--metrics-per-rank`` metric rows per rank of each attempt; a node history of
   ``--nodes`` nodes (1% suspect, 0.2% quarantined, 0.5% released, 1-4 history lines each) and probe results
   (an all-reduce row per node for 4 runs, and one 32-node pairs run whose rows carry their links). Rows are
   inserted in bulk, which the Store API has no call for; the shape is what the supervisor and the probes
   write. Setup time is printed, not counted.
2. Saves a doctor JSON report of ``--nodes`` nodes with 1-4 findings per node and about 0.2% of nodes with
   an ``error``.
3. Starts ``trainfleet ui --port 0`` as a subprocess (the server) and, from this process, sends a bounded
   load: ``--concurrency`` keep-alive clients on loopback, ``--requests`` requests per endpoint, after a
   warm-up.
4. Prints p50/p99/max per endpoint and PASS/FAIL against the target p99 < 200 ms; exit 0 when all pass.
   ``/api/jobs?limit=500`` (the longest list a page may ask for, ten times the default) is measured and
   printed for information; the target is the issue's: the default jobs list, a job, the fleet, /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TARGET_P99_MS = 200.0
INFO_ONLY = {"/api/jobs?limit=500"}
CHECKS = ["acs-redirect", "aer-unsupported-request", "link-downgraded", "mps-mismatch", "diff-field", "iommu"]


def build_db(home: Path, jobs: int, metrics_per_rank: int, seed: int) -> list[str]:
    """Fill ``home/trainfleet.db``; returns the job ids."""
    import sqlalchemy as sa

    from trainfleet.spec.model import JobSpec
    from trainfleet.store import new_job_id, open_store
    from trainfleet.store import schema as t

    rng = random.Random(seed)
    spec = JobSpec(name="bench", command=["python", "train.py"], nodes=2, procs_per_node=1)
    spec_json = spec.model_dump(mode="json")
    now = time.time()
    ids: list[str] = []
    job_rows, attempt_rows, rank_rows, event_rows, metric_rows = [], [], [], [], []
    for i in range(jobs):
        jid = new_job_id()
        while jid in ids:
            jid = new_job_id()
        ids.append(jid)
        roll = rng.random()
        state = "running" if roll < 0.02 else "pending" if roll < 0.03 else rng.choice(
            ["succeeded", "succeeded", "failed", "cancelled"])
        created = now - (jobs - i) * 30.0
        restarts = 1 if rng.random() < 0.2 else 0
        ended = None if state in ("running", "pending") else created + 600
        job_rows.append({"id": jid, "name": f"bench-{i}", "state": state, "reason": None,
                         "restarts": restarts, "spec": spec_json, "run_dir": str(home / "runs" / jid),
                         "backend": "local",
                         "created_at": created, "started_at": created + 1, "ended_at": ended})
        if state == "pending":
            continue
        for attempt in range(restarts + 1):
            attempt_rows.append({"job_id": jid, "attempt": attempt, "state": state, "reason": None,
                                 "master_addr": "127.0.0.1", "master_port": 29500, "started_at": created + 1,
                                 "ended_at": ended})
            first = 1 if attempt == 0 else metrics_per_rank // 2
            for rank in range(2):
                rank_rows.append({"job_id": jid, "attempt": attempt, "rank": rank, "node_rank": rank,
                                  "local_rank": 0, "host": "127.0.0.1", "pid": 1000 + rank, "state": state})
                for step in range(first, first + metrics_per_rank):
                    loss = 4.0 / (1 + step / 50)
                    metric_rows.append({"job_id": jid, "attempt": attempt, "rank": rank, "step": step,
                                        "ts": created + step, "loss": loss,
                                        "data": {"loss": loss, "tokens_per_s": 9000.0}})
        for kind in ("attempt_started", "rank_exited", f"job_{state}"):
            event_rows.append({"job_id": jid, "ts": created + 2, "kind": kind, "message": kind, "attempt": 0,
                               "node": None, "rank": None, "data": None})
        if restarts:
            fault = created + 1 + metrics_per_rank
            for kind, attempt, ts, data in (
                    ("rank_failed", 0, fault + 0.5, {"fault_ts": fault, "detected_ts": fault + 0.5}),
                    ("attempt_failed", 0, fault + 1.5, None),
                    ("resumed", 1, fault + 5, {"resumed_step": 5, "lost_step": 10, "recomputed_steps": 5,
                                               "first_report_ts": fault + 5}),
                    ("caught_up", 1, fault + 8, {"step": 10, "recompute_s": 3.0})):
                event_rows.append({"job_id": jid, "ts": ts, "kind": kind, "message": kind, "attempt": attempt,
                                   "node": "1", "rank": 1, "data": data})
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store, store.engine.begin() as conn:
        for table, rows in ((t.jobs, job_rows), (t.attempts, attempt_rows), (t.ranks, rank_rows),
                            (t.events, event_rows), (t.metrics, metric_rows)):
            for k in range(0, len(rows), 20_000):
                conn.execute(sa.insert(table), rows[k:k + 20_000])
    print(f"database: {jobs} jobs, {len(metric_rows)} metric rows, {len(event_rows)} events")
    return ids


def build_nodes(home: Path, nodes: int, seed: int, job_ids: list[str]) -> None:
    """The node history and probe results of ``nodes`` nodes in ``home/trainfleet.db``."""
    import sqlalchemy as sa

    from trainfleet.store import open_store
    from trainfleet.store import schema as t

    rng = random.Random(seed)
    now = time.time()
    node_rows, history, probes = [], [], []
    for n in range(nodes):
        name = f"node{n:05d}"
        roll = rng.random()
        state = ("quarantined" if roll < 0.002 else "suspect" if roll < 0.012 else
                 "healthy" if roll < 0.017 else None)
        if state is not None:
            blames = 3 if state == "quarantined" else rng.randint(1, 2)
            job = rng.choice(job_ids)
            node_rows.append({"name": name, "state": state, "blames": blames, "last_reason": "rank exited 1",
                              "last_job_id": job, "updated_at": now - rng.random() * 86400})
            for b in range(blames):
                history.append({"node": name, "ts": now - 3600 * (b + 1), "kind": "blamed", "job_id": job,
                                "attempt": 0, "reason": "rank exited with code 1"})
            if state == "quarantined":
                history.append({"node": name, "ts": now - 60, "kind": "quarantined", "job_id": job,
                                "attempt": 0, "reason": "blamed in 3 jobs (threshold 3)"})
            if state == "healthy":
                history.append({"node": name, "ts": now - 30, "kind": "released", "job_id": None,
                                "attempt": None, "reason": "released by user"})
        for run in range(4):
            probes.append({"job_id": f"ar{run:06d}", "ts": now - 86400 * (4 - run), "probe": "allreduce",
                           "backend": "slurm", "node": name, "metric": "all_reduce_busbw_gbps",
                           "value": 180.0 + rng.random(), "verdict": "ok", "data": {"state": "succeeded"}})
    pair_nodes = [f"node{n:05d}" for n in range(min(32, nodes))]
    for a in pair_nodes:
        links = {b: (3.0 if "node00003" in (a, b) else 45.0 + rng.random()) for b in pair_nodes if b != a}
        probes.append({"job_id": "pairs001", "ts": now - 600, "probe": "pairs", "backend": "slurm", "node": a,
                       "metric": "pair_bw_gbps", "value": statistics.median(links.values()),
                       "verdict": "slow" if a == "node00003" else "ok", "data": {"links": links}})
    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store, store.engine.begin() as conn:
        for table, rows in ((t.nodes, node_rows), (t.node_events, history), (t.probe_results, probes)):
            for k in range(0, len(rows), 20_000):
                conn.execute(sa.insert(table), rows[k:k + 20_000])
    print(f"node history: {len(node_rows)} nodes with a history, {len(history)} lines; "
          f"{len(probes)} probe results")


def save_report(home: Path, nodes: int, seed: int) -> None:
    """A doctor ``--json`` report of ``nodes`` nodes in ``home/fleet/latest.json``."""
    rng = random.Random(seed)
    findings = []
    for n in range(nodes):
        node = f"node{n:05d}"
        for check in rng.sample(CHECKS[1:], rng.randint(1, 3)):
            findings.append({"node": node, "device": "02:01.0", "check": check, "severity": "info",
                             "field": "x", "value": "1", "expected": "0", "message": f"{check} on {node}",
                             "evidence": "DevSta: CorrErr- NonFatalErr- FatalErr- UnsupReq+", "hint": ""})
        if rng.random() < 0.002:
            findings.append({"node": node, "device": "02:01.0", "check": "acs-redirect", "severity": "error",
                             "field": "ACSCtl", "value": "ReqRedir+", "expected": "ReqRedir-",
                             "message": "ACS redirect on", "evidence": "ACSCtl: SrcValid+ ReqRedir+",
                             "hint": "disable ACS"})
    path = home / "fleet" / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nodes": nodes, "findings": findings, "headline": f"{nodes} nodes"}))
    print(f"fleet report: {nodes} nodes, {len(findings)} findings, {path.stat().st_size / 1e6:.1f} MB")


def start_server(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TRAINFLEET_HOME": str(home)}
    env.pop("TRAINFLEET_DB_URL", None)
    argv = [sys.executable, "-c", "from trainfleet.cli import main; main()", "ui", "--port", "0"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.match(r"trainfleet ui: (http://\S+?/)#token=", line)
    if not match:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise SystemExit(f"ui_load: the server did not start: {line!r} {err}")
    return proc, match.group(1)


def measure(base: str, paths: list[str], *, requests: int, concurrency: int) -> list[float]:
    """Latencies (ms) of ``requests`` GETs cycling over ``paths`` from ``concurrency`` keep-alive clients."""
    import httpx

    per_client = max(1, requests // concurrency)

    def client_run(k: int) -> list[float]:
        out = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(per_client):
                path = paths[(k * per_client + i) % len(paths)]
                t0 = time.perf_counter()
                r = client.get(path)
                out.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"ui_load: GET {path} -> {r.status_code}: {r.text[:200]}")
        return out

    with ThreadPoolExecutor(concurrency) as pool:
        return [ms for chunk in pool.map(client_run, range(concurrency)) for ms in chunk]


def collection_cost(home: Path, repeats: int = 20) -> list[float]:
    """Milliseconds of one uncached /metrics collection (every query and the rendering), in this process."""
    from prometheus_client import generate_latest

    from trainfleet.store import open_store
    from trainfleet.web.fleet_report import FleetSource
    from trainfleet.web.metrics import registry_for

    with open_store(f"sqlite:///{home / 'trainfleet.db'}") as store:
        registry = registry_for(store, FleetSource(home / "fleet" / "latest.json"))
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate_latest(registry)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=12_500)
    ap.add_argument("--metrics-per-rank", type=int, default=10)
    ap.add_argument("--requests", type=int, default=400, help="requests per endpoint")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ui-load-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        ids = build_db(home, args.jobs, args.metrics_per_rank, args.seed)
        build_nodes(home, args.nodes, args.seed, ids)
        save_report(home, args.nodes, args.seed)
        print(f"setup: {time.perf_counter() - t0:.1f} s (not counted)")
        cost = collection_cost(home)
        print(f"/metrics collection without its 1 s cache (in-process, {len(cost)} runs): "
              f"p50 {statistics.median(cost):.1f} ms, max {max(cost):.1f} ms")
        proc, base = start_server(home)
        try:
            rng = random.Random(args.seed)
            sample = rng.sample(ids, 200)
            endpoints = {
                "/api/jobs": ["/api/jobs", "/api/jobs?state=running", "/api/jobs?state=failed"],
                "/api/jobs?limit=500": ["/api/jobs?limit=500"],
                "/api/jobs/{id}": [f"/api/jobs/{jid}" for jid in sample],
                "/api/fleet": ["/api/fleet", "/api/fleet?offset=100", "/api/fleet?offset=12000"],
                "/metrics": ["/metrics"],
            }
            for paths in endpoints.values():
                measure(base, paths, requests=20, concurrency=args.concurrency)  # warm-up
            ok = True
            print(f"load: {args.concurrency} concurrent keep-alive clients on loopback, "
                  f"{args.requests} requests per endpoint")
            print(f"{'endpoint':<22}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>8}  target p99 < "
                  f"{TARGET_P99_MS:.0f} ms")
            for name, paths in endpoints.items():
                t1 = time.perf_counter()
                lat = measure(base, paths, requests=args.requests, concurrency=args.concurrency)
                rate = len(lat) / (time.perf_counter() - t1)
                p50, p99 = statistics.median(lat), pct(lat, 0.99)
                passed = p99 < TARGET_P99_MS
                if name in INFO_ONLY:
                    verdict = "info (" + ("under" if passed else "over") + " target)"
                else:
                    ok &= passed
                    verdict = "PASS" if passed else "FAIL"
                print(f"{name:<22}{p50:>9.1f}{p99:>9.1f}{max(lat):>9.1f}{rate:>8.0f}  {verdict}")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"RESULT {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

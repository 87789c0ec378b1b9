"""Find the slow link on 8 namespaced hosts, and what the same search would cost on 12,500 nodes.

Needs root (iproute2). Builds the testbed ``tfh1..tfh8``, limits *every* host's link to ``--link-mbit``
(tc tbf, both directions) and then one host's to a tenth of that, and runs the probes as jobs on the netns
backend (one agent per namespace, the supervisor on the bridge), exactly as ``trainfleet probe`` does:

(a) all-reduce busbw at large sizes on the healthy testbed, as a ratio to the configured link limit
    (a ring all-reduce's busbw is what each link carries, so 1.0 is the wire; target >= 0.7);
(b) pairs probe with one host degraded: wall time to name it, and whether the first blamed node is it;
(c) bisection (all-reduce jobs on halves): the same two figures;
(d) a simulated 12,500-node fleet: rounds the tournament schedule needs (``n-1``) and the rounds bisection
    takes (run for real on 12,500 names with one slow node, its measurements answered from the rule that
    a group is slow iff it holds that node), times the per-round times measured in (b) and (c).

    .venv/bin/python benchmarks/probe_testbed.py [--hosts 8] [--link-mbit 1000] [--bad tfh5] [--keep]

The testbed is removed at the end (also on failure) unless ``--keep``. Prints a table and ``RESULT PASS|FAIL``
(exit 0/1): PASS needs ratio >= 0.7 and both modes naming the degraded host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from trainfleet.health.probes.bisect import find_slow_nodes
from trainfleet.health.probes.busbw import GB, format_size
from trainfleet.health.probes.records import PairRecord
from trainfleet.health.probes.run import ProbeRequest, run_bisect, run_probe
from trainfleet.health.probes.schedule import rounds_needed
from trainfleet.store import open_store
from trainfleet.testbed import netns

FLEET = 12_500
TARGET_RATIO = 0.7


def pair_round_times(records: list, warmup: int, iters: int) -> list[float]:
    """Seconds each tournament round took: its slowest pair, both ways, all (warmup + timed) iterations."""
    per_round: dict[int, dict[frozenset, float]] = defaultdict(lambda: defaultdict(float))
    for r in records:
        if isinstance(r, PairRecord):
            per_round[r.round][frozenset((r.src, r.dst))] += r.time_s * (warmup + iters)
    return [max(pairs.values()) for _, pairs in sorted(per_round.items())]


def simulated_bisect_rounds(n: int) -> int:
    """Rounds bisection takes for ``n`` nodes with one slow node (the algorithm run on names only)."""
    names = [f"node{i:05d}" for i in range(n)]
    slow = names[n * 2 // 3]
    return find_slow_nodes(names, lambda group: 0.1 if slow in group else 1.0, 0.5).rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--link-mbit", type=float, default=1000.0, help="limit on every host's link")
    ap.add_argument("--bad", default="tfh5", help="the host whose link gets a tenth of the limit")
    ap.add_argument("--sizes", default="16M,64M", help="(a) large all-reduce sizes")
    ap.add_argument("--keep", action="store_true", help="leave the testbed up afterwards")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("probe_testbed: needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="probe-bench-"))
    os.environ["TRAINFLEET_HOME"] = str(home)
    os.environ.pop("TRAINFLEET_DB_URL", None)
    limit_gbps = args.link_mbit * 1e6 / 8 / GB
    bad = netns.host(args.bad).name
    rows: list[tuple[str, str]] = []
    try:
        netns.down()
        hosts = [h.name for h in netns.up(args.hosts)]
        for h in hosts:
            netns.degrade(h, args.link_mbit)
        with open_store() as store:
            # (a) healthy all-reduce at large sizes
            req = ProbeRequest("allreduce", nodes=args.hosts, sizes=args.sizes, ops="all_reduce", iters=3,
                               timeout_s=300)
            healthy = run_probe(req, store=store, backend="netns")
            ratios = []
            for r in healthy.collectives():
                ratios.append(r.busbw_gbps / limit_gbps)
                rows.append((f"(a) all-reduce {format_size(r.bytes)} busbw",
                             f"{r.busbw_gbps:.4f} GB/s = {ratios[-1]:.2f} x link limit {limit_gbps:.4f} GB/s"
                             f"{'' if r.ok else ' (WRONG RESULT)'}"))
            rows.append(("(a) probe job wall", f"{healthy.elapsed_s:.1f} s ({healthy.state})"))

            netns.degrade(bad, args.link_mbit / 10)
            # (b) pairs probe
            preq = ProbeRequest("pairs", nodes=args.hosts, pair_size="4M", warmup=1, iters=3, timeout_s=400)
            pairs = run_probe(preq, store=store, backend="netns")
            blamed = [f.subject for f in pairs.findings if f.kind == "node"]
            pairs_right = blamed[:1] == [bad]
            round_times = pair_round_times(pairs.records, preq.warmup, preq.iters)
            pair_round_s = statistics.median(round_times) if round_times else float("nan")
            verdict = "RIGHT" if pairs_right else "WRONG"
            rows.append(("(b) pairs: time to name",
                         f"{pairs.elapsed_s:.1f} s, {len(round_times)} rounds, blamed {blamed} -> {verdict}"))
            rows.append(("(b) pairs: per-round time",
                         f"median {pair_round_s:.2f} s (slowest pair, both ways, "
                         f"{preq.warmup + preq.iters} x 4M each)"))
            # (c) bisection
            gate = 0.5 * limit_gbps
            breq = ProbeRequest("allreduce", nodes=args.hosts, sizes="8M", iters=2, timeout_s=300)
            bis = run_bisect(breq, store=store, backend="netns", hosts=hosts, min_busbw_gbps=gate)
            assert bis.bisect is not None
            bis_right = bis.bisect.culprits[:1] == [bad]
            jobs = len(bis.bisect.measurements)
            verdict = "RIGHT" if bis_right else "WRONG"
            rows.append(("(c) bisection: time to name", f"{bis.elapsed_s:.1f} s, {bis.bisect.rounds} rounds, "
                         f"{jobs} jobs, culprits {bis.bisect.culprits} -> {verdict}"))
            per_job = bis.elapsed_s / max(1, jobs)
            rows.append(("(c) bisection: per-round time",
                         f"{per_job:.1f} s (one all-reduce job with start-up; "
                         "a round's groups are disjoint, so they run at once)"))
        # (d) 12,500 nodes
        pr = rounds_needed(FLEET)
        br = simulated_bisect_rounds(FLEET)
        rows.append((f"(d) {FLEET:,} nodes: pair schedule",
                     f"{pr:,} rounds x {pair_round_s:.2f} s = {pr * pair_round_s / 3600:.1f} h"))
        rows.append((f"(d) {FLEET:,} nodes: bisection",
                     f"{br} rounds x {per_job:.1f} s = {br * per_job:.0f} s"))
    finally:
        if not args.keep:
            netns.down()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    ok = bool(ratios) and min(ratios) >= TARGET_RATIO and pairs_right and bis_right
    print(f"RESULT {'PASS' if ok else 'FAIL'} (target: busbw ratio >= {TARGET_RATIO}, both modes name {bad})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

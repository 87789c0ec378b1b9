"""``GET /metrics``: the Prometheus exposition of what the store and the latest doctor report hold.

A custom collector reads the store at scrape time. Scrapes within ``CACHE_S`` of each other share one
reading (several Prometheus replicas, or a dashboard tab, then cost the database one query set):

    trainfleet_jobs{state}                     jobs in each state
    trainfleet_job_restarts{job,name}          restarts so far         } per job not yet final
    trainfleet_job_goodput_ratio{job,name}     goodput ratio (0..1)    } (pending or running;
    trainfleet_job_step{job,name}              slowest rank's step     }  at most ACTIVE_MAX jobs)
    trainfleet_job_throughput{job,name}        rank 0's tokens/samples per second
    trainfleet_job_step_time_seconds{job,name} rank 0's last step time (its step_time_s)
    trainfleet_suspect_nodes                   nodes suspect or quarantined in the node history
    trainfleet_nodes{state}                    nodes with a history, by state (healthy/suspect/quarantined)
    trainfleet_doctor_findings{severity}       findings of the latest doctor report

The goodput ratio is ``status --json``'s ``goodput.ratio`` (``supervise.goodput.compute``). Gauges of a
count carry no unit suffix and no ``_total`` (that suffix is for counters), as the Prometheus naming
guide asks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trainfleet.store import Store
from trainfleet.store.status import progress
from trainfleet.web import node_history, queries
from trainfleet.web.fleet_report import SEVERITIES, FleetSource

router = APIRouter()

ACTIVE_MAX = 1000
CACHE_S = 1.0


class StoreCollector(Collector):
    """Collects the ``trainfleet_*`` gauges from ``store`` and ``fleet`` on every scrape."""

    def __init__(self, store: Store, fleet: FleetSource) -> None:
        self.store = store
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("trainfleet_jobs", "Jobs in each state.", labels=["state"])
        for state, n in queries.counts_by_state(self.store).items():
            jobs.add_metric([state], n)
        yield jobs
        yield from self._per_job()
        counts = node_history.node_counts(self.store)
        suspects = GaugeMetricFamily("trainfleet_suspect_nodes",
                                     "Nodes suspect or quarantined in the node history (not released).")
        suspects.add_metric([], sum(counts[s] for s in node_history.FLAGGED))
        yield suspects
        nodes = GaugeMetricFamily("trainfleet_nodes", "Nodes with a failure history, by state.",
                                  labels=["state"])
        for state, n in counts.items():
            nodes.add_metric([state], n)
        yield nodes
        index = self.fleet.index()
        findings = GaugeMetricFamily("trainfleet_doctor_findings",
                                     "Findings of the latest doctor report by severity.", labels=["severity"])
        for sev in SEVERITIES:
            findings.add_metric([sev], index.severity_counts[sev] if index else 0)
        yield findings

    def _per_job(self) -> Iterator[Metric]:
        labels = ["job", "name"]
        restarts = GaugeMetricFamily("trainfleet_job_restarts", "Restarts of the job so far.", labels=labels)
        goodput = GaugeMetricFamily("trainfleet_job_goodput_ratio",
                                    "Share of wall time not lost to failures (status --json goodput.ratio).",
                                    labels=labels)
        step = GaugeMetricFamily("trainfleet_job_step", "Step every rank has reached.", labels=labels)
        rate = GaugeMetricFamily("trainfleet_job_throughput",
                                 "Rank 0's reported throughput (tokens_per_s, samples_per_s or throughput).",
                                 labels=labels)
        step_time = GaugeMetricFamily("trainfleet_job_step_time_seconds",
                                      "Rank 0's last reported step time (step_time_s).", labels=labels)
        active = queries.active_jobs(self.store, limit=ACTIVE_MAX)
        ids = [j["id"] for j in active]
        latest = queries.latest_for_jobs(self.store, ids)
        goodputs = queries.goodput_for_jobs(
            self.store, [queries.JobTimes(j["id"], j["started_at"], j["ended_at"]) for j in active],
            now=time.time())
        for job in active:
            key = [job["id"], job["name"]]
            restarts.add_metric(key, job["restarts"])
            ratio = queries.goodput_ratio(goodputs.get(job["id"]))
            if ratio is not None:
                goodput.add_metric(key, ratio)
            rows = latest.get(job["id"], {})
            reached, _loss = progress(rows)
            if reached is not None:
                step.add_metric(key, reached)
            value = queries.throughput(rows)
            if value is not None:
                rate.add_metric(key, value)
            seconds = queries.throughput(rows, ("step_time_s",))
            if seconds is not None:
                step_time.add_metric(key, seconds)
        yield from (restarts, goodput, step, rate, step_time)


def registry_for(store: Store, fleet: FleetSource) -> CollectorRegistry:
    """A registry holding only the trainfleet collector (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, fleet))
    return registry


class Exposition:
    """The rendered exposition, re-read from the store at most once per ``CACHE_S`` (one reader at a time)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._body = b""

    def body(self) -> bytes:
        with self._lock:
            if time.monotonic() - self._at >= CACHE_S:
                self._body = generate_latest(self.registry)
                self._at = time.monotonic()
            return self._body


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """The Prometheus text exposition format."""
    state = request.app.state
    if getattr(state, "exposition", None) is None:
        state.exposition = Exposition(registry_for(state.store, state.fleet))
    return Response(state.exposition.body(), media_type=CONTENT_TYPE_LATEST)

"""Jobs pages and their JSON twins: the list, one job, its metric curves, its logs, and cancel.

Goodput is ``status --json``'s own (``supervise.goodput``), for one job or every listed job at once.

Each ``*_doc`` function builds the JSON document; the API route returns it and the page route renders a
template from the very same document. Log files are found from the job's ``run_dir`` in the store and the
rank number (an integer), never from a path in the request.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response

from trainfleet.spec.state import JobState
from trainfleet.store import Store
from trainfleet.store.logfiles import LogSource, latest_attempt, log_sources, read_merged
from trainfleet.store.status import job_status, job_summary
from trainfleet.web import queries
from trainfleet.web.app import json_doc, render
from trainfleet.web.auth import require_token
from trainfleet.web.stack_dumps import stack_dumps_of

router = APIRouter()

JobId = Annotated[str, PathParam(pattern=r"^[0-9a-fA-F]{4,32}$", description="job id or unique prefix")]
LIST_LIMIT_MAX = 500
TAIL_MAX = 5000
POINTS_MAX = 5000
LINE_MAX_CHARS = 8192  # a runaway line (a tensor dump) is cut, so a tail stays a few MB at most


def _store(request: Request) -> Store:
    return request.app.state.store


def jobs_doc(store: Store, *, state: JobState | None = None, limit: int = 50) -> dict[str, Any]:
    """``{"jobs": [summary + goodput + throughput], "counts": {state: n}, "state": filter or None}``.

    ``goodput`` is the object ``trainfleet status --json`` shows (``supervise.goodput``), the events of
    every listed job read in one query.
    """
    records = store.list_jobs(limit=limit, state=state)
    ids = [j.id for j in records]
    latest = queries.latest_for_jobs(store, ids)
    now = time.time()
    goodput = queries.goodput_for_jobs(
        store, [queries.JobTimes(j.id, j.started_at, j.ended_at) for j in records], now=now)
    rows = []
    for job in records:
        doc = job_summary(job, latest.get(job.id, {}), now=now)
        doc["goodput"] = goodput[job.id]
        doc["throughput"] = queries.throughput(latest.get(job.id, {}))
        rows.append(doc)
    return {"jobs": rows, "counts": queries.counts_by_state(store), "state": state.value if state else None}


def job_doc(store: Store, job_id: str) -> dict[str, Any]:
    """``trainfleet status --json`` of one job (its ``goodput`` included, unchanged), plus ``throughput``
    and ``stacks`` with each dump file's rank marked odd or not."""
    doc = job_status(store, job_id)
    latest = queries.latest_for_jobs(store, [doc["id"]]).get(doc["id"], {})
    doc["throughput"] = queries.throughput(latest)
    doc["stack_dumps"] = stack_dumps_of(store, doc["id"])
    return doc


def metrics_doc(store: Store, job_id: str, *, since: int = 0, limit: int = POINTS_MAX) -> dict[str, Any]:
    """Rank 0's metric points after row id ``since``: ``{"points": [{attempt, step, ts, loss, throughput,
    ...values}], "next": id to pass as ``since`` next time}``."""
    job = store.get_job(job_id)
    rows = store.metrics(job.id, rank=0, since_id=since, limit=limit)
    points = []
    for _row_id, attempt, row in rows:
        values = {k: v for k, v in row.values.items() if isinstance(v, int | float)}
        points.append({"attempt": attempt, "step": row.step, "ts": row.ts, **values,
                       "throughput": queries.throughput({0: row})})
    return {"id": job.id, "points": points, "next": rows[-1][0] if rows else since}


def logs_doc(store: Store, job_id: str, *, rank: int | None, tail: int,
             attempt: int | None) -> dict[str, Any]:
    """The last ``tail`` lines of the job's rank logs (one rank or all), merged in time order."""
    job = store.get_job(job_id)
    which = attempt if attempt is not None else latest_attempt(job.run_dir)
    sources = _inside(job.run_dir, log_sources(job.run_dir, which, rank=rank)) if which is not None else []
    lines = [{"ts": line.key or None, "node": line.source.node, "rank": line.source.rank,
              "stream": line.source.stream, "text": line.text[:LINE_MAX_CHARS]}
             for line in read_merged(sources, tail=tail)]
    ranks = sorted({s.rank for s in log_sources(job.run_dir, which)}) if which is not None else []
    return {"id": job.id, "attempt": which, "rank": rank, "ranks": ranks, "lines": lines}


def _inside(run_dir: str, sources: list[LogSource]) -> list[LogSource]:
    # A rank file that is a symlink out of the run dir is not served (the web shows only the job's own files).
    root = Path(run_dir).resolve()
    return [s for s in sources if s.path.resolve().is_relative_to(root)]


def _state_filter(state: str | None) -> JobState | None:
    return JobState(state) if state else None


StateQuery = Annotated[str | None, Query(pattern="^(pending|running|succeeded|failed|cancelled)?$")]


@router.get("/api/jobs")
def api_jobs(request: Request, state: StateQuery = None,
             limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 50) -> Response:
    """The jobs list (newest first), optionally one state only."""
    return json_doc(jobs_doc(_store(request), state=_state_filter(state), limit=limit))


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, state: StateQuery = None,
              limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 50) -> HTMLResponse:
    doc = jobs_doc(_store(request), state=_state_filter(state), limit=limit)
    return render(request, "jobs.html", {"doc": doc, "states": [s.value for s in JobState]})


@router.get("/api/jobs/{job_id}")
def api_job(request: Request, job_id: JobId) -> Response:
    """One job: the ``trainfleet status --json`` document."""
    return json_doc(job_doc(_store(request), job_id))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId) -> HTMLResponse:
    return render(request, "job.html", {"doc": job_doc(_store(request), job_id)})


@router.get("/api/jobs/{job_id}/metrics")
def api_job_metrics(request: Request, job_id: JobId, since: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=POINTS_MAX)] = POINTS_MAX) -> Response:
    """Rank 0's reported metrics for the loss and throughput curves, incrementally via ``since``."""
    return json_doc(metrics_doc(_store(request), job_id, since=since, limit=limit))


@router.get("/api/jobs/{job_id}/logs")
def api_job_logs(request: Request, job_id: JobId,
                 rank: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
                 tail: Annotated[int, Query(ge=0, le=TAIL_MAX)] = 200,
                 attempt: Annotated[int | None, Query(ge=0, le=1_000_000)] = None) -> Response:
    """The tail of the job's logs (latest attempt unless ``attempt``), all ranks or ``rank``."""
    return json_doc(logs_doc(_store(request), job_id, rank=rank, tail=tail, attempt=attempt))


@router.post("/api/jobs/{job_id}/cancel", dependencies=[Depends(require_token)])
def api_job_cancel(request: Request, job_id: JobId) -> dict[str, Any]:
    """Cancel the job as ``trainfleet cancel`` does; returns once it is final: ``{"id", "state"}``."""
    from trainfleet import service

    store = _store(request)
    job = store.get_job(job_id)
    state = service.cancel(job.id, store)
    return {"id": job.id, "state": state.value}

"""Stack dumps of hung attempts on the job page: the list (odd rank out marked) and one dump's text.

The supervisor records a ``stacks_dumped`` event per hung attempt with ``data = {directory, files: {rank:
path}, odd_ranks, tool}``. A request names a dump by attempt and rank (integers) only; the file path comes
from that event in the store, and it is served only when, with every symlink resolved, it lies inside the
job's ``run_dir`` (a ``..`` in the stored path or a symlink out of the run dir gets 404, never the file).
At most ``DUMP_MAX_BYTES`` are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from trainfleet.store import Store
from trainfleet.web.app import json_doc

router = APIRouter()

DUMP_MAX_BYTES = 256 * 1024
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-fA-F]{4,32}$")]
Number = Annotated[int, PathParam(ge=0, le=1_000_000)]


def stack_dumps_of(store: Store, job_id: str) -> list[dict[str, Any]]:
    """Every stack dump of the job, oldest first: ``{attempt, ts, directory, tool, odd_ranks, message,
    files: [{rank, odd, url}]}`` (ranks in order)."""
    out = []
    for ev in store.events(job_id, kinds=["stacks_dumped"]):
        data = ev.data or {}
        files = data.get("files") if isinstance(data.get("files"), dict) else {}
        odd = _odd_ranks(data)
        ranks = sorted(int(r) for r in files if str(r).isdigit())
        out.append({"attempt": ev.attempt, "ts": ev.ts, "directory": data.get("directory"),
                    "tool": data.get("tool"), "odd_ranks": odd, "message": ev.message,
                    "files": [{"rank": r, "odd": r in odd,
                               "url": f"/api/jobs/{job_id}/stacks/{ev.attempt}/{r}"} for r in ranks]})
    return out


def dump_doc(store: Store, job_id: str, attempt: int, rank: int) -> dict[str, Any]:
    """One rank's dump text: ``{id, attempt, rank, odd, text, truncated}``; 404 when the attempt
    has no dump of that rank or its file is missing or outside the job's run dir."""
    job = store.get_job(job_id)
    found = None
    for ev in store.events(job.id, kinds=["stacks_dumped"]):
        files = (ev.data or {}).get("files")
        if ev.attempt == attempt and isinstance(files, dict) and str(rank) in files:
            found = ev
    if found is None:
        raise HTTPException(404, f"job {job.id} has no stack dump of rank {rank} in attempt {attempt}")
    data = found.data or {}
    path = _inside_run_dir(job.run_dir, str(data["files"][str(rank)]))
    if path is None:
        raise HTTPException(404, f"the stack dump of rank {rank} is not a file inside the job's run dir")
    with path.open("rb") as fh:
        raw = fh.read(DUMP_MAX_BYTES + 1)
    text = raw[:DUMP_MAX_BYTES].decode("utf-8", errors="replace")
    odd = rank in _odd_ranks(data)
    return {"id": job.id, "attempt": attempt, "rank": rank, "odd": odd, "text": text,
            "truncated": len(raw) > DUMP_MAX_BYTES}


def _odd_ranks(data: dict[str, Any]) -> list[int]:
    """The event's ``odd_ranks`` as ints (whatever else a stored event holds there is skipped)."""
    return [int(r) for r in data.get("odd_ranks") or [] if isinstance(r, int | str) and str(r).isdigit()]


def _inside_run_dir(run_dir: str, stored: str) -> Path | None:
    """The stored path, resolved (symlinks and ``..`` followed), when it is a regular file inside the
    resolved run dir; else None."""
    root = Path(run_dir).resolve()
    candidate = Path(stored)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


@router.get("/api/jobs/{job_id}/stacks/{attempt}/{rank}")
def api_job_stack(request: Request, job_id: JobId, attempt: Number, rank: Number) -> Response:
    """One rank's stack dump of a hung attempt (text bounded; only files inside the job's run dir)."""
    return json_doc(dump_doc(request.app.state.store, job_id, attempt, rank))

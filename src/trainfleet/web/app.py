"""The dashboard's FastAPI app: ``create_app(store, home, token)``.

Pages (``/``, ``/jobs/{id}``, ``/fleet``) and their JSON twins (``/api/...``) are built by the same
functions in ``jobs.py`` and ``fleet.py`` (stack dumps: ``stack_dumps.py``; the fleet's node history and
probe matrix from the store: ``node_history.py``, ``probe_matrix.py``); ``/metrics`` is the Prometheus
exposition (``metrics.py``).
Every state-changing endpoint needs the Bearer token (``auth.py``). Request bodies over ``MAX_BODY_BYTES``
get 413 and URLs over ``MAX_URL_BYTES`` get 414, before any route runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainfleet import __version__
from trainfleet.errors import InputError, JobNotFound, TrainfleetError
from trainfleet.store import Store

HERE = Path(__file__).resolve().parent
MAX_BODY_BYTES = 16 * 1024
MAX_URL_BYTES = 4096


class BoundedRequests:
    """ASGI middleware: refuse over-long URLs (414) and bodies (413), declared or streamed."""

    def __init__(self, app: ASGIApp, *, max_body: int = MAX_BODY_BYTES, max_url: int = MAX_URL_BYTES) -> None:
        self.app = app
        self.max_body = max_body
        self.max_url = max_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > self.max_url:
            await _plain(send, 414, "URL too long")
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _plain(send, 413, "request body too large")
            return
        if declared is None and (b"transfer-encoding" in dict(scope.get("headers") or [])):
            # A streamed body of unknown length: read it (bounded) before any route runs, then replay it.
            buffered: list[Message] = []
            seen = 0
            while True:
                message = await receive()
                buffered.append(message)
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    await _plain(send, 413, "request body too large")
                    return
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break

            async def replay() -> Message:
                return buffered.pop(0) if buffered else await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, text: str) -> None:
    body = json.dumps({"detail": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(store: Store, home: str | Path, token: str, *,
               fleet_report: str | Path | None = None) -> FastAPI:
    """The dashboard app over ``store``; ``token`` guards state changes; ``home`` is ``$TRAINFLEET_HOME``.

    ``fleet_report`` is the doctor JSON the fleet page shows (default ``home/fleet/latest.json``).
    """
    from trainfleet.web import fleet, jobs, metrics, stack_dumps
    from trainfleet.web.node_history import NodeHistorySource
    from trainfleet.web.probe_matrix import ProbeMatrixSource

    app = FastAPI(title="trainfleet", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.home = Path(home)
    app.state.token = token
    app.state.fleet = fleet.FleetSource(Path(fleet_report) if fleet_report else
                                        Path(home) / "fleet" / "latest.json")
    app.state.probes = ProbeMatrixSource(store)
    app.state.node_history = NodeHistorySource(store)
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(jobs.router)
    app.include_router(stack_dumps.router)
    app.include_router(fleet.router)
    app.include_router(metrics.router)
    app.add_middleware(BoundedRequests)

    @app.exception_handler(JobNotFound)
    async def _not_found(request: Request, exc: JobNotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, exc: InputError) -> Response:
        return _error(request, 400, str(exc))

    @app.exception_handler(TrainfleetError)
    async def _failed(request: Request, exc: TrainfleetError) -> Response:
        return _error(request, 500, str(exc))

    return app


def _error(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    return render(request, "error.html", {"status": status, "message": message}, status_code=status)


def json_doc(doc: dict[str, Any]) -> Response:
    """A JSON twin's response: the document as compact JSON (no per-field re-encoding; it is JSON-ready).

    NaN and infinities (a diverged loss) become null, since JSON has no such numbers.
    """
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False)
    return Response(text, media_type="application/json")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render(request: Request, template: str, context: dict[str, Any], *,
           status_code: int = 200) -> HTMLResponse:
    """Render a page template with ``context`` (plus ``version``)."""
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, {"version": __version__, **context},
                                      status_code=status_code)

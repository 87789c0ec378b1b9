"""The fleet page and its JSON twin: the latest doctor report as a node x check heat map, the newest pairs
probe from the store as a bandwidth matrix, the store's node history (suspect / quarantined nodes with their
blames), and releasing a node (token required; ``Store.release_node``, as ``trainfleet nodes release``)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response

from trainfleet.store import Store
from trainfleet.web import node_history
from trainfleet.web.app import json_doc, render
from trainfleet.web.auth import require_token
from trainfleet.web.fleet_report import SEVERITIES, FleetSource
from trainfleet.web.probe_matrix import ProbeMatrixSource

router = APIRouter()

NodeName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")]
ROWS_MAX = 1000


def _source(request: Request) -> FleetSource:
    return request.app.state.fleet


def _store(request: Request) -> Store:
    return request.app.state.store


def _probes(request: Request) -> ProbeMatrixSource:
    return request.app.state.probes


def _history(request: Request) -> node_history.NodeHistorySource:
    return request.app.state.node_history


def fleet_doc(source: FleetSource, history: node_history.NodeHistorySource, probes: ProbeMatrixSource, *,
              offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """The fleet: the doctor report's heat map page ``offset..offset+limit`` (nodes with findings, worst
    first), the node history, and the newest pairs probe matrix.

    ``{"report", "saved", "nodes", "headline", "severity_counts", "checks", "rows": [{"node", "worst",
    "findings", "cells": {check: {"severity", "count"}}, "error", "history_state"}], "total_rows",
    "clean_nodes", "error_nodes", "pairs" (the report's embedded probes), "node_history": {"counts":
    {state: n}, "nodes": [...]}, "suspects" (suspect or quarantined in the store), "probe_matrix"}``.
    """
    nodes = history.snapshot()
    flagged = nodes["nodes"]
    common = {"node_history": nodes, "suspects": [n["name"] for n in flagged],
              "probe_matrix": probes.latest(), "offset": offset, "limit": limit}
    index = source.index()
    if index is None:
        return {"report": str(source.report), "saved": False, "nodes": 0, "headline": "", "rows": [],
                "checks": [], "severity_counts": dict.fromkeys(SEVERITIES, 0), "total_rows": 0,
                "clean_nodes": 0, "error_nodes": [], "pairs": None, **common}
    states = {n["name"]: n["state"] for n in flagged}
    errors = set(index.error_nodes)
    rows = []
    for node in index.order[offset:offset + limit]:
        cells = index.cells[node]
        worst = min((c["severity"] for c in cells.values()), key=SEVERITIES.index)
        rows.append({"node": node, "worst": worst, "findings": len(index.by_node[node]), "cells": cells,
                     "error": node in errors, "history_state": states.get(node)})
    return {"report": index.path, "saved": True, "saved_at": index.mtime, "nodes": index.nodes,
            "headline": index.headline, "severity_counts": index.severity_counts, "checks": index.checks,
            "rows": rows, "total_rows": len(index.order),
            "clean_nodes": max(0, index.nodes - len(index.order)),
            "error_nodes": index.error_nodes, "pairs": index.pairs, **common}


def node_doc(source: FleetSource, store: Store, node: str) -> dict[str, Any]:
    """One node: its findings in the latest report (evidence lines, fix hints) and its store history."""
    index = source.index()
    findings = index.by_node.get(node, []) if index is not None else []
    history = node_history.node_doc(store, node)
    if not findings and history is None:
        raise HTTPException(404, f"node {node}: no findings in the latest report and no history")
    return {"node": node, "findings": findings, "error": index is not None and node in index.error_nodes,
            "history": history}


@router.get("/api/fleet")
def api_fleet(request: Request, offset: Annotated[int, Query(ge=0)] = 0,
              limit: Annotated[int, Query(ge=1, le=ROWS_MAX)] = 100) -> Response:
    """The fleet: report summary plus one page of the heat map, node history and the probe matrix."""
    doc = fleet_doc(_source(request), _history(request), _probes(request), offset=offset, limit=limit)
    return json_doc(doc)


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, offset: Annotated[int, Query(ge=0)] = 0,
               limit: Annotated[int, Query(ge=1, le=ROWS_MAX)] = 100) -> HTMLResponse:
    doc = fleet_doc(_source(request), _history(request), _probes(request), offset=offset, limit=limit)
    return render(request, "fleet.html", {"doc": doc})


@router.get("/api/fleet/nodes/{node}")
def api_fleet_node(request: Request, node: NodeName) -> Response:
    """One node's findings with evidence (what a heat map click shows) and its node history."""
    return json_doc(node_doc(_source(request), _store(request), node))


@router.post("/api/fleet/nodes/{node}/release", dependencies=[Depends(require_token)])
def api_fleet_release(request: Request, node: NodeName) -> dict[str, Any]:
    """Make a suspect or quarantined node usable again (``Store.release_node``; its history stays):
    ``{"node", "was", "state"}``; 404 for a node without a history."""
    store = _store(request)
    before = store.node(node)
    if before is None:
        raise HTTPException(404, f"node {node} has no history in the job database (nothing to release)")
    record = store.release_node(node, reason="released from the dashboard at "
                                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    return {"node": record.name, "was": before.state.value, "state": record.state.value}

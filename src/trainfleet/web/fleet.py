"""The fleet page and its JSON twin: the latest doctor report as a node x check heat map, the probe
bandwidth matrix, suspect nodes, and releasing a node (token required)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response

from trainfleet.web.app import json_doc, render
from trainfleet.web.auth import require_token
from trainfleet.web.fleet_report import SEVERITIES, FleetSource

router = APIRouter()

NodeName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")]
ROWS_MAX = 1000


def _source(request: Request) -> FleetSource:
    return request.app.state.fleet


def fleet_doc(source: FleetSource, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """The heat map page ``offset..offset+limit`` of nodes with findings (worst first) and the summary.

    ``{"report", "nodes", "headline", "severity_counts", "checks", "rows": [{"node", "worst", "findings",
    "cells": {check: {"severity", "count"}}, "suspect", "released_at"}], "total_rows", "clean_nodes",
    "suspects", "pairs"}``; ``report`` is None (and the rest empty) before a report was saved.
    """
    index = source.index()
    if index is None:
        return {"report": str(source.report), "saved": False, "nodes": 0, "headline": "", "rows": [],
                "checks": [], "severity_counts": dict.fromkeys(SEVERITIES, 0), "total_rows": 0,
                "clean_nodes": 0, "suspects": [], "pairs": None, "offset": offset, "limit": limit}
    released = source.releases()
    suspects = set(source.suspects(index))
    rows = []
    for node in index.order[offset:offset + limit]:
        cells = index.cells[node]
        worst = min((c["severity"] for c in cells.values()), key=SEVERITIES.index)
        rows.append({"node": node, "worst": worst,
                     "findings": len(index.by_node[node]), "cells": cells, "suspect": node in suspects,
                     "released_at": released.get(node)})
    return {"report": index.path, "saved": True, "saved_at": index.mtime, "nodes": index.nodes,
            "headline": index.headline, "severity_counts": index.severity_counts, "checks": index.checks,
            "rows": rows, "offset": offset, "limit": limit, "total_rows": len(index.order),
            "clean_nodes": max(0, index.nodes - len(index.order)),
            "suspects": [n for n in index.order if n in suspects], "pairs": index.pairs}


def node_doc(source: FleetSource, node: str) -> dict[str, Any]:
    """Every finding of one node, with its evidence lines and fix hints."""
    index = source.index()
    if index is None or node not in index.by_node:
        raise HTTPException(404, f"no findings for node {node} in the latest report")
    return {"node": node, "findings": index.by_node[node], "suspect": node in source.suspects(index),
            "released_at": source.releases().get(node)}


@router.get("/api/fleet")
def api_fleet(request: Request, offset: Annotated[int, Query(ge=0)] = 0,
              limit: Annotated[int, Query(ge=1, le=ROWS_MAX)] = 100) -> Response:
    """The latest doctor report: summary plus one page of the heat map."""
    return json_doc(fleet_doc(_source(request), offset=offset, limit=limit))


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, offset: Annotated[int, Query(ge=0)] = 0,
               limit: Annotated[int, Query(ge=1, le=ROWS_MAX)] = 100) -> HTMLResponse:
    return render(request, "fleet.html", {"doc": fleet_doc(_source(request), offset=offset, limit=limit)})


@router.get("/api/fleet/nodes/{node}")
def api_fleet_node(request: Request, node: NodeName) -> dict[str, Any]:
    """One node's findings with evidence (what a heat map click shows)."""
    return node_doc(_source(request), node)


@router.post("/api/fleet/nodes/{node}/release", dependencies=[Depends(require_token)])
def api_fleet_release(request: Request, node: NodeName) -> dict[str, Any]:
    """Mark a suspect node as checked: it stops counting as suspect until a newer report is saved."""
    source = _source(request)
    index = source.index()
    if index is None or node not in index.by_node:
        raise HTTPException(404, f"no findings for node {node} in the latest report")
    return {"node": node, "released_at": source.release(node), "suspect": False}

"""The dashboard: ``trainfleet ui`` serves jobs, the fleet and Prometheus metrics (``create_app``)."""

from __future__ import annotations

from trainfleet.web.app import create_app

__all__ = ["create_app"]

"""pytest fixtures for tests against a real, throwaway PostgreSQL (``scripts/pg-dev-cluster``).

Loaded from tests/conftest.py with ``pytest_plugins = [..., "pg_fixtures"]``. ``pg_cluster`` starts the
cluster once per session (and stops it at the end if this session started it); ``pg_url`` gives each test
its own fresh database on it, dropped afterwards. When PostgreSQL cannot come up the fixture fails with
the script's own message; it never skips.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_DEV_CLUSTER = REPO / "scripts" / "pg-dev-cluster"


def _script(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PG_DEV_CLUSTER), command], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    """The SQLAlchemy URL of the running dev cluster's ``trainfleet`` database."""
    was_up = _script("url").returncode == 0
    done = _script("up")
    if done.returncode != 0:
        pytest.fail(f"pg-dev-cluster up failed: {(done.stderr or done.stdout).strip()}")
    yield done.stdout.strip().splitlines()[-1]
    if not was_up:
        _script("down")


def _admin(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def pg_url(pg_cluster: str) -> Iterator[str]:
    """A fresh, empty database for this test (``postgresql+psycopg://...``), dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(pg_cluster, f'CREATE DATABASE "{name}"')
    yield make_url(pg_cluster).set(database=name).render_as_string(hide_password=False)
    _admin(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

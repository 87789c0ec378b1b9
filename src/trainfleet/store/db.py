"""Engines for the job database: where it lives, SQLite's WAL and busy handling, and retrying writes.

SQLite specifics stay in this module (pragmas, ``BEGIN IMMEDIATE``); every query elsewhere is portable
SQLAlchemy Core, so ``TRAINFLEET_DB_URL`` can point at PostgreSQL.
"""

from __future__ import annotations

import os
import random
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from trainfleet.errors import StoreError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
RETRY_DEADLINE_S = 30.0
_WRITE = "trainfleet_write"

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def trainfleet_home() -> Path:
    """``$TRAINFLEET_HOME``, or ``~/.trainfleet``: the database, run directories and tokens live here."""
    env = os.environ.get("TRAINFLEET_HOME")
    return Path(env).expanduser() if env else Path.home() / ".trainfleet"


def default_db_url() -> str:
    """``$TRAINFLEET_DB_URL``, or SQLite at ``$TRAINFLEET_HOME/trainfleet.db``."""
    url = os.environ.get("TRAINFLEET_DB_URL")
    if url:
        return url
    return f"sqlite:///{trainfleet_home() / 'trainfleet.db'}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout, foreign keys and explicit transactions."""
    try:
        parsed = sa.engine.make_url(url)
    except exc.ArgumentError as err:
        raise StoreError(f"bad database URL {url!r}: {err}") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if is_sqlite:
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            try:
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the directory of {db}: {err.strerror}") from None
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (exc.ArgumentError, ImportError) as err:
        raise StoreError(f"cannot use database URL {parsed.render_as_string()}: {err}") from None
    if is_sqlite:
        _configure_sqlite(engine)
    _engines.add(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling begins lazily and deferred, so two writers that first read can
    # deadlock on the upgrade and fail at once without waiting. We take over BEGIN (SQLAlchemy's documented
    # recipe) and use BEGIN IMMEDIATE for writes, so writers queue on the busy timeout instead.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable across process crashes in WAL mode (only a power loss can drop the newest
        # commits) and keeps per-metric-batch commits cheap.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _dispose_after_fork() -> None:
    # A forked child must not reuse the parent's pooled connections (SQLAlchemy's pooling guidance).
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)


def is_busy_error(err: BaseException) -> bool:
    """True for SQLite's "database is locked"/"busy" and PostgreSQL's serialization/deadlock failures."""
    if not isinstance(err, exc.DBAPIError):
        return False
    text = str(getattr(err, "orig", err)).lower()
    if "database is locked" in text or "database is busy" in text or "database table is locked" in text:
        return True
    orig = getattr(err, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in {"40001", "40P01"}


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite). Use through ``run_write`` to get retries."""
    with engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
        yield conn


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection with one read transaction: a consistent snapshot for several SELECTs."""
    with engine.connect() as conn, conn.begin():
        yield conn


def run_write(engine: Engine, fn: Callable[[Connection], T], *, retry_integrity: bool = False) -> T:
    """Run ``fn`` in a write transaction, retrying the whole transaction while the database is busy.

    ``retry_integrity`` also retries on a unique-key clash (an insert-or-update raced another writer).
    Raises ``StoreError`` once ``RETRY_DEADLINE_S`` has passed or on any other database error.
    """
    deadline = time.monotonic() + RETRY_DEADLINE_S
    delay = 0.005
    integrity_retries = 3
    while True:
        try:
            with write_transaction(engine) as conn:
                return fn(conn)
        except exc.IntegrityError as err:
            if not retry_integrity or integrity_retries == 0:
                raise StoreError(f"database constraint failed: {_short(err)}") from None
            integrity_retries -= 1
        except exc.DBAPIError as err:
            if not is_busy_error(err):
                raise StoreError(f"database error: {_short(err)}") from None
            if time.monotonic() > deadline:
                raise StoreError(f"database busy for {RETRY_DEADLINE_S:.0f} s: {_short(err)}") from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


def run_read(engine: Engine, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in a read transaction, retrying while the database is busy (e.g. during a checkpoint)."""
    deadline = time.monotonic() + RETRY_DEADLINE_S
    delay = 0.005
    while True:
        try:
            with read_connection(engine) as conn:
                return fn(conn)
        except exc.DBAPIError as err:
            if not is_busy_error(err) or time.monotonic() > deadline:
                raise StoreError(f"database error: {_short(err)}") from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


def _short(err: BaseException) -> str:
    return str(getattr(err, "orig", err)).splitlines()[0]

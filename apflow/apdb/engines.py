"""SQLAlchemy engines of APDB URLs: one per URL and process, created lazily.

An :class:`~apflow.apdb.store.Apdb` holds only its URL; the engine (and its connection pool) is
made here on first use in each process and thread-safely shared by every ``Apdb`` of that URL in
the process. A forked child drops the parent's engines without closing their connections.

SQLite engines set the WAL journal, a busy timeout and let :mod:`.store` choose ``BEGIN
IMMEDIATE`` for write transactions (pysqlite's own implicit ``BEGIN`` is turned off).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import ConfigError

_SQLITE_BUSY_TIMEOUT_S = 30.0

_ENGINES: dict[str, sa.Engine] = {}
_ENGINES_PID = os.getpid()
_ENGINES_LOCK = threading.Lock()
#: URLs whose schema version this process has checked.
CHECKED: set[str] = set()


def engine_for(url: str) -> sa.Engine:
    """This process's engine of ``url`` (a normalised SQLAlchemy URL)."""
    with _ENGINES_LOCK:  # Dask runs several tasks per worker process in threads
        return _engine_for_locked(url)


def _engine_for_locked(url: str) -> sa.Engine:
    global _ENGINES_PID
    if os.getpid() != _ENGINES_PID:
        # A forked child must not use (or close) the parent's sockets and file handles.
        for engine in _ENGINES.values():
            engine.dispose(close=False)
        _ENGINES.clear()
        CHECKED.clear()
        _ENGINES_PID = os.getpid()
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _make_engine(url)
        _ENGINES[url] = engine
    return engine


def _make_engine(url: str) -> sa.Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S}}
    if database in ("", ":memory:"):
        # One shared connection, or every connection would see its own empty database.
        kwargs["poolclass"] = sa.pool.StaticPool
        kwargs["connect_args"]["check_same_thread"] = False
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (below) emit BEGIN instead of pysqlite's implicit, deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if database not in ("", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against application crashes in WAL mode; FULL would fsync per commit.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        mode = connection.get_execution_options().get("apflow_sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def normalise_url(url: str) -> str:
    """SQLAlchemy URL of ``url``; a plain path means a SQLite file."""
    text = str(url).strip()
    if not text:
        raise ConfigError("APDB URL is empty: give an SQLAlchemy URL or a SQLite file path")
    if "://" not in text:
        return f"sqlite:///{os.path.abspath(os.path.expanduser(text))}"
    for bare in ("postgresql://", "postgres://"):
        if text.startswith(bare):
            return "postgresql+psycopg://" + text[len(bare) :]
    try:
        sa.engine.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"APDB URL {text!r} is not an SQLAlchemy URL: {exc}") from None
    return text


def is_transient(exc: sa.exc.DBAPIError) -> bool:
    """Whether a failed transaction lost a race and should be retried: SQLite's "database is
    locked", PostgreSQL's serialization failure (40001), deadlock (40P01), or a unique key a
    concurrent writer inserted first (23505; a store's own rows are checked for duplicates before
    it starts, so this is a race)."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in ("40001", "40P01", "23505"):
        return True
    message = str(orig or exc).lower()
    return (
        "database is locked" in message
        or "database table is locked" in message
        or ("database is busy" in message)
    )


def dispose(url: str) -> None:
    """Close this process's engine of ``url`` and forget that its schema was checked."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(url, None)
        CHECKED.discard(url)
    if engine is not None:
        engine.dispose()

"""APDB backends of the tests: a SQLite file, and a real PostgreSQL server started with pgserver."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from apflow.apdb import Apdb
from apflow.apdb.sql import sql_metadata

#: Seconds the PostgreSQL server took to start (reported in the test summary).
PG_STARTUP: dict[str, float] = {}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL server of the ``pgserver`` package for the session (skipped if it can't run)."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (bundled PostgreSQL) not installed")
    # Not under pytest's tmp_path: as root, pgserver runs postgres as another user, who must be
    # able to reach the data directory (pytest's base directory is private to its owner).
    data_dir = tempfile.mkdtemp(prefix="apflow-pg-")
    start = time.perf_counter()
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        # A throw-away server: no fsync, so that stopping it does not flush for tens of seconds.
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            server.psql(f"ALTER SYSTEM SET {setting} = off;")
        server.psql("SELECT pg_reload_conf();")
    except Exception as exc:  # any failure to start means "no server here", not a test failure
        pytest.skip(f"PostgreSQL could not be started with pgserver: {exc}")
    PG_STARTUP["seconds"] = time.perf_counter() - start
    yield server
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: Any) -> str:
    """URL (psycopg 3) of one database of the session's server."""
    base = sa.engine.make_url(pg_server.get_uri()).set(drivername="postgresql+psycopg")
    name = f"apdb_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def empty_pg_database(url: str) -> str:
    """``url`` after dropping the APDB tables (cheaper than a new database per test)."""
    engine = sa.create_engine(url)
    sql_metadata().drop_all(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def apdb_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database URL of each backend (the APDB is not created)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'apdb' / 'apdb.sqlite3'}"
    else:
        url = empty_pg_database(request.getfixturevalue("pg_url"))
    yield url
    Apdb(url).close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "seconds" in PG_STARTUP:
        terminalreporter.write_line(
            f"apdb: PostgreSQL (pgserver) started in {PG_STARTUP['seconds']:.1f} s"
        )

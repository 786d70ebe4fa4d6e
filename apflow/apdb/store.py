"""The Alert Production Database: DiaObjects, DiaSources, forced sources and SSSources in SQL.

:class:`Apdb` keeps Rubin's APDB tables (schema from ``lsst-sdm-schemas``, see :mod:`.sql`) in any
database SQLAlchemy reaches: a SQLite file by default (``<repository>/apdb/apdb.sqlite3``), or a
server such as PostgreSQL (``postgresql+psycopg://user@host/db``; a bare ``postgresql://`` URL is
taken to mean psycopg 3).

Data model
----------
- **DiaSource, DiaForcedSource, SSSource**: one row per measurement, written per (visit, detector)
  by :meth:`Apdb.store`. A rerun of a (visit, detector) *replaces* its rows (same ids, since ids are
  packed from the data id by :mod:`.ids`), so reruns never duplicate.
- **DiaObject**: one *current* row per ``diaObjectId``, with ``validityEndMjdTai`` NULL. The yaml's
  primary key (diaObjectId, validityStartMjdTai) allows a versioned history; apflow keeps only the
  latest version: ``validityStartMjdTai`` is the midpoint of the latest visit whose data the row
  summarises, and an update deletes the previous row of that id and inserts the new one. The
  summaries are a pure function of the stored sources of the object (the caller recomputes them
  from *all* its DiaSources and DiaForcedSources, see :mod:`apflow.tasks.association`), so writing
  the same inputs twice leaves every table byte-for-byte unchanged, whatever was written in
  between.
- **metadata**: ``version:schema`` (the APDB schema version of ``apdb.yaml``) and
  ``version:apflow``; :meth:`Apdb.create` refuses to open an APDB of another schema version.

One call of :meth:`Apdb.store` is one transaction: a reader (or a crash) sees either all of a
(visit, detector) or none of it. Within it, the previous rows of that (visit, detector) go first,
then DiaObjects that lost their last DiaSource to the replacement are deleted with their forced
sources (so a rerun that no longer finds a source leaves no orphan object behind).

Concurrency
-----------
Many worker processes write different (visit, detector)s at once.

- An :class:`Apdb` pickles as its URL; each process opens its own engine lazily (one per URL and
  process, shared by the :class:`Apdb` objects of that URL), so no connection crosses a fork or the
  network.
- SQLite: WAL journal (readers never block the writer), a 30 s busy timeout, and every write
  transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock first, so two writers never
  deadlock upgrading read locks). "database is locked" is retried a bounded number of times with
  jittered exponential back-off. SQLite needs a local disk (not NFS) for its locks.
- PostgreSQL: write transactions run READ COMMITTED (each CCD writes its own rows) and are
  retried on serialization failures (SQLSTATE 40001), deadlocks (40P01) and a key taken by a
  concurrent writer (23505); schema creation takes an advisory lock.

Reads of one (visit, detector) and its write are separate transactions: the caller must not run two
writers that update the *same* DiaObjects at once. The engine guarantees it for association by
processing visits that cover the same sky in time order (a per-visit barrier); CCDs of one visit do
not overlap on the sky (:mod:`apflow.tasks.association.task` says what happens to an object at the
edge between two of them).
"""

from __future__ import annotations

import math
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa

from .. import __version__
from ..errors import ApdbError, ConfigError
from .engines import CHECKED, dispose, engine_for, is_transient, normalise_url
from .rows import chunks, conformed, frame_from_rows, int_ids, records, sort_by_key
from .schema import empty_frame, primary_key, schema_version
from .sql import sql_metadata, sql_table

__all__ = ["Apdb", "ApdbError", "DEFAULT_SQLITE_NAME"]

#: Location of the default SQLite APDB below a local repository root.
DEFAULT_SQLITE_NAME = "apdb/apdb.sqlite3"

SCHEMA_VERSION_KEY = "version:schema"
APFLOW_VERSION_KEY = "version:apflow"

#: Bounded retries of a transaction that lost a lock race (SQLite) or a serialization check (PG).
MAX_ATTEMPTS = 30

T = TypeVar("T")


def _angular_distance_deg(ra1: Any, dec1: Any, ra2: float, dec2: float) -> np.ndarray:
    """Great-circle distance (haversine: accurate at arcsecond separations)."""
    ra1, dec1 = np.radians(ra1), np.radians(dec1)
    ra2, dec2 = math.radians(ra2), math.radians(dec2)
    h = np.sin((dec1 - dec2) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra1 - ra2) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


class Apdb:
    """An APDB at an SQLAlchemy URL (opened lazily; see the module docstring for the model).

    Parameters
    ----------
    url : str
        SQLAlchemy URL (``sqlite:////abs/path.sqlite3``, ``postgresql+psycopg://...``) or a plain
        file path (a SQLite file). :meth:`create` makes the tables; ``Apdb(url)`` opens an existing
        APDB and raises :class:`ApdbError` on first use if there is none.
    """

    def __init__(self, url: str) -> None:
        self._url = normalise_url(url)

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the URL travels: a worker opens its own connections.
        return (type(self), (self._url,))

    def __repr__(self) -> str:
        return f"Apdb({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Apdb) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (passwords shown as given)."""
        return self._url

    @property
    def dialect(self) -> str:
        """Database backend name: ``sqlite``, ``postgresql``, ..."""
        return sa.engine.make_url(self._url).get_backend_name()

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, url: str) -> Apdb:
        """Create the APDB tables at ``url`` (if missing) and return it opened.

        Idempotent and safe to call from many processes at once: existing tables are kept, and an
        existing APDB must have this apflow's schema version.

        Raises
        ------
        ApdbError
            The database holds an APDB of another schema version, or cannot be reached.
        ConfigError
            ``url`` is not an SQLAlchemy URL.
        """
        apdb = cls(url)
        if apdb.url in CHECKED:
            return apdb  # created or checked by this process already
        parsed = sa.engine.make_url(apdb.url)
        if apdb.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)

        def create_tables(conn: sa.Connection) -> None:
            if apdb.dialect == "postgresql":
                # Concurrent CREATE TABLE IF NOT EXISTS can collide in PG's catalogue.
                lock_key = zlib.crc32(b"apflow-apdb-create")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
            sql_metadata().create_all(conn, checkfirst=True)
            meta = sql_table("metadata")
            stored = dict(conn.execute(sa.select(meta.c.name, meta.c.value)).all())
            apdb._check_version(stored.get(SCHEMA_VERSION_KEY))
            missing = {
                SCHEMA_VERSION_KEY: schema_version(),
                APFLOW_VERSION_KEY: __version__,
            }
            rows = [{"name": k, "value": v} for k, v in missing.items() if k not in stored]
            if rows:
                conn.execute(meta.insert(), rows)

        # READ COMMITTED on PostgreSQL: after waiting for the advisory lock, the catalogue checks
        # must see the tables another creator just committed (a serializable snapshot, taken
        # when the lock was requested, would not).
        apdb._transaction(create_tables, write=True, what="creating the APDB", serializable=False)
        CHECKED.add(apdb.url)
        return apdb

    @classmethod
    def for_repository(cls, root: str) -> Apdb:
        """The default APDB of a local repository: the SQLite file ``<root>/apdb/apdb.sqlite3``.

        The file is not created here (:meth:`create` does that).

        Raises
        ------
        ConfigError
            When ``root`` is not on local disk (SQLite's locking needs a local file system): pass
            an SQLAlchemy URL (e.g. PostgreSQL) as the APDB URL instead.
        """
        from fsspec.core import strip_protocol
        from fsspec.utils import get_protocol

        text = str(root)
        if get_protocol(text) not in ("file", "local"):
            raise ConfigError(
                f"repository {text!r} is not on local disk, so it cannot hold the default SQLite "
                "APDB (SQLite's locking needs a local file system): pass an SQLAlchemy URL for "
                "the APDB, e.g. apdb_url='postgresql+psycopg://user@host/apdb'"
            )
        path = strip_protocol(text) if "://" in text else os.path.expanduser(text)
        return cls(os.path.join(os.path.abspath(path), *DEFAULT_SQLITE_NAME.split("/")))

    @classmethod
    def resolve(cls, url: str, repo_url: str | None, where: str = "") -> Apdb:
        """The APDB a task should use: ``url`` when set, else the repository's default.

        Parameters
        ----------
        url : str
            A task's ``apdb_url`` config ("" for the default).
        repo_url : str or None
            The repository root the engine injects.
        where : str
            Prefix of the error message (stage and data id).

        Raises
        ------
        ConfigError
            Neither an URL nor a repository.
        """
        if url:
            return cls(url)
        if not repo_url:
            raise ConfigError(
                f"{where}: no APDB: set config apdb_url to an SQLAlchemy URL, or run inside a "
                "repository (its default SQLite APDB is used)"
            )
        return cls.for_repository(repo_url)

    def close(self) -> None:
        """Close this process's connections to the APDB (reopened lazily on next use)."""
        dispose(self.url)

    def metadata(self) -> dict[str, str]:
        """The ``metadata`` table as a dict (schema and apflow versions)."""
        meta = sql_table("metadata")
        rows = self._read(lambda conn: conn.execute(sa.select(meta.c.name, meta.c.value)).all())
        return dict(rows)

    def _check_version(self, stored: str | None) -> None:
        if stored is not None and stored != schema_version():
            raise ApdbError(
                f"APDB {self.url} has schema version {stored}, this apflow writes "
                f"{schema_version()}: use a new APDB or migrate this one"
            )

    def _ensure_open(self) -> None:
        if self.url in CHECKED:
            return
        database = sa.engine.make_url(self.url).database
        if self.dialect == "sqlite" and database not in (None, "", ":memory:"):
            # Connecting would create an empty file where the user mistyped a path.
            if not os.path.exists(database):
                raise ApdbError(f"no APDB at {self.url}: create it first (Apdb.create(url))")
        meta = sql_table("metadata")

        def read_version(conn: sa.Connection) -> str | None:
            if not sa.inspect(conn).has_table("metadata"):
                raise ApdbError(f"no APDB at {self.url}: create it first (Apdb.create(url))")
            row = conn.execute(
                sa.select(meta.c.value).where(meta.c.name == SCHEMA_VERSION_KEY)
            ).first()
            return None if row is None else row[0]

        self._check_version(self._transaction(read_version, write=False, what="opening"))
        CHECKED.add(self.url)

    # --- transactions -------------------------------------------------------------------------

    def _transaction(
        self,
        work: Callable[[sa.Connection], T],
        *,
        write: bool,
        what: str,
        serializable: bool = False,
    ) -> T:
        """Run ``work(connection)`` in one transaction, retrying lost lock or serialization races.

        PostgreSQL writes run READ COMMITTED (``serializable=True`` asks for SERIALIZABLE); the
        schema creation serialises itself with a lock and must see what committed meanwhile.
        """
        return self._attempts(work, write=write, what=what, serializable=serializable)[0]

    def _attempts(
        self,
        work: Callable[[sa.Connection], T],
        *,
        write: bool,
        what: str,
        serializable: bool = False,
    ) -> tuple[T, int]:
        """:meth:`_transaction` that also says how many attempts it took."""
        engine = engine_for(self.url)
        delay = 0.02
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with engine.connect() as conn:
                    if write and self.dialect == "sqlite":
                        conn.execution_options(apflow_sqlite_begin="IMMEDIATE")
                    elif write and self.dialect == "postgresql":
                        # READ COMMITTED: SERIALIZABLE made stores of *different* CCDs of a
                        # visit abort each other (predicate locks on the shared indexes): 8-16
                        # attempts each at 16-48 writers (benchmarks/alerts.py). The rows of a
                        # CCD are its own; two CCDs replacing one DiaObject at once (a CCD
                        # edge) collide on its key and the loser retries.
                        conn.execution_options(
                            isolation_level="SERIALIZABLE" if serializable else "READ COMMITTED"
                        )
                    with conn.begin():
                        result = work(conn)
                return result, attempt
            except sa.exc.DBAPIError as exc:
                if not is_transient(exc):
                    raise ApdbError(f"APDB {self.url}: {what} failed: {exc.orig or exc}") from exc
                if attempt == MAX_ATTEMPTS:
                    raise ApdbError(
                        f"APDB {self.url}: {what} still conflicts with other writers after "
                        f"{MAX_ATTEMPTS} attempts: {exc.orig or exc}"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, work: Callable[[sa.Connection], T]) -> T:
        self._ensure_open()
        return self._transaction(work, write=False, what="reading")

    # --- writing ------------------------------------------------------------------------------

    def store(
        self,
        visit: int,
        detector: int,
        *,
        dia_objects: pd.DataFrame,
        dia_sources: pd.DataFrame,
        dia_forced_sources: pd.DataFrame,
        ss_sources: pd.DataFrame | None = None,
    ) -> dict[str, Any]:
        """Write everything of one (visit, detector) in one transaction, replacing a previous run.

        Deletes the (visit, detector)'s previous DiaSource, DiaForcedSource and SSSource rows and
        the previous rows of every DiaObject in ``dia_objects``, inserts the new rows, and deletes
        DiaObjects that the previous run's DiaSources referenced and that no DiaSource references
        any more (with their forced sources).

        Parameters
        ----------
        visit, detector : int
            The data id; every DiaSource and DiaForcedSource row must carry it.
        dia_objects : pandas.DataFrame
            The current summary of every DiaObject this (visit, detector) created or updated, one
            row per ``diaObjectId`` with ``validityEndMjdTai`` NULL. Objects whose sources changed
            must be included (their rows are replaced, not merged).
        dia_sources, dia_forced_sources, ss_sources : pandas.DataFrame
            Rows of the (visit, detector); any subset of the schema's columns (conformed with
            :func:`~apflow.apdb.schema.conform`). ``ss_sources`` rows must belong to DiaSources
            of ``dia_sources``.

        Returns
        -------
        dict
            ``dia_objects``, ``dia_sources``, ``dia_forced_sources``, ``ss_sources`` (rows
            written), ``dia_objects_removed`` (orphans deleted), ``attempts`` (transactions tried)
            and ``seconds``.

        Raises
        ------
        ConfigError
            A frame has unknown columns, NULLs in NOT NULL columns, rows of another data id,
            duplicate keys or references to missing rows.
        ApdbError
            The database refused the write (after the bounded retries).
        """
        start = time.perf_counter()
        visit, detector = int(visit), int(detector)
        where = f"visit={visit}, detector={detector}"
        objects = conformed(dia_objects, "DiaObject", f"DiaObject ({where})")
        sources = conformed(dia_sources, "DiaSource", f"DiaSource ({where})")
        forced = conformed(dia_forced_sources, "DiaForcedSource", f"DiaForcedSource ({where})")
        ss = conformed(
            ss_sources if ss_sources is not None else empty_frame("SSSource"),
            "SSSource",
            f"SSSource ({where})",
        )
        _check_frames(where, visit, detector, objects, sources, forced, ss)
        object_ids = set(objects["diaObjectId"].tolist())
        referenced = {
            int(i) for i in sources["diaObjectId"].dropna().tolist() if int(i) != 0
        } | set(forced["diaObjectId"].tolist())
        outside = int_ids(referenced - object_ids)
        rows = {
            "DiaObject": records(objects),
            "DiaSource": records(sources),
            "DiaForcedSource": records(forced),
            "SSSource": records(ss),
        }
        self._ensure_open()

        def write(conn: sa.Connection) -> int:
            t_obj, t_src = sql_table("DiaObject"), sql_table("DiaSource")
            t_fs, t_ss = sql_table("DiaForcedSource"), sql_table("SSSource")
            missing = set(outside) - _existing_objects(conn, outside)
            if missing:
                raise ConfigError(
                    f"APDB store ({where}): sources refer to DiaObjects that are neither given "
                    f"nor stored: {sorted(missing)[:10]}"
                )
            in_this_ccd = (t_src.c.visit == visit) & (t_src.c.detector == detector)
            previous_objects = {
                int(i)
                for (i,) in conn.execute(
                    sa.select(t_src.c.diaObjectId).where(in_this_ccd).distinct()
                )
                if i is not None and int(i) != 0
            }
            conn.execute(
                t_ss.delete().where(
                    t_ss.c.diaSourceId.in_(sa.select(t_src.c.diaSourceId).where(in_this_ccd))
                )
            )
            for chunk in chunks(int_ids(ss["diaSourceId"])):
                conn.execute(t_ss.delete().where(t_ss.c.diaSourceId.in_(chunk)))
            conn.execute(t_src.delete().where(in_this_ccd))
            conn.execute(
                t_fs.delete().where((t_fs.c.visit == visit) & (t_fs.c.detector == detector))
            )
            for chunk in chunks(int_ids(object_ids)):
                conn.execute(t_obj.delete().where(t_obj.c.diaObjectId.in_(chunk)))
            for name, table in (
                ("DiaObject", t_obj),
                ("DiaSource", t_src),
                ("DiaForcedSource", t_fs),
                ("SSSource", t_ss),
            ):
                if rows[name]:
                    conn.execute(table.insert(), rows[name])
            return _delete_orphans(conn, int_ids(previous_objects - object_ids))

        removed, attempts = self._attempts(write, write=True, what=f"storing {where}")
        return {
            "dia_objects": len(objects),
            "dia_sources": len(sources),
            "dia_forced_sources": len(forced),
            "ss_sources": len(ss),
            "dia_objects_removed": removed,
            "attempts": attempts,
            "seconds": round(time.perf_counter() - start, 4),
        }

    # --- queries ------------------------------------------------------------------------------

    def dia_objects_in_region(self, ra: float, dec: float, radius_deg: float) -> pd.DataFrame:
        """Current DiaObjects within ``radius_deg`` of (ra, dec) (ICRS degrees).

        An ra/dec box (indexed on dec) selects candidates in SQL; the exact great-circle cut is
        applied here. Rows are sorted by ``diaObjectId``.
        """
        ra, dec, radius = float(ra) % 360.0, float(dec), float(radius_deg)
        if not (math.isfinite(ra) and -90.0 <= dec <= 90.0 and math.isfinite(radius)):
            raise ConfigError(f"bad cone: ra={ra}, dec={dec}, radius={radius_deg}")
        table = sql_table("DiaObject")
        pad = 1e-9  # degrees: keeps rounding at the box edge from dropping an object on the circle
        cond = (
            table.c.validityEndMjdTai.is_(None)
            & (table.c.dec >= dec - radius - pad)
            & (table.c.dec <= dec + radius + pad)
        )
        if abs(dec) + radius < 89.0:
            # Half-width in ra of a circle that does not reach a pole: asin(sin r / cos dec).
            ratio = math.sin(math.radians(radius)) / math.cos(math.radians(dec))
            half = math.degrees(math.asin(min(1.0, ratio))) + pad
            lo, hi = ra - half, ra + half
            if lo < 0.0:
                cond &= (table.c.ra >= lo + 360.0) | (table.c.ra <= hi)
            elif hi >= 360.0:
                cond &= (table.c.ra >= lo) | (table.c.ra <= hi - 360.0)
            else:
                cond &= (table.c.ra >= lo) & (table.c.ra <= hi)
        frame = self._select("DiaObject", cond)
        if frame.empty:
            return frame
        distance = _angular_distance_deg(frame["ra"].to_numpy(), frame["dec"].to_numpy(), ra, dec)
        return frame[distance <= radius].reset_index(drop=True)

    def dia_objects(self, ids: Iterable[int]) -> pd.DataFrame:
        """Current rows of the DiaObjects ``ids`` (missing ids are absent), sorted by id."""
        table = sql_table("DiaObject")
        return self._select_ids(
            "DiaObject", table.c.diaObjectId, ids, table.c.validityEndMjdTai.is_(None)
        )

    def dia_sources_for_objects(
        self, ids: Iterable[int], since_mjd: float | None = None
    ) -> pd.DataFrame:
        """DiaSources of the DiaObjects ``ids`` (from ``since_mjd`` on, when given)."""
        table = sql_table("DiaSource")
        extra = None if since_mjd is None else table.c.midpointMjdTai >= float(since_mjd)
        frame = self._select_ids("DiaSource", table.c.diaObjectId, ids, extra)
        return _by_object_and_time(frame, "diaSourceId")

    def dia_forced_sources_for_objects(
        self, ids: Iterable[int], since_mjd: float | None = None
    ) -> pd.DataFrame:
        """DiaForcedSources of the DiaObjects ``ids`` (from ``since_mjd`` on, when given)."""
        table = sql_table("DiaForcedSource")
        extra = None if since_mjd is None else table.c.midpointMjdTai >= float(since_mjd)
        frame = self._select_ids("DiaForcedSource", table.c.diaObjectId, ids, extra)
        return _by_object_and_time(frame, "diaForcedSourceId")

    def dia_sources_for_visit(self, visit: int, detector: int | None = None) -> pd.DataFrame:
        """DiaSources of one visit (and detector, when given), sorted by ``diaSourceId``."""
        table = sql_table("DiaSource")
        cond = table.c.visit == int(visit)
        if detector is not None:
            cond &= table.c.detector == int(detector)
        return sort_by_key(self._select("DiaSource", cond), "DiaSource")

    def dump(self, table: str) -> pd.DataFrame:
        """Every row of ``table``, sorted by its primary key (for checks and small APDBs)."""
        return sort_by_key(self._select(table, None), table)

    def count(self, table: str) -> int:
        """Number of rows in ``table`` (one of ``metadata``, ``DiaObject``, ``DiaSource``,
        ``DiaForcedSource``, ``SSSource``)."""
        sql = sql_table(table)
        return int(
            self._read(
                lambda conn: conn.execute(sa.select(sa.func.count()).select_from(sql)).scalar_one()
            )
        )

    def _select(self, table: str, cond: Any) -> pd.DataFrame:
        sql = sql_table(table)
        stmt = sa.select(*sql.columns)
        if cond is not None:
            stmt = stmt.where(cond)
        return frame_from_rows(table, self._read(lambda conn: conn.execute(stmt).all()))

    def _select_ids(self, table: str, column: Any, ids: Iterable[int], extra: Any) -> pd.DataFrame:
        sql = sql_table(table)
        wanted = int_ids(ids)

        def read(conn: sa.Connection) -> list[Any]:
            rows: list[Any] = []
            for chunk in chunks(wanted):
                cond = column.in_(chunk)
                if extra is not None:
                    cond &= extra
                rows.extend(conn.execute(sa.select(*sql.columns).where(cond)).all())
            return rows

        frame = frame_from_rows(table, self._read(read) if wanted else [])
        return sort_by_key(frame, table)


def _by_object_and_time(frame: pd.DataFrame, id_column: str) -> pd.DataFrame:
    return frame.sort_values(
        ["diaObjectId", "midpointMjdTai", id_column], kind="stable"
    ).reset_index(drop=True)


def _existing_objects(conn: sa.Connection, ids: list[int]) -> set[int]:
    table = sql_table("DiaObject")
    found: set[int] = set()
    for chunk in chunks(ids):
        found.update(
            int(i)
            for (i,) in conn.execute(
                sa.select(table.c.diaObjectId).where(table.c.diaObjectId.in_(chunk))
            )
        )
    return found


def _delete_orphans(conn: sa.Connection, candidates: list[int]) -> int:
    """Delete the DiaObjects among ``candidates`` that no DiaSource references; return how many."""
    t_obj, t_src, t_fs = (
        sql_table("DiaObject"),
        sql_table("DiaSource"),
        sql_table("DiaForcedSource"),
    )
    orphans: list[int] = []
    for chunk in chunks(candidates):
        referenced = sa.select(t_src.c.diaSourceId).where(
            t_src.c.diaObjectId == t_obj.c.diaObjectId
        )
        orphans.extend(
            int(i)
            for (i,) in conn.execute(
                sa.select(t_obj.c.diaObjectId).where(
                    t_obj.c.diaObjectId.in_(chunk) & ~referenced.exists()
                )
            )
        )
    for chunk in chunks(orphans):
        conn.execute(t_fs.delete().where(t_fs.c.diaObjectId.in_(chunk)))
        conn.execute(t_obj.delete().where(t_obj.c.diaObjectId.in_(chunk)))
    return len(set(orphans))


def _check_frames(
    where: str,
    visit: int,
    detector: int,
    objects: pd.DataFrame,
    sources: pd.DataFrame,
    forced: pd.DataFrame,
    ss: pd.DataFrame,
) -> None:
    for name, frame in (("DiaSource", sources), ("DiaForcedSource", forced)):
        other = frame[(frame["visit"] != visit) | (frame["detector"] != detector)]
        if len(other):
            raise ConfigError(
                f"APDB store ({where}): {len(other)} {name} rows belong to another (visit, detector)"
            )
    for name, frame, key in (
        ("DiaObject", objects, ["diaObjectId"]),
        ("DiaSource", sources, primary_key("DiaSource")),
        ("DiaForcedSource", forced, primary_key("DiaForcedSource")),
        ("SSSource", ss, primary_key("SSSource")),
    ):
        duplicated = frame.duplicated(key)
        if duplicated.any():
            raise ConfigError(
                f"APDB store ({where}): {int(duplicated.sum())} duplicate {name} keys {key}"
            )
    if objects["validityEndMjdTai"].notna().any():
        raise ConfigError(
            f"APDB store ({where}): DiaObject rows must be current (validityEnd NULL)"
        )
    unknown = set(ss["diaSourceId"].tolist()) - set(sources["diaSourceId"].tolist())
    if unknown:
        raise ConfigError(
            f"APDB store ({where}): SSSource rows of DiaSources not in this (visit, detector): "
            f"{sorted(unknown)[:10]}"
        )

"""The APDB on SQLite and on a real PostgreSQL: creation, idempotent stores, queries, concurrency."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from apflow import __version__
from apflow.apdb import Apdb, ApdbError, empty_frame, schema_version
from apflow.apdb.ids import pack_source_ids
from apflow.apdb.sql import APDB_TABLES
from apflow.errors import ConfigError
from tests.apdb.apdb_data import ccd_rows

ROW_TABLES = ("DiaObject", "DiaSource", "DiaForcedSource", "SSSource")
#: Concurrency tests: on PostgreSQL (minutes on a loaded 2-core machine) only with --runslow.
POSTGRES_SLOW = pytest.mark.parametrize(
    "apdb_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)


def dumps(apdb: Apdb) -> dict[str, pd.DataFrame]:
    return {table: apdb.dump(table) for table in APDB_TABLES}


def assert_same_tables(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    for table in before:
        pd.testing.assert_frame_equal(before[table], after[table], check_exact=True, obj=table)


def test_create_is_idempotent_and_records_versions(apdb_url):
    apdb = Apdb.create(apdb_url)
    apdb.close()  # forget this process's "already checked", so the second create really checks
    again = Apdb.create(apdb_url)
    assert again == apdb
    assert again.metadata() == {"version:schema": schema_version(), "version:apflow": __version__}
    assert {t: again.count(t) for t in ROW_TABLES} == dict.fromkeys(ROW_TABLES, 0)


def test_tables_have_the_yaml_keys_and_indexes(apdb_url):
    from apflow.apdb.schema import column_names, primary_key, table_definition

    Apdb.create(apdb_url)
    engine = sa.create_engine(Apdb(apdb_url).url)
    inspector = sa.inspect(engine)
    for table in APDB_TABLES:
        assert [c["name"] for c in inspector.get_columns(table)] == column_names(table)
        assert inspector.get_pk_constraint(table)["constrained_columns"] == primary_key(table)
        indexes = {i["name"].lower() for i in inspector.get_indexes(table)}
        assert {i["name"].lower() for i in table_definition(table).get("indexes", [])} <= indexes
    engine.dispose()


def test_another_schema_version_is_refused(apdb_url):
    apdb = Apdb.create(apdb_url)
    engine = sa.create_engine(apdb.url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE metadata SET value = '0.1' WHERE name = 'version:schema'"))
    engine.dispose()
    apdb.close()
    with pytest.raises(ApdbError, match="schema version 0.1"):
        Apdb.create(apdb_url)
    with pytest.raises(ApdbError, match="schema version 0.1"):
        Apdb(apdb_url).count("DiaSource")


def test_opening_a_missing_apdb_is_an_error(tmp_path):
    apdb = Apdb(str(tmp_path / "none.sqlite3"))
    with pytest.raises(ApdbError, match="create it first"):
        apdb.count("DiaObject")
    assert not (tmp_path / "none.sqlite3").exists()
    (tmp_path / "empty.sqlite3").touch()
    with pytest.raises(ApdbError, match="create it first"):
        Apdb(str(tmp_path / "empty.sqlite3")).count("DiaObject")


def test_round_trip_keeps_values_and_schema_dtypes(apdb_url):
    apdb = Apdb.create(apdb_url)
    visit = 2**30  # ids above 2**53: they must not pass through float64
    rows = ccd_rows(visit, 7)
    report = apdb.store(visit, 7, **rows)
    assert report["dia_sources"] == 5 and report["dia_objects"] == 4 and report["ss_sources"] == 1
    got = apdb.dump("DiaSource")
    assert dict(got.dtypes) == dict(empty_frame("DiaSource").dtypes)
    assert got["diaSourceId"].tolist() == pack_source_ids(visit, 7, np.arange(5)).tolist()
    assert got["diaSourceId"].min() > 2**53
    assert np.isnan(got.loc[0, "psfFlux"])
    np.testing.assert_array_equal(got["psfFlux"][1:], rows["dia_sources"]["psfFlux"][1:])
    assert got["centroid_flag"].tolist()[:3] == [True, False, pd.NA]
    assert got["band"].tolist() == ["g"] * 5 and got["reliabilityVersion"][0] == "v1.2"
    assert got["ssObjectId"][0] == 12345 and got["ssObjectId"][1:].isna().all()
    assert apdb.dump("SSSource")["designation"].tolist() == ["2026 AB"]
    for table in ROW_TABLES:
        assert dict(apdb.dump(table).dtypes) == dict(empty_frame(table).dtypes), table


def test_rerun_replaces_rows_without_duplicates(apdb_url):
    apdb = Apdb.create(apdb_url)
    apdb.store(3, 1, **ccd_rows(3, 1))
    apdb.store(3, 2, **ccd_rows(3, 2))
    before = dumps(apdb)
    apdb.store(3, 1, **ccd_rows(3, 1))
    assert_same_tables(before, dumps(apdb))
    assert apdb.count("DiaSource") == 10 and apdb.count("DiaObject") == 8


def test_rerun_with_fewer_sources_removes_orphan_objects(apdb_url):
    apdb = Apdb.create(apdb_url)
    rows = ccd_rows(3, 1)
    apdb.store(3, 1, **rows)
    kept, lost = (int(i) for i in rows["dia_objects"]["diaObjectId"].iloc[-2:])
    # Visit 4 saw the object of the second-to-last source again.
    later = ccd_rows(4, 1, n=2)
    later["dia_sources"].loc[1, "diaObjectId"] = kept
    later["dia_objects"] = rows["dia_objects"].iloc[-2:-1].assign(nDiaSources=2)
    later["dia_forced_sources"] = later["dia_forced_sources"].assign(diaObjectId=kept)
    apdb.store(4, 1, **later)
    # The rerun of visit 3 lost its last two sources: the object only they referenced goes
    # (with its forced sources), the one visit 4 still refers to stays.
    fewer = {
        "dia_sources": rows["dia_sources"].iloc[:-2],
        "dia_objects": rows["dia_objects"].iloc[:-2],
        "dia_forced_sources": rows["dia_forced_sources"].iloc[:-2],
        "ss_sources": rows["ss_sources"],
    }
    report = apdb.store(3, 1, **fewer)
    assert report["dia_objects_removed"] == 1
    assert apdb.dia_objects([lost]).empty
    assert apdb.dia_forced_sources_for_objects([lost]).empty
    assert apdb.dia_objects([kept])["nDiaSources"].tolist() == [2]
    assert apdb.count("DiaSource") == 3 + 2


def test_store_is_one_transaction(apdb_url):
    apdb = Apdb.create(apdb_url)
    apdb.store(3, 1, **ccd_rows(3, 1))
    apdb.store(4, 1, **ccd_rows(4, 1))
    before = dumps(apdb)
    rows = ccd_rows(3, 1)
    # A DiaSource id that belongs to visit 4: the insert fails after the deletes ran.
    rows["dia_sources"].loc[4, "diaSourceId"] = pack_source_ids(4, 1, 2)
    rows["dia_sources"].loc[4, "diaObjectId"] = pack_source_ids(4, 1, 2)
    with pytest.raises(ApdbError, match="visit=3, detector=1"):
        apdb.store(3, 1, **rows)
    assert_same_tables(before, dumps(apdb))


@pytest.mark.parametrize("apdb_url", ["sqlite"], indirect=True)
def test_bad_frames_are_refused_before_writing(apdb_url):
    apdb = Apdb.create(apdb_url)
    rows = ccd_rows(3, 1)
    with pytest.raises(ConfigError, match="another"):
        apdb.store(3, 2, **rows)
    orphan = dict(rows, dia_objects=rows["dia_objects"].iloc[1:])
    with pytest.raises(ConfigError, match="neither given nor stored"):
        apdb.store(3, 1, **orphan)
    with pytest.raises(ConfigError, match="not in the APDB DiaSource schema"):
        apdb.store(3, 1, **dict(rows, dia_sources=rows["dia_sources"].assign(psfFLux=1.0)))
    assert apdb.count("DiaSource") == 0


def test_queries(apdb_url):
    apdb = Apdb.create(apdb_url)
    for visit in (3, 4):
        apdb.store(visit, 1, **ccd_rows(visit, 1))
    objects = apdb.dump("DiaObject")
    ids = objects["diaObjectId"].tolist()
    assert apdb.dia_objects(ids[:2])["diaObjectId"].tolist() == ids[:2]
    src = apdb.dia_sources_for_objects(ids)
    assert sorted(src["diaSourceId"]) == sorted(ids)
    later = apdb.dia_sources_for_objects(ids, since_mjd=60000.035)
    assert set(later["visit"]) == {4}
    forced = apdb.dia_forced_sources_for_objects(ids[:3])
    assert forced["diaObjectId"].tolist() == ids[:3]
    assert apdb.dia_forced_sources_for_objects(ids, since_mjd=60001.0).empty
    assert apdb.dia_sources_for_visit(4, 1)["visit"].tolist() == [4] * 5
    assert dict(apdb.dia_sources_for_objects([]).dtypes) == dict(empty_frame("DiaSource").dtypes)


def _objects_at(positions: list[tuple[float, float]]) -> pd.DataFrame:
    ids = np.arange(1, len(positions) + 1)
    ra, dec = zip(*positions, strict=True)
    return pd.DataFrame(
        {
            "diaObjectId": ids,
            "validityStartMjdTai": 60000.0,
            "ra": ra,
            "dec": dec,
            "nDiaSources": 1,
            **{f"{b}_psfFluxNdata": 0 for b in "ugrizy"},
        }
    )


def _empty(table: str) -> pd.DataFrame:
    return empty_frame(table)


def test_cone_search_is_exact_and_wraps_in_ra(apdb_url):
    apdb = Apdb.create(apdb_url)
    r = 10.0 / 3600.0
    positions = [
        (359.999, 0.0),  # 3.6" west across ra = 0
        (0.002, 0.0),  # 7.2" east
        (0.0, 0.0028),  # 10.08": just outside
        (r * 0.75, r * 0.75),  # in the ra/dec box, outside the circle (10.6")
        (180.0, 0.0),
    ]
    apdb.store(
        1,
        0,
        dia_objects=_objects_at(positions),
        dia_sources=_empty("DiaSource"),
        dia_forced_sources=_empty("DiaForcedSource"),
    )
    assert apdb.dia_objects_in_region(0.0, 0.0, r)["diaObjectId"].tolist() == [1, 2]
    assert apdb.dia_objects_in_region(359.9995, 0.0, r)["diaObjectId"].tolist() == [1, 2]
    near_pole = [(0.0, 89.999), (180.0, 89.999), (90.0, 89.99)]
    apdb.store(
        2,
        0,
        dia_objects=_objects_at(near_pole).assign(diaObjectId=[11, 12, 13]),
        dia_sources=_empty("DiaSource"),
        dia_forced_sources=_empty("DiaForcedSource"),
    )
    # 89.999 at ra 0 and 180 are 7.2" apart across the pole; 89.99 is 36" from the pole.
    assert apdb.dia_objects_in_region(0.0, 90.0, 4.0 / 3600)["diaObjectId"].tolist() == [11, 12]


@pytest.mark.parametrize("apdb_url", ["sqlite"], indirect=True)
def test_pickles_as_its_url(apdb_url):
    apdb = Apdb.create(apdb_url)
    apdb.count("DiaSource")  # an engine exists now; it must not travel
    data = pickle.dumps(apdb)
    assert len(data) < 500
    assert pickle.loads(data) == apdb


def test_default_apdb_of_a_repository(tmp_path):
    apdb = Apdb.for_repository(str(tmp_path))
    assert apdb.url == f"sqlite:///{tmp_path}/apdb/apdb.sqlite3"
    assert Apdb.for_repository(f"file://{tmp_path}") == apdb
    for remote in ("s3://bucket/repo", "memory://repo"):
        with pytest.raises(ConfigError, match="SQLAlchemy URL"):
            Apdb.for_repository(remote)


def test_urls(tmp_path):
    assert Apdb(str(tmp_path / "a.db")).url == f"sqlite:///{tmp_path}/a.db"
    assert Apdb("postgresql://u@h/db").url == "postgresql+psycopg://u@h/db"
    with pytest.raises(ConfigError):
        Apdb("")
    with pytest.raises(ConfigError):
        Apdb("not a url://x")


@POSTGRES_SLOW
def test_threads_of_one_process_share_the_engine(apdb_url):
    apdb = Apdb.create(apdb_url)
    ccds = [(7, detector) for detector in range(3)]
    with ThreadPoolExecutor(3) as pool:
        reports = list(pool.map(lambda c: apdb.store(*c, **ccd_rows(*c, n=20)), ccds))
    assert [r["dia_sources"] for r in reports] == [20] * 3
    assert apdb.count("DiaSource") == 60 and apdb.dump("DiaSource")["diaSourceId"].is_unique


@POSTGRES_SLOW
def test_concurrent_processes_write_different_ccds(apdb_url):
    apdb = Apdb(apdb_url)
    n, repeats = 40, 2
    ccds = [(visit, detector) for visit in (5, 6) for detector in (0, 1, 2)]
    # Spawned workers get the Apdb as its URL (bound method pickling) and open their own engines;
    # they all create the APDB at once, then write each CCD ``repeats`` times so that reruns race
    # with other CCDs' first writes.
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        created = [pool.submit(Apdb.create, apdb_url) for _ in range(3)]
        assert [future.result(timeout=240) for future in created] == [apdb] * 3
        futures = [
            pool.submit(apdb.store, visit, detector, **ccd_rows(visit, detector, n))
            for _ in range(repeats)
            for visit, detector in ccds
        ]
        reports = [future.result(timeout=240) for future in futures]
    assert apdb.metadata()["version:schema"] == schema_version()
    sources = apdb.dump("DiaSource")
    assert len(sources) == len(ccds) * n and sources["diaSourceId"].is_unique
    expected = np.concatenate([pack_source_ids(v, d, np.arange(n)) for v, d in ccds])
    assert sorted(sources["diaSourceId"]) == sorted(expected.tolist())
    assert apdb.count("DiaObject") == len(ccds) * (n - 1)
    assert apdb.count("DiaForcedSource") == len(ccds) * (n - 1)
    assert apdb.count("SSSource") == len(ccds)
    assert all(r["dia_sources"] == n for r in reports)

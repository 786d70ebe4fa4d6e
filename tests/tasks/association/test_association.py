"""AssociationTask on synthetic CCDs and a real SQLite APDB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.apdb import Apdb
from apflow.apdb.ids import pack_source_ids
from apflow.apdb.sql import APDB_TABLES
from apflow.errors import ConfigError
from apflow.tasks.association import AssociationConfig, AssociationTask, match_greedy
from tests.tasks.association.association_data import NOISE, Star, make_ccd, offset


def three_stars() -> list[Star]:
    return [
        Star(*offset(-6.0, -5.0), 500.0),
        Star(*offset(4.0, 3.0), -300.0),  # fainter than in the template: still associates
        Star(*offset(0.0, 8.0), 800.0),
    ]


def run_visit(task, visit, stars, **kwargs):
    sources, diff, calexp = make_ccd(visit, stars, **kwargs)
    return task.run(sources, diff, calexp, data_id={"visit": visit, "detector": 0})


def dumps(apdb: Apdb) -> dict[str, pd.DataFrame]:
    return {table: apdb.dump(table) for table in APDB_TABLES}


def test_repeated_sources_make_one_object_each_over_ten_visits(task, apdb_url):
    stars = three_stars()
    for visit in range(1, 11):
        result = run_visit(task, visit, stars)
    assert result.summary()["n_matched"] == 3 and result.summary()["n_new_dia_objects"] == 0
    apdb = Apdb(apdb_url)
    objects = apdb.dump("DiaObject")
    first_ids = pack_source_ids(1, 0, np.arange(3)).tolist()
    assert objects["diaObjectId"].tolist() == first_ids
    assert objects["nDiaSources"].tolist() == [10, 10, 10]
    sources = apdb.dump("DiaSource")
    assert len(sources) == 30
    for k, object_id in enumerate(first_ids):
        assert (sources["diaObjectId"] == object_id).sum() == 10
        # Mean of 10 positions jittered by 0.05": within 0.05" of the truth.
        dra = (objects["ra"][k] - stars[k].ra) * np.cos(np.radians(stars[k].dec)) * 3600
        ddec = (objects["dec"][k] - stars[k].dec) * 3600
        assert np.hypot(dra, ddec) < 0.05
    assert objects["firstDiaSourceMjdTai"].tolist() == [60001.0] * 3
    assert objects["lastDiaSourceMjdTai"].tolist() == [60010.0] * 3
    assert objects["validityStartMjdTai"].tolist() == [60010.0] * 3
    assert objects["validityEndMjdTai"].isna().all()


def test_result_is_what_the_apdb_stores(task, apdb_url):
    run_visit(task, 1, three_stars())
    result = run_visit(task, 2, three_stars())
    stored = Apdb(apdb_url).dia_sources_for_visit(2, 0)
    pd.testing.assert_frame_equal(result.dia_association, stored, check_exact=True)
    assert (
        result.dia_association["diaObjectId"].tolist() == pack_source_ids(1, 0, [0, 1, 2]).tolist()
    )


def test_new_position_creates_a_new_object(task, apdb_url):
    stars = three_stars()
    run_visit(task, 1, stars)
    newcomer = Star(*offset(-6.0, 2.0), 400.0)
    result = run_visit(task, 2, [*stars, newcomer])
    assert result.n_matched == 3 and result.n_new == 1
    new_id = int(pack_source_ids(2, 0, 3))
    assert result.dia_association["diaObjectId"].tolist()[3] == new_id
    objects = Apdb(apdb_url).dia_objects([new_id])
    assert objects["nDiaSources"].tolist() == [1]
    assert Apdb(apdb_url).count("DiaObject") == 4


def test_two_sources_competing_for_one_object(task, apdb_url):
    star = Star(*offset(0.0, 0.0), 500.0)
    run_visit(task, 1, [star], jitter_arcsec=0.0)
    near = Star(*offset(0.3, 0.0), 500.0)
    far = Star(*offset(-0.6, 0.0), 500.0)
    result = run_visit(task, 2, [far, near], jitter_arcsec=0.0)
    ids = result.dia_association["diaObjectId"].tolist()
    # The nearer source takes the object; the other, also within 1", makes a new one.
    assert ids == [int(pack_source_ids(2, 0, 0)), int(pack_source_ids(1, 0, 0))]
    assert result.n_matched == 1 and result.n_new == 1


def test_greedy_matching_gives_the_loser_its_next_choice():
    # Objects O0, O1 on a line; source A 0.2" from O0; source B 0.3" from O0, 0.7" from O1.
    dec = 0.0
    obj_ra = np.array([0.0, 1.0]) / 3600.0
    src_ra = np.array([0.2, 0.3]) / 3600.0
    src_i, obj_i, sep = match_greedy(src_ra, np.full(2, dec), obj_ra, np.full(2, dec), 1.0)
    assert src_i.tolist() == [0, 1] and obj_i.tolist() == [0, 1]
    np.testing.assert_allclose(sep, [0.2, 0.7], atol=1e-9)
    # A radius that excludes 0.7" leaves B unmatched.
    src_i, obj_i, _ = match_greedy(src_ra, np.full(2, dec), obj_ra, np.full(2, dec), 0.5)
    assert src_i.tolist() == [0] and obj_i.tolist() == [0]
    # Across ra = 0, and nothing with empty lists.
    src_i, obj_i, sep = match_greedy([359.99995], [0.0], [0.00005], [0.0], 1.0)
    assert src_i.tolist() == [0] and sep[0] == pytest.approx(0.36, abs=1e-6)
    assert match_greedy([], [], [1.0], [1.0], 1.0)[0].size == 0


def test_sso_sources_create_no_objects(task, apdb_url):
    stars = three_stars()
    run_visit(task, 1, stars)
    sources, diff, calexp = make_ccd(2, [*stars, Star(*offset(5.0, -7.0), 600.0)])
    asteroid_source = int(sources["diaSourceId"].iloc[3])
    ss_source = pd.DataFrame(
        {
            "diaSourceId": [asteroid_source],
            "ssObjectId": [2**62 + 987654321],  # packed designations use all 64 bits
            "eclLambda": [150.0],
            "eclBeta": [-8.0],
            "galLon": [230.0],
            "galLat": [40.0],
            "ephOffset": [0.12],
            "DIA_psfFlux": [600.0],  # not an SSSource column: not stored
        }
    )
    result = task.run(
        sources, diff, calexp, ss_source=ss_source, data_id={"visit": 2, "detector": 0}
    )
    row = result.dia_association.set_index("diaSourceId").loc[asteroid_source]
    assert row["diaObjectId"] == 0 and row["ssObjectId"] == 2**62 + 987654321
    assert result.n_sso == 1 and result.n_new == 0 and result.n_matched == 3
    apdb = Apdb(apdb_url)
    assert apdb.count("DiaObject") == 3
    stored_ss = apdb.dump("SSSource")
    assert stored_ss["diaSourceId"].tolist() == [asteroid_source]
    assert stored_ss["ssObjectId"].tolist() == [2**62 + 987654321]
    stored = apdb.dia_sources_for_visit(2, 0).set_index("diaSourceId")
    assert stored.loc[asteroid_source, "ssObjectId"] == 2**62 + 987654321
    assert stored_ss["ephOffset"].tolist() == [pytest.approx(0.12)]


def test_rerunning_visits_leaves_every_table_unchanged(task, apdb_url):
    stars = three_stars()
    for visit in range(1, 4):
        # Visit 2 has a transient that becomes an object, seen again in visit 3.
        extra = [Star(*offset(-3.0, -8.0), 900.0)] if visit >= 2 else []
        run_visit(task, visit, stars + extra)
    apdb = Apdb(apdb_url)
    before = dumps(apdb)
    assert len(before["DiaObject"]) == 4 and len(before["DiaForcedSource"]) == 11
    # Old visits (after newer ones were processed: one that created an object later visits
    # joined, and the first) and the latest one.
    for visit in (2, 1, 3):
        extra = [Star(*offset(-3.0, -8.0), 900.0)] if visit >= 2 else []
        result = run_visit(task, visit, stars + extra)
        assert result.summary()["n_dia_objects_removed"] == 0
        after = dumps(apdb)
        for table in APDB_TABLES:
            pd.testing.assert_frame_equal(before[table], after[table], check_exact=True, obj=table)


def test_rerun_without_a_source_updates_its_object(task, apdb_url):
    stars = three_stars()
    for visit in range(1, 4):
        run_visit(task, visit, stars)
    # Visit 2 rerun without the first star: its object has 2 sources left and is resummarised.
    run_visit(task, 2, stars[1:])
    apdb = Apdb(apdb_url)
    first = int(pack_source_ids(1, 0, 0))
    assert apdb.dia_objects([first])["nDiaSources"].tolist() == [2]
    assert apdb.count("DiaSource") == 8


def test_object_summaries_equal_numpy_on_the_stored_sources(task, apdb_url):
    stars = three_stars()
    for visit in range(1, 6):
        band = "g" if visit in (2, 4) else "r"
        run_visit(task, visit, stars, band=band)
    apdb = Apdb(apdb_url)
    sources, forced = apdb.dump("DiaSource"), apdb.dump("DiaForcedSource")
    objects = apdb.dump("DiaObject").set_index("diaObjectId")
    for object_id, row in objects.iterrows():
        for band in ("g", "r"):
            own = sources[(sources["diaObjectId"] == object_id) & (sources["band"] == band)]
            flux = own["psfFlux"].to_numpy(np.float64)
            err = own["psfFluxErr"].to_numpy(np.float64)
            weight = 1.0 / err**2
            mean = np.sum(weight * flux) / np.sum(weight)
            assert row[f"{band}_psfFluxMean"] == pytest.approx(mean, rel=1e-6)
            assert row[f"{band}_psfFluxMeanErr"] == pytest.approx(np.sum(weight) ** -0.5, rel=1e-6)
            assert row[f"{band}_psfFluxSigma"] == pytest.approx(np.std(flux, ddof=1), rel=1e-5)
            assert row[f"{band}_psfFluxNdata"] == len(own) == (2 if band == "g" else 3)
            assert row[f"{band}_psfFluxMin"] == pytest.approx(flux.min(), rel=1e-6)
            assert row[f"{band}_psfFluxMax"] == pytest.approx(flux.max(), rel=1e-6)
            t = own["midpointMjdTai"].to_numpy()
            order = np.argsort(t)
            slope = np.max(np.diff(flux[order]) / np.diff(t[order]))
            assert row[f"{band}_psfFluxMaxSlope"] == pytest.approx(slope, rel=1e-5)
            assert row[f"{band}_psfFluxErrMean"] == pytest.approx(err.mean(), rel=1e-6)
            fp = forced[(forced["diaObjectId"] == object_id) & (forced["band"] == band)]
            fw = 1.0 / fp["psfFluxErr"].to_numpy(np.float64) ** 2
            fp_mean = np.sum(fw * fp["psfFlux"].to_numpy(np.float64)) / np.sum(fw)
            assert row[f"{band}_fpFluxMean"] == pytest.approx(fp_mean, rel=1e-6)
            sci = own["scienceFlux"].to_numpy(np.float64)
            assert row[f"{band}_scienceFluxMean"] == pytest.approx(sci.mean(), rel=1e-6)
        assert row["u_psfFluxNdata"] == 0 and np.isnan(row["u_psfFluxMean"])
        assert row["nDiaSources"] == 5


def test_forced_photometry_measures_diff_and_calexp(task, apdb_url):
    stars = three_stars()
    for visit in range(1, 4):
        result = run_visit(task, visit, stars)
    forced = Apdb(apdb_url).dump("DiaForcedSource")
    assert len(forced) == 9 and set(forced["visit"]) == {1, 2, 3}
    assert forced.groupby("visit").size().tolist() == [3, 3, 3]
    assert (
        forced["band"].eq("r").all()
        and forced["midpointMjdTai"].isin([60001.0, 60002.0, 60003.0]).all()
    )
    # ids: pack_source_ids(visit, detector, rank of diaObjectId) -- their own id space.
    v3 = forced[forced["visit"] == 3]
    assert v3["diaForcedSourceId"].tolist() == pack_source_ids(3, 0, np.arange(3)).tolist()
    truth_diff = {int(pack_source_ids(1, 0, k)): s.flux for k, s in enumerate(stars)}
    expected = forced["diaObjectId"].map(truth_diff).to_numpy()
    pull = (forced["psfFlux"] - expected) / forced["psfFluxErr"]
    assert np.all(np.abs(pull) < 5)
    assert forced["psfFluxErr"].to_numpy() == pytest.approx(
        2 * np.sqrt(np.pi) * 3.0 / 2.3548 * NOISE, rel=0.05
    )
    science_pull = (forced["scienceFlux"] - (expected + 1000.0)) / forced["scienceFluxErr"]
    assert np.all(np.abs(science_pull) < 5)
    assert result.summary()["n_dia_forced_sources"] == 3


def test_objects_leave_forced_photometry_after_history_days(apdb_url):
    task = AssociationTask(AssociationConfig(apdb_url=apdb_url, history_days=30.0))
    stars = three_stars()
    run_visit(task, 1, stars, mjd=60000.0)
    # 20 days later only star 0 is detected; all three are forced-photometered.
    assert run_visit(task, 2, stars[:1], mjd=60020.0).summary()["n_dia_forced_sources"] == 3
    # 40 days after their last detection stars 1 and 2 are no longer measured.
    assert run_visit(task, 3, stars[:1], mjd=60040.0).summary()["n_dia_forced_sources"] == 1


def test_default_apdb_is_the_repository_sqlite_file(tmp_path):
    task = AssociationTask()
    sources, diff, calexp = make_ccd(1, three_stars())
    with pytest.raises(ConfigError, match="apdb_url"):
        task.run(sources, diff, calexp, data_id={"visit": 1, "detector": 0})
    result = task.run(
        sources, diff, calexp, data_id={"visit": 1, "detector": 0}, repo_url=str(tmp_path)
    )
    assert result.apdb_url == f"sqlite:///{tmp_path}/apdb/apdb.sqlite3"
    assert (tmp_path / "apdb" / "apdb.sqlite3").exists()


@pytest.mark.parametrize("field,value", [("match_radius_arcsec", 0.0), ("history_days", -1.0)])
def test_config_is_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        AssociationConfig().updated(**{field: str(value)})


def test_visit_without_dia_sources_still_measures_known_objects(task, apdb_url):
    stars = three_stars()
    run_visit(task, 1, stars)
    sources, diff, calexp = make_ccd(2, stars)
    result = task.run(sources.iloc[:0], diff, calexp, data_id={"visit": 2, "detector": 0})
    assert result.summary()["n_dia_sources"] == 0
    assert result.summary()["n_dia_forced_sources"] == 3
    apdb = Apdb(apdb_url)
    assert apdb.count("DiaSource") == 3 and apdb.count("DiaForcedSource") == 6
    assert apdb.dump("DiaObject")["validityStartMjdTai"].tolist() == [60002.0] * 3

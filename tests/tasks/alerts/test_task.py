"""PackageAlertsTask: one valid alert per DiaSource, with history, SSO records and cutouts."""

from __future__ import annotations

import io
import logging

import fastavro
import numpy as np
import pandas as pd
import pytest
from astropy.nddata import CCDData
from fastavro.validation import validate
from lsst.alert.packet import Schema, get_latest_schema_version

from apflow.errors import ConfigError, TaskError
from apflow.io.alerts import load_alert_schema, read_alerts
from apflow.tasks.alerts import PackageAlertsConfig, PackageAlertsTask

MJD = 61000.25


def _run(scene, config=None, **overrides):
    inputs = {**scene.inputs, **overrides}
    return PackageAlertsTask(config).run(**inputs, data_id={"visit": 4242, "detector": 4})


def test_every_alert_validates_against_the_package_schema(packaged):
    package_schema = Schema.from_file()  # the package's own loader, latest version
    assert packaged.schema.version == get_latest_schema_version()
    for record in packaged.records:
        assert validate(record, package_schema.definition, raise_errors=False)


def test_container_holds_one_alert_per_dia_source_in_order(scene, packaged):
    reader = fastavro.reader(io.BytesIO(packaged.alerts))
    alerts = list(reader)
    assert reader.writer_schema["name"] == packaged.schema.name
    expected = scene.inputs["dia_sources"]["diaSourceId"].tolist()
    assert [a["diaSourceId"] for a in alerts] == expected
    assert [a["diaSource"]["diaSourceId"] for a in alerts] == expected
    assert packaged.summary()["n_alerts"] == len(expected) == 26


def test_history_is_the_objects_last_12_months_without_this_source(scene, packaged):
    history = scene.inputs["dia_source_history"]
    for alert in packaged.records:
        if alert["diaObject"] is None:
            continue
        obj = alert["diaObject"]["diaObjectId"]
        assert alert["diaSource"]["diaObjectId"] == obj
        prv = alert["prvDiaSources"]
        times = [p["midpointMjdTai"] for p in prv]
        # 4 earlier detections at 499, 333, 168 and 3 days: the first is older than a year
        assert len(prv) == 3 and times == sorted(times)
        assert all(MJD - 365.25 <= t <= MJD for t in times)
        assert all(p["diaObjectId"] == obj for p in prv)
        assert alert["diaSourceId"] not in {p["diaSourceId"] for p in prv}
        assert len(history[history["diaObjectId"] == obj]) == 4
        forced = alert["prvDiaForcedSources"]
        assert len(forced) == 3 and all(f["diaObjectId"] == obj for f in forced)


def test_sso_alerts_carry_ss_source_and_orbit_and_no_dia_object(scene, packaged):
    sso = [a for a in packaged.records if a["ssSource"] is not None]
    assert len(sso) == int(scene.extra["is_sso"].sum()) > 0
    for alert in sso:
        assert alert["diaObject"] is None
        assert alert["prvDiaSources"] is None and alert["prvDiaForcedSources"] is None
        assert alert["ssSource"]["diaSourceId"] == alert["diaSourceId"]
        assert alert["ssSource"]["ssObjectId"] == alert["diaSource"]["ssObjectId"]
        orbit = alert["mpc_orbits"]
        assert orbit["designation"] == alert["ssSource"]["designation"]
        assert 1.5 <= orbit["q"] <= 3.5
        assert orbit["a"] is None and orbit["h"] is None  # not given: null, not invented
    assert all(a["mpc_orbits"] is None for a in packaged.records if a["ssSource"] is None)


def test_mpc_orbits_join_on_ss_object_id_when_given(scene):
    orbits = scene.inputs["mpc_orbits"].copy()
    ss = scene.inputs["ss_sources"]
    orbits["designation"] = [f"other {k}" for k in range(len(orbits))]  # break the name join
    orbits["ssObjectId"] = ss["ssObjectId"].to_numpy()
    result = _run(scene, mpc_orbits=orbits)
    sso = [a for a in result.records if a["ssSource"] is not None]
    by_object = dict(zip(ss["ssObjectId"], orbits["designation"], strict=True))
    assert [a["mpc_orbits"]["designation"] for a in sso] == [
        by_object[a["ssSource"]["ssObjectId"]] for a in sso
    ]


def test_cutouts_are_ccddata_readable_with_partial_ones_flagged(packaged):
    status = packaged.cutout_status
    assert (status.iloc[:24, 1:] == "ok").all().all()
    assert (status.iloc[24:, 1:] == "partial").all().all()
    summary = packaged.summary()
    assert summary["n_partial"] == 6 and summary["n_cutouts_missing"] == 0
    alert = packaged.records[0]
    size = int(np.clip(alert["diaSource"]["bboxSize"], 30, 102))
    for name in ("cutoutDifference", "cutoutScience", "cutoutTemplate"):
        ccd = CCDData.read(io.BytesIO(alert[name]), format="fits")
        assert ccd.shape == (size, size) and ccd.unit == "nJy"
        assert ccd.meta["DIASRCID"] == alert["diaSourceId"]


def test_missing_template_gives_null_template_cutouts_not_lost_alerts(scene, caplog):
    with caplog.at_level(logging.WARNING):
        result = _run(scene, template=None)
    assert len(result.records) == 26
    assert all(a["cutoutTemplate"] is None for a in result.records)
    assert all(a["cutoutDifference"] is not None for a in result.records)
    assert result.summary()["n_cutouts_missing"] == 26
    assert "no template image" in caplog.text
    assert all(validate(a, result.schema.definition, raise_errors=False) for a in result.records)


def test_source_off_the_image_still_gets_an_alert(scene, caplog):
    sources = scene.inputs["dia_sources"].copy()
    wcs = scene.extra["wcs"]
    ra, dec = wcs.all_pix2world([-40.0], [100.0], 0)
    sources.loc[0, ["x", "y", "ra", "dec"]] = [-40.0, 100.0, float(ra[0]), float(dec[0])]
    with caplog.at_level(logging.WARNING):
        result = _run(scene, dia_sources=sources)
    first = result.records[0]
    assert first["cutoutDifference"] is None and first["cutoutScience"] is None
    assert (result.cutout_status.iloc[0, 1:] == "missing").all()
    assert len(result.records) == 26


def test_zero_dia_sources_give_a_valid_empty_container(scene):
    empty = scene.inputs["dia_sources"].iloc[:0]
    result = _run(
        scene,
        dia_sources=empty,
        dia_objects=pd.DataFrame(),
        dia_source_history=pd.DataFrame(),
        dia_forced_sources=pd.DataFrame(),
        ss_sources=None,
        mpc_orbits=None,
    )
    assert read_alerts(result.alerts) == []
    reader = fastavro.reader(io.BytesIO(result.alerts))
    assert reader.writer_schema["name"] == result.schema.name
    assert result.summary()["n_alerts"] == 0 and result.summary()["bytes"] == len(result.alerts)


def test_empty_catalogs_give_null_history_and_objects(scene, caplog):
    with caplog.at_level(logging.WARNING):
        result = _run(
            scene,
            dia_objects=pd.DataFrame(),
            dia_source_history=pd.DataFrame(),
            dia_forced_sources=pd.DataFrame(),
            ss_sources=pd.DataFrame(),
        )
    assert len(result.records) == 26
    assert all(a["diaObject"] is None and a["prvDiaSources"] is None for a in result.records)
    n_objects = int((~scene.extra["is_sso"]).sum())
    assert result.n_missing_dia_objects == n_objects
    assert "is not in dia_objects" in caplog.text


def test_required_dia_source_value_missing_is_an_error_naming_the_field(scene):
    sources = scene.inputs["dia_sources"].astype({"bboxSize": "Int32"})
    sources.loc[3, "bboxSize"] = None
    with pytest.raises(TaskError, match=r"visit=4242.*diaSource\.bboxSize"):
        _run(scene, dia_sources=sources)


def test_bad_optional_rows_are_left_out_with_a_warning(scene, caplog):
    objects = scene.inputs["dia_objects"].astype({"nDiaSources": "Int32"})
    objects.loc[0, "nDiaSources"] = None
    with caplog.at_level(logging.WARNING):
        result = _run(scene, dia_objects=objects)
    assert result.n_dropped_rows == 1 and result.n_missing_dia_objects == 1
    assert "nDiaSources" in caplog.text
    assert len(result.records) == 26


def test_schema_version_is_configurable(scene):
    config = PackageAlertsConfig(schema_version="11.0")
    result = _run(scene, config, dia_sources=scene.inputs["dia_sources"].iloc[:3])
    assert result.schema.schema_id == 1100
    reader = fastavro.reader(io.BytesIO(result.alerts))
    assert reader.writer_schema["name"] == "lsst.v11_0.alert"
    v11_0 = load_alert_schema("11.0").definition
    assert all(validate(a, v11_0, raise_errors=False) for a in list(reader))


def test_invalid_config_is_rejected():
    with pytest.raises(ConfigError, match="min_cutout_size"):
        PackageAlertsTask(PackageAlertsConfig(min_cutout_size=200))
    with pytest.raises(ConfigError, match="no alert schema 2.0"):
        PackageAlertsTask(PackageAlertsConfig(schema_version="2.0"))
    with pytest.raises(ConfigError, match="lsst.v7_4.alert has fields"):
        PackageAlertsTask(PackageAlertsConfig(schema_version="7.4"))


def test_astropy_writer_gives_the_same_alerts(scene):
    sources = scene.inputs["dia_sources"].iloc[:2]
    ours = _run(scene, dia_sources=sources).records
    rubin = _run(scene, PackageAlertsConfig(cutout_writer="astropy"), dia_sources=sources).records
    for a, b in zip(ours, rubin, strict=True):
        assert a["diaSource"] == b["diaSource"]
        da = CCDData.read(io.BytesIO(a["cutoutScience"]), format="fits")
        db = CCDData.read(io.BytesIO(b["cutoutScience"]), format="fits")
        np.testing.assert_array_equal(da.data, db.data)


def test_history_comes_out_time_ordered_from_shuffled_input(scene, packaged):
    history = scene.inputs["dia_source_history"].sample(frac=1.0, random_state=1)
    forced = scene.inputs["dia_forced_sources"].sample(frac=1.0, random_state=2)
    result = _run(scene, dia_source_history=history, dia_forced_sources=forced)
    for shuffled, reference in zip(result.records, packaged.records, strict=True):
        assert shuffled["prvDiaSources"] == reference["prvDiaSources"]
        assert shuffled["prvDiaForcedSources"] == reference["prvDiaForcedSources"]

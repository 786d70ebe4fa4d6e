"""SsoAssociationTask end to end on synthetic CCDs with known movers, unknown movers and
static transients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from apflow.apdb.schema import column_names, empty_frame
from apflow.errors import ConfigError, TaskError
from apflow.tasks.sso import SsoAssociationConfig, SsoAssociationTask, unit_vectors
from tests.tasks.sso.sso_data import (
    make_dia_source,
    make_diff_image,
    make_ephemeris,
    offset_sky,
    random_offsets,
    sky_at_pixels,
)

DATA_ID = {"visit": 7, "detector": 4}


def _scene(seed: int = 3):
    """A 4k x 4k CCD with 2000 detected known movers and distractors.

    Known movers (>= 3" apart, so that no two are blended): DiaSource at the true position
    + 30 mas centroid noise per axis; ephemeris at the true position + a Gaussian prediction
    error whose radial RMS is ``positionErrArcsec`` (drawn in 0.1-0.5"). Distractors: 100
    undetected known movers each with an unknown mover's DiaSource 1.2-2" from its ephemeris;
    500 static transients 2.5-5" from movers; 1300 unknown movers and static transients
    anywhere. Distractors are kept >= 2.5" from every mover's true and predicted position
    (except the planted 1.2-2" ones), so a wrong association is an algorithm error.
    """
    rng = np.random.default_rng(seed)
    diff = make_diff_image()
    n_known, n_undetected = 2000, 100
    x, y = rng.uniform(5, 4090, (2, 3 * (n_known + n_undetected)))
    true_ra, true_dec = sky_at_pixels(diff, x, y)
    isolated = _min_separation(true_ra, true_dec, true_ra, true_dec, skip_self=True) >= 3.0
    true_ra = true_ra[isolated][: n_known + n_undetected]
    true_dec = true_dec[isolated][: n_known + n_undetected]
    err = rng.uniform(0.1, 0.5, n_known + n_undetected)
    eph_ra, eph_dec = offset_sky(
        true_ra, true_dec, *(rng.normal(0, 1, (2, err.size)) * err / np.sqrt(2))
    )
    eph = make_ephemeris(eph_ra, eph_dec, position_err=err, rng=rng)

    known_ra, known_dec = offset_sky(
        true_ra[:n_known], true_dec[:n_known], *rng.normal(0, 0.03, (2, n_known))
    )
    lost_ra, lost_dec = offset_sky(
        eph_ra[n_known:], eph_dec[n_known:], *random_offsets(rng, n_undetected, 1.2, 2.0)
    )
    near_ra, near_dec = offset_sky(true_ra[:500], true_dec[:500], *random_offsets(rng, 500, 2.5, 5))
    field_ra, field_dec = sky_at_pixels(diff, *rng.uniform(0, 4095, (2, 1300)))
    movers_ra = np.concatenate([true_ra, eph_ra])
    movers_dec = np.concatenate([true_dec, eph_dec])
    detected_ra = np.concatenate([true_ra[:n_known], eph_ra[:n_known]])
    detected_dec = np.concatenate([true_dec[:n_known], eph_dec[:n_known]])
    ra, dec = [known_ra], [known_dec]
    for d_ra, d_dec, avoid_ra, avoid_dec in (
        (lost_ra, lost_dec, detected_ra, detected_dec),
        (near_ra, near_dec, movers_ra, movers_dec),
        (field_ra, field_dec, movers_ra, movers_dec),
    ):
        far = _min_separation(d_ra, d_dec, avoid_ra, avoid_dec) >= 2.5
        ra.append(d_ra[far])
        dec.append(d_dec[far])
    ra, dec = np.concatenate(ra), np.concatenate(dec)
    # Shuffle so that row order carries no truth.
    order = rng.permutation(ra.size)
    truth_object = np.concatenate(
        [eph["ssObjectId"].to_numpy()[:n_known], np.full(ra.size - n_known, -1)]
    )[order]
    dia = make_dia_source(ra[order], dec[order])
    return diff, dia, eph, truth_object


def _min_separation(ra1, dec1, ra2, dec2, skip_self=False):
    """Distance (arcsec) from each position 1 to the nearest position 2 (other than itself)."""
    k = 2 if skip_self else 1
    chord, _ = cKDTree(unit_vectors(ra2, dec2)).query(unit_vectors(ra1, dec1), k=k)
    return np.degrees(chord if k == 1 else chord[:, 1]) * 3600.0


def test_associates_at_least_99_percent_of_detected_known_movers_and_none_wrong():
    diff, dia, eph, truth_object = _scene()
    result = SsoAssociationTask().run(dia_source=dia, ss_ephemeris=eph, diff_image=diff)
    ss = result.ss_source
    row_of = pd.Series(np.arange(len(dia)), index=dia["diaSourceId"])
    claimed = truth_object[row_of[ss["diaSourceId"]].to_numpy()]
    n_detected_known = int((truth_object >= 0).sum())
    n_right = int((claimed == ss["ssObjectId"].to_numpy()).sum())
    assert n_right / n_detected_known >= 0.99, (n_right, n_detected_known)
    assert n_right == len(ss)  # none wrong: no distractor, no swapped objects
    summary = result.summary()
    assert summary["n_known_in_footprint"] == len(eph)
    assert summary["n_associated"] == len(ss)
    assert summary["n_dia_sources"] == len(dia)
    assert summary["n_unassociated_sources"] == len(dia) - len(ss)
    assert len(result.unassociated_ephemerides) == len(eph) - len(ss)
    assert (ss["ephOffset"] <= 1.0).all()


def test_unknown_mover_is_not_associated_with_an_ephemeris_1p5_arcsec_away():
    diff = make_diff_image((512, 512))
    ra, dec = sky_at_pixels(diff, np.array([200.0]), np.array([300.0]))
    eph = make_ephemeris(ra, dec, position_err=0.4)
    src_ra, src_dec = offset_sky(ra, dec, [1.2], [0.9])  # 1.5" away
    result = SsoAssociationTask().run(make_dia_source(src_ra, src_dec), eph, diff, DATA_ID)
    assert result.ss_source.empty
    assert result.summary() == {
        "n_known_in_footprint": 1,
        "n_associated": 0,
        "n_unassociated_sources": 1,
        "n_dia_sources": 1,
    }
    assert result.unassociated_ephemerides["ssObjectId"].tolist() == eph["ssObjectId"].tolist()


def test_two_sources_near_one_object_only_the_nearer_is_associated():
    diff = make_diff_image((512, 512))
    ra, dec = sky_at_pixels(diff, np.array([250.0]), np.array([250.0]))
    eph = make_ephemeris(ra, dec)
    src_ra, src_dec = offset_sky(np.repeat(ra, 2), np.repeat(dec, 2), [0.6, 0.0], [0.0, -0.3])
    dia = make_dia_source(src_ra, src_dec)
    ss = SsoAssociationTask().run(dia, eph, diff).ss_source
    assert ss["diaSourceId"].tolist() == [dia["diaSourceId"].iloc[1]]
    assert ss["ephOffset"].iloc[0] == pytest.approx(0.3, abs=1e-6)


def test_negative_and_dipole_sources_are_not_associated():
    diff = make_diff_image((512, 512))
    ra, dec = sky_at_pixels(diff, np.array([100.0, 300.0, 400.0]), np.array([100.0, 200.0, 50.0]))
    eph = make_ephemeris(ra, dec)
    dia = make_dia_source(
        ra,
        dec,
        isNegative=pd.array([True, False, None], dtype="boolean"),
        isDipole=pd.array([False, True, None], dtype="boolean"),
    )
    ss = SsoAssociationTask().run(dia, eph, diff).ss_source
    assert ss["diaSourceId"].tolist() == [dia["diaSourceId"].iloc[2]]
    assert ss["ssObjectId"].tolist() == [eph["ssObjectId"].iloc[2]]


def test_ephemerides_outside_footprint_plus_margin_are_ignored():
    diff = make_diff_image((512, 512))
    # positionErrArcsec up to 2.1" at 0.2"/px: margin ceil(10.5) = 11 px.
    x = np.array([-0.5 - 11 + 0.2, -0.5 - 11 - 0.2, 255.0, 600.0])
    y = np.array([200.0, 300.0, 255.0, 255.0])
    ra, dec = sky_at_pixels(diff, x, y)
    eph = make_ephemeris(ra, dec, position_err=np.array([0.3, 0.3, 2.1, 0.3]))
    # A DiaSource at every prediction (as if an off-chip source had been measured): only the
    # in-footprint ones may be associated.
    result = SsoAssociationTask().run(make_dia_source(ra, dec), eph, diff)
    assert result.margin_px == 11
    assert result.summary()["n_known_in_footprint"] == 2
    assert sorted(result.ss_source["ssObjectId"]) == sorted(eph["ssObjectId"].iloc[[0, 2]])

    capped = SsoAssociationTask(SsoAssociationConfig(max_pixel_margin=5)).run(
        make_dia_source(ra, dec), eph, diff
    )
    assert capped.margin_px == 5
    assert capped.summary()["n_known_in_footprint"] == 1


@pytest.mark.parametrize("ephemeris", [None, "empty"])
def test_no_ephemeris_gives_an_empty_ss_source_with_the_schema(ephemeris):
    diff = make_diff_image((256, 256))
    ra, dec = sky_at_pixels(diff, np.array([10.0]), np.array([10.0]))
    eph = make_ephemeris(ra, dec).iloc[:0] if ephemeris == "empty" else None
    result = SsoAssociationTask().run(make_dia_source(ra, dec), eph, diff, DATA_ID)
    pd.testing.assert_frame_equal(result.ss_source, empty_frame("SSSource"))
    assert result.summary() == {
        "n_known_in_footprint": 0,
        "n_associated": 0,
        "n_unassociated_sources": 1,
        "n_dia_sources": 1,
    }


def test_no_dia_sources_gives_an_empty_ss_source_and_all_ephemerides_unassociated():
    diff = make_diff_image((256, 256))
    ra, dec = sky_at_pixels(diff, np.array([10.0, 50.0]), np.array([10.0, 60.0]))
    eph = make_ephemeris(ra, dec)
    result = SsoAssociationTask().run(make_dia_source([], []), eph, diff)
    pd.testing.assert_frame_equal(result.ss_source, empty_frame("SSSource"))
    assert len(result.unassociated_ephemerides) == 2


def test_ss_source_columns_match_hand_computations():
    diff = make_diff_image((512, 512), ra=359.9, dec=60.0, rotation_deg=0.0, sip=False)
    ra, dec = sky_at_pixels(diff, np.array([100.0, 200.0]), np.array([100.0, 400.0]))
    eph = make_ephemeris(ra, dec, rate_ra=np.array([0.3, 0.0]), rate_dec=np.array([0.4, 0.0]))
    # Observed minus predicted: 0.3" East, 0.2" South (exact on the sky for small offsets).
    src_ra, src_dec = offset_sky(ra, dec, [0.3, 0.3], [-0.2, -0.2])
    dia = make_dia_source(src_ra, src_dec)
    ss = SsoAssociationTask().run(dia, eph, diff).ss_source
    assert list(ss.columns) == column_names("SSSource")
    assert ss["diaSourceId"].tolist() == dia["diaSourceId"].tolist()
    assert ss["ssObjectId"].tolist() == eph["ssObjectId"].tolist()
    np.testing.assert_allclose(ss["ephOffsetRa"], 0.3, atol=1e-6)
    np.testing.assert_allclose(ss["ephOffsetDec"], -0.2, atol=1e-6)
    np.testing.assert_allclose(ss["ephOffset"], np.hypot(0.3, 0.2), atol=1e-6)
    # Unit rate (0.6, 0.8): along = 0.3*0.6 - 0.2*0.8; cross = -0.3*0.8 - 0.2*0.6.
    assert ss["ephRate"].iloc[0] == pytest.approx(0.5, rel=1e-6)
    assert ss["ephOffsetAlongTrack"].iloc[0] == pytest.approx(0.02, abs=1e-6)
    assert ss["ephOffsetCrossTrack"].iloc[0] == pytest.approx(-0.36, abs=1e-6)
    assert ss["ephRate"].iloc[1] == 0.0
    assert np.isnan(ss["ephOffsetAlongTrack"].iloc[1])
    assert np.isnan(ss["ephOffsetCrossTrack"].iloc[1])
    assert (ss["diaDistanceRank"] == 1).all()

    from astropy import units as u
    from astropy.coordinates import SkyCoord

    observed = SkyCoord(src_ra * u.deg, src_dec * u.deg)
    np.testing.assert_allclose(ss["galLon"], observed.galactic.l.deg, atol=1e-9)
    np.testing.assert_allclose(ss["galLat"], observed.galactic.b.deg, atol=1e-9)
    np.testing.assert_allclose(ss["eclLambda"], observed.barycentrictrueecliptic.lon.deg, atol=1e-9)
    np.testing.assert_allclose(ss["eclBeta"], observed.barycentrictrueecliptic.lat.deg, atol=1e-9)
    for frame in ("helio", "topo"):
        v = eph[[f"{frame}_vx", f"{frame}_vy", f"{frame}_vz"]].to_numpy()
        np.testing.assert_allclose(ss[f"{frame}_vtot"], np.linalg.norm(v, axis=1), rtol=1e-6)
    for name in ("ephRa", "ephDec", "ephVmag", "phaseAngle", "elongation", "topoRange",
                 "helioRange", "topoRangeRate", "helioRangeRate", "helio_x", "topo_vz"):  # fmt: skip
        np.testing.assert_allclose(ss[name], eph[name], rtol=1e-6, err_msg=name)
    assert ss["designation"].tolist() == eph["designation"].tolist()


def test_offsets_wrap_across_ra_zero():
    diff = make_diff_image((512, 512), ra=0.0, dec=0.0, rotation_deg=0.0, sip=False)
    eph = make_ephemeris(np.array([359.99995]), np.array([0.0]))
    dia = make_dia_source(np.array([0.00005]), np.array([0.0]))
    ss = SsoAssociationTask().run(dia, eph, diff).ss_source
    assert ss["ephOffsetRa"].iloc[0] == pytest.approx(0.36, abs=1e-6)


def test_columns_missing_from_the_ephemeris_are_nan():
    diff = make_diff_image((256, 256))
    ra, dec = sky_at_pixels(diff, np.array([100.0]), np.array([100.0]))
    eph = make_ephemeris(ra, dec).drop(columns=["helio_vx", "elongation", "designation"])
    ss = SsoAssociationTask().run(make_dia_source(ra, dec), eph, diff).ss_source
    assert len(ss) == 1
    for name in ("helio_vx", "helio_vtot", "elongation"):
        assert np.isnan(ss[name].iloc[0]), name
    assert ss["designation"].iloc[0] is None
    assert np.isfinite(ss["topo_vtot"].iloc[0])


def test_output_is_deterministic_and_independent_of_ephemeris_order():
    diff, dia, eph, _ = _scene(seed=8)
    task = SsoAssociationTask()
    first = task.run(dia, eph, diff).ss_source
    pd.testing.assert_frame_equal(first, task.run(dia, eph, diff).ss_source)
    shuffled = eph.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, task.run(dia, shuffled, diff).ss_source)


def test_missing_columns_and_missing_wcs_are_task_errors_naming_the_data_id():
    diff = make_diff_image((256, 256))
    ra, dec = sky_at_pixels(diff, np.array([10.0]), np.array([10.0]))
    eph = make_ephemeris(ra, dec)
    with pytest.raises(TaskError, match=r"detector=4, visit=7.*ss_ephemeris lacks.*ephDec"):
        SsoAssociationTask().run(
            make_dia_source(ra, dec), eph.drop(columns="ephDec"), diff, DATA_ID
        )
    with pytest.raises(TaskError, match="dia_source lacks"):
        SsoAssociationTask().run(make_dia_source(ra, dec).drop(columns="ra"), eph, diff, DATA_ID)
    diff.wcs = None
    with pytest.raises(TaskError, match="WCS"):
        SsoAssociationTask().run(make_dia_source(ra, dec), eph, diff, DATA_ID)


@pytest.mark.parametrize(
    "overrides",
    [
        {"match_radius_arcsec": 0.0},
        {"match_radius_arcsec": float("nan")},
        {"max_pixel_margin": -1},
    ],  # fmt: skip
)
def test_invalid_config_is_rejected(overrides):
    with pytest.raises(ConfigError):
        SsoAssociationConfig(**overrides).validate()


def test_config_from_command_line_strings():
    config = SsoAssociationConfig().updated(match_radius_arcsec="2.0", max_pixel_margin="50")
    assert config.match_radius_arcsec == 2.0 and config.max_pixel_margin == 50

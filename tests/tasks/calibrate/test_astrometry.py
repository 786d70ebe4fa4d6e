"""AstrometryTask: pattern match and TAN-SIP fit against synthetic truth."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import angular_separation
from astropy.wcs import WCS

from apflow.core import get_camera
from apflow.errors import AstrometryError, ConfigError
from apflow.tasks.calibrate.astrometry import (
    AstrometryConfig,
    AstrometryTask,
    find_pattern_transform,
    fit_tan_sip,
)
from tests.tasks.calibrate.astrom_data import AstrometryCase, make_case


@pytest.fixture(scope="module")
def mini_case() -> AstrometryCase:
    camera = get_camera("mini")
    return make_case(camera, camera[0], n_stars=300, seed=1)  # corner CCD of the 3x3 plane


# An e2v CCD (4096 x 4004) about 300 mm from the optical axis: ~11" of distortion.
_OUTER_LSSTCAM = min(
    (d for d in get_camera("lsstcam") if d.physical_type == "e2v"),
    key=lambda d: abs(np.hypot(*d.center_mm) - 300.0),
)


@pytest.fixture(scope="module")
def lsstcam_case() -> AstrometryCase:
    return make_case(get_camera("lsstcam"), _OUTER_LSSTCAM, n_stars=3000, seed=2)


@pytest.fixture(scope="module")
def mini_result(mini_case: AstrometryCase):
    case = mini_case
    return AstrometryTask().run(case.sources, case.ref_cat, case.initial_wcs, case.image_shape, "r")


def _errors_mas(truth: WCS, fitted: WCS, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sky distance (mas) between two WCSs on a 21x21 grid over the CCD, and at its 4 corners."""
    height, width = shape
    gx, gy = np.meshgrid(np.linspace(-0.5, width - 0.5, 21), np.linspace(-0.5, height - 0.5, 21))
    true_pos = np.radians(truth.all_pix2world(gx.ravel(), gy.ravel(), 0))
    fit_pos = np.radians(fitted.all_pix2world(gx.ravel(), gy.ravel(), 0))
    error = np.degrees(angular_separation(*true_pos, *fit_pos)).reshape(gx.shape) * 3.6e6
    return error, error[[0, 0, -1, -1], [0, -1, 0, -1]]


def test_fit_matches_truth_on_mini_corner_ccd(mini_case, mini_result):
    grid, corners = _errors_mas(mini_case.true_wcs, mini_result.wcs, mini_case.image_shape)
    assert np.sqrt(np.mean(grid**2)) < 10.0
    assert corners.max() < 20.0
    assert mini_result.fit_order == 3


def test_fit_matches_truth_on_outer_lsstcam_ccd(lsstcam_case):
    case = lsstcam_case
    start = time.perf_counter()
    result = AstrometryTask().run(
        case.sources, case.ref_cat, case.initial_wcs, case.image_shape, "r"
    )
    elapsed = time.perf_counter() - start
    grid, corners = _errors_mas(case.true_wcs, result.wcs, case.image_shape)
    assert np.sqrt(np.mean(grid**2)) < 10.0
    assert corners.max() < 20.0
    # ~1 s budget on a quiet core; the bound is loose because test machines are shared.
    assert elapsed < 3.0


def test_camera_distortion_prior_fits_a_sparse_field():
    # ~30 detected stars: too few for a free cubic, plenty for an affine + quadratic correction
    # on top of the camera's known distortion.
    camera = get_camera("mini")
    case = make_case(camera, camera[2], n_stars=45, seed=4)
    result = AstrometryTask().run(
        case.sources,
        case.ref_cat,
        case.initial_wcs,
        case.image_shape,
        "r",
        camera=camera,
        detector=camera[2],
    )
    assert result.used_camera_distortion and result.fit_order <= 2
    grid, corners = _errors_mas(case.true_wcs, result.wcs, case.image_shape)
    assert np.sqrt(np.mean(grid**2)) < 10.0
    assert corners.max() < 20.0


def test_camera_distortion_prior_on_outer_lsstcam_ccd(lsstcam_case):
    case = lsstcam_case
    result = AstrometryTask().run(
        case.sources,
        case.ref_cat,
        case.initial_wcs,
        case.image_shape,
        "r",
        camera=get_camera("lsstcam"),
        detector=_OUTER_LSSTCAM,
    )
    grid, corners = _errors_mas(case.true_wcs, result.wcs, case.image_shape)
    assert np.sqrt(np.mean(grid**2)) < 10.0
    assert corners.max() < 20.0


def test_fit_works_across_ra_zero():
    camera = get_camera("mini")
    case = make_case(camera, camera[4], n_stars=300, seed=3, ra0=0.02, dec0=5.0)
    result = AstrometryTask().run(
        case.sources, case.ref_cat, case.initial_wcs, case.image_shape, "r"
    )
    grid, _ = _errors_mas(case.true_wcs, result.wcs, case.image_shape)
    assert np.sqrt(np.mean(grid**2)) < 10.0


def test_pattern_search_recovers_pointing_and_rotation(mini_case, mini_result):
    # The initial WCS is off by 30" and 0.5 deg; the pattern search must see both.
    assert abs(abs(mini_result.pattern.rotation_deg) - 0.5) < 0.1
    assert mini_result.initial_to_final_arcsec > 20.0


def test_fitted_wcs_inverts_and_survives_a_fits_header(mini_case, mini_result):
    wcs = mini_result.wcs
    assert wcs.sip is not None and wcs.sip.ap is not None
    assert mini_result.inverse_max_error_pix < 0.01
    x = np.array([0.0, 511.5, 1023.0, 100.0])
    y = np.array([0.0, 511.5, 1023.0, 900.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    # The AP/BP polynomial alone (what FITS readers without iteration use) lands within 0.01 px.
    # wcs_world2pix skips SIP: it gives CRPIX + CD^-1 (xi, eta), the focal-plane position.
    focal = np.column_stack(wcs.wcs_world2pix(ra, dec, 1)) - wcs.wcs.crpix
    px = wcs.sip_foc2pix(focal, 1) - 1.0
    assert np.max(np.abs(px - np.column_stack([x, y]))) < 0.01
    reread = WCS(wcs.to_header(relax=True))
    ra2, dec2 = reread.all_pix2world(x, y, 0)
    assert np.allclose(ra2, ra, atol=1e-9) and np.allclose(dec2, dec, atol=1e-9)


def test_matches_and_statistics(mini_case, mini_result):
    matches = mini_result.matches
    expected = {"source_id", "ref_id", "x", "y", "ra", "dec", "ref_ra", "ref_dec"}
    assert expected | {"separation_arcsec", "used"} <= set(matches.columns)
    assert mini_result.n_matches == int(matches["used"].sum()) > 150
    assert mini_result.offset_mean_arcsec < 0.05
    assert mini_result.offset_std_arcsec < 0.05
    # Every used match pairs a source with the reference star it was drawn from: the
    # synthetic catalog's detections are within 0.1" of their star.
    refs = mini_case.ref_cat.set_index("id")
    used = matches[matches["used"]]
    assert np.all(np.isin(used["ref_id"], refs.index))
    assert set(mini_result.summary()) >= {"astrom_offset_mean", "astrom_offset_std"}
    assert {"ra", "dec"} <= set(mini_result.sources.columns)


def test_flagged_sources_are_not_matched(mini_case):
    sources = mini_case.sources.copy()
    sources["flag_edge"] = sources["id"] % 4 == 0
    result = AstrometryTask().run(
        sources, mini_case.ref_cat, mini_case.initial_wcs, mini_case.image_shape, "r"
    )
    flagged = set(sources.loc[sources["flag_edge"], "id"])
    assert flagged.isdisjoint(result.matches["source_id"])


def test_reference_catalog_elsewhere_on_the_sky_raises(mini_case):
    elsewhere = mini_case.ref_cat.assign(ra=mini_case.ref_cat["ra"] + 5.0)
    with pytest.raises(AstrometryError, match="overlap"):
        AstrometryTask().run(
            mini_case.sources,
            elsewhere,
            mini_case.initial_wcs,
            mini_case.image_shape,
            "r",
            data_id={"visit": 1, "detector": 0},
        )


def test_too_few_sources_raises(mini_case):
    with pytest.raises(AstrometryError, match="usable sources"):
        AstrometryTask().run(
            mini_case.sources.iloc[:5], mini_case.ref_cat, mini_case.initial_wcs, (1024, 1024)
        )


def test_sources_unrelated_to_the_references_raise(mini_case):
    rng = np.random.default_rng(5)
    noise = mini_case.sources.assign(
        x=rng.uniform(0, 1023, len(mini_case.sources)),
        y=rng.uniform(0, 1023, len(mini_case.sources)),
    )
    with pytest.raises(AstrometryError):
        AstrometryTask().run(noise, mini_case.ref_cat, mini_case.initial_wcs, (1024, 1024), "r")


def test_find_pattern_transform_recovers_a_similarity():
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 2000, (300, 2))
    center = np.array([1000.0, 1000.0])
    angle = np.radians(0.4)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (refs - center) @ rotation.T * 1.004 + center + [120.0, -80.0]
    sources = np.concatenate([moved[:150], rng.uniform(0, 2000, (50, 2))])  # 25% spurious
    solution = find_pattern_transform(sources, refs, tuple(center), 400.0, 1.0, 0.01, bin_pix=10.0)
    assert solution.rotation_deg == pytest.approx(0.4, abs=0.01)
    assert solution.scale == pytest.approx(1.004, abs=1e-4)
    assert solution.offset_pix == pytest.approx((120.0, -80.0), abs=0.2)
    assert np.allclose(solution.apply(refs[:150]), moved[:150], atol=0.2)


def test_fit_tan_sip_is_exact_without_noise(lsstcam_case):
    case = lsstcam_case
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, case.image_shape[1] - 0.5, 200)
    y = rng.uniform(-0.5, case.image_shape[0] - 0.5, 200)
    ra, dec = case.true_wcs.all_pix2world(x, y, 0)
    fit = fit_tan_sip(x, y, ra, dec, case.image_shape, order=3)
    grid, _ = _errors_mas(case.true_wcs, fit.wcs, case.image_shape)
    # Cubic SIP about the CCD centre describes cubic distortion about a distant axis exactly;
    # what is left is the TAN re-projection about a new tangent point (micro-arcsec).
    assert grid.max() < 0.05


def test_config_rejects_too_small_minimum():
    with pytest.raises(ConfigError):
        AstrometryConfig(min_matches=3).validate()
    assert AstrometryConfig().updated(fit_order="2").fit_order == 2


def test_missing_brightness_and_error_columns_still_fit(mini_case):
    bare = pd.DataFrame({"x": mini_case.sources["x"], "y": mini_case.sources["y"]})
    result = AstrometryTask().run(
        bare, mini_case.ref_cat, mini_case.initial_wcs, mini_case.image_shape
    )
    grid, _ = _errors_mas(mini_case.true_wcs, result.wcs, mini_case.image_shape)
    # Unweighted, the faint stars' 0.2 px centroids count fully: looser than the weighted fit.
    assert np.sqrt(np.mean(grid**2)) < 20.0


def test_mean_offset_above_the_limit_raises(mini_case):
    # The synthetic centroids scatter by ~20 mas: a 1 mas limit must fail, naming the data id.
    config = AstrometryConfig(max_mean_offset_arcsec=0.001)
    with pytest.raises(AstrometryError, match=r"detector=0.*mean offset"):
        AstrometryTask(config).run(
            mini_case.sources,
            mini_case.ref_cat,
            mini_case.initial_wcs,
            mini_case.image_shape,
            "r",
            data_id={"visit": 1, "detector": 0},
        )

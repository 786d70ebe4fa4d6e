"""Measurement: moments, centroids, aperture and PSF fluxes with honest errors, pixel flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.core import Exposure, GaussianPsf, MaskPlanes, MoffatPsf
from apflow.tasks.calibrate import MeasurementConfig, MeasureStarsTask, cut_stamps
from apflow.tasks.calibrate.measurement import MEASUREMENT_COLUMNS
from tests.tasks.calibrate.conftest import clear_of_brighter, expected_snr, match_to_truth


@pytest.fixture(scope="module")
def matched(star_field, characterised):
    """Measured stars (after the PSF, before the aperture correction) matched to the truth."""
    stars = characterised.psf_measurement.stars
    index, _ = match_to_truth(stars["x"], stars["y"], star_field.truth, radius=2.0)
    ok = index >= 0
    measured = stars[ok].reset_index(drop=True)
    truth = star_field.truth.iloc[index[ok]].reset_index(drop=True)
    snr = pd.Series(expected_snr(star_field)[index[ok]])
    # No other star within 20 px (any flux would enter the 12 px aperture) nor a saturated one
    # within 100 px.
    clean = (
        truth["isolated"].to_numpy()
        & clear_of_brighter(star_field.truth, radius=1.0, saturated_radius=100.0)[index[ok]]
        & ~measured["flag_blended"]
        & ~measured[["flag_saturated", "flag_bad", "flag_edge", "flag_psf_flux_failed"]].any(axis=1)
    )
    return measured, truth, snr, clean


def test_catalog_keeps_input_columns_and_adds_measurements(characterised):
    stars = characterised.measurement.stars
    for name in MEASUREMENT_COLUMNS:
        assert name in stars
    assert "footprint_id" in stars and "peak_significance" in stars


def test_adaptive_moments_of_an_elliptical_gaussian():
    psf = GaussianPsf(fwhm=4.0, e1=0.15, e2=-0.1)
    image = 1e5 * psf.compute_image(30.3, 29.8, 61)  # stamp centre pixel (30, 30)
    exposure = Exposure(image=image, variance=np.ones_like(image))
    sources = pd.DataFrame({"x": [30.0], "y": [30.0]})
    star = MeasureStarsTask().run(exposure, sources).stars.iloc[0]
    sigma_sq = (4.0 / 2.3548) ** 2
    e1, e2 = 0.15, -0.1
    norm = np.sqrt(1 - e1 * e1 - e2 * e2)
    # Continuous moments plus the pixel's 1/12 px^2 from the integration over each pixel.
    assert star["ixx"] == pytest.approx(sigma_sq * (1 + e1) / norm + 1 / 12, rel=5e-3)
    assert star["iyy"] == pytest.approx(sigma_sq * (1 - e1) / norm + 1 / 12, rel=5e-3)
    assert star["ixy"] == pytest.approx(sigma_sq * e2 / norm, rel=5e-3)
    assert star["x"] == pytest.approx(30.3, abs=1e-4) and star["y"] == pytest.approx(29.8, abs=1e-4)


def test_centroids_are_unbiased_with_honest_errors(matched):
    measured, truth, snr, clean = matched
    for lo, hi in [(10, 50), (50, 5000)]:
        sel = clean & snr.between(lo, hi)
        assert sel.sum() > 100
        for axis in ("x", "y"):
            error = measured[axis] - truth[axis]
            pull = error / measured[f"{axis}_err"]
            assert abs(error[sel].mean()) < 4 * error[sel].std() / np.sqrt(sel.sum())
            assert pull[sel].std() == pytest.approx(1.0, abs=0.15)


def test_aperture_flux_measures_the_true_flux_in_12_px(matched):
    measured, truth, snr, clean = matched
    expected = truth["flux"] * truth["ee12"]
    bright = clean & (snr > 100)
    assert np.median(measured["ap_instflux"][bright] / expected[bright]) == pytest.approx(
        1.0, abs=2e-3
    )
    pull = (measured["ap_instflux"] - expected) / measured["ap_instflux_err"]
    sel = clean & snr.between(10, 100)
    assert pull[sel].std() == pytest.approx(1.0, abs=0.1)
    assert abs(pull[sel].mean()) < 0.15


def test_psf_flux_pulls_of_faint_stars_have_unit_width(matched):
    measured, truth, snr, clean = matched
    sel = clean & snr.between(10, 50)
    assert sel.sum() > 200
    # On the PSF model's normalisation the flux is the true flux times the model's stamp
    # fraction; the aperture correction (tested in test_apcorr) removes that scale.
    scale = np.median((measured["psf_instflux"] / truth["flux"])[clean & (snr > 100)])
    pull = (measured["psf_instflux"] - scale * truth["flux"]) / measured["psf_instflux_err"]
    assert pull[sel].std() == pytest.approx(1.0, abs=0.1)
    assert abs(pull[sel].mean()) < 0.2
    assert np.median(measured["psf_chi2"][sel]) == pytest.approx(1.0, abs=0.05)


def test_saturated_stars_are_flagged(star_field, characterised):
    stars = characterised.measurement.stars
    for _, star in star_field.truth[star_field.truth["saturated"]].iterrows():
        near = np.hypot(stars["x"] - star.x, stars["y"] - star.y) < 3
        assert near.sum() == 1
        assert stars.loc[near, "flag_saturated_center"].all()


def test_stars_on_the_bad_column_are_flagged(star_field, characterised):
    stars = characterised.measurement.stars
    crossing = np.abs(stars["x"] - star_field.bad_column) < 10
    assert crossing.any()
    assert stars.loc[crossing, "flag_bad"].all()
    far = np.abs(stars["x"] - star_field.bad_column) > 14
    assert not stars.loc[far, "flag_bad"].any()


def _stars_beside_a_bad_column(psf, offsets, flux, rng):
    """One star per offset (px, star minus column), 60 px apart along a dead column at x = 50."""
    height, width, column = 60 * len(offsets) + 40, 101, 50
    x = column + np.asarray(offsets, float) + rng.uniform(-0.05, 0.05, len(offsets))
    y = 50.0 + 60.0 * np.arange(len(offsets)) + rng.uniform(-0.5, 0.5, len(offsets))
    sky = 500.0
    model = np.full((height, width), sky)
    for xi, yi in zip(x, y, strict=True):
        cx, cy = round(xi), round(yi)
        model[cy - 20 : cy + 21, cx - 20 : cx + 21] += flux * psf.compute_image(xi, yi, 41)
    image = rng.poisson(model).astype(np.float64) - sky
    mask = np.zeros((height, width), np.int32)
    image[:, column] = 0.0
    mask[:, column] = int(MaskPlanes.BAD)
    exposure = Exposure(
        image=image.astype(np.float32), mask=mask, variance=model.astype(np.float32)
    )
    # start from the rounded position, as a detection peak would be
    sources = pd.DataFrame({"x": np.round(x), "y": np.round(y)})
    return exposure, sources, x, y


def test_centroid_beside_a_bad_column_is_unbiased():
    """Masked pixels are unknown, not zero: the centroid does not move away from them.

    Before the fix (masked pixels as zeros) these stars were centred 0.3-0.6 px away from the
    column; with the Gaussian model's prediction in their place the worst is ~0.035 px (the
    Moffat-Gaussian difference on the missing column), at S/N ~600 where the noise is 0.006 px.
    """
    psf = MoffatPsf(fwhm=3.5, beta=3.5, e1=0.02, e2=-0.01)
    offsets = [-2.5, -2.0, -1.5, -1.0, -0.6, 0.6, 1.0, 1.5, 2.0, 2.5]
    exposure, sources, x, y = _stars_beside_a_bad_column(
        psf, offsets, 2e5, np.random.default_rng(11)
    )
    stars = MeasureStarsTask().run(exposure, sources).stars
    assert not stars["flag_centroid_failed"].any()
    assert np.abs(stars["x"] - x).max() < 0.05
    assert np.abs(stars["y"] - y).max() < 0.05
    # the errors stay honest: the error bars grow with the lost pixels and cover the offsets
    assert (stars["x_err"] < 0.05).all()


def test_centroid_errors_beside_a_bad_column_are_honest():
    """Faint stars (S/N ~40) 1-3 px from the column: the quoted errors grow with the lost pixels.

    Quoting the errors of the known pixels alone gave x pulls of 1.2-1.4 (the fill moves with
    the estimate, so the masked pixels add nothing to the centroid's restoring force).
    """
    psf = MoffatPsf(fwhm=3.5, beta=3.5)
    offsets = np.tile([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], 50)
    exposure, sources, x, y = _stars_beside_a_bad_column(
        psf, offsets, 6000.0, np.random.default_rng(12)
    )
    stars = MeasureStarsTask().run(exposure, sources).stars
    assert not stars["flag_centroid_failed"].any()
    for axis, truth in (("x", x), ("y", y)):
        pulls = (stars[axis] - truth) / stars[f"{axis}_err"]
        assert pulls.std() == pytest.approx(1.0, abs=0.12), (axis, pulls.std())
        assert abs(pulls.mean()) < 0.2


def test_moments_of_a_gaussian_are_exact_when_its_core_is_masked():
    psf = GaussianPsf(fwhm=4.0, e1=0.1, e2=0.05)
    image = 1e5 * psf.compute_image(30.3, 29.8, 61)
    mask = np.zeros(image.shape, np.int32)
    mask[:, 31] = int(MaskPlanes.BAD)
    mask[28, 25:29] = int(MaskPlanes.NO_DATA)
    image[mask != 0] = 0.0
    exposure = Exposure(image=image, mask=mask, variance=np.ones_like(image))
    masked = MeasureStarsTask().run(exposure, pd.DataFrame({"x": [30.0], "y": [30.0]})).stars
    clean = Exposure(image=1e5 * psf.compute_image(30.3, 29.8, 61), variance=np.ones_like(image))
    whole = MeasureStarsTask().run(clean, pd.DataFrame({"x": [30.0], "y": [30.0]})).stars
    assert masked["x"][0] == pytest.approx(30.3, abs=2e-3)
    assert masked["y"][0] == pytest.approx(29.8, abs=2e-3)
    for moment in ("ixx", "iyy", "ixy"):
        assert masked[moment][0] == pytest.approx(whole[moment][0], rel=0.01, abs=2e-3)


def test_edge_and_truncation_flags():
    rng = np.random.default_rng(5)
    image = rng.normal(0.0, 1.0, (100, 100))
    mask = np.zeros((100, 100), np.int32)
    mask[:, :3] = int(MaskPlanes.EDGE)
    exposure = Exposure(image=image, mask=mask, variance=np.ones((100, 100)))
    sources = pd.DataFrame({"x": [50.0, 14.0, 95.0], "y": [50.0, 50.0, 50.0]})
    stars = MeasureStarsTask(MeasurementConfig(measure_moments=False)).run(exposure, sources).stars
    assert stars["flag_edge"].tolist() == [False, True, True]
    assert stars["flag_aperture_truncated"].tolist() == [False, False, True]


def test_without_psf_the_psf_columns_are_nan_and_flagged(characterised):
    stars = characterised.measurement.stars
    assert stars["psf_instflux"].isna().all() and stars["flag_psf_flux_failed"].all()


def test_any_psf_model_can_be_used_for_the_psf_flux(star_field, characterised):
    # The true VariablePsf has no vectorised renderer: the one-by-one path must agree.
    stars = characterised.measurement.stars.nlargest(30, "ap_instflux")
    stars = stars[~stars["flag_saturated"]]
    only_psf = MeasurementConfig(measure_moments=False, measure_aperture=False)
    exposure = characterised.final_background.exposure
    measured = MeasureStarsTask(only_psf).run(exposure, stars, psf=star_field.psf).stars
    index, _ = match_to_truth(measured["x"], measured["y"], star_field.truth)
    ratio = measured["psf_instflux"].to_numpy() / star_field.truth["flux"].to_numpy()[index]
    assert np.median(ratio) == pytest.approx(1.0, abs=3e-3)


def test_cut_stamps_pads_outside_the_image():
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    stamps, inside = cut_stamps(image, np.array([0, 2]), np.array([0, 2]), half=1, fill=-1)
    assert stamps[0].tolist() == [[-1, -1, -1], [-1, 0, 1], [-1, 5, 6]]
    assert np.array_equal(stamps[1], image[1:4, 1:4]) and inside[1].all()


def test_psf_flux_with_a_local_sky_ignores_a_residual_sky_offset():
    """A star on a sky 20 counts above the subtracted background (an unmodelled pattern)."""
    psf = GaussianPsf(fwhm=4.0)
    rng = np.random.default_rng(5)
    size, flux, offset = 101, 20_000.0, 20.0
    image = np.full((size, size), offset) + flux * np.pad(psf.compute_image(50, 50, 41), 30)
    variance = np.full((size, size), 1000.0) + image
    image = image + rng.normal(0.0, np.sqrt(variance))
    exposure = Exposure(
        image=image.astype(np.float32),
        mask=np.zeros((size, size), np.int32),
        variance=variance.astype(np.float32),
        psf=psf,
    )
    sources = pd.DataFrame({"x": [50.0], "y": [50.0]})
    only_psf = {"measure_moments": False, "measure_aperture": False, "psf_error_chi2_scale": False}
    plain = MeasureStarsTask(MeasurementConfig(**only_psf)).run(exposure, sources).stars
    local = MeasureStarsTask(MeasurementConfig(psf_fit_local_sky=True, **only_psf))
    local = local.run(exposure, sources).stars
    # without a sky term the offset adds ~n_eff x 20 counts (n_eff = 4 pi sigma^2 ~ 36 px)
    assert plain["psf_instflux"][0] - flux > 3 * plain["psf_instflux_err"][0]
    assert abs(local["psf_instflux"][0] - flux) < 3 * local["psf_instflux_err"][0]
    # the free sky costs a little precision, not much
    ratio = local["psf_instflux_err"][0] / plain["psf_instflux_err"][0]
    assert 1.0 < ratio < 1.15


def test_nearly_degenerate_weights_do_not_overflow():
    """An elongated object drives the adaptive weight towards a degenerate covariance; in
    float32 the exponent's terms then cancel badly and came out > 0 (exp overflowed, with a
    RuntimeWarning in every worker log). The weight of a positive-definite covariance is <= 1."""
    from apflow.tasks.calibrate.measurement import _gaussian_weights

    grid = np.arange(-20, 21, dtype=np.float64)
    # positive definite, correlation nearly -1, found by a search over nearly degenerate
    # weights: float32 rounding gave the exponent 2048 at one pixel
    weight = np.array([[31.607968146841365, 15.896873604781442, -22.415795197603668]])
    assert weight[0, 0] * weight[0, 1] - weight[0, 2] ** 2 > 0
    offset = np.array([[0.24146953, 0.35467963]])
    with np.errstate(over="raise", invalid="raise"):
        w, _, _ = _gaussian_weights(grid, offset, weight)
    assert np.isfinite(w).all() and w.max() <= 1.0 and w.min() >= 0.0

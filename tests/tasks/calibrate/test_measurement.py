"""Measurement: moments, centroids, aperture and PSF fluxes with honest errors, pixel flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.core import Exposure, GaussianPsf, MaskPlanes
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

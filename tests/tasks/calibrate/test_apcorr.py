"""Aperture correction: fit, application, serialisation; the calibrated PSF flux against truth.

Also the end-to-end accuracy and speed of the characterisation chain on a full 4k x 4k CCD
(slow).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from apflow.errors import TaskError
from apflow.tasks.calibrate import (
    ApertureCorrection,
    ApertureCorrectionConfig,
    apply_aperture_correction,
    measure_aperture_correction,
)
from tests.tasks.calibrate.conftest import (
    characterise,
    clear_of_brighter,
    expected_snr,
    match_to_truth,
    simulate_star_field,
)


def calibrated_flux_ratio(field, result) -> tuple[pd.Series, pd.Series, pd.DataFrame]:
    """Aperture-corrected PSF flux / (true flux x fraction of the PSF in 12 px) of clean stars."""
    stars = result.apcorr.stars
    index, _ = match_to_truth(stars["x"], stars["y"], field.truth, radius=2.0)
    ok = index >= 0
    stars = stars[ok].reset_index(drop=True)
    truth = field.truth.iloc[index[ok]].reset_index(drop=True)
    flags = ["flag_saturated", "flag_bad", "flag_edge", "flag_psf_flux_failed", "flag_blended"]
    clean = (
        truth["isolated"].to_numpy()
        & clear_of_brighter(field.truth, radius=1.0, saturated_radius=100.0)[index[ok]]
        & ~stars[flags].any(axis=1).to_numpy()
    )
    snr = pd.Series(expected_snr(field)[index[ok]])
    ratio = stars["psf_instflux"] / (truth["flux"] * truth["ee12"])
    return ratio[clean], snr[clean], stars[clean]


def synthetic_catalog(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Stars whose aperture/PSF ratio is 1.02 + 0.01 u - 0.005 v, with noise and 5% outliers."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 2047, n), rng.uniform(0, 4095, n)
    u, v = 2 * x / 2047 - 1, 2 * y / 4095 - 1
    psf = rng.uniform(1e4, 1e6, n)
    ap = psf * (1.02 + 0.01 * u - 0.005 * v) * (1 + rng.normal(0, 0.002, n))
    ap[: n // 20] *= 1.3  # blends
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "psf_instflux": psf,
            "psf_instflux_err": 0.001 * psf,
            "ap_instflux": ap,
            "ap_instflux_err": 0.002 * ap,
        }
    )


def test_fit_recovers_a_known_field_and_clips_outliers():
    catalog = synthetic_catalog()
    apcorr, used = measure_aperture_correction(catalog, 2048, 4096, ApertureCorrectionConfig())
    assert not used[:20].any() and used[20:].mean() > 0.97
    x = np.array([0.0, 2047.0, 1000.0])
    y = np.array([0.0, 4095.0, 2000.0])
    value, error = apcorr.evaluate(x, y)
    expected = 1.02 + 0.01 * (2 * x / 2047 - 1) - 0.005 * (2 * y / 4095 - 1)
    assert np.all(np.abs(value - expected) < 4 * error)
    assert np.all(error < 1e-3)


def test_correction_is_applied_with_its_error():
    catalog = synthetic_catalog()
    apcorr, _ = measure_aperture_correction(catalog, 2048, 4096, ApertureCorrectionConfig())
    corrected = apply_aperture_correction(catalog, apcorr)
    factor = corrected["psf_apcorr"]
    assert np.allclose(corrected["psf_instflux"], catalog["psf_instflux"] * factor)
    expected_err = np.hypot(
        catalog["psf_instflux_err"] * factor, catalog["psf_instflux"] * corrected["psf_apcorr_err"]
    )
    assert np.allclose(corrected["psf_instflux_err"], expected_err)
    with pytest.raises(TaskError, match="already"):
        apply_aperture_correction(corrected, apcorr)


def test_aperture_correction_round_trips_through_json():
    apcorr, _ = measure_aperture_correction(
        synthetic_catalog(), 2048, 4096, ApertureCorrectionConfig()
    )
    restored = ApertureCorrection.from_dict(json.loads(json.dumps(apcorr.to_dict())))
    x, y = np.array([5.0, 1500.0]), np.array([4000.0, 20.0])
    assert np.array_equal(restored.evaluate(x, y)[0], apcorr.evaluate(x, y)[0])
    assert np.array_equal(restored.evaluate(x, y)[1], apcorr.evaluate(x, y)[1])


def test_too_few_stars_raise_task_error():
    with pytest.raises(TaskError, match="usable stars"):
        measure_aperture_correction(synthetic_catalog(n=1), 2048, 4096, ApertureCorrectionConfig())


def test_calibrated_psf_flux_of_bright_stars_is_unbiased(star_field, characterised):
    # After the correction psf_instflux measures the flux inside the 12 px aperture: compare
    # with the true flux times the fraction of the true PSF inside 12 px.
    ratio, snr, _ = calibrated_flux_ratio(star_field, characterised)
    bright = snr > 100
    assert bright.sum() > 50
    assert np.median(ratio[bright]) == pytest.approx(1.0, abs=0.005)
    assert np.mean(ratio[bright]) == pytest.approx(1.0, abs=0.005)


def test_calibrated_flux_pulls_of_faint_stars(star_field, characterised):
    ratio, snr, stars = calibrated_flux_ratio(star_field, characterised)
    sel = snr.between(10, 50)
    pull = (ratio - 1) * stars["psf_instflux"] / ratio / stars["psf_instflux_err"]
    assert pull[sel].std() == pytest.approx(1.0, abs=0.1)


def test_result_records_the_correction_in_the_exposure_metadata(characterised):
    result = characterised.apcorr
    assert result.exposure.metadata["aperture_correction"] == result.aperture_correction.to_dict()
    assert result.stars["calib_apcorr_used"].sum() == result.aperture_correction.n_stars
    json.dumps(result.summary())
    # The correction maps a PSF model normalised over a 29 px stamp onto the 12 px aperture.
    assert 0.98 < result.summary()["apcorr_center"] < 1.0


@pytest.mark.slow
def test_full_chain_on_a_4k_ccd_with_5000_stars_is_fast_and_accurate():
    field = simulate_star_field(4096, 4096, 5000, seed=11)
    result = characterise(field.exposure)
    print("CPU seconds per step:", {k: round(v, 2) for k, v in result.timings.items()})
    # A few seconds on one core of a laptop; generous here for shared CI machines.
    assert result.timings["total"] < 20.0
    ratio, snr, _ = calibrated_flux_ratio(field, result)
    assert np.median(ratio[snr > 100]) == pytest.approx(1.0, abs=0.005)
    psf = result.psf.psf
    for x in (0, 2048, 4095):
        for y in (0, 2048, 4095):
            assert psf.fwhm_at(x, y) == pytest.approx(field.psf.fwhm_at(x, y), rel=0.02)
    assert result.psf.reserved_chi2_dof == pytest.approx(1.0, abs=0.2)


def test_model_aperture_correction_is_the_models_light_inside_the_aperture():
    from apflow.core import MoffatPsf
    from apflow.tasks.calibrate.apcorr import model_aperture_correction

    psf = MoffatPsf(fwhm=4.0, beta=3.5)
    apcorr = model_aperture_correction(psf, 1024, 1024, 12.0, error=0.003)
    value, error = apcorr.evaluate([0.0, 511.5, 1023.0], [0.0, 511.5, 1023.0])
    # the stamp psf_flux fits: 5 FWHM each side; the 12 px circle holds 99.4% of its light
    stamp = psf.compute_kernel_image(0.0, 0.0, psf.default_size())
    yy, xx = np.mgrid[: stamp.shape[0], : stamp.shape[1]] - stamp.shape[0] // 2
    inside = stamp[np.hypot(xx, yy) < 11.5].sum()  # the pixels fully inside
    assert inside < value[1] < 1.0 and value[1] == pytest.approx(0.994, abs=0.002)
    assert np.allclose(value, value[1]) and np.allclose(error, 0.003)
    assert apcorr.n_stars == 0

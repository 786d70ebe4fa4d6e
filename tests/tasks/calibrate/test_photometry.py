"""PhotometryTask: zero point against synthetic reference stars, catalog calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.core import PhotoCalib, get_camera
from apflow.errors import PhotometryError
from apflow.tasks.calibrate.photometry import (
    PhotometryTask,
    calibrate_catalog,
    robust_zero_point,
)
from tests.tasks.calibrate.astrom_data import TRUE_ZERO_POINT, AstrometryCase, make_case


@pytest.fixture(scope="module")
def case() -> AstrometryCase:
    camera = get_camera("lsstcam")
    return make_case(camera, camera[40], n_stars=1500, seed=7)


def test_zero_point_matches_truth(case):
    result = PhotometryTask().run(case.sources, case.ref_cat, "r", wcs=case.true_wcs)
    assert result.zero_point == pytest.approx(TRUE_ZERO_POINT, abs=0.003)
    assert 0.0 < result.zero_point_err < 0.003
    assert result.n_used > 500
    assert result.photo_calib.zero_point == pytest.approx(result.zero_point, abs=1e-9)


def test_outliers_are_clipped(case):
    # A tenth of the stars 0.5 mag too bright (variables, blends): the zero point must not move.
    sources = case.sources.copy()
    bad = np.arange(len(sources)) % 10 == 0
    sources.loc[bad, "psf_instflux"] *= 10**0.2
    result = PhotometryTask().run(sources, case.ref_cat, "r", wcs=case.true_wcs)
    assert result.zero_point == pytest.approx(TRUE_ZERO_POINT, abs=0.003)
    clipped = set(sources.loc[bad, "id"])
    used_ids = set(result.matches.loc[result.matches["used"], "source_id"])
    assert not (clipped & used_ids)


def test_sky_positions_can_come_from_the_catalog(case):
    ra, dec = case.true_wcs.all_pix2world(case.sources["x"], case.sources["y"], 0)
    sources = case.sources.drop(columns=["x", "y"]).assign(ra=ra, dec=dec)
    result = PhotometryTask().run(sources, case.ref_cat, "r")
    assert result.zero_point == pytest.approx(TRUE_ZERO_POINT, abs=0.003)


def test_stars_are_calibrated_to_njy_and_ab_mag(case):
    result = PhotometryTask().run(case.sources, case.ref_cat, "r", wcs=case.true_wcs)
    stars = result.stars
    assert {"psf_flux_njy", "psf_flux_err_njy", "psf_mag", "psf_mag_err"} <= set(stars.columns)
    expected = stars["psf_instflux"] * result.photo_calib.calibration_mean
    assert np.allclose(stars["psf_flux_njy"], expected)
    bright = stars["psf_instflux"] > 0
    mag = result.zero_point - 2.5 * np.log10(stars.loc[bright, "psf_instflux"])
    assert np.allclose(stars.loc[bright, "psf_mag"], mag, atol=1e-9)


def test_too_few_matches_raise(case):
    with pytest.raises(PhotometryError, match="need 10"):
        PhotometryTask().run(case.sources.iloc[:8], case.ref_cat, "r", wcs=case.true_wcs)


def test_wrong_wcs_finds_no_stars(case):
    with pytest.raises(PhotometryError, match="matched"):
        PhotometryTask().run(case.sources, case.ref_cat, "r", wcs=case.initial_wcs)


def test_missing_band_raises(case):
    with pytest.raises(PhotometryError, match="g_flux"):
        PhotometryTask().run(case.sources, case.ref_cat, "g", wcs=case.true_wcs)


def test_robust_zero_point_weights_and_inflates_error():
    rng = np.random.default_rng(3)
    error = np.full(400, 0.01)
    delta = 28.0 + rng.normal(0.0, 0.03, 400)  # scatter 3x the quoted errors
    delta[:20] += 1.0
    zero_point, zero_point_err, used, scatter = robust_zero_point(delta, error)
    assert not used[:20].any()
    assert zero_point == pytest.approx(28.0, abs=0.006)
    # Formal error 0.01 / sqrt(380) = 0.0005; inflated by sqrt(chi2/dof) ~ 3.
    assert zero_point_err == pytest.approx(0.03 / np.sqrt(380), rel=0.2)
    assert scatter == pytest.approx(0.03, rel=0.2)


def test_calibrate_catalog_handles_negative_fluxes_and_missing_errors():
    catalog = pd.DataFrame({"ap_instflux": [100.0, -5.0], "psf_flux": [10.0, 20.0]})
    catalog["psf_flux_err"] = [1.0, 2.0]
    out = calibrate_catalog(catalog, PhotoCalib.from_zero_point(27.0, 0.01))
    assert np.isnan(out["ap_mag"][1])
    assert out["ap_mag"][0] == pytest.approx(27.0 - 5.0)
    assert "ap_flux_err_njy" not in out.columns
    assert out["psf_mag_err"][0] == pytest.approx(np.hypot(0.1 * 2.5 / np.log(10), 0.01))

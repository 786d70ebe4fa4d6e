"""CalibrateImageTask on the simulator's DEFAULT mini data, without sky frames.

The default sky is hard on a 1k x 1k CCD: ~10 stars bright enough for a PSF (r < 20.5 of a
40,000 deg^-2 field), a fixed sky pattern of 2% of the sky (scales of 60-300 px) that no sky
frame removed, a reference catalog with 1.5% flux errors and ~30 calibrators per CCD. A real
pipeline must still calibrate such a CCD; these tests hold it to that, with tolerances set by
what the data allow (the star-rich field of test_calibrate_image.py checks the accuracy
criteria of issue 5). Before the Moffat PSF model for few stars, 11 of 18 CCDs (2 visits x 9)
failed with PsfError.

Measured (seed 0, visits 1-2, all 9 detectors; the slow test), with the simulator's sky pattern
on 60-300 px scales (before it, on 40-250 px, in brackets): no failure; PSF FWHM max error
0.7-5.9% (6-20 PSF stars) [0.7-5.5%, 4-19]; residual sky after the 32 px background 0-2.2
counts rms [5-18]; zero point 10.6 mmag rms against truth, |dzp| / zp_err <= 2.3, rms 1.3
[17.6 mmag, <= 3.2]; WCS <= 7.6 mas rms, <= 16.7 mas at the corners [11.1, 22.6]; flux pulls
of clean matched stars (< 0.3% light of neighbours within 20 px) 1.08 (S/N 10-30) and 1.29
(S/N 30-100) [1.14 and 1.31] with the residual-sky error term, 1.11 and 1.31 without it. The
excess at S/N 30-100 is no longer the sky but the PSF model of 6-20 stars: a star's flux
error follows the model's FWHM error at its position (1.4% rms there; slope 0.8, correlation
0.4), and taking that term out leaves 1.12. Dividing out each CCD's true zero point instead
makes it 1.49: the fitted zero points absorb part of the model error.

With the PSF model's own error in the flux errors (``psf_model_error``,
:class:`~apflow.tasks.calibrate.psf.MoffatFluxError`) the pulls are 1.07 (S/N 10-30, 269
stars) and 1.08 (S/N 30-100, 206 stars), S/N being the quoted one as in
test_calibrate_image.py (binned by the photon-noise S/N instead: 1.06 and 1.12; S/N > 100,
32 stars: 1.20, was 1.35). The fit's parameter covariance alone gave 1.26 at S/N 30-100: it
predicts FWHM errors of 0.1-0.9%, where they are 0.4-2.3%, because the model of 6-10 stars
is a constant or a plane and the true FWHM is quadratic over the CCD. The fit stars'
own FWHMs measure that unmodelled part (``fwhm_scatter``: 0 on 9 of 18 CCDs, 0.3-2.3% on
the others).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import angular_separation

from apflow.sim import SkyModel, render_exposure, wcs_from_header
from apflow.tasks.calibrate import CalibrateImageConfig, CalibrateImageTask
from tests.tasks.calibrate.test_calibrate_image import matched_truth

# detectors 2 and 5 of visit 1 raised PsfError (8-9 PSF stars) before the Moffat model
DETECTORS = (2, 5)


def calibrate(sky, visit, det):
    sim = render_exposure(sky, visit, det)
    task = CalibrateImageTask(CalibrateImageConfig(raise_on_failure=False))
    result = task.run(
        sim.exposure,
        sky.reference_catalog(),
        camera=sky.camera,
        detector=sky.camera[det],
        data_id={"visit": visit.visit, "detector": det},
    )
    return sim, result


def fwhm_error(sim, result) -> float:
    psf, width, height = result.calexp.psf, sim.exposure.width, sim.exposure.height
    grid = [(x, y) for x in np.linspace(0, width - 1, 5) for y in np.linspace(0, height - 1, 5)]
    return max(abs(psf.fwhm_at(x, y) / sim.exposure.psf.fwhm_at(x, y) - 1) for x, y in grid)


def wcs_offsets_mas(sim, result) -> tuple[float, float]:
    width, height = sim.exposure.width, sim.exposure.height
    x, y = (
        a.ravel()
        for a in np.meshgrid(np.linspace(0, width - 1, 11), np.linspace(0, height - 1, 11))
    )
    truth = np.radians(wcs_from_header(sim.true_wcs).all_pix2world(x, y, 0))
    fitted = np.radians(result.calexp.wcs.all_pix2world(x, y, 0))
    offset = np.degrees(angular_separation(*truth, *fitted)) * 3.6e6
    return float(np.sqrt(np.mean(offset**2))), float(offset.max())


@pytest.fixture(scope="module")
def default_field():
    sky = SkyModel.generate("mini", seed=0)
    visit = sky.visits(1)[0]
    return {det: calibrate(sky, visit, det) for det in DETECTORS}


@pytest.mark.parametrize("det", DETECTORS)
def test_a_sparse_ccd_with_a_sky_pattern_is_calibrated(default_field, det):
    sim, result = default_field[det]
    assert result.failure is None
    meta = result.calexp.metadata
    assert meta["psf_model"]["type"] == "variable" and meta["psf_model"]["n_used"] >= 5
    assert meta["BUNIT"] == "nJy" and len(result.stars) > 20
    # a Moffat fitted to 5-12 stars of S/N 20-200: measured 2.5-3.2% for these two CCDs
    assert fwhm_error(sim, result) < 0.05
    rms, corner = wcs_offsets_mas(sim, result)
    assert rms < 15.0 and corner < 30.0  # measured 2-8 mas rms, 4-19 mas max
    stats = result.summary_stats
    dzp = stats["zero_point"] - sim.truth["zero_point"]
    assert 0 < stats["zero_point_err"] < 0.015
    assert abs(dzp) < 4 * stats["zero_point_err"], (dzp, stats["zero_point_err"])


@pytest.mark.slow
def test_every_ccd_of_two_default_visits_is_calibrated():
    sky = SkyModel.generate("mini", seed=0)
    normalised, matched = [], []
    for visit in sky.visits(2):
        for det in range(9):
            sim, result = calibrate(sky, visit, det)
            assert result.failure is None, (visit.visit, det, result.failure)
            assert fwhm_error(sim, result) < 0.07
            stats = result.summary_stats
            normalised.append(
                (stats["zero_point"] - sim.truth["zero_point"]) / stats["zero_point_err"]
            )
            matched.append(matched_truth(sky, sim, result.stars))
    # zero points scatter about their quoted errors (a few CCDs carry an unmodelled sky pattern)
    assert np.sqrt(np.mean(np.square(normalised))) < 2.0
    # flux pulls of clean stars (see the module docstring): within 10% of 1
    stars = pd.concat(matched)
    clean = stars[np.abs(stars["contamination"]) < 0.003]
    pulls = (clean["psf_flux_njy"] - clean["true_flux"]) / clean["psf_flux_err_njy"]
    for low, high in ((10, 30), (30, 100)):
        select = (clean["snr"] > low) & (clean["snr"] < high)
        assert select.sum() > 150
        assert 0.9 < np.std(pulls[select]) < 1.1, (low, high, np.std(pulls[select]))

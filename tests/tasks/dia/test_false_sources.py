"""False DiaSources from subtraction artefacts: saturated cores and bumpy residual footprints.

Synthetic differences (Gaussian noise of exactly the variance plane's variance, sources rendered
with the core PSF models) holding what a bright star leaves behind: a saturated core with a
large residual, and a broad residual whose top carries many noise bumps. Each test also checks
that real point sources next to them are still found, so none of them can pass by finding nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from apflow.core import Exposure, GaussianPsf, MaskPlanes
from apflow.tasks.dia import DetectAndMeasureConfig, DetectAndMeasureTask
from apflow.tasks.dia.measure import center_all_flags
from tests.tasks.dia.dia_data import DETECTOR, VISIT, make_exposure

SIGMA = 10.0  # nJy per pixel
PSF = GaussianPsf(fwhm=4.0)
FLUX_ERR = SIGMA * math.sqrt(4 * math.pi * ((4.0 / 2.3548) ** 2 + 1 / 12))
SAT = int(MaskPlanes.SAT)


def _run(diff: Exposure, **cfg):
    task = DetectAndMeasureTask(DetectAndMeasureConfig(**cfg))
    return task.run(diff, diff, diff, data_id={"visit": VISIT, "detector": DETECTOR})


def _near(frame, x: float, y: float, radius: float) -> int:
    return int(np.sum(np.hypot(frame["x"] - x, frame["y"] - y) < radius))


def _saturated_scene(seed: int = 3) -> Exposure:
    """Three saturated cores with a -60 sigma residual on their SAT pixels, plus 4 real sources."""
    x = np.array([40.0, 200.0, 40.0, 200.0])
    y = np.array([40.0, 40.0, 200.0, 200.0])
    flux = np.array([30.0, -30.0, 20.0, 50.0]) * FLUX_ERR
    diff = make_exposure(PSF, x, y, flux, (256, 256), SIGMA, seed=seed)
    image = np.array(diff.image, np.float32)
    mask = np.zeros(diff.shape, np.int32)
    for cx, cy in ((120, 60), (60, 128), (180, 150)):
        # the core (SAT in the difference: both images' saturated pixels grown by the kernel)
        core = np.s_[cy - 6 : cy + 7, cx - 6 : cx + 7]
        image[core] -= 60 * SIGMA
        mask[core] |= SAT
    return Exposure(
        image=image,
        mask=mask,
        variance=diff.variance,
        wcs=diff.wcs,
        psf=diff.psf,
        visit_info=diff.visit_info,
        detector=diff.detector,
    )


def test_residuals_on_saturated_pixels_are_not_dia_sources():
    diff = _saturated_scene()
    result = _run(diff)
    df = result.dia_source
    for cx, cy in ((120, 60), (60, 128), (180, 150)):
        assert _near(df, cx, cy, 12) == 0
    # the real sources around them are all found, once each
    for x, y in ((40, 40), (200, 40), (40, 200), (200, 200)):
        assert _near(df, x, y, 2) == 1
    assert len(df) == 4
    # Rubin's saturatedCenterAll rule removed them, and they are counted
    assert result.n_rejected_bad_center["SAT"] == 3
    assert result.summary()["n_rejected_sat_center"] == 3
    assert not df["pixelFlags_saturatedCenter"].any()


def test_without_the_rule_saturated_residuals_were_dia_sources():
    before = _run(_saturated_scene(), bad_center_planes=()).dia_source
    assert all(_near(before, cx, cy, 8) >= 1 for cx, cy in ((120, 60), (60, 128), (180, 150)))
    assert len(before) == 7


def test_center_all_needs_every_central_pixel():
    mask = np.zeros((20, 20), np.int32)
    mask[5:8, 5:8] = SAT
    mask[12, 12] = SAT
    flags = center_all_flags(mask, np.array([6.2, 12.0, 7.0]), np.array([5.9, 12.0, 7.0]), ("SAT",))
    np.testing.assert_array_equal(flags["SAT"], [True, False, False])


def _broad_residual_scene(seed: int) -> tuple[Exposure, tuple[float, float]]:
    """A broad negative residual (a disc of radius 20 px at -1.5 sigma per pixel, as the
    over-subtracted sky around a bright galaxy leaves: ~-10 sigma after the matched filter, with
    a noise bump every few pixels on top) and two point sources of S/N 25, 12 px apart."""
    shape = (200, 200)
    x = np.array([150.0, 162.0])
    y = np.array([60.0, 60.0])
    diff = make_exposure(PSF, x, y, np.full(2, 25 * FLUX_ERR), shape, SIGMA, seed=seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centre = (60.0, 120.0)
    r = np.hypot(xx - centre[0], yy - centre[1])
    residual = -1.5 * SIGMA / (1.0 + np.exp((r - 20.0) / 2.0))
    return (
        Exposure(
            image=(diff.image + residual).astype(np.float32),
            variance=diff.variance,
            wcs=diff.wcs,
            psf=diff.psf,
            visit_info=diff.visit_info,
            detector=diff.detector,
        ),
        centre,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_bumpy_residual_footprint_is_one_dia_source(seed):
    diff, (cx, cy) = _broad_residual_scene(seed)
    df = _run(diff).dia_source
    # one source (two where noise splits the footprint's top by a deep enough saddle)
    assert 1 <= _near(df, cx, cy, 25) <= 2
    assert _near(df, 150, 60, 2) == 1 and _near(df, 162, 60, 2) == 1


def test_noise_bumps_on_a_broad_residual_used_to_be_many_sources():
    # what peak_prominence repairs: every noise bump on the residual's top was a DiaSource
    counts = [
        _near(_run(_broad_residual_scene(s)[0], peak_prominence=0.0).dia_source, 60, 120, 25)
        for s in (1, 2, 3)
    ]
    assert min(counts) >= 10, counts  # measured 14-16


def _lobes(separation_fwhm: float, seed: int) -> tuple[Exposure, np.ndarray, np.ndarray]:
    """Positive and negative lobes of S/N 15, ``separation_fwhm`` PSF FWHMs apart (4 px FWHM)."""
    x = np.array([100.0, 100.0 + 4.0 * separation_fwhm])
    y = np.array([100.0, 100.0])
    flux = np.array([15.0, -15.0]) * FLUX_ERR
    return make_exposure(PSF, x, y, flux, (200, 240), SIGMA, seed=seed), x, y


@pytest.mark.parametrize("seed", [5, 6])
def test_opposite_lobes_of_one_residual_are_one_dia_source(seed):
    # a bright star's residual: opposite-sign lobes 3 FWHM apart in one merged footprint
    diff, x, y = _lobes(3.0, seed)
    result = _run(diff)
    df = result.dia_source
    assert len(df) == 1 and bool(df["dipoleFitAttempted"].iloc[0])
    assert abs(df["x"].iloc[0] - x.mean()) < 2.0
    # before (pairs only up to 2 FWHM apart): two DiaSources
    assert len(_run(diff, dipole_max_separation_fwhm=2.0).dia_source) == 2


def test_well_separated_opposite_sources_stay_two():
    diff, x, y = _lobes(6.0, 7)
    df = _run(diff).dia_source
    assert len(df) == 2 and not df["dipoleFitAttempted"].any()
    assert sorted(df["isNegative"].tolist()) == [False, True]

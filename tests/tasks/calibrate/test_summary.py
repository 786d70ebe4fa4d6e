"""Summary statistics of a synthetic calibrated exposure."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS

from apflow.core import Exposure, GaussianPsf, MaskPlanes, PhotoCalib, VisitInfo
from apflow.core.psf import GAUSSIAN_FWHM_PER_SIGMA
from apflow.tasks.calibrate.summary import (
    SummaryStatsConfig,
    SummaryStatsTask,
    compute_summary_stats,
)

SKY = 1000.0  # counts/px, subtracted
READ_NOISE = 5.0  # counts
EXP_TIME = 30.0
ZERO_POINT = 31.0
FWHM = 3.5  # px


def _wcs(shape: tuple[int, int]) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, -30.0]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    wcs.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600.0
    return wcs


@pytest.fixture(scope="module")
def exposure() -> Exposure:
    shape = (400, 600)
    rng = np.random.default_rng(0)
    variance = np.full(shape, SKY + READ_NOISE**2, dtype=np.float32)
    image = rng.normal(0.0, np.sqrt(variance)).astype(np.float32)
    mask = np.zeros(shape, dtype=np.int32)
    mask[:, :10] = MaskPlanes.NO_DATA
    image[:, :10] = 1e6  # garbage that the mask must keep out of the noise estimate
    return Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=_wcs(shape),
        psf=GaussianPsf(fwhm=FWHM),
        photo_calib=PhotoCalib.from_zero_point(ZERO_POINT, 0.002),
        visit_info=VisitInfo(visit=1, band="r", exposure_time=EXP_TIME, airmass=1.2),
    )


@pytest.fixture(scope="module")
def stats(exposure) -> dict:
    psf_stars = pd.DataFrame({"calib_psf_used": [True] * 40 + [False] * 5})
    astrometry = {"astrom_offset_mean": 0.02, "astrom_offset_std": 0.01}
    return compute_summary_stats(exposure, np.full(exposure.shape, SKY), psf_stars, astrometry)


def test_summary_is_strict_json(stats):
    text = json.dumps(stats, allow_nan=False)
    assert json.loads(text) == stats


def test_psf_size_and_area(stats):
    sigma = FWHM / GAUSSIAN_FWHM_PER_SIGMA
    assert stats["psf_sigma"] == pytest.approx(sigma)
    # Pixel integration adds the 1/12 px^2 variance of a box to sigma^2.
    assert stats["psf_area"] == pytest.approx(4 * math.pi * (sigma**2 + 1 / 12), rel=0.002)
    assert stats["n_psf_star"] == 40


def test_sky_level_and_noise(stats):
    assert stats["sky_bg"] == pytest.approx(SKY)
    assert stats["sky_noise"] == pytest.approx(math.sqrt(SKY + READ_NOISE**2), rel=0.01)
    assert stats["mean_var"] == pytest.approx(SKY + READ_NOISE**2, rel=1e-6)


def test_corners_and_centre_follow_the_wcs(exposure, stats):
    height, width = exposure.shape
    x = [-0.5, width - 0.5, width - 0.5, -0.5]
    y = [-0.5, -0.5, height - 0.5, height - 0.5]
    ra, dec = exposure.wcs.all_pix2world(x, y, 0)
    assert stats["ra_corners"] == pytest.approx(list(ra), abs=1e-10)
    assert stats["dec_corners"] == pytest.approx(list(dec), abs=1e-10)
    centre = exposure.wcs.all_pix2world([(width - 1) / 2], [(height - 1) / 2], 0)
    assert (stats["ra"], stats["dec"]) == pytest.approx((centre[0][0], centre[1][0]), abs=1e-10)
    assert stats["pixel_scale"] == pytest.approx(0.2, rel=1e-6)


def test_limiting_magnitude_is_five_sigma(stats):
    counts = 10 ** (-0.4 * (stats["mag_lim"] - stats["zero_point"]))
    noise = math.sqrt(counts / 1.0 + stats["sky_noise"] ** 2 * stats["psf_area"])
    assert counts / noise == pytest.approx(5.0, rel=1e-9)
    # Sky-limited rule of thumb (5 sigma of sqrt(area) pixels of noise sqrt(1025)); the source's
    # own shot noise makes the true limit slightly brighter.
    sky_limited = ZERO_POINT - 2.5 * math.log10(5 * math.sqrt(1025 * stats["psf_area"]))
    assert 0.0 < sky_limited - stats["mag_lim"] < 0.03


def test_effective_time_is_exposure_time_under_fiducial_conditions(exposure):
    kernel = exposure.psf.compute_kernel_image(0, 0)
    config = SummaryStatsConfig(
        # The PSF area of the exposure, expressed as the sigma of a Gaussian of that area.
        fiducial_psf_sigma={"r": math.sqrt(kernel.sum() ** 2 / (kernel**2).sum() / (4 * math.pi))},
        fiducial_zero_point={"r": ZERO_POINT - 2.5 * math.log10(EXP_TIME)},
        fiducial_sky_background={"r": SKY / EXP_TIME},
    )
    nominal = compute_summary_stats(exposure, SKY, config=config)
    assert nominal["eff_time"] == pytest.approx(EXP_TIME)
    # Twice the sky halves t_eff; 0.1 mag less transparency costs 10^(-0.08).
    bright_sky = compute_summary_stats(exposure, 2 * SKY, config=config)
    assert bright_sky["eff_time"] == pytest.approx(EXP_TIME / 2)
    cloudy = compute_summary_stats(
        exposure, SKY, photo_calib=PhotoCalib.from_zero_point(ZERO_POINT - 0.1), config=config
    )
    assert cloudy["eff_time"] == pytest.approx(EXP_TIME * 10**-0.08)


def test_background_model_values_give_the_sky_level(exposure):
    model = SimpleNamespace(values=np.array([[990.0, 1000.0], [1010.0, np.nan]]))
    assert compute_summary_stats(exposure, model)["sky_bg"] == pytest.approx(1000.0)


def test_missing_calibrations_give_none():
    bare = Exposure(image=np.zeros((50, 50), dtype=np.float32))
    stats = SummaryStatsTask().run(bare).summary()
    json.dumps(stats, allow_nan=False)
    for key in ("psf_sigma", "ra", "zero_point", "sky_bg", "eff_time", "mag_lim", "exp_time"):
        assert stats[key] is None
    assert stats["ra_corners"] == [None] * 4
    assert stats["n_psf_star"] == 0


def test_per_band_fiducials_are_settable_from_the_command_line():
    from apflow.errors import ConfigError
    from apflow.tasks.calibrate import CalibrateImageConfig

    config = CalibrateImageConfig().updated(
        **{
            "summary.fiducial_zero_point.r": "26.6",
            "summary.fiducial_psf_sigma": '{"g": 1.9}',
        }
    )
    assert config.summary.fiducial_zero_point["r"] == 26.6
    assert config.summary.fiducial_zero_point["g"] == SummaryStatsConfig().fiducial_zero_point["g"]
    assert config.summary.fiducial_psf_sigma["g"] == 1.9
    with pytest.raises(ConfigError, match="float"):
        CalibrateImageConfig().updated(**{"summary.fiducial_zero_point.r": "bright"})
    with pytest.raises(ConfigError, match="per-band"):
        CalibrateImageConfig().updated(**{"summary.gain.r": "2"})

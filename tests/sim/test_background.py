"""The fixed sky pattern and the per-visit background."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.sim import SkyModel, background_image, bin_image


def test_sky_pattern_has_zero_mean_and_configured_rms():
    sky = SkyModel.generate("mini", seed=5, sky_pattern_rms=0.03)
    pattern, description = sky.sky_pattern(0)
    assert pattern.shape == sky.camera[0].shape and pattern.dtype == np.float32
    assert abs(float(pattern.mean(dtype=float))) < 1e-6
    assert float(pattern.std(dtype=float)) == pytest.approx(0.03, rel=1e-3)
    assert description["rms"] == 0.03


def test_sky_pattern_power_is_small_scale(sky):
    pattern, _ = sky.sky_pattern(4)
    # blocks of 256 px keep only a small part of the variance
    assert bin_image(pattern, 256).std() < 0.5 * pattern.std()


def test_sky_pattern_is_fixed_per_detector_and_differs_between_detectors(sky):
    a, _ = sky.sky_pattern(1)
    b, _ = SkyModel.generate("mini", seed=3).sky_pattern(1)
    c, _ = sky.sky_pattern(2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_background_is_sky_level_times_gradient_times_pattern(sky, visits):
    visit = visits[0]
    det = sky.camera[4]
    pattern, _ = sky.sky_pattern(det)
    bg = background_image(visit, det, pattern)
    fx, fy = det.pixel_to_focal_plane(100.0, 700.0)
    expected = visit.sky_level * visit.sky_gradient(fx, fy) * (1 + pattern[700, 100])
    assert bg[700, 100] == pytest.approx(expected, rel=1e-6)
    lo, hi = sky.config.sky_range
    assert 0.8 * lo < bg.mean() < 1.2 * hi


def test_bin_image_averages_blocks():
    image = np.arange(64, dtype=float).reshape(8, 8)
    binned = bin_image(image, 4)
    assert binned.shape == (2, 2)
    assert binned[0, 0] == pytest.approx(image[:4, :4].mean())

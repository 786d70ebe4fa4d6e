"""The fixed sky pattern and the per-visit background."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.sim import SkyModel, background_image, bin_image
from apflow.tasks.sky import absorbed_by_focal_plane_model, upsample_bins


def test_sky_pattern_has_zero_mean_and_configured_rms():
    sky = SkyModel.generate("mini", seed=5, sky_pattern_rms=0.03)
    pattern, description = sky.sky_pattern(0)
    assert pattern.shape == sky.camera[0].shape and pattern.dtype == np.float32
    assert abs(float(pattern.mean(dtype=float))) < 1e-6
    assert float(pattern.std(dtype=float)) == pytest.approx(0.03, rel=1e-3)
    assert description["rms"] == 0.03


def test_sky_pattern_is_what_a_32_px_sky_frame_can_represent(sky):
    # binned to 32 px and upsampled as sky correction does, the pattern comes back to
    # 0.9-2.7% of its rms on the 9 detectors (seeds 3, 5, 11); the 60-px fringes it had before
    # left 6-12%
    for det in sky.camera.detector_ids:
        pattern = sky.sky_pattern(det)[0].astype(np.float64)
        frame = upsample_bins(bin_image(pattern, 32), pattern.shape, 32)
        residual = (pattern - frame)[4:-4, 4:-4]  # the simulator's EDGE border is not measured
        assert residual.std() < 0.04 * pattern.std(), det


def test_most_of_the_sky_pattern_is_left_for_the_sky_frame(sky):
    # the focal-plane background model (256-px superpixels on mini) absorbs the pattern's
    # largest scales; 73-93% of its rms stays small-scale (measured), for a sky frame to recover
    patterns = {d: sky.sky_pattern(d)[0].astype(np.float64) for d in sky.camera.detector_ids}
    absorbed = absorbed_by_focal_plane_model(sky.camera, patterns)
    for det, pattern in patterns.items():
        assert np.std(pattern - absorbed[det]) > 0.6 * np.std(pattern), det


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

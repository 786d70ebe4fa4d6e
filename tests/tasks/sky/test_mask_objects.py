"""Object masking: stars are flagged, the smooth sky pattern is not."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.core import Exposure, MaskPlanes
from apflow.errors import TaskError
from apflow.tasks.sky import MaskObjectsTask, detect_objects


def _sky(shape=(256, 256), level=2000.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level + rng.standard_normal(shape) * np.sqrt(level)


def test_stars_and_their_surroundings_are_flagged_detected() -> None:
    image = _sky()
    y, x = np.mgrid[0:256, 0:256]
    centres = [(40, 50), (128, 200), (210, 90)]
    for cy, cx in centres:
        image += 3000.0 * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 2.0**2)
    mask = np.zeros(image.shape, dtype=np.int32)
    mask[:, 17] = MaskPlanes.BAD
    result = MaskObjectsTask().run(exposure=Exposure(image=image, mask=mask))
    detected = result.exposure.mask_of("DETECTED")
    for cy, cx in centres:
        assert detected[cy - 4 : cy + 5, cx - 4 : cx + 5].all()
    assert result.detected_fraction < 0.08
    assert result.exposure.mask_of("BAD")[:, 17].all()  # other planes kept


def test_previous_detections_are_replaced_and_pixels_are_not_copied() -> None:
    image = _sky().astype(np.float32)
    mask = np.full(image.shape, MaskPlanes.DETECTED, dtype=np.int32)
    exposure = Exposure(image=image, mask=mask)
    result = MaskObjectsTask().run(exposure=exposure)
    assert result.detected_fraction < 0.05  # the stale all-DETECTED plane is gone
    assert result.exposure.image is exposure.image  # pixels shared, not copied
    assert exposure.mask_of("DETECTED").all()  # the input is untouched


def test_a_smooth_sky_pattern_of_a_few_percent_is_not_masked() -> None:
    # a pattern of 3% of a bright sky is ~1.4 sigma per pixel and >20 sigma after the 5-px
    # smoothing: against a coarse background it would be "detected" almost everywhere
    y, x = np.mgrid[0:512, 0:512]
    pattern = 0.03 * np.sin(2 * np.pi * x / 90.0) * np.cos(2 * np.pi * y / 140.0)
    pattern += 0.05 * np.exp(-0.5 * ((x - 300) ** 2 + (y - 200) ** 2) / 40.0**2)
    image = _sky((512, 512), level=3000.0) * (1.0 + pattern)
    detected, noise = detect_objects(image, variance=np.full(image.shape, 3000.0))
    assert detected.mean() < 0.03
    assert noise == pytest.approx(np.sqrt(3000.0))


def test_noise_without_a_variance_plane_is_estimated_from_neighbouring_pixels() -> None:
    image = _sky(level=1000.0)
    image += np.linspace(0.0, 200.0, 256)[None, :]  # a gradient does not inflate the estimate
    _, noise = detect_objects(image)
    assert noise == pytest.approx(np.sqrt(1000.0), rel=0.05)


def test_an_exposure_with_no_usable_pixel_is_an_error() -> None:
    exposure = Exposure(image=np.ones((64, 64)), mask=np.full((64, 64), MaskPlanes.NO_DATA))
    with pytest.raises(TaskError, match="every pixel"):
        MaskObjectsTask().run(exposure=exposure)

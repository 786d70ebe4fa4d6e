"""Snap combine: two snaps sum to the long exposure; CRs in one snap are flagged and repaired."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.core import Exposure, MaskPlanes
from apflow.errors import TaskError
from apflow.tasks.calibrate import SnapCombineTask
from tests.tasks.calibrate.conftest import (
    READ_NOISE,
    make_truth,
    observe,
    render_stars,
    sky_model,
    truth_psf,
)

SIZE = 256


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """Noiseless sky + 40 stars (some bright) on a 256 x 256 CCD, counts for a 30 s exposure."""
    rng = np.random.default_rng(3)
    truth = make_truth(SIZE, SIZE, 40, rng, n_saturated=0, flux_range=(2e3, 5e5))
    stars, _, _ = render_stars(truth, truth_psf(SIZE, SIZE), SIZE, SIZE)
    return sky_model(SIZE, SIZE) + stars


def snap_pair(scene: np.ndarray, seed: int) -> list[Exposure]:
    rng = np.random.default_rng(seed)
    return [observe(scene, rng, bad_column=5, scale=0.5) for _ in range(2)]


def test_single_exposure_passes_through(scene):
    exposure = observe(scene, np.random.default_rng(0), bad_column=5)
    result = SnapCombineTask().run(exposure)
    assert result.exposure is exposure
    assert result.n_snaps == 1 and result.n_cr_pixels == 0


@pytest.mark.parametrize("count", [0, 3])
def test_other_snap_counts_raise_task_error(scene, count):
    snaps = [observe(scene, np.random.default_rng(i), bad_column=5) for i in range(count)]
    with pytest.raises(TaskError, match="1 or 2 snaps"):
        SnapCombineTask().run(snaps)


def test_snaps_of_different_shapes_raise_task_error():
    snaps = [Exposure(image=np.zeros((10, 10))), Exposure(image=np.zeros((10, 12)))]
    with pytest.raises(TaskError, match="shapes differ"):
        SnapCombineTask().run(snaps)


def test_two_snaps_sum_like_one_long_exposure(scene):
    combined = SnapCombineTask().run(snap_pair(scene, 1)).exposure
    long = observe(scene, np.random.default_rng(2), bad_column=5)
    good = combined.mask == 0
    for exposure in (combined, long):
        residual = (exposure.image - scene)[good]
        sigma = np.sqrt(exposure.variance[good])
        # Unbiased and with the noise its variance plane claims, like the long exposure.
        assert abs(residual.mean()) < 5 * np.sqrt(exposure.variance[good].mean() / good.sum())
        assert np.std(residual / sigma) == pytest.approx(1.0, abs=0.02)
    # The variances add up to that of the long exposure, up to one extra read noise.
    assert np.allclose(combined.variance, long.variance + READ_NOISE**2, rtol=1e-5)
    assert combined.visit_info.exposure_time == pytest.approx(long.visit_info.exposure_time)


def test_masks_are_ored(scene):
    snaps = snap_pair(scene, 4)
    snaps[1].mask[10, 20] |= int(MaskPlanes.SUSPECT)
    combined = SnapCombineTask().run(snaps).exposure
    assert combined.mask[10, 20] & int(MaskPlanes.SUSPECT)
    assert (combined.mask[:, 5] & int(MaskPlanes.BAD)).all()


def test_cosmic_ray_in_one_snap_is_flagged_and_repaired(scene):
    snaps = snap_pair(scene, 5)
    clean = snaps[0].image.copy()
    hits = [(100, 30), (100, 31), (101, 31), (200, 150)]  # (row, col): a short track and a dot
    for row, col in hits:
        snaps[0].image[row, col] += 3000.0
    result = SnapCombineTask().run(snaps)
    cr = (result.exposure.mask & int(MaskPlanes.CR)) != 0
    for row, col in hits:
        assert cr[row, col]
        # Repaired from the other snap, scaled to the total exposure time.
        assert result.exposure.image[row, col] == pytest.approx(2 * snaps[1].image[row, col])
    # No false CRs elsewhere, not even on bright star cores (a few noise pixels at most).
    far = np.ones_like(cr)
    for row, col in hits:
        far[row - 2 : row + 3, col - 2 : col + 3] = False
    assert cr[far].sum() <= 2
    repaired = result.exposure.image[100, 30] - (clean[100, 30] + snaps[1].image[100, 30])
    assert abs(repaired) < 6 * np.sqrt(result.exposure.variance[100, 30])

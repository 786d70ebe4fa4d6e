"""Bin-grid interpolation and the filling of bad bins."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.errors import TaskError
from apflow.tasks.sky import bin_centers, fill_bad_bins, interpolation_matrix, upsample_bins


def test_interpolation_passes_through_knots_and_is_exact_for_lines() -> None:
    knots = np.array([0.0, 1.5, 3.0, 5.0, 6.0])
    assert np.allclose(interpolation_matrix(knots, knots).toarray(), np.eye(knots.size))
    positions = np.linspace(-1.0, 7.0, 41)  # includes extrapolation past both ends
    weights = interpolation_matrix(knots, positions)
    assert np.allclose(weights @ (2.0 * knots + 1.0), 2.0 * positions + 1.0)
    assert weights.getnnz(axis=1).max() <= 4


def test_upsampled_bins_reproduce_a_plane_at_every_pixel() -> None:
    shape, bin_size = (100, 70), 32  # partial last bins on both axes
    yc, xc = bin_centers(shape[0], bin_size), bin_centers(shape[1], bin_size)
    plane = 0.3 * yc[:, None] - 0.2 * xc[None, :] + 5.0
    image = upsample_bins(plane, shape, bin_size)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    assert image.dtype == np.float32
    assert np.allclose(image, 0.3 * y - 0.2 * x + 5.0, atol=1e-4)


def test_nan_bins_are_filled_from_neighbours() -> None:
    grid = np.outer(np.linspace(1.0, 2.0, 6), np.ones(7))
    holes = grid.copy()
    holes[2:4, 3] = np.nan
    holes[0, :] = np.nan  # a whole bad row, as on a grid border
    for smoothness in (1, 2):
        filled = fill_bad_bins(holes, np.isnan(holes), smoothness=smoothness)
        assert np.isfinite(filled).all()
        assert np.array_equal(filled[~np.isnan(holes)], grid[~np.isnan(holes)])
    # the thin plate continues the gradient across the border; the membrane stays within range
    assert np.allclose(fill_bad_bins(holes, np.isnan(holes), smoothness=2), grid)
    membrane = fill_bad_bins(holes, np.isnan(holes), smoothness=1)
    assert membrane.min() >= np.nanmin(holes) - 1e-12 and membrane.max() <= np.nanmax(holes) + 1e-12


def test_filling_without_any_good_bin_is_an_error() -> None:
    with pytest.raises(TaskError, match="no good bins"):
        fill_bad_bins(np.full((3, 3), np.nan), np.ones((3, 3), dtype=bool))

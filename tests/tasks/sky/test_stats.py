"""Vectorised clipped statistics against astropy, and their handling of masked values."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats

from apflow.tasks.sky import binned_clipped_stats, clipped_stats


def _astropy(values: np.ndarray) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about the NaNs it drops
        return sigma_clipped_stats(values, sigma=3.0, maxiters=3)


def test_binned_clipped_mean_matches_astropy_sigma_clipped_stats() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(1000.0, 30.0, (96, 128))
    image[10:14, 20:23] += 5000.0  # a star in bin (0, 0)
    image[rng.random(image.shape) < 0.002] += 800.0  # cosmic rays
    bad = rng.random(image.shape) < 0.05
    stats = binned_clipped_stats(image, bad, bin_size=32)
    for by, bx in [(0, 0), (1, 2), (2, 3), (2, 1)]:
        block = np.where(bad, np.nan, image)[by * 32 : (by + 1) * 32, bx * 32 : (bx + 1) * 32]
        mean, median, std = _astropy(block)
        assert np.isclose(stats.mean[by, bx], mean, rtol=0, atol=1e-9)
        assert np.isclose(stats.median[by, bx], median, rtol=0, atol=1e-9)
        assert np.isclose(stats.std[by, bx], std, rtol=1e-9)
        assert stats.n_good[by, bx] == np.isfinite(block).sum()


def test_clipped_stats_matches_astropy_row_by_row_with_outliers_and_nans() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(10.0, 2.0, (60, 300))
    values[:, :15] += rng.exponential(40.0, (60, 15))
    values[rng.random(values.shape) < 0.1] = np.nan
    stats = clipped_stats(values)
    for row in range(values.shape[0]):
        expected = _astropy(values[row])
        got = (stats.mean[row], stats.median[row], stats.std[row])
        assert np.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_clipped_stats_of_empty_and_single_samples() -> None:
    values = np.full((3, 5), np.nan)
    values[1, 2] = 4.0
    values[2, :] = [1.0, 2.0, 3.0, np.inf, 5.0]
    stats = clipped_stats(values)
    assert np.isnan(stats.mean[0]) and stats.n_good[0] == 0
    assert stats.mean[1] == 4.0 and stats.n_good[1] == 1
    assert stats.n_good[2] == 4  # inf is ignored like NaN
    assert np.isclose(stats.mean[2], np.mean([1.0, 2.0, 3.0, 5.0]))


def test_binned_stats_last_partial_bin_holds_the_remaining_pixels() -> None:
    image = np.arange(40 * 70, dtype=float).reshape(40, 70) % 7
    stats = binned_clipped_stats(image, None, bin_size=32, n_iter=0)
    assert stats.mean.shape == (2, 3)
    assert stats.n_good[1, 2] == 8 * 6
    assert np.isclose(stats.mean[1, 2], image[32:, 64:].mean())

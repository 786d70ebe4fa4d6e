"""Vectorised clipped statistics against astropy, and their handling of masked values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from apflow.errors import ConfigError
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


def _short_stacks(rng: np.random.Generator, n_visits: int) -> np.ndarray:
    """(2000, n_visits) residual-like samples: objects in 5%, missing visits in 15%, some inf."""
    values = rng.normal(2e-3, 1e-3, (2000, n_visits))
    hit = rng.random(values.shape) < 0.05
    values[hit] += rng.exponential(0.02, hit.sum())
    values[rng.random(values.shape) < 0.15] = np.nan
    values[rng.random(values.shape) < 0.01] = np.inf
    values[:5] = np.nan  # bins no visit measured
    return values


@pytest.mark.parametrize("n_visits", [1, 2, 3, 8, 13, 64])
def test_compiled_short_row_kernel_equals_vectorised_path(n_visits: int) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(n_visits)
    values = _short_stacks(rng, n_visits)
    for n_iter in (0, 1, 3, 6):
        vectorised = clipped_stats(values, n_iter=n_iter, backend="numpy")
        compiled = clipped_stats(values, n_iter=n_iter, backend="numba")
        assert np.array_equal(compiled.n_kept, vectorised.n_kept)
        assert np.array_equal(compiled.n_good, vectorised.n_good)
        for name in ("mean", "median", "std", "lower", "upper"):
            np.testing.assert_allclose(
                getattr(compiled, name), getattr(vectorised, name), rtol=0, atol=1e-9
            )
    if n_visits >= 8:
        # the clipping did something: objects were rejected in many samples
        assert (vectorised.n_kept < vectorised.n_good).sum() > 20


def test_short_stack_clipped_stats_match_astropy_per_sample() -> None:
    rng = np.random.default_rng(3)
    values = _short_stacks(rng, 8)
    values[np.isinf(values)] = np.nan  # astropy would keep inf
    stats = clipped_stats(values)
    for row in range(5, 400):
        expected = _astropy(values[row])
        got = (stats.mean[row], stats.median[row], stats.std[row])
        assert np.allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_clipped_stats_along_the_visit_axis_first() -> None:
    values = _short_stacks(np.random.default_rng(4), 8)
    by_row = clipped_stats(values)
    by_column = clipped_stats(np.ascontiguousarray(values.T), axis=0)
    for name in ("mean", "median", "std", "n_kept"):
        np.testing.assert_array_equal(getattr(by_column, name), getattr(by_row, name))


def test_unknown_clipped_stats_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'fortran'"):
        clipped_stats(np.zeros((2, 3)), backend="fortran")

"""Clipped statistics: astropy's sigma_clip and afw's MEANCLIP, against their definitions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from apflow.errors import ConfigError
from apflow.tasks import sky
from apflow.tasks.stats import (
    SIGMA_PER_IQR,
    binned_clipped_stats,
    binned_median,
    clipped_stats,
)


def _astropy(values: np.ndarray) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about the NaNs it drops
        return sigma_clipped_stats(values, sigma=3.0, maxiters=3)


def _meanclip(row: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[float, float, int]:
    """afw's MEANCLIP written out for one sample, in float64 (the definition under test)."""
    row = row[np.isfinite(row)].astype(np.float64)
    q25, center, q75 = np.percentile(row, [25, 50, 75])
    width = SIGMA_PER_IQR * (q75 - q25)
    kept = row
    for _ in range(n_iter):
        kept = row[np.abs(row - center) <= n_sigma * width]
        center, width = kept.mean(), kept.std(ddof=1)
    return float(center), float(width), kept.size


def _sky_bins(rng: np.random.Generator, n_bins: int, n_pix: int) -> np.ndarray:
    """float32 ``(n_bins, n_pix)`` sky pixels (level 1000, sigma 30) with sources and masks."""
    values = rng.normal(1000.0, 30.0, (n_bins, n_pix)).astype(np.float32)
    hit = rng.random(values.shape) < 0.03
    values[hit] += rng.exponential(3000.0, hit.sum()).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    return values


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


def test_float32_sums_lose_nothing_to_outliers_far_from_the_level() -> None:
    # A float32 source pixel far above the sky rounds when the level is subtracted from it; the
    # sums must take it out exactly as they put it in, or the clipped std of every bin that
    # held a source is off by ~1e-6 (it was, before the sums used one rounding).
    values = _sky_bins(np.random.default_rng(7), 2000, 1024)
    for method in ("sigma_clip", "meanclip"):
        single = clipped_stats(values, method=method)
        double = clipped_stats(values.astype(np.float64), method=method)
        np.testing.assert_array_equal(single.n_kept, double.n_kept)
        np.testing.assert_allclose(single.mean, double.mean, rtol=1e-9)
        np.testing.assert_allclose(single.std, double.std, rtol=2e-8)


def test_clipped_stats_of_empty_and_single_samples() -> None:
    values = np.full((3, 5), np.nan)
    values[1, 2] = 4.0
    values[2, :] = [1.0, 2.0, 3.0, np.inf, 5.0]
    stats = clipped_stats(values)
    assert np.isnan(stats.mean[0]) and stats.n_good[0] == 0
    assert stats.mean[1] == 4.0 and stats.n_good[1] == 1
    assert stats.n_good[2] == 4  # inf is ignored like NaN
    assert np.isclose(stats.mean[2], np.mean([1.0, 2.0, 3.0, 5.0]))


@pytest.mark.parametrize("n_values", [5, 300])
def test_infinities_are_ignored_like_nan_on_the_vectorised_path(n_values: int) -> None:
    rng = np.random.default_rng(n_values)
    with_nan = rng.normal(0.0, 1.0, (50, n_values))
    with_nan[rng.random(with_nan.shape) < 0.1] = np.nan
    with_inf = with_nan.copy()
    with_inf[:10, 0] = np.inf
    with_inf[5:15, -1] = -np.inf
    with_nan[:10, 0] = with_nan[5:15, -1] = np.nan
    for method in ("sigma_clip", "meanclip"):
        got = clipped_stats(with_inf, backend="numpy", method=method)
        expected = clipped_stats(with_nan, backend="numpy", method=method)
        for name in ("mean", "median", "std", "n_kept", "n_good"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_binned_stats_last_partial_bin_holds_the_remaining_pixels() -> None:
    image = np.arange(40 * 70, dtype=float).reshape(40, 70) % 7
    stats = binned_clipped_stats(image, None, bin_size=32, n_iter=0)
    assert stats.mean.shape == (2, 3)
    assert stats.n_good[1, 2] == 8 * 6
    assert np.isclose(stats.mean[1, 2], image[32:, 64:].mean())


def test_binned_median_of_good_pixels() -> None:
    rng = np.random.default_rng(8)
    image = rng.normal(5.0, 1.0, (64, 40))
    bad = rng.random(image.shape) < 0.2
    bad[32:, 32:] = True  # a bin without a good pixel
    median, n_good = binned_median(image, bad, 32)
    block = image[:32, 32:][~bad[:32, 32:]]
    assert median[0, 1] == np.median(block) and n_good[0, 1] == block.size
    assert np.isnan(median[1, 1]) and n_good[1, 1] == 0


def _short_stacks(rng: np.random.Generator, n_visits: int) -> np.ndarray:
    """(2000, n_visits) residual-like samples: objects in 5%, missing visits in 15%, some inf."""
    values = rng.normal(2e-3, 1e-3, (2000, n_visits))
    hit = rng.random(values.shape) < 0.05
    values[hit] += rng.exponential(0.02, hit.sum())
    values[rng.random(values.shape) < 0.15] = np.nan
    values[rng.random(values.shape) < 0.01] = np.inf
    values[:5] = np.nan  # bins no visit measured
    return values


@pytest.mark.parametrize("method", ["sigma_clip", "meanclip"])
@pytest.mark.parametrize("n_visits", [1, 2, 3, 8, 13, 64])
def test_compiled_short_row_kernel_equals_vectorised_path(n_visits: int, method: str) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(n_visits)
    values = _short_stacks(rng, n_visits)
    for n_iter in (0, 1, 3, 6):
        vectorised = clipped_stats(values, n_iter=n_iter, backend="numpy", method=method)
        compiled = clipped_stats(values, n_iter=n_iter, backend="numba", method=method)
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


@pytest.mark.parametrize(
    ("n_bins", "n_pix"),
    [(300, 1024), (20, 16384)],  # calibrate's 32-px and 128-px background bins
)
def test_meanclip_matches_afw_definition_on_background_bins(n_bins: int, n_pix: int) -> None:
    values = _sky_bins(np.random.default_rng(n_pix), n_bins, n_pix)
    stats = clipped_stats(values, method="meanclip")
    for row in range(n_bins):
        mean, std, n_kept = _meanclip(values[row])
        assert stats.n_kept[row] == n_kept
        assert np.isclose(stats.mean[row], mean, rtol=1e-9)
        assert np.isclose(stats.std[row], std, rtol=1e-7)
    # the sources were clipped (3% of the pixels, most far above 3 sigma) and the noise found
    assert ((stats.n_good - stats.n_kept) > 0.01 * n_pix).all()
    assert np.allclose(stats.std, 30.0, rtol=0.1)


def test_meanclip_matches_afw_definition_on_annuli_with_a_short_stack_too() -> None:
    rng = np.random.default_rng(9)
    annuli = rng.normal(0.0, 10.0, (200, 1700)).astype(np.float32)
    hit = rng.random(annuli.shape) < 0.03
    annuli[hit] += rng.exponential(200.0, hit.sum()).astype(np.float32)
    annuli[:, 1500:][rng.random((200, 200)) < 0.5] = np.nan  # the rim outside the annulus
    stack = _short_stacks(rng, 8)
    stack[np.isinf(stack)] = np.nan
    for values, rows in ((annuli, range(200)), (stack, range(5, 400))):
        stats = clipped_stats(values, n_iter=4, method="meanclip")
        for row in rows:
            if np.isfinite(values[row]).sum() < 2:
                continue
            mean, std, n_kept = _meanclip(values[row], n_iter=4)
            assert stats.n_kept[row] == n_kept
            # float32 differences from a level near 0 round at ~1e-7 of the pixel scatter
            assert abs(stats.mean[row] - mean) < 1e-7 * std
            assert np.isclose(stats.std[row], std, rtol=1e-7, atol=0)


def test_meanclip_first_bounds_are_the_median_and_iqr_of_all_values() -> None:
    values = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 90.0]])
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    stats = clipped_stats(values, nsigma=2.0, n_iter=1, method="meanclip", backend="numpy")
    half_width = 2.0 * SIGMA_PER_IQR * (q75 - q25)
    assert np.isclose(stats.lower[0], median - half_width)
    assert np.isclose(stats.upper[0], median + half_width)
    assert stats.n_kept[0] == 9  # only 90 is out
    assert np.isclose(stats.mean[0], 4.0) and np.isclose(
        stats.std[0], np.std(np.arange(9.0), ddof=1)
    )


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_meanclip_pass_keeping_fewer_than_two_values_is_not_applied(backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    # a width of 0.015 around the median 2 would keep the single value 2
    values = np.array([[0.0, 1.0, 2.0, 3.0, 100.0], [1.0, np.nan, np.nan, np.nan, np.nan]])
    stats = clipped_stats(values, nsigma=0.01, method="meanclip", backend=backend)
    assert stats.n_kept.tolist() == [5, 1]
    assert np.isclose(stats.mean[0], 21.2) and stats.mean[1] == 1.0
    assert np.isinf(stats.lower[0]) and np.isinf(stats.upper[0])
    assert np.isnan(stats.std[1])  # ddof=1 of a single value


def test_no_iterations_is_the_plain_mean_of_the_good_values() -> None:
    values = np.array([[1.0, 2.0, np.nan, 4.0, 100.0]])
    for method, ddof in (("sigma_clip", 0), ("meanclip", 1)):
        stats = clipped_stats(values, n_iter=0, method=method, backend="numpy")
        good = np.array([1.0, 2.0, 4.0, 100.0])
        assert np.isclose(stats.mean[0], good.mean())
        assert np.isclose(stats.std[0], good.std(ddof=ddof))
        assert stats.n_kept[0] == 4


def test_input_is_left_alone_unless_overwrite_is_allowed() -> None:
    values = _sky_bins(np.random.default_rng(10), 30, 256)
    before = values.copy()
    first = clipped_stats(values, method="meanclip")
    np.testing.assert_array_equal(values, before)
    second = clipped_stats(values, method="meanclip", overwrite_input=True)
    np.testing.assert_array_equal(second.mean, first.mean)
    assert np.all(np.diff(values[:, :200], axis=1) >= 0)  # sorted in place


def test_sky_package_re_exports_the_shared_functions() -> None:
    assert sky.clipped_stats is clipped_stats
    assert sky.binned_clipped_stats is binned_clipped_stats
    assert sky.binned_median is binned_median
    assert sky.ClippedStats.__module__ == "apflow.tasks.stats"


def test_unknown_backend_or_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'fortran'"):
        clipped_stats(np.zeros((2, 3)), backend="fortran")
    with pytest.raises(ConfigError, match="unknown method 'mode'"):
        clipped_stats(np.zeros((2, 3)), method="mode")

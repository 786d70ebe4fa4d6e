"""Vectorised sigma-clipped statistics (Rubin's MEANCLIP and NPOINT) over many samples at once.

The clipping follows :func:`astropy.stats.sigma_clipped_stats` with ``cenfunc="median"``,
``stdfunc="std"``: each pass computes the median and the (ddof=0) standard deviation of the values
kept so far and keeps ``median - nsigma*std <= x <= median + nsigma*std``; it stops after
``n_iter`` passes or when nothing changes, and the final statistics use every good value inside the
last bounds. This is the documented choice for open question 6 of the reference notes: afw's
MEANCLIP starts from an IQR-based sigma and then centres on the mean, which differs from astropy at
the 1e-3 sigma level; we follow astropy so results can be checked against a standard library.

How it is vectorised: each sample (a bin of pixels, or a pixel across visits) is one row. Rows are
sorted once; a symmetric clip of sorted values keeps a contiguous index range, so every pass is a
binary search per row (all rows at once) and the sums over the kept range are updated by adding and
removing only the values that enter or leave it. There is no Python loop over rows.

Short rows (a bin across visits: 8-64 values) are dominated by that machinery's per-pass numpy
calls rather than by arithmetic, so when numba is installed they take a compiled per-row kernel
(:func:`_clip_short_rows`): insertion sort, then the same passes, bounds and final selection as
above, with two-pass float64 moments (equal to the vectorised path to round-off). Without numba
the vectorised path serves every row length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ClippedStats", "binned_clipped_stats", "binned_median", "clipped_stats"]

#: Rows up to this length (a pixel across visits) are counted directly, longer ones (a bin's
#: pixels) binary-searched.
_DIRECT_COUNT_MAX = 64

#: Rows up to this length take the compiled kernel when numba is installed (insertion sort is
#: quadratic, and long rows are what the vectorised path is built for).
_KERNEL_ROW_MAX = 64


@dataclass(frozen=True)
class ClippedStats:
    """Sigma-clipped statistics of many samples; every array has the samples' shape.

    Attributes
    ----------
    mean : numpy.ndarray
        Clipped mean (MEANCLIP), float64; NaN where no value survived.
    median : numpy.ndarray
        Median of the surviving values, float64.
    std : numpy.ndarray
        Standard deviation (ddof=0) of the surviving values, float64.
    n_kept : numpy.ndarray
        Number of values that survived the clipping, int64.
    n_good : numpy.ndarray
        Number of finite values before clipping (Rubin's NPOINT), int64.
    lower, upper : numpy.ndarray
        The final clipping bounds, float64: a value survived if ``lower <= x <= upper``.
    """

    mean: np.ndarray
    median: np.ndarray
    std: np.ndarray
    n_kept: np.ndarray
    n_good: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def clipped_stats(
    values: np.ndarray,
    nsigma: float = 3.0,
    n_iter: int = 3,
    axis: int = -1,
    backend: str = "auto",
) -> ClippedStats:
    """Sigma-clipped statistics along one axis, ignoring NaN.

    Parameters
    ----------
    values : numpy.ndarray
        Float array; each 1-D slice along ``axis`` is one sample (e.g. ``(ny, nx, n_visits)``
        with ``axis=-1``, or ``(n_visits, n_bins)`` with ``axis=0``). NaN (or inf) marks a
        value to ignore (masked pixel, missing visit). Sorted in the input's float precision;
        sums and bounds in float64.
    nsigma : float
        Clipping half-width in standard deviations (both sides).
    n_iter : int
        Maximum number of clipping passes (astropy's ``maxiters``); 0 gives the plain mean.
    axis : int
        The axis holding each sample's values. Default: the last.
    backend : {"auto", "numba", "numpy"}
        ``"auto"`` runs samples of up to 64 values through the compiled kernel when numba is
        installed and longer ones through the vectorised numpy path; the two agree to round-off.

    Returns
    -------
    ClippedStats
        Arrays of ``values``' shape without ``axis``.

    Raises
    ------
    ConfigError
        On an unknown backend, or ``backend="numba"`` without numba.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    values = np.moveaxis(values, axis, -1)
    lead_shape = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])  # a view whenever the layout allows
    if _use_kernel(backend, flat.shape[1]):
        return _clipped_rows_kernel(flat, lead_shape, nsigma, n_iter)
    return _clipped_rows(np.array(flat, copy=True), lead_shape, nsigma, n_iter)


def numba_available() -> bool:
    """Whether the compiled short-row kernel can be used (``numba`` importable)."""
    try:
        _short_row_kernel()
    except ImportError:
        return False
    return True


def _use_kernel(backend: str, row_length: int) -> bool:
    """Whether rows of this length go through the compiled kernel."""
    from ...errors import ConfigError

    if backend not in ("auto", "numba", "numpy"):
        raise ConfigError(f"clipped_stats: unknown backend {backend!r} (auto, numba, numpy)")
    if backend == "numpy":
        return False
    if backend == "numba":
        if not numba_available():
            raise ConfigError("clipped_stats: backend 'numba' requested but numba is not installed")
        return True
    return row_length <= _KERNEL_ROW_MAX and numba_available()


@functools.cache
def _short_row_kernel() -> Callable[..., None]:
    """:func:`_clip_short_rows` compiled (on first call; machine code cached next to the module)."""
    from numba import njit

    return njit(cache=True, nogil=True)(_clip_short_rows)


def _clipped_rows(
    rows: np.ndarray, lead_shape: tuple[int, ...], nsigma: float, n_iter: int
) -> ClippedStats:
    """:func:`clipped_stats` of a 2-D array of rows that it may modify (sorted in place)."""
    n = rows.shape[1]
    # inf would sort among the finite values at the ends and poison the sums: treat it as NaN
    missing = ~np.isfinite(rows)
    np.copyto(rows, np.nan, where=missing)
    n_good = (n - np.count_nonzero(missing, axis=1)).astype(np.int64)
    del missing
    rows.sort(axis=1)  # NaN sorts last, so a row's good values are rows[r, :n_good[r]]
    n_rows = rows.shape[0]
    row_ids = np.arange(n_rows)

    lo = np.zeros(n_rows, dtype=np.int64)
    hi = n_good.copy()
    # sums relative to a per-row shift (the median of all good values) keep the variance
    # E[d^2] - E[d]^2 free of cancellation when the level is large compared with the scatter
    shift = _range_median(rows, lo, hi)
    shift = np.where(np.isfinite(shift), shift, 0.0).astype(rows.dtype)
    shifted = rows - shift[:, None]
    np.copyto(shifted, 0.0, where=np.isnan(shifted))
    s1 = shifted.sum(axis=1, dtype=np.float64)
    s2 = np.einsum("ij,ij->i", shifted, shifted, dtype=np.float64)
    shift = shift.astype(np.float64)
    del shifted

    lower = np.full(n_rows, -np.inf)
    upper = np.full(n_rows, np.inf)
    for _ in range(n_iter):
        active = hi > lo
        if not active.any():
            break
        center = _range_median(rows, lo, hi)
        _, std = _moments(s1, s2, hi - lo, shift)
        lower = np.where(active, center - nsigma * std, lower)
        upper = np.where(active, center + nsigma * std, upper)
        new_lo = np.maximum(lo, _count_below(rows, n_good, lower, inclusive=False))
        new_hi = np.minimum(hi, _count_below(rows, n_good, upper, inclusive=True))
        new_hi = np.maximum(new_hi, new_lo)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        s1, s2 = _update_sums(rows, row_ids, shift, s1, s2, lo, hi, new_lo, new_hi)
        # like astropy, a row whose clip removed everything keeps its last bounds
        lo, hi = new_lo, new_hi

    # astropy applies the last bounds to all good values, so a value clipped in an early pass
    # comes back if the final bounds include it again
    final_lo = _count_below(rows, n_good, lower, inclusive=False)
    final_hi = np.maximum(_count_below(rows, n_good, upper, inclusive=True), final_lo)
    s1, s2 = _update_sums(rows, row_ids, shift, s1, s2, lo, hi, final_lo, final_hi)
    n_kept = final_hi - final_lo
    mean, std = _moments(s1, s2, n_kept, shift)
    median = _range_median(rows, final_lo, final_hi)
    return ClippedStats(
        mean=mean.reshape(lead_shape),
        median=median.reshape(lead_shape),
        std=std.reshape(lead_shape),
        n_kept=n_kept.reshape(lead_shape),
        n_good=n_good.astype(np.int64).reshape(lead_shape),
        lower=lower.reshape(lead_shape),
        upper=upper.reshape(lead_shape),
    )


def _clipped_rows_kernel(
    rows: np.ndarray, lead_shape: tuple[int, ...], nsigma: float, n_iter: int
) -> ClippedStats:
    """:func:`clipped_stats` of a 2-D array of rows (read only) by the compiled kernel."""
    n_rows = rows.shape[0]
    out = np.empty((5, n_rows), dtype=np.float64)  # mean, median, std, lower, upper
    counts = np.empty((2, n_rows), dtype=np.int64)  # n_kept, n_good
    _short_row_kernel()(rows, float(nsigma), int(n_iter), out, counts)
    mean, median, std, lower, upper = (a.reshape(lead_shape) for a in out)
    return ClippedStats(
        mean=mean,
        median=median,
        std=std,
        n_kept=counts[0].reshape(lead_shape),
        n_good=counts[1].reshape(lead_shape),
        lower=lower,
        upper=upper,
    )


def _clip_short_rows(
    rows: np.ndarray, nsigma: float, n_iter: int, out: np.ndarray, counts: np.ndarray
) -> None:
    """Per-row scalar version of :func:`_clipped_rows` (compiled by numba; see the module notes).

    ``out`` receives ``(mean, median, std, lower, upper)`` and ``counts`` ``(n_kept, n_good)``
    of each row. The sorted good values ``g[0:n_good]`` stay in a buffer; a pass clips the
    current range ``[lo, hi)`` to ``[max(lo, #{g < lower}), min(hi, #{g <= upper}))`` exactly
    as the vectorised path, so both keep the same values.
    """
    n_rows, n = rows.shape
    g = np.empty(n, dtype=np.float64)
    for r in range(n_rows):
        n_good = 0
        for j in range(n):
            x = rows[r, j]
            if math.isfinite(x):
                # insertion sort while gathering: rows are a few dozen values at most
                k = n_good
                while k > 0 and g[k - 1] > x:
                    g[k] = g[k - 1]
                    k -= 1
                g[k] = x
                n_good += 1
        lo = 0
        hi = n_good
        lower = -math.inf
        upper = math.inf
        for _ in range(n_iter):
            if hi <= lo:
                break
            count = hi - lo
            center = 0.5 * (g[lo + (count - 1) // 2] + g[lo + count // 2])
            total = 0.0
            for j in range(lo, hi):
                total += g[j]
            mean = total / count
            squares = 0.0
            for j in range(lo, hi):
                squares += (g[j] - mean) * (g[j] - mean)
            std = math.sqrt(squares / count)
            lower = center - nsigma * std
            upper = center + nsigma * std
            new_lo = 0
            while new_lo < n_good and g[new_lo] < lower:
                new_lo += 1
            new_hi = n_good
            while new_hi > 0 and g[new_hi - 1] > upper:
                new_hi -= 1
            new_lo = max(lo, new_lo)
            new_hi = max(min(hi, new_hi), new_lo)
            if new_lo == lo and new_hi == hi:
                break
            lo = new_lo
            hi = new_hi
        # like astropy, the last bounds apply to all good values (early rejects may return)
        lo = 0
        while lo < n_good and g[lo] < lower:
            lo += 1
        hi = n_good
        while hi > lo and g[hi - 1] > upper:
            hi -= 1
        n_kept = hi - lo
        if n_kept > 0:
            # the same moments as in a pass (numba cannot call a plain helper), over the result
            median = 0.5 * (g[lo + (n_kept - 1) // 2] + g[lo + n_kept // 2])
            total = 0.0
            for j in range(lo, hi):
                total += g[j]
            mean = total / n_kept
            squares = 0.0
            for j in range(lo, hi):
                squares += (g[j] - mean) * (g[j] - mean)
            std = math.sqrt(squares / n_kept)
        else:
            mean = median = std = math.nan
        out[0, r] = mean
        out[1, r] = median
        out[2, r] = std
        out[3, r] = lower
        out[4, r] = upper
        counts[0, r] = n_kept
        counts[1, r] = n_good


def binned_clipped_stats(
    image: np.ndarray,
    bad: np.ndarray | None = None,
    bin_size: int = 32,
    nsigma: float = 3.0,
    n_iter: int = 3,
) -> ClippedStats:
    """Sigma-clipped statistics in square bins of an image (Rubin's binned MEANCLIP background).

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width)`` pixel values; non-finite pixels are ignored.
    bad : numpy.ndarray of bool, optional
        ``(height, width)``, True for pixels to ignore (masked).
    bin_size : int
        Bin side in pixels. Bins start at pixel 0; when the size does not divide the image, the
        last row/column of bins holds the remaining pixels only (see ``bin_centers``).
    nsigma, n_iter : float, int
        Clipping parameters, see :func:`clipped_stats`.

    Returns
    -------
    ClippedStats
        Arrays of shape ``(ceil(height / bin_size), ceil(width / bin_size))``.
    """
    blocks = _bin_rows(image, bad, bin_size)
    return _clipped_rows(blocks.reshape(-1, blocks.shape[-1]), blocks.shape[:-1], nsigma, n_iter)


def binned_median(
    image: np.ndarray, bad: np.ndarray | None, bin_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Median and number of good pixels in square bins (bins as :func:`binned_clipped_stats`).

    Returns
    -------
    median : numpy.ndarray
        float64 ``(ny, nx)``, NaN for bins without a good pixel.
    n_good : numpy.ndarray
        int64 ``(ny, nx)``.
    """
    blocks = _bin_rows(image, bad, bin_size)
    lead_shape = blocks.shape[:-1]
    rows = blocks.reshape(-1, blocks.shape[-1])
    missing = ~np.isfinite(rows)
    np.copyto(rows, np.nan, where=missing)
    n_good = (rows.shape[1] - np.count_nonzero(missing, axis=1)).astype(np.int64)
    rows.sort(axis=1)
    median = _range_median(rows, np.zeros_like(n_good), n_good)
    return median.reshape(lead_shape), n_good.reshape(lead_shape)


def _bin_rows(image: np.ndarray, bad: np.ndarray | None, bin_size: int) -> np.ndarray:
    """``(ny, nx, bin_size**2)`` view/copy of the image's bins, NaN for bad or missing pixels."""
    height, width = image.shape
    ny, nx = -(-height // bin_size), -(-width // bin_size)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float64)
    if bad is not None:
        image = np.where(bad, np.nan, image).astype(image.dtype, copy=False)
    if ny * bin_size != height or nx * bin_size != width:
        padded = np.full((ny * bin_size, nx * bin_size), np.nan, dtype=image.dtype)
        padded[:height, :width] = image
        image = padded
    source = image
    # reshaping the transposed view copies (except in degenerate shapes): the callers sort the
    # result in place, so make sure it never aliases the caller's image
    blocks = image.reshape(ny, bin_size, nx, bin_size).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(ny, nx, bin_size * bin_size)
    if np.shares_memory(blocks, source):
        blocks = blocks.copy()
    return blocks


def _range_median(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Median of the sorted slice ``rows[r, lo[r]:hi[r]]`` of every row (NaN when empty)."""
    count = hi - lo
    last = rows.shape[1] - 1
    i1 = np.clip(lo + (count - 1) // 2, 0, last)
    i2 = np.clip(lo + count // 2, 0, last)
    r = np.arange(rows.shape[0])
    median = 0.5 * (rows[r, i1].astype(np.float64) + rows[r, i2].astype(np.float64))
    return np.where(count > 0, median, np.nan)


def _moments(
    s1: np.ndarray, s2: np.ndarray, count: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and ddof=0 standard deviation from shifted sums (NaN for empty rows)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_d = s1 / count
        var = np.maximum(s2 / count - mean_d * mean_d, 0.0)
    return mean_d + shift, np.sqrt(var)


def _count_below(
    rows: np.ndarray, n_good: np.ndarray, bound: np.ndarray, inclusive: bool
) -> np.ndarray:
    """Per-row ``searchsorted``: how many good values are ``< bound`` (``<=`` if inclusive)."""
    if rows.shape[1] <= _DIRECT_COUNT_MAX:
        # short rows: one comparison pass beats ~log2(n) gather passes; NaN (sorted last, never
        # good) compares False either way
        below = np.less_equal if inclusive else np.less
        return np.count_nonzero(below(rows, bound[:, None]), axis=1).astype(np.int64)
    lo = np.zeros(rows.shape[0], dtype=np.int64)
    hi = n_good.astype(np.int64)
    flat = rows.reshape(-1)
    row_start = np.arange(rows.shape[0]) * rows.shape[1]
    last = max(rows.shape[1] - 1, 0)
    # a fixed number of halvings covers the longest row; rows already converged stay put
    for _ in range(int(rows.shape[1]).bit_length()):
        mid = (lo + hi) // 2
        value = flat[row_start + np.minimum(mid, last)]
        go_right = (value <= bound) if inclusive else (value < bound)
        active = lo < hi
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo


def _update_sums(
    rows: np.ndarray,
    row_ids: np.ndarray,
    shift: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    new_lo: np.ndarray,
    new_hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sums over ``[new_lo, new_hi)`` from the sums over ``[lo, hi)``, touching only the changes."""
    s1 = s1.copy()
    s2 = s2.copy()
    # each end of the range moves independently: values between the old and the new end are
    # added (range grew) or removed (range shrank)
    for start, stop, sign in (
        (np.minimum(lo, new_lo), np.maximum(lo, new_lo), np.where(new_lo < lo, 1.0, -1.0)),
        (np.minimum(hi, new_hi), np.maximum(hi, new_hi), np.where(new_hi > hi, 1.0, -1.0)),
    ):
        counts = stop - start
        total = int(counts.sum())
        if total == 0:
            continue
        which = np.repeat(row_ids, counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        d = rows[which, np.repeat(start, counts) + offsets].astype(np.float64) - shift[which]
        weights = np.repeat(sign, counts)
        s1 += np.bincount(which, weights=weights * d, minlength=len(row_ids))
        s2 += np.bincount(which, weights=weights * d * d, minlength=len(row_ids))
    return s1, s2

"""Sigma-clipped statistics (Rubin's MEANCLIP and NPOINT) of many samples at once.

One home for the clipped mean used across the task packages: binned sky backgrounds (sky,
calibrate), per-bin combines across visits (sky), local backgrounds in annuli (forced) and image
statistics (examples). Two definitions of "clipped", chosen with ``method``:

``"sigma_clip"`` (default)
    :func:`astropy.stats.sigma_clipped_stats` with ``cenfunc="median"``, ``stdfunc="std"``:
    each pass computes the median and the (ddof=0) standard deviation of the values kept so far
    and keeps ``median - nsigma*std <= x <= median + nsigma*std`` among them; it stops after
    ``n_iter`` passes or when nothing changes, and the final statistics use every good value
    inside the last bounds (astropy's behaviour: a value clipped early comes back if the last
    bounds include it). This is the documented choice for open question 6 of the reference
    notes, so results can be checked against a standard library.
``"meanclip"``
    afw's MEANCLIP: the first bounds are ``median +- nsigma * 0.7413 * IQR`` of all good values
    (robust to the bright sources a background bin may hold); each later pass takes the mean and
    the (ddof=1) standard deviation of the values inside the current bounds, and the next bounds
    are ``mean +- nsigma*std`` applied to *all* good values. A pass that would keep fewer than
    two values is not applied (the row keeps the values and bounds it had).

How it is vectorised: each sample (a bin of pixels, a pixel across visits, an annulus) is one
row. Rows are sorted once; a symmetric clip of sorted values keeps a contiguous index range, so
every pass is a binary search per row (all rows at once) and the sums over the kept range are
updated by adding and removing only the values that enter or leave it. There is no Python loop
over rows.

Short rows (a bin across visits: 8-64 values) are dominated by that machinery's per-pass numpy
calls rather than by arithmetic, so when numba is installed they take a compiled per-row kernel
(:func:`_clip_short_rows`): insertion sort, then the same passes, bounds and final selection,
with two-pass float64 moments (equal to the vectorised path to round-off). Without numba the
vectorised path serves every row length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = [
    "CLIP_METHODS",
    "SIGMA_PER_IQR",
    "ClippedStats",
    "binned_clipped_stats",
    "binned_median",
    "clipped_stats",
    "numba_available",
]

#: The values of ``method`` (see the module notes).
CLIP_METHODS = ("sigma_clip", "meanclip")

#: Standard deviation of a Gaussian per unit interquartile range, 1 / (2 * 0.67449).
SIGMA_PER_IQR = 0.7413

#: Rows up to this length (a pixel across visits) are counted directly, longer ones (a bin's
#: pixels) binary-searched.
_DIRECT_COUNT_MAX = 64

#: Up to this many rows, each is searched on its own (see :func:`_count_below`).
_FEW_ROWS = 8

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
        Standard deviation of the surviving values, float64: ddof=0 for ``"sigma_clip"``,
        ddof=1 for ``"meanclip"`` (NaN with a single survivor).
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
    method: str = "sigma_clip",
    overwrite_input: bool = False,
) -> ClippedStats:
    """Sigma-clipped statistics along one axis, ignoring NaN and inf.

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
        Maximum number of clipping passes (astropy's ``maxiters``, afw's ``numIter``); 0 gives
        the plain mean of the good values.
    axis : int
        The axis holding each sample's values. Default: the last.
    backend : {"auto", "numba", "numpy"}
        ``"auto"`` runs samples of up to 64 values through the compiled kernel when numba is
        installed and longer ones through the vectorised numpy path; the two agree to round-off.
    method : {"sigma_clip", "meanclip"}
        Which clipping (see the module notes): astropy's median-centred ``sigma_clip``
        (default) or afw's MEANCLIP (median/IQR start, then mean-centred passes).
    overwrite_input : bool
        Let the numpy path sort ``values`` in place (a float array the caller no longer needs)
        instead of copying it first.

    Returns
    -------
    ClippedStats
        Arrays of ``values``' shape without ``axis``.

    Raises
    ------
    ConfigError
        On an unknown backend or method, or ``backend="numba"`` without numba.
    """
    meanclip = _is_meanclip(method)
    original = np.asarray(values)
    values = original
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    values = np.moveaxis(values, axis, -1)
    lead_shape = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])  # a view whenever the layout allows
    if _use_kernel(backend, flat.shape[1]):
        return _clipped_rows_kernel(flat, lead_shape, nsigma, n_iter, meanclip)
    if not overwrite_input and np.may_share_memory(flat, original):
        flat = flat.copy()
    return _clipped_rows(flat, lead_shape, nsigma, n_iter, meanclip)


def binned_clipped_stats(
    image: np.ndarray,
    bad: np.ndarray | None = None,
    bin_size: int = 32,
    nsigma: float = 3.0,
    n_iter: int = 3,
    method: str = "sigma_clip",
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
    nsigma, n_iter, method : float, int, str
        Clipping parameters, see :func:`clipped_stats`.

    Returns
    -------
    ClippedStats
        Arrays of shape ``(ceil(height / bin_size), ceil(width / bin_size))``.
    """
    meanclip = _is_meanclip(method)
    blocks = _bin_rows(image, bad, bin_size)
    rows = blocks.reshape(-1, blocks.shape[-1])
    return _clipped_rows(rows, blocks.shape[:-1], nsigma, n_iter, meanclip)


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
    n_good = _sort_good_first(rows)
    median = _range_quantile(rows, np.zeros_like(n_good), n_good, 0.5)
    return median.reshape(lead_shape), n_good.reshape(lead_shape)


def numba_available() -> bool:
    """Whether the compiled short-row kernel can be used (``numba`` importable)."""
    try:
        _short_row_kernel()
    except ImportError:
        return False
    return True


def _is_meanclip(method: str) -> bool:
    """Validate ``method`` and say whether it is afw's MEANCLIP."""
    if method not in CLIP_METHODS:
        raise ConfigError(f"clipped_stats: unknown method {method!r} ({', '.join(CLIP_METHODS)})")
    return method == "meanclip"


def _use_kernel(backend: str, row_length: int) -> bool:
    """Whether rows of this length go through the compiled kernel."""
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


def _sort_good_first(rows: np.ndarray) -> np.ndarray:
    """Sort each row in place with its finite values first; return their number per row."""
    rows.sort(axis=1)  # NaN sorts last, -inf first and +inf just before the NaN
    n_rows, n = rows.shape
    n_good = _count_below(rows, np.full(n_rows, n), np.full(n_rows, np.inf), inclusive=True)
    # inf would sit among the good values at the ends and poison the sums: make it NaN, in the
    # few rows that have any (testing the ends of sorted rows beats a pass over every value)
    ends = rows[np.arange(n_rows), np.maximum(n_good - 1, 0)]
    with_inf = np.flatnonzero((n_good > 0) & (np.isinf(rows[:, 0]) | np.isinf(ends)))
    if with_inf.size:
        fixed = rows[with_inf]
        fixed[np.isinf(fixed)] = np.nan
        fixed.sort(axis=1)
        rows[with_inf] = fixed
        n_good[with_inf] = np.count_nonzero(np.isfinite(fixed), axis=1)
    return n_good


def _shifted_sums(
    rows: np.ndarray, shift: np.ndarray, n_good: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float64 sums of ``rows - shift`` and of its square over the good values.

    The difference is rounded to the rows' precision, as :func:`_update_sums` does.
    """
    n_rows, n = rows.shape
    s1 = np.zeros(n_rows)
    s2 = np.zeros(n_rows)
    # blocks of at most 2**18 values keep the temporaries in cache: one pass over memory
    # instead of four
    width = min(n, 1 << 18)
    height = max(1, (1 << 18) // max(width, 1))
    for top in range(0, n_rows, height):
        band = slice(top, top + height)
        for left in range(0, n, width):
            d = rows[band, left : left + width] - shift[band, None]
            # the good values are each sorted row's first n_good
            columns = np.arange(left, left + d.shape[1])
            np.copyto(d, 0.0, where=columns[None, :] >= n_good[band, None])
            s1[band] += d.sum(axis=1, dtype=np.float64)
            s2[band] += np.square(d, dtype=np.float64).sum(axis=1)
    return s1, s2


def _clipped_rows(
    rows: np.ndarray, lead_shape: tuple[int, ...], nsigma: float, n_iter: int, meanclip: bool
) -> ClippedStats:
    """:func:`clipped_stats` of a 2-D array of rows that it may modify (sorted in place)."""
    n_good = _sort_good_first(rows)
    n_rows = rows.shape[0]
    row_ids = np.arange(n_rows)
    ddof = 1 if meanclip else 0
    # a pass needs a centre and a width: MEANCLIP's (ddof=1) width needs two values, and a pass
    # that would leave fewer than two is not applied; sigma_clip accepts any outcome
    min_count, min_keep = (2, 2) if meanclip else (1, 0)

    lo = np.zeros(n_rows, dtype=np.int64)
    hi = n_good.copy()
    # sums relative to a per-row shift (the median of all good values) keep the variance
    # E[d^2] - E[d]^2 free of cancellation when the level is large compared with the scatter
    median_all = _range_quantile(rows, lo, hi, 0.5)
    shift = np.where(np.isfinite(median_all), median_all, 0.0).astype(rows.dtype)
    s1, s2 = _shifted_sums(rows, shift, n_good)

    lower = np.full(n_rows, -np.inf)
    upper = np.full(n_rows, np.inf)
    done = np.zeros(n_rows, dtype=bool)
    for iteration in range(n_iter):
        active = (hi - lo >= min_count) & ~done
        if not active.any():
            break
        if meanclip and iteration == 0:
            center = median_all
            iqr = _range_quantile(rows, lo, hi, 0.75) - _range_quantile(rows, lo, hi, 0.25)
            width = SIGMA_PER_IQR * iqr
        else:
            mean, width = _moments(s1, s2, hi - lo, shift, ddof)
            center = mean if meanclip else _range_quantile(rows, lo, hi, 0.5)
        new_lower = center - nsigma * width
        new_upper = center + nsigma * width
        new_lo = _count_below(rows, n_good, new_lower, inclusive=False)
        new_hi = _count_below(rows, n_good, new_upper, inclusive=True)
        if not meanclip:
            # astropy clips the values kept so far; afw applies the bounds to all of them
            new_lo = np.maximum(lo, new_lo)
            new_hi = np.minimum(hi, new_hi)
        new_hi = np.maximum(new_hi, new_lo)
        accept = active & (new_hi - new_lo >= min_keep)
        done |= active & ~accept
        # like astropy, a row whose clip removed everything keeps its last bounds
        lower = np.where(accept, new_lower, lower)
        upper = np.where(accept, new_upper, upper)
        new_lo = np.where(accept, new_lo, lo)
        new_hi = np.where(accept, new_hi, hi)
        # unchanged kept values give unchanged bounds, except after MEANCLIP's IQR start
        if (iteration > 0 or not meanclip) and (
            np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi)
        ):
            break
        s1, s2 = _update_sums(rows, row_ids, shift, s1, s2, lo, hi, new_lo, new_hi)
        lo, hi = new_lo, new_hi

    if meanclip:
        final_lo, final_hi = lo, hi  # every pass already applied its bounds to all values
    else:
        # astropy applies the last bounds to all good values, so a value clipped in an early
        # pass comes back if the final bounds include it again
        final_lo = _count_below(rows, n_good, lower, inclusive=False)
        final_hi = np.maximum(_count_below(rows, n_good, upper, inclusive=True), final_lo)
        s1, s2 = _update_sums(rows, row_ids, shift, s1, s2, lo, hi, final_lo, final_hi)
    n_kept = final_hi - final_lo
    mean, std = _moments(s1, s2, n_kept, shift, ddof)
    median = _range_quantile(rows, final_lo, final_hi, 0.5)
    return ClippedStats(
        mean=mean.reshape(lead_shape),
        median=median.reshape(lead_shape),
        std=std.reshape(lead_shape),
        n_kept=n_kept.reshape(lead_shape),
        n_good=n_good.reshape(lead_shape),
        lower=lower.reshape(lead_shape),
        upper=upper.reshape(lead_shape),
    )


def _clipped_rows_kernel(
    rows: np.ndarray, lead_shape: tuple[int, ...], nsigma: float, n_iter: int, meanclip: bool
) -> ClippedStats:
    """:func:`clipped_stats` of a 2-D array of rows (read only) by the compiled kernel."""
    n_rows = rows.shape[0]
    out = np.empty((5, n_rows), dtype=np.float64)  # mean, median, std, lower, upper
    counts = np.empty((2, n_rows), dtype=np.int64)  # n_kept, n_good
    _short_row_kernel()(rows, float(nsigma), int(n_iter), bool(meanclip), out, counts)
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
    rows: np.ndarray,
    nsigma: float,
    n_iter: int,
    meanclip: bool,
    out: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Per-row scalar version of :func:`_clipped_rows` (compiled by numba; see the module notes).

    ``out`` receives ``(mean, median, std, lower, upper)`` and ``counts`` ``(n_kept, n_good)``
    of each row. The sorted good values ``g[0:n_good]`` stay in a buffer; a pass clips the
    current range ``[lo, hi)`` (or, for MEANCLIP, all good values) to the values within the
    bounds exactly as the vectorised path, so both keep the same values.
    """
    n_rows, n = rows.shape
    g = np.empty(n, dtype=np.float64)
    ddof = 1 if meanclip else 0
    min_count = 2 if meanclip else 1
    min_keep = 2 if meanclip else 0
    sigma_per_iqr = SIGMA_PER_IQR  # a module constant numba freezes at compile time
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
        for iteration in range(n_iter):
            count = hi - lo
            if count < min_count:
                break
            if meanclip and iteration == 0:
                center = 0.5 * (g[(count - 1) // 2] + g[count // 2])
                # numpy's linear-interpolation quartiles of the sorted values
                position = 0.25 * (count - 1)
                below = int(math.floor(position))
                above = min(below + 1, count - 1)
                q25 = g[below] + (position - below) * (g[above] - g[below])
                position = 0.75 * (count - 1)
                below = int(math.floor(position))
                above = min(below + 1, count - 1)
                q75 = g[below] + (position - below) * (g[above] - g[below])
                width = sigma_per_iqr * (q75 - q25)
            else:
                total = 0.0
                for j in range(lo, hi):
                    total += g[j]
                mean = total / count
                squares = 0.0
                for j in range(lo, hi):
                    squares += (g[j] - mean) * (g[j] - mean)
                width = math.sqrt(squares / (count - ddof))
                if meanclip:
                    center = mean
                else:
                    center = 0.5 * (g[lo + (count - 1) // 2] + g[lo + count // 2])
            new_lower = center - nsigma * width
            new_upper = center + nsigma * width
            new_lo = 0
            while new_lo < n_good and g[new_lo] < new_lower:
                new_lo += 1
            new_hi = n_good
            while new_hi > 0 and g[new_hi - 1] > new_upper:
                new_hi -= 1
            if not meanclip:
                new_lo = max(lo, new_lo)
                new_hi = min(hi, new_hi)
            new_hi = max(new_hi, new_lo)
            if new_hi - new_lo < min_keep:
                break
            lower = new_lower
            upper = new_upper
            if (iteration > 0 or not meanclip) and new_lo == lo and new_hi == hi:
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
        mean = median = std = math.nan
        if n_kept > 0:
            # the same moments as in a pass (numba cannot call a plain helper), over the result
            median = 0.5 * (g[lo + (n_kept - 1) // 2] + g[lo + n_kept // 2])
            total = 0.0
            for j in range(lo, hi):
                total += g[j]
            mean = total / n_kept
            if n_kept > ddof:
                squares = 0.0
                for j in range(lo, hi):
                    squares += (g[j] - mean) * (g[j] - mean)
                std = math.sqrt(squares / (n_kept - ddof))
        out[0, r] = mean
        out[1, r] = median
        out[2, r] = std
        out[3, r] = lower
        out[4, r] = upper
        counts[0, r] = n_kept
        counts[1, r] = n_good


def _bin_rows(image: np.ndarray, bad: np.ndarray | None, bin_size: int) -> np.ndarray:
    """``(ny, nx, bin_size**2)`` copy of the image's bins, NaN for bad or missing pixels."""
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


def _range_quantile(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolation quantile (numpy's default) of every sorted ``rows[r, lo[r]:hi[r]]``.

    NaN where the slice is empty; ``q=0.5`` is the median (mean of the two middle values).
    """
    count = hi - lo
    last = rows.shape[1] - 1
    r = np.arange(rows.shape[0])
    if q == 0.5:
        # the median, every pass: two gathers and no interpolation arithmetic
        v_below = rows[r, np.clip(lo + (count - 1) // 2, 0, last)].astype(np.float64)
        v_above = rows[r, np.clip(lo + count // 2, 0, last)].astype(np.float64)
        return np.where(count > 0, 0.5 * (v_below + v_above), np.nan)
    position = q * np.maximum(count - 1, 0)
    below = np.floor(position).astype(np.int64)
    fraction = position - below
    above = np.minimum(below + 1, np.maximum(count - 1, 0))
    v_below = rows[r, np.clip(lo + below, 0, last)].astype(np.float64)
    v_above = rows[r, np.clip(lo + above, 0, last)].astype(np.float64)
    return np.where(count > 0, v_below + fraction * (v_above - v_below), np.nan)


def _moments(
    s1: np.ndarray, s2: np.ndarray, count: np.ndarray, shift: np.ndarray, ddof: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from shifted sums (NaN for rows without enough values).

    An emptied row's sums hold round-off left by the values taken out, so its mean is set to
    NaN rather than computed (that would give +-inf); the safe divisors also spare numpy's
    slow path for 0/0.
    """
    mean_d = s1 / np.maximum(count, 1)
    sum_sq = np.maximum(s2 - s1 * mean_d, 0.0)
    std = np.sqrt(sum_sq / np.maximum(count - ddof, 1))
    mean = np.where(count > 0, mean_d + shift.astype(np.float64), np.nan)
    return mean, np.where(count > ddof, std, np.nan)


def _count_below(
    rows: np.ndarray, n_good: np.ndarray, bound: np.ndarray, inclusive: bool
) -> np.ndarray:
    """Per-row ``searchsorted``: how many good values are ``< bound`` (``<=`` if inclusive)."""
    if rows.shape[0] <= _FEW_ROWS:
        # a handful of long samples (a whole CCD as one): numpy's own search per row costs
        # microseconds where the vectorised halving pays ~log2(n) rounds of array calls
        side = "right" if inclusive else "left"
        found = [
            np.searchsorted(row[:good], value, side) if not np.isnan(value) else 0
            for row, good, value in zip(rows, n_good, bound, strict=True)
        ]
        return np.array(found, dtype=np.int64)
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
        # the differences rounded exactly as in the initial sums (input precision), so a value
        # leaving the range takes out what it put in: a float32 outlier far from the shift
        # differs from its float64 difference by up to half its ulp
        d = (rows[which, np.repeat(start, counts) + offsets] - shift[which]).astype(np.float64)
        weights = np.repeat(sign, counts)
        s1 += np.bincount(which, weights=weights * d, minlength=len(row_ids))
        s2 += np.bincount(which, weights=weights * d * d, minlength=len(row_ids))
    return s1, s2

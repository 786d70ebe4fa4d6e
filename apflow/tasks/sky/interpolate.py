"""Small-grid interpolation: bin centres, separable cubic upsampling, filling of bad bins.

Binned backgrounds (32-px sky bins, focal-plane superpixels sampled on a CCD) are smooth on the
scale of a bin, so a full-resolution image is the separable product ``Wy @ grid @ Wx.T`` of two
interpolation matrices. The interpolant is a local cubic (Catmull-Rom: cubic Hermite with
centred-difference slopes, valid for unequal knot spacing): it passes through every knot, is
exact for quadratics on equal spacing, has a continuous first derivative, and each pixel depends
on four knots only, so the matrices are sparse and a 4096 x 4096 image costs about 0.1 s. Beyond
the first and last knot (half a bin at each edge) it extrapolates linearly with the end slope.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from ...errors import TaskError

__all__ = [
    "bin_centers",
    "fill_bad_bins",
    "interpolation_matrix",
    "upsample_bins",
    "upsample_grid",
]


def bin_centers(n_pixels: int, bin_size: int) -> np.ndarray:
    """Pixel coordinate of the centre of each bin along one axis.

    Bins start at pixel 0 and hold ``bin_size`` pixels; the last bin holds what remains, and its
    centre is the centre of those pixels (pixel centres are at integer coordinates).

    Parameters
    ----------
    n_pixels : int
        Length of the axis in pixels.
    bin_size : int
        Bin length in pixels.

    Returns
    -------
    numpy.ndarray
        ``(ceil(n_pixels / bin_size),)`` float64 coordinates in pixels.
    """
    starts = np.arange(0, n_pixels, bin_size, dtype=np.float64)
    stops = np.minimum(starts + bin_size, n_pixels)
    return (starts + stops - 1.0) / 2.0


def interpolation_matrix(knots: np.ndarray, positions: np.ndarray) -> scipy.sparse.csr_matrix:
    """Sparse weights ``W`` such that ``W @ values`` interpolates ``values`` given at ``knots``.

    Local cubic (Catmull-Rom) interpolation as described in the module docstring; linear for two
    knots and constant for one (Rubin's REDUCE_INTERP_ORDER).

    Parameters
    ----------
    knots : numpy.ndarray
        ``(n,)`` strictly increasing coordinates of the samples.
    positions : numpy.ndarray
        ``(m,)`` coordinates to interpolate to (same units).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(m, n)`` float64 weights; each row sums to 1 and has at most 4 non-zero entries.
    """
    x = np.asarray(knots, dtype=np.float64)
    p = np.asarray(positions, dtype=np.float64)
    n, m = x.size, p.size
    rows = np.arange(m)
    if n == 1:
        return scipy.sparse.csr_matrix((np.ones(m), (rows, np.zeros(m, dtype=int))), shape=(m, 1))
    # the slope at knot i is (y[hi] - y[lo]) / (x[hi] - x[lo]): centred inside, one-sided at
    # the ends; as weights on y it is -1/span at lo and +1/span at hi
    idx = np.arange(n)
    lo, hi = np.maximum(idx - 1, 0), np.minimum(idx + 1, n - 1)
    inv_span = 1.0 / (x[hi] - x[lo])
    if n == 2:
        lo[:], hi[:] = 0, 1  # a straight line: both slopes are the chord
    k = np.clip(np.searchsorted(x, p, side="right") - 1, 0, n - 2)
    h = x[k + 1] - x[k]
    t = (p - x[k]) / h
    entries = []
    if n > 2:
        h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
        h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
        entries = [
            (k, h00),
            (k + 1, h01),
            (lo[k], -h * h10 * inv_span[k]),
            (hi[k], h * h10 * inv_span[k]),
            (lo[k + 1], -h * h11 * inv_span[k + 1]),
            (hi[k + 1], h * h11 * inv_span[k + 1]),
        ]
    else:
        entries = [(k, 1.0 - t), (k + 1, t)]
    # outside the knots: the end value plus the end slope times the distance
    left, right = p < x[0], p > x[-1]
    outside = left | right
    end = np.where(left, 0, n - 1)
    dist = np.where(left, p - x[0], p - x[-1])
    cols = [np.where(outside, end, c) if np.ndim(c) else c for c, _ in entries]
    vals = [np.where(outside, 0.0, v) for _, v in entries]
    cols += [end, lo[end], hi[end]]
    vals += [
        np.where(outside, 1.0, 0.0),
        np.where(outside, -dist * inv_span[end], 0.0),
        np.where(outside, dist * inv_span[end], 0.0),
    ]
    matrix = scipy.sparse.coo_matrix(
        (
            np.concatenate([np.broadcast_to(v, m) for v in vals]),
            (np.tile(rows, len(cols)), np.concatenate([np.broadcast_to(c, m) for c in cols])),
        ),
        shape=(m, n),
    ).tocsr()
    matrix.eliminate_zeros()
    return matrix


def upsample_grid(
    grid: np.ndarray,
    knots_y: np.ndarray,
    knots_x: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Interpolate a smooth grid sampled at ``(knots_y, knots_x)`` to every pixel of an image.

    Parameters
    ----------
    grid : numpy.ndarray
        ``(len(knots_y), len(knots_x))`` finite values.
    knots_y, knots_x : numpy.ndarray
        Pixel coordinates of the grid rows and columns.
    shape : tuple of int
        ``(height, width)`` of the output image.

    Returns
    -------
    numpy.ndarray
        float32 ``shape`` image.
    """
    height, width = shape
    wy = interpolation_matrix(knots_y, np.arange(height))
    wx = interpolation_matrix(knots_x, np.arange(width))
    return separable_product(wy, grid, wx)


def separable_product(
    wy: scipy.sparse.spmatrix, grid: np.ndarray, wx: scipy.sparse.spmatrix
) -> np.ndarray:
    """``wy @ grid @ wx.T`` in float32, keeping the sparse factors on the outside."""
    grid32 = np.asarray(grid, dtype=np.float32)
    wy32 = wy.astype(np.float32)
    wx32 = wx.astype(np.float32)
    columns = np.ascontiguousarray((wx32 @ grid32.T).T)  # (ny_knots, width)
    return np.asarray(wy32 @ columns, dtype=np.float32)


def upsample_bins(binned: np.ndarray, shape: tuple[int, int], bin_size: int) -> np.ndarray:
    """Full-resolution image whose bin means are the given bin values.

    Bin values are means over their bins, not samples at the bin centres: interpolating them as
    samples flattens features a few bins wide (a 60-px ripple sampled by 32-px bins loses ~10% of
    its amplitude). Instead the knot values at the bin centres are solved for (a small banded
    system per axis) so that the interpolated image, averaged over each bin, gives back exactly
    the bin's value; binning the result again reproduces ``binned``.

    Parameters
    ----------
    binned : numpy.ndarray
        ``(ceil(height / bin_size), ceil(width / bin_size))`` finite bin means.
    shape : tuple of int
        ``(height, width)`` of the image the bins were measured on.
    bin_size : int
        Bin side in pixels (the last bin of an axis may be partial, as in
        ``binned_clipped_stats``).

    Returns
    -------
    numpy.ndarray
        float32 ``shape`` image.
    """
    height, width = shape
    knots = np.asarray(binned, dtype=np.float64)
    knots = np.linalg.solve(_bin_mean_matrix(height, bin_size), knots)
    knots = np.linalg.solve(_bin_mean_matrix(width, bin_size), knots.T).T
    return separable_product(bin_matrix(height, bin_size), knots, bin_matrix(width, bin_size))


@functools.lru_cache(maxsize=32)
def _bin_mean_matrix(n_pixels: int, bin_size: int) -> np.ndarray:
    """``A[i, k]``: mean over bin ``i`` of the interpolant of a unit value at knot ``k``."""
    weights = bin_matrix(n_pixels, bin_size).toarray()
    n_bins = weights.shape[1]
    which = np.arange(n_pixels) // bin_size
    sums = np.zeros((n_bins, n_bins))
    np.add.at(sums, which, weights)
    return sums / np.bincount(which, minlength=n_bins)[:, None]


@functools.lru_cache(maxsize=32)
def bin_matrix(n_pixels: int, bin_size: int) -> scipy.sparse.csr_matrix:
    """Cached ``interpolation_matrix(bin_centers(n, b), arange(n))`` (treat as read-only)."""
    return interpolation_matrix(bin_centers(n_pixels, bin_size), np.arange(n_pixels))


def fill_bad_bins(values: np.ndarray, bad: np.ndarray, smoothness: int = 1) -> np.ndarray:
    """Replace bad bins of a 2-D grid by a smooth surface through the good bins.

    The filled values minimise the squared discrete Laplacian (``smoothness=1``, a membrane:
    each bad bin is the mean of its edge neighbours; never overshoots, extrapolates flat) or the
    squared discrete bilaplacian (``smoothness=2``, a thin plate: continues gradients, so it
    extrapolates linearly across a border, at the price of possible overshoot), with the good
    bins fixed. One sparse linear solve; good bins are untouched. Every bad bin is filled,
    holes, whole rows and the border alike: this answers open question 4 of the reference notes
    (Rubin's row-then-column 1-D pass re-examines only NaN bins, so low-count finite bins of a
    fully bad row survive).

    Parameters
    ----------
    values : numpy.ndarray
        ``(ny, nx)`` grid; bad entries may hold anything (NaN included).
    bad : numpy.ndarray of bool
        ``(ny, nx)``, True where the value must be replaced; non-finite values count as bad.
    smoothness : int
        1 (membrane) or 2 (thin plate).

    Returns
    -------
    numpy.ndarray
        float64 ``(ny, nx)`` grid without bad entries.

    Raises
    ------
    TaskError
        If no bin is good.
    """
    values = np.asarray(values, dtype=np.float64)
    bad = np.asarray(bad, dtype=bool) | ~np.isfinite(values)
    if bad.all():
        raise TaskError("no good bins to interpolate from")
    filled = np.where(bad, 0.0, values)
    if not bad.any():
        return filled
    laplacian = _grid_laplacian(values.shape)
    if smoothness == 1:
        operator = laplacian
    elif smoothness == 2:
        # second differences (2-D inside, along the edge on the border) vanish on planes, so
        # planes cost nothing and are continued exactly; a whisper of membrane pins the four
        # grid corners, which no second difference sees
        curvature = _second_differences(values.shape)
        operator = (curvature.T @ curvature + 1e-6 * laplacian).tocsr()
    else:
        raise ValueError(f"smoothness must be 1 or 2, got {smoothness}")
    flat_bad = bad.ravel()
    # the operator's rows at the bad bins = 0, with the good bins moved to the right-hand side
    rows = operator[flat_bad]
    system, known = rows[:, flat_bad], rows[:, ~flat_bad]
    rhs = -(known @ filled.ravel()[~flat_bad])
    solution = scipy.sparse.linalg.spsolve(system.tocsc(), rhs)
    out = filled.ravel()
    out[flat_bad] = solution
    return out.reshape(values.shape)


@functools.lru_cache(maxsize=16)
def _grid_laplacian(shape: tuple[int, int]) -> scipy.sparse.csr_matrix:
    """Graph Laplacian of a grid with edge-neighbour links (natural boundary at the border)."""
    ny, nx = shape
    index = np.arange(ny * nx).reshape(shape)
    pairs = [
        (index[:, :-1].ravel(), index[:, 1:].ravel()),
        (index[:-1, :].ravel(), index[1:, :].ravel()),
    ]
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    n = ny * nx
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(2 * a.size), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)
    ).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return (scipy.sparse.diags(degree) - adjacency).tocsr()


@functools.lru_cache(maxsize=16)
def _second_differences(shape: tuple[int, int]) -> scipy.sparse.csr_matrix:
    """Discrete Laplacian rows of interior bins plus 1-D second differences along the border."""
    ny, nx = shape
    index = np.arange(ny * nx).reshape(shape)
    rows, cols, vals = [], [], []
    n_rows = 0

    def add(centre: np.ndarray, neighbours: list[np.ndarray]) -> None:
        nonlocal n_rows
        count = centre.size
        ids = np.arange(n_rows, n_rows + count)
        rows.extend([ids] * (len(neighbours) + 1))
        cols.extend([centre, *neighbours])
        vals.extend([np.full(count, float(len(neighbours)))] + [-np.ones(count)] * len(neighbours))
        n_rows += count

    if ny > 2 and nx > 2:
        add(
            index[1:-1, 1:-1].ravel(),
            [
                index[:-2, 1:-1].ravel(),
                index[2:, 1:-1].ravel(),
                index[1:-1, :-2].ravel(),
                index[1:-1, 2:].ravel(),
            ],
        )
    if nx > 2:
        for row in {0, ny - 1}:
            add(index[row, 1:-1], [index[row, :-2], index[row, 2:]])
    if ny > 2:
        for col in {0, nx - 1}:
            add(index[1:-1, col], [index[:-2, col], index[2:, col]])
    if not rows:
        return scipy.sparse.csr_matrix((0, ny * nx))
    return scipy.sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, ny * nx),
    )

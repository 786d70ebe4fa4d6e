"""Compiled Lanczos resampling kernel of :mod:`apflow.tasks.diffim.warp`.

The algorithm is documented in :mod:`~apflow.tasks.diffim.warp`; this module holds only the
per-pixel loop. Numba compiles on first call and caches the machine code next to the module.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: Sub-pixel phases of the tabulated Lanczos weights (linear interpolation in between keeps
#: the weights within ~1e-6 of the exact ones).
_TABLE_STEPS = 1024


def lanczos_table(order: int = 3, steps: int = _TABLE_STEPS) -> np.ndarray:
    """Lanczos weights of the taps ``floor(u) - order + 1 .. floor(u) + order``.

    Parameters
    ----------
    order : int
        Lanczos order ``a`` (kernel ``sinc(t) sinc(t / a)`` for ``|t| < a``, 2a taps).
    steps : int
        Tabulated sub-pixel phases.

    Returns
    -------
    numpy.ndarray
        ``(steps + 1, 2 order)``: row ``k`` holds the weights for the fractional position
        ``k / steps`` (not normalised; the kernel normalises after interpolating).
    """
    frac = np.arange(steps + 1) / steps
    t = frac[:, None] - (np.arange(2 * order) - (order - 1))[None, :]
    return np.sinc(t) * np.sinc(t / order)


@njit(inline="always")
def _weights(frac: float, table: np.ndarray, out: np.ndarray) -> float:
    """Normalised interpolated weights into ``out``; returns their sum of squares."""
    steps = table.shape[0] - 1
    taps = table.shape[1]
    pos = frac * steps
    k = min(int(pos), steps - 1)
    f = pos - k
    total = 0.0
    for i in range(taps):
        w = table[k, i] + f * (table[k + 1, i] - table[k, i])
        out[i] = w
        total += w
    sq = 0.0
    for i in range(taps):
        out[i] /= total
        sq += out[i] * out[i]
    return sq


@njit(inline="always")
def _bilinear(grid: np.ndarray, gy: float, gx: float) -> float:
    j = min(int(gy), grid.shape[0] - 2)
    i = min(int(gx), grid.shape[1] - 2)
    fy = gy - j
    fx = gx - i
    top = grid[j, i] + fx * (grid[j, i + 1] - grid[j, i])
    bottom = grid[j + 1, i] + fx * (grid[j + 1, i + 1] - grid[j + 1, i])
    return top + fy * (bottom - top)


@njit(cache=True, nogil=True)
def lanczos_warp(
    src_image: np.ndarray,
    src_variance: np.ndarray,
    src_mask: np.ndarray,
    src_footprint_bad: np.ndarray,
    no_data_bit: int,
    node_u: np.ndarray,
    node_v: np.ndarray,
    node_area: np.ndarray,
    node_step: int,
    table: np.ndarray,
    out_image: np.ndarray,
    out_variance: np.ndarray,
    out_variance_uncorrelated: np.ndarray,
    out_mask: np.ndarray,
) -> None:
    """Resample ``src`` into the output pixels that still carry ``no_data_bit``.

    The source position ``(u, v)`` and area ratio of output pixel ``(c, r)`` are bilinear
    interpolations of the ``node_*`` grids, whose node ``[j, i]`` is output pixel
    ``(i * node_step, j * node_step)``. ``src_footprint_bad[y, x]`` is nonzero when a source pixel
    of the kernel footprint starting at ``(x, y)`` is NO_DATA or non-finite (``src_image`` holds
    0 there).

    Image: normalised separable Lanczos sum (``table.shape[1]`` taps per axis) times the area. Variance: the bilinear interpolation of
    the source variance, times ``area^2 sum(w^2)`` (per pixel) or ``area`` (uncorrelated
    equivalent). Mask: OR over the 2x2 nearest source pixels. Outputs whose kernel footprint
    leaves the source or touches a bad pixel keep NaN and ``no_data_bit``.
    """
    height, width = src_image.shape
    nrows, ncols = out_image.shape
    taps = table.shape[1]
    lead = taps // 2 - 1
    wx = np.empty(taps)
    wy = np.empty(taps)
    inv_step = 1.0 / node_step
    for r in range(nrows):
        gy = r * inv_step
        for c in range(ncols):
            if (out_mask[r, c] & no_data_bit) == 0:
                continue
            gx = c * inv_step
            uu = _bilinear(node_u, gy, gx)
            vv = _bilinear(node_v, gy, gx)
            if not (math.isfinite(uu) and math.isfinite(vv)):
                continue
            fu = math.floor(uu)
            fv = math.floor(vv)
            x0 = int(fu) - lead
            y0 = int(fv) - lead
            if x0 < 0 or y0 < 0 or x0 + taps > width or y0 + taps > height:
                continue
            if src_footprint_bad[y0, x0]:
                continue
            sq_x = _weights(uu - fu, table, wx)
            sq_y = _weights(vv - fv, table, wy)
            value = 0.0
            for j in range(taps):
                row = 0.0
                for i in range(taps):
                    row += wx[i] * src_image[y0 + j, x0 + i]
                value += wy[j] * row
            # variance is smooth on the kernel's scale: interpolate it bilinearly and apply the
            # kernel's sum of squared weights instead of a sum over all taps
            ax = uu - fu
            ay = vv - fv
            xa = x0 + lead
            ya = y0 + lead
            v_top = src_variance[ya, xa] + ax * (src_variance[ya, xa + 1] - src_variance[ya, xa])
            v_bot = src_variance[ya + 1, xa] + ax * (
                src_variance[ya + 1, xa + 1] - src_variance[ya + 1, xa]
            )
            var = v_top + ay * (v_bot - v_top)
            a = _bilinear(node_area, gy, gx)
            out_image[r, c] = value * a
            out_variance[r, c] = var * sq_x * sq_y * a * a
            out_variance_uncorrelated[r, c] = var * a
            out_mask[r, c] = (
                src_mask[ya, xa]
                | src_mask[ya, xa + 1]
                | src_mask[ya + 1, xa]
                | src_mask[ya + 1, xa + 1]
            )

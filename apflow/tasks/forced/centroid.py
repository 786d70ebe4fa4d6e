"""Measured centroid near the reference position: iterated Gaussian-weighted first moment.

Forced photometry keeps the reference position; the measured centroid is a diagnostic (proper
motion, bad astrometry, mismatched reference). With a Gaussian weight of width ``sigma_w``
centred at ``c`` and a source of Gaussian width ``sigma`` at ``t``, the weighted first moment is
``m = (t - c) sigma_w^2 / (sigma^2 + sigma_w^2)``, so ``c + m (sigma^2 + sigma_w^2) / sigma_w^2``
recovers ``t`` in one step (exactly for a Gaussian PSF); a few iterations with the weight
re-centred make it converge for other profiles. The weight is the PSF's Gaussian-equivalent
sigma, which maximises S/N for point sources.

The error is the linear propagation of the pixel variances through the last step:
``sigma_t^2 = k^2 sum(w^2 (u - c - m)^2 V) / (sum w D)^2`` with ``k = 1 + sigma^2 / sigma_w^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stamps import stamp_offsets


@dataclass(frozen=True)
class Centroid:
    """Centroids relative to the stamp centre pixel (all ``(n,)``; NaN where ``flag``)."""

    dx: np.ndarray
    dy: np.ndarray
    dx_err: np.ndarray
    dy_err: np.ndarray
    flag: np.ndarray


def gaussian_weighted_centroid(
    data: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    sigma: np.ndarray,
    iterations: int = 3,
    max_shift: float = 2.0,
) -> Centroid:
    """Centroid of each stamp, starting at the reference position.

    Parameters
    ----------
    data, variance : numpy.ndarray
        ``(n, S, S)`` stamps (values where ``good`` is False are ignored).
    good : numpy.ndarray
        ``(n, S, S)`` bool pixels to use.
    x0, y0 : numpy.ndarray
        ``(n,)`` reference position relative to the stamp centre pixel (pixels, |x0| <= 0.5).
    sigma : numpy.ndarray
        ``(n,)`` Gaussian sigma of the PSF (pixels), also the weight's.
    iterations : int
        Number of re-centred moment steps (>= 1).
    max_shift : float
        Pixels: a centroid farther than this from the reference is a failure (flagged, NaN).

    Returns
    -------
    Centroid
        ``flag`` is True where the weighted flux is not positive, a value is not finite, or the
        centroid moved farther than ``max_shift``.
    """
    u = stamp_offsets(data.shape[1] // 2).astype(np.float64)
    d = np.where(good, data, 0.0)
    v = np.where(good, variance, 0.0)
    gain = 2.0  # 1 + sigma^2 / sigma_w^2 with sigma_w = sigma
    inv_two_s2 = 1.0 / (2.0 * sigma * sigma)
    cx = x0.astype(np.float64).copy()
    cy = y0.astype(np.float64).copy()
    limit = data.shape[1] // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max(iterations, 1)):
            ux = u[None, :] - cx[:, None]
            uy = u[None, :] - cy[:, None]
            wx = np.exp(-ux * ux * inv_two_s2[:, None])
            wy = np.exp(-uy * uy * inv_two_s2[:, None])
            w = wy[:, :, None] * wx[:, None, :] * good
            wd = w * d
            total = wd.sum(axis=(1, 2))
            mx = (wd * ux[:, None, :]).sum(axis=(1, 2)) / total
            my = (wd * uy[:, :, None]).sum(axis=(1, 2)) / total
            # Keep a noisy step inside the stamp; a wild one is caught by max_shift below.
            cx_new = np.clip(cx + gain * mx, -limit, limit)
            cy_new = np.clip(cy + gain * my, -limit, limit)
            ex = ux - mx[:, None]
            ey = uy - my[:, None]
            w2v = w * w * v
            var_x = (w2v * (ex * ex)[:, None, :]).sum(axis=(1, 2)) / (total * total)
            var_y = (w2v * (ey * ey)[:, :, None]).sum(axis=(1, 2)) / (total * total)
            cx, cy = cx_new, cy_new
        err_x = gain * np.sqrt(var_x)
        err_y = gain * np.sqrt(var_y)
    shift = np.hypot(cx - x0, cy - y0)
    flag = ~(total > 0) | ~np.isfinite(cx + cy + err_x + err_y) | (shift > max_shift)
    nan = np.where(flag, np.nan, 0.0)
    return Centroid(cx + nan, cy + nan, err_x + nan, err_y + nan, flag)

"""Quality metrics of a difference image (stored in its metadata).

All statistics are of the normalised residual ``z = diff / sqrt(variance)``, which is unit-normal
where the subtraction is perfect and the variance plane right.

- **Stamp residuals**: ``z`` within ``radius`` pixels of the kernel stars -- the stars used in
  the fit and, separately, a reserved set that the fit never saw. Reported as the pooled rms
  over the stars' pixels and the median per-star mean.
- **Empty sky**: mean and standard deviation of ``z`` over unmasked pixels away from every
  detected template footprint (grown by a margin), with a single 5-sigma clip so that the few
  genuine science-only sources (the transients) do not dominate.
"""

from __future__ import annotations

import numpy as np

#: |z| above which a sky pixel is taken to belong to a real source.
_SKY_CLIP = 5.0


def star_residuals(
    z: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float
) -> dict[str, float | int]:
    """Pooled rms and per-star mean of ``z`` in discs around stars.

    Parameters
    ----------
    z : numpy.ndarray
        Normalised difference image (NaN where unusable).
    x, y : numpy.ndarray
        Star pixels.
    radius : float
        Disc radius in pixels.

    Returns
    -------
    dict
        ``n``, ``rms`` (pooled over all pixels), ``mean`` (median over stars of the per-star
        mean), NaN when there are no stars.
    """
    if len(x) == 0:
        return {"n": 0, "rms": float("nan"), "mean": float("nan")}
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = dx**2 + dy**2 <= radius**2
    height, width = z.shape
    xs = np.clip(np.asarray(x)[:, None] + dx[disc][None, :], 0, width - 1)
    ys = np.clip(np.asarray(y)[:, None] + dy[disc][None, :], 0, height - 1)
    values = z[ys, xs]
    finite = np.isfinite(values)
    pooled = values[finite]
    with np.errstate(invalid="ignore"):
        per_star = np.nanmean(np.where(finite, values, np.nan), axis=1)
    return {
        "n": int(len(x)),
        "rms": float(np.sqrt(np.mean(pooled**2))) if pooled.size else float("nan"),
        "mean": float(np.nanmedian(per_star)) if np.isfinite(per_star).any() else float("nan"),
    }


def sky_statistics(z: np.ndarray, excluded: np.ndarray, step: int = 2) -> dict[str, float | int]:
    """Mean and standard deviation of ``z`` over empty sky.

    Parameters
    ----------
    z : numpy.ndarray
        Normalised difference image.
    excluded : numpy.ndarray
        bool: sources (grown) and masked pixels.
    step : int
        Use every ``step``-th pixel along each axis (the statistics need far fewer than 16M).

    Returns
    -------
    dict
        ``n`` pixels, ``mean``, ``std``, ``clipped_fraction``.
    """
    sample = z[::step, ::step][~excluded[::step, ::step]]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "clipped_fraction": 0.0}
    kept = sample[np.abs(sample) < _SKY_CLIP]
    return {
        "n": int(kept.size),
        "mean": float(kept.mean()) if kept.size else float("nan"),
        "std": float(kept.std()) if kept.size else float("nan"),
        "clipped_fraction": float(1.0 - kept.size / sample.size),
    }


def kernel_sum_statistics(kernel_sum) -> dict[str, float]:
    """Centre value, min, max and std of the kernel sum on a grid (array-like)."""
    values = np.asarray(kernel_sum, dtype=float)
    centre = values[values.shape[0] // 2, values.shape[1] // 2]
    return {
        "centre": float(centre),
        "min": float(values.min()),
        "max": float(values.max()),
        "std": float(values.std()),
    }

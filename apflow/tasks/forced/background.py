"""Local background in an annulus: Rubin's ``base_LocalBackground``.

For each source, the pixels whose centres lie in the annulus ``inner <= r < outer`` around the
(sub-pixel) position, minus bad or missing pixels, give a sigma-clipped mean per pixel, following
afw's MEANCLIP (:func:`apflow.tasks.stats.clipped_stats` with ``method="meanclip"``): a first
pass around the median with ``sigma = 0.741 IQR``, then passes around the mean of the kept pixels
with their (ddof=1) standard deviation. Like Rubin, the reported error is that clipped standard
deviation (the pixel scatter), not the error of the mean.

Vectorised over a chunk of sources: the annulus pixels are gathered into one ``(n, K)`` array
(through flat offsets into a NaN-padded copy of the image, so no bounds checks; only pixels on
the annulus rims need a distance test), and the clipped statistics reduce its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..stats import clipped_stats


@dataclass(frozen=True)
class LocalBackground:
    """Per source (all ``(n,)``): clipped mean and standard deviation per pixel, pixels kept."""

    mean: np.ndarray
    std: np.ndarray
    n_pixels: np.ndarray


def local_background(
    image: np.ndarray,
    excluded: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    inner: np.ndarray,
    outer: np.ndarray,
    n_sigma: float = 3.0,
    iterations: int = 3,
    chunk_size: int = 1024,
) -> LocalBackground:
    """Sigma-clipped mean of the annulus pixels around each source.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width)`` pixel values.
    excluded : numpy.ndarray
        ``(height, width)`` bool, True for pixels not to use (bad mask planes, non-finite).
    x, y : numpy.ndarray
        ``(n,)`` positions (pixels, finite).
    inner, outer : numpy.ndarray
        ``(n,)`` annulus radii (pixels) of each source.
    n_sigma : float
        Clipping threshold in standard deviations.
    iterations : int
        Clipping passes, the first around the median (afw's ``numIter``).
    chunk_size : int
        Sources per vectorised block (memory is about ``12 * chunk_size * K`` bytes).

    Returns
    -------
    LocalBackground
        NaN mean and std (and 0 pixels) where no pixel is usable; NaN std with one pixel.
    """
    n = x.size
    mean = np.full(n, np.nan)
    std = np.full(n, np.nan)
    count = np.zeros(n, dtype=np.int64)
    if n == 0:
        return LocalBackground(mean, std, count)
    r_max = float(np.max(outer))
    r_min = float(np.min(inner))
    # Offsets covering every annulus from any sub-pixel position of the centre pixel. Most lie in
    # every source's annulus whatever its sub-pixel offset (|offset| <= 0.71 px): only the two
    # rims need the exact distance test.
    span = int(np.ceil(r_max)) + 1
    oy, ox = np.mgrid[-span : span + 1, -span : span + 1]
    dist = np.hypot(ox, oy)
    ring = (dist <= r_max + 1.0) & (dist >= max(r_min - 1.0, 0.0))
    sure = (dist >= float(np.max(inner)) + 0.71) & (dist < float(np.min(outer)) - 0.71)
    rim = ring & ~sure
    height, width = image.shape
    padded_width = width + 2 * span
    padded = np.full((height + 2 * span, padded_width), np.nan, dtype=np.float32)
    padded[span:-span, span:-span] = np.where(excluded, np.nan, image)
    flat = padded.ravel()
    sure_offsets = (oy[sure] * padded_width + ox[sure]).astype(np.int64)
    rim_offsets = (oy[rim] * padded_width + ox[rim]).astype(np.int64)
    rim_x = ox[rim].astype(np.float32)
    rim_y = oy[rim].astype(np.float32)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        xi = np.rint(x[sl])
        yi = np.rint(y[sl])
        centre = ((yi + span) * padded_width + xi + span).astype(np.int64)[:, None]
        fx = (x[sl] - xi).astype(np.float32)[:, None]
        fy = (y[sl] - yi).astype(np.float32)[:, None]
        r2 = (rim_x - fx) ** 2 + (rim_y - fy) ** 2
        use = (r2 >= (inner[sl] ** 2)[:, None]) & (r2 < (outer[sl] ** 2)[:, None])
        rim_vals = np.where(use, flat[centre + rim_offsets], np.float32(np.nan))
        vals = np.concatenate([flat[centre + sure_offsets], rim_vals], axis=1)
        stats = clipped_stats(vals, n_sigma, iterations, method="meanclip", overwrite_input=True)
        mean[sl], std[sl], count[sl] = stats.mean, stats.std, stats.n_kept
    return LocalBackground(mean, std, count)

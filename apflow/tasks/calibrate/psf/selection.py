"""Choice of the stars a PSF model is built from.

A PSF star must be a clean, well-measured point source: bright (aperture S/N cut), unflagged
(not saturated, blended, on bad pixels or near the edge), of the common stellar size (clipped
cluster in adaptive-moment size, which rejects galaxies, cosmic rays and blends that the
detection did not split), alone (no other detection within the isolation radius) and with no
masked pixel in its stamp.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ....core import Exposure, MaskPlanes
from ..measurement import cut_stamps

#: Flags (from detection and measurement) that disqualify a PSF star when present and set.
DISQUALIFYING_FLAGS = (
    "flag_centroid_failed",
    "flag_shape_failed",
    "flag_edge",
    "flag_aperture_truncated",
    "flag_saturated",
    "flag_interpolated",
    "flag_bad",
    "flag_cr",
    "flag_blended",
    "flag_footprint_saturated",
    "flag_footprint_bad",
    "flag_footprint_edge",
)


def select_psf_candidates(
    stars: pd.DataFrame,
    exposure: Exposure,
    *,
    min_snr: float,
    size_clip_sigma: float,
    size_min_width: float,
    stamp_half: int | None,
    isolation_radius: float | None,
    bad_mask_planes: tuple[str, ...],
    max_candidates: int,
) -> tuple[np.ndarray, dict[str, int], float]:
    """Flag the stars fit to build a PSF model from.

    Parameters
    ----------
    stars : pandas.DataFrame
        Measured catalog: ``x``, ``y``, ``ixx``, ``iyy``, ``ap_instflux``,
        ``ap_instflux_err`` and any of :data:`DISQUALIFYING_FLAGS`.
    exposure : Exposure
        The measured exposure (for the stamp mask check).
    min_snr : float
        Minimum ``ap_instflux / ap_instflux_err``.
    size_clip_sigma, size_min_width : float
        Keep stars whose size ``sqrt((ixx + iyy) / 2)`` is within ``size_clip_sigma`` robust
        standard deviations of the median, or within ``size_min_width`` (fraction) of it.
    stamp_half : int or None
        Half-size of the PSF stamp (px); None derives it from the median size
        (``ceil(3.5 FWHM)``).
    isolation_radius : float or None
        No other source within this many pixels; None means ``stamp_half + FWHM``.
    bad_mask_planes : tuple of str
        No pixel of the stamp may have these planes.
    max_candidates : int
        Keep at most this many (the highest S/N).

    Returns
    -------
    candidate : numpy.ndarray
        ``(n_stars,)`` bool.
    counts : dict of str to int
        Stars surviving each cut, in order (for the result summary).
    fwhm : float
        Gaussian-equivalent FWHM (px) of the median adaptive-moment size, or NaN.
    """
    n = len(stars)
    counts: dict[str, int] = {"input": n}
    keep = np.ones(n, bool)
    for flag in DISQUALIFYING_FLAGS:
        if flag in stars:
            keep &= ~stars[flag].to_numpy(bool)
    counts["unflagged"] = int(keep.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = stars["ap_instflux"].to_numpy() / stars["ap_instflux_err"].to_numpy()
        size = np.sqrt(0.5 * (stars["ixx"].to_numpy() + stars["iyy"].to_numpy()))
    keep &= np.isfinite(snr) & (snr >= min_snr) & np.isfinite(size)
    counts["snr"] = int(keep.sum())
    if not keep.any():
        return keep, counts, float("nan")

    median = float(np.median(size[keep]))
    spread = 1.4826 * float(np.median(np.abs(size[keep] - median)))
    keep &= np.abs(size - median) <= max(size_clip_sigma * spread, size_min_width * median)
    counts["size"] = int(keep.sum())
    fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0)) * median
    half = stamp_half if stamp_half is not None else int(np.ceil(3.5 * fwhm))
    radius = isolation_radius if isolation_radius is not None else half + fwhm

    xy = stars[["x", "y"]].to_numpy(np.float64)
    neighbours = cKDTree(xy).query_ball_point(xy[keep], radius, return_length=True)
    isolated = np.zeros(n, bool)
    isolated[np.nonzero(keep)[0]] = neighbours == 1  # only itself
    keep &= isolated
    counts["isolated"] = int(keep.sum())

    index = np.nonzero(keep)[0]
    if len(index):
        cx = np.round(xy[index, 0]).astype(np.int64)
        cy = np.round(xy[index, 1]).astype(np.int64)
        mask, inside = cut_stamps(exposure.mask, cx, cy, half)
        clean = inside.all(axis=(1, 2)) & ~((mask & MaskPlanes.bits(*bad_mask_planes)) != 0).any(
            axis=(1, 2)
        )
        keep[index[~clean]] = False
    counts["clean_stamp"] = int(keep.sum())

    if keep.sum() > max_candidates:
        index = np.nonzero(keep)[0]
        brightest = index[np.argsort(-snr[index], kind="stable")[:max_candidates]]
        keep[:] = False
        keep[brightest] = True
    counts["candidates"] = int(keep.sum())
    return keep, counts, float(fwhm)

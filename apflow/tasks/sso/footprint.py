"""Which predicted positions fall on a CCD: the footprint filter of solar-system association."""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS

from .matching import ARCSEC_PER_RADIAN, unit_vectors


def pixel_scale_arcsec(wcs: WCS, x: float, y: float) -> float:
    """Local pixel scale (arcsec/px) at pixel ``(x, y)``: the square root of the pixel's area.

    Taken from the full WCS (SIP included) by projecting the pixel and its +x and +y
    neighbours, so it is right for any rotation or skew.
    """
    ra, dec = wcs.all_pix2world([x, x + 1.0, x], [y, y, y + 1.0], 0)
    centre, step_x, step_y = unit_vectors(ra, dec)
    area = np.linalg.norm(np.cross(step_x - centre, step_y - centre))
    return float(np.sqrt(area) * ARCSEC_PER_RADIAN)


def footprint_margin_px(
    position_err_arcsec: np.ndarray, pixel_scale: float, max_pixel_margin: int
) -> int:
    """Pixels by which the CCD box grows: ``min(ceil(max(err) / scale), max_pixel_margin)``.

    Non-finite errors are ignored; with none finite the margin is 0 (nothing to widen for).
    """
    err = np.asarray(position_err_arcsec, dtype=np.float64)
    err = err[np.isfinite(err)]
    if err.size == 0 or pixel_scale <= 0:
        return 0
    return int(min(max(math.ceil(float(err.max()) / pixel_scale), 0), max_pixel_margin))


def in_footprint(
    ra: np.ndarray,
    dec: np.ndarray,
    wcs: WCS,
    shape: tuple[int, int],
    margin_px: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select positions that project inside a CCD grown by ``margin_px`` pixels.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        ICRS degrees.
    wcs : astropy.wcs.WCS
        The CCD's WCS (0-based pixel centres).
    shape : tuple of int
        ``(height, width)`` of the CCD in pixels; its edges are at -0.5 and ``width - 0.5``.
    margin_px : int
        Growth of the box on every side, pixels.

    Returns
    -------
    inside : numpy.ndarray
        Boolean ``(n,)``, True for positions inside the grown box.
    x, y : numpy.ndarray
        ``(n,)`` pixel positions (NaN for positions far from the CCD, which are not projected).
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    height, width = shape
    x = np.full(ra.shape, np.nan)
    y = np.full(ra.shape, np.nan)
    inside = np.zeros(ra.shape, dtype=bool)
    if ra.size == 0:
        return inside, x, y

    # A cone around the CCD centre first: the TAN(-SIP) inversion is meaningless (or does not
    # converge) far from the tangent point, and most ephemerides of a visit are on other CCDs.
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    corner_x = np.array([cx, -0.5, width - 0.5, width - 0.5, -0.5])
    corner_y = np.array([cy, -0.5, -0.5, height - 0.5, height - 0.5])
    corners = unit_vectors(*wcs.all_pix2world(corner_x, corner_y, 0))
    # 5% slack in case a distorted edge bulges past the corners' distance.
    radius = 1.05 * float(np.max(np.arccos(np.clip(corners[1:] @ corners[0], -1.0, 1.0))))
    radius += 2.0 * margin_px * pixel_scale_arcsec(wcs, cx, cy) / ARCSEC_PER_RADIAN
    near = np.flatnonzero(unit_vectors(ra, dec) @ corners[0] >= np.cos(min(radius, np.pi)))
    if near.size == 0:
        return inside, x, y

    px, py = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
    x[near], y[near] = px, py
    low_x, low_y = -0.5 - margin_px, -0.5 - margin_px
    high_x, high_y = width - 0.5 + margin_px, height - 0.5 + margin_px
    with np.errstate(invalid="ignore"):
        inside[near] = (px >= low_x) & (px < high_x) & (py >= low_y) & (py < high_y)
    return inside, x, y

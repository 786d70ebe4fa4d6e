"""One-to-one nearest-neighbour matching of two position lists, on the sky or in pixels."""

from __future__ import annotations

import numpy as np
from astropy.coordinates import SkyCoord
from scipy.spatial import cKDTree


def match_on_sky(
    ra: np.ndarray,
    dec: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    radius_arcsec: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match each position to its nearest reference within a radius, one-to-one.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        Positions to match (ICRS degrees); non-finite entries never match.
    ref_ra, ref_dec : numpy.ndarray
        Reference positions (ICRS degrees).
    radius_arcsec : float
        Largest accepted separation, arcsec.

    Returns
    -------
    index, ref_index, separation_arcsec : numpy.ndarray
        Indices into the two lists and the separations of the matched pairs. A reference claimed
        by several positions goes to the closest one (astropy's unit-vector KD-tree finds the
        nearest neighbours).
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    finite = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    if len(finite) == 0 or len(ref_ra) == 0:
        return _empty_match()
    coords = SkyCoord(ra[finite], dec[finite], unit="deg")
    refs = SkyCoord(np.asarray(ref_ra, dtype=float), np.asarray(ref_dec, dtype=float), unit="deg")
    nearest, separation, _ = coords.match_to_catalog_sky(refs)
    separation_arcsec = separation.arcsec
    close = separation_arcsec <= radius_arcsec
    return one_to_one(finite[close], nearest[close], separation_arcsec[close])


def match_in_pixels(
    xy: np.ndarray, ref_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-space analogue of :func:`match_on_sky` for ``(n, 2)`` position arrays."""
    if len(xy) == 0 or len(ref_xy) == 0:
        return _empty_match()
    distance, nearest = cKDTree(ref_xy).query(xy, k=1, distance_upper_bound=radius)
    close = np.isfinite(distance)
    return one_to_one(np.flatnonzero(close), nearest[close], distance[close])


def one_to_one(
    index: np.ndarray, ref_index: np.ndarray, distance: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep, for each reference index, only its closest pair (input order is irrelevant)."""
    order = np.argsort(distance, kind="stable")
    _, first = np.unique(ref_index[order], return_index=True)
    keep = np.sort(order[first])
    return index[keep], ref_index[keep], distance[keep]


def _empty_match() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.array([], dtype=np.intp)
    return empty, empty.copy(), np.array([], dtype=float)

"""One-to-one sky matching of DiaSources to DiaObjects: greedy on sorted distances.

Positions become unit vectors and a KD-tree finds *every* (source, object) pair closer than the
radius (as a chord, ``2 sin(r / 2)``); pairs are taken nearest first, skipping any whose source or
object is already used. So when two sources compete for one object the nearer wins, and the other
can still take its next-nearest free object within the radius (a plain nearest-neighbour query
would leave it unmatched).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """``(n, 3)`` unit vectors of ICRS positions in degrees."""
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    cos_dec = np.cos(dec)
    return np.column_stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)])


def chord_to_arcsec(chord: np.ndarray) -> np.ndarray:
    """Angular separation (arcsec) of unit vectors ``chord`` apart."""
    return np.degrees(2.0 * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0))) * 3600.0


def match_greedy(
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    obj_ra: np.ndarray,
    obj_dec: np.ndarray,
    radius_arcsec: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match sources to objects one-to-one, nearest pairs first.

    Parameters
    ----------
    src_ra, src_dec : numpy.ndarray
        Source positions, ICRS degrees; non-finite positions never match.
    obj_ra, obj_dec : numpy.ndarray
        Object positions, ICRS degrees.
    radius_arcsec : float
        Largest separation of a match (inclusive), arcsec.

    Returns
    -------
    src_index, obj_index : numpy.ndarray
        intp indices of the matched pairs, sorted by ``src_index``.
    separation_arcsec : numpy.ndarray
        float64 separations of those pairs.

    Notes
    -----
    Exact ties in distance are broken by source index, then object index, so the result never
    depends on the order of the KD-tree's output.
    """
    src = unit_vectors(src_ra, src_dec)
    obj = unit_vectors(obj_ra, obj_dec)
    src_ok = np.flatnonzero(np.all(np.isfinite(src), axis=1))
    obj_ok = np.flatnonzero(np.all(np.isfinite(obj), axis=1))
    empty = np.array([], dtype=np.intp)
    if src_ok.size == 0 or obj_ok.size == 0:
        return empty, empty.copy(), np.array([], dtype=np.float64)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    pairs = cKDTree(src[src_ok]).sparse_distance_matrix(
        cKDTree(obj[obj_ok]), chord, output_type="ndarray"
    )
    if pairs.size == 0:
        return empty, empty.copy(), np.array([], dtype=np.float64)
    si, oi = src_ok[pairs["i"]], obj_ok[pairs["j"]]
    # Distances again from the vectors: the tree's float summation order is not specified.
    dist = np.linalg.norm(src[si] - obj[oi], axis=1)
    order = np.lexsort((oi, si, dist))
    used_src = np.zeros(len(src), dtype=bool)
    used_obj = np.zeros(len(obj), dtype=bool)
    keep = []
    # Python loop over candidate pairs only (a few per source at most).
    for k in order:
        s, o = si[k], oi[k]
        if used_src[s] or used_obj[o]:
            continue
        used_src[s] = used_obj[o] = True
        keep.append(k)
    keep_idx = np.array(keep, dtype=np.intp)
    by_source = np.argsort(si[keep_idx], kind="stable")
    keep_idx = keep_idx[by_source]
    return si[keep_idx], oi[keep_idx], chord_to_arcsec(dist[keep_idx])

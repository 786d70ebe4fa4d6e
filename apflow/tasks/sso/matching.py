"""One-to-one positional matching of predicted solar-system positions to DiaSources.

Positions become unit vectors so that a single KD-tree radius works everywhere on the sphere
(no RA wrap, no pole); an angle ``theta`` is the chord ``2 sin(theta / 2)`` between unit vectors.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

ARCSEC_PER_RADIAN = 180.0 * 3600.0 / np.pi

# Rows of this height (deg) order the queries so that neighbouring queries walk the same tree
# branches: on 10^6 random-order ephemerides this halves the cost of the KD-tree query, which
# is otherwise dominated by cache misses.
_LOCALITY_CELL_DEG = 1.0 / 60.0


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """``(n, 3)`` unit vectors of ICRS positions given in degrees."""
    ra_rad = np.radians(np.asarray(ra, dtype=np.float64))
    dec_rad = np.radians(np.asarray(dec, dtype=np.float64))
    cos_dec = np.cos(dec_rad)
    return np.column_stack([cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)])


def chord_to_arcsec(chord: np.ndarray) -> np.ndarray:
    """Angle (arcsec) subtended by a chord between unit vectors."""
    return 2.0 * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0)) * ARCSEC_PER_RADIAN


def match_ephemerides(
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    eph_ra: np.ndarray,
    eph_dec: np.ndarray,
    radius_arcsec: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Associate predicted positions with detected sources, one to one.

    Each ephemeris takes its nearest source within ``radius_arcsec`` (Rubin's
    ``SolarSystemAssociationTask``); when several ephemerides pick the same source, the closest
    wins (ties: the lower ephemeris index) and the others stay unassociated. So no source gets
    two objects and no object two sources, the same outcome as a greedy assignment by
    increasing distance over those nearest-neighbour pairs.

    Parameters
    ----------
    src_ra, src_dec : numpy.ndarray
        ``(n_src,)`` source positions, ICRS degrees. Non-finite positions never match.
    eph_ra, eph_dec : numpy.ndarray
        ``(n_eph,)`` predicted positions, ICRS degrees. Non-finite positions never match.
    radius_arcsec : float
        Largest angular distance of a match (inclusive), arcsec.

    Returns
    -------
    src_index, eph_index : numpy.ndarray
        ``(n_match,)`` int64 row indices into the source and ephemeris arrays, ordered by
        ``src_index``.
    distance_arcsec : numpy.ndarray
        ``(n_match,)`` angular distance of each pair, arcsec.

    Notes
    -----
    The KD-tree is built on the sources and the ephemerides are queried in an order sorted by
    position. Measured on one (shared) core, 10^5 sources against 10^6 ephemerides over a
    3x3 deg field (the tests' slow benchmark): 0.56-0.63 s CPU, against 0.94 s with unsorted
    queries and 0.60-0.70 s with a second tree on the ephemerides
    (``sparse_distance_matrix``, whose 10^6-point build alone costs 0.3-0.4 s).
    """
    src_ra = np.asarray(src_ra, dtype=np.float64)
    src_dec = np.asarray(src_dec, dtype=np.float64)
    eph_ra = np.asarray(eph_ra, dtype=np.float64)
    eph_dec = np.asarray(eph_dec, dtype=np.float64)
    if src_ra.shape != src_dec.shape or eph_ra.shape != eph_dec.shape:
        raise ValueError("ra and dec arrays must have the same shape")
    if not (np.isfinite(radius_arcsec) and radius_arcsec >= 0):
        raise ValueError(f"radius_arcsec must be finite and >= 0, got {radius_arcsec}")
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    src_ok = np.flatnonzero(np.isfinite(src_ra) & np.isfinite(src_dec))
    eph_ok = np.flatnonzero(np.isfinite(eph_ra) & np.isfinite(eph_dec))
    if src_ok.size == 0 or eph_ok.size == 0:
        return empty

    tree = cKDTree(
        unit_vectors(src_ra[src_ok], src_dec[src_ok]), balanced_tree=False, compact_nodes=False
    )
    cell = _LOCALITY_CELL_DEG
    row = np.floor((eph_dec[eph_ok] + 90.0) / cell).astype(np.int64)
    col = np.floor(np.mod(eph_ra[eph_ok], 360.0) / cell).astype(np.int64)
    eph_ok = eph_ok[np.argsort(row * (int(360.0 / cell) + 1) + col)]

    chord_max = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    # cKDTree's bound is strict; widen it by a hair and apply the inclusive cut below.
    chord, nearest = tree.query(
        unit_vectors(eph_ra[eph_ok], eph_dec[eph_ok]),
        k=1,
        distance_upper_bound=np.nextafter(chord_max, np.inf) * (1.0 + 1e-12),
    )
    found = np.flatnonzero(chord <= chord_max)
    if found.size == 0:
        return empty
    eph_index = eph_ok[found]
    src_index = src_ok[nearest[found]]
    chord = chord[found]

    # Closest ephemeris per source wins: sort by (source, distance, ephemeris index) and keep
    # the first row of each source.
    order = np.lexsort((eph_index, chord, src_index))
    src_sorted = src_index[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = src_sorted[1:] != src_sorted[:-1]
    keep = order[first]
    return src_index[keep], eph_index[keep], chord_to_arcsec(chord[keep])

"""Sky regions of exposures: convex spherical polygons on unit vectors, and which ones are near.

A region is the sky footprint of an exposure's pixel bounding box: its four outer pixel corners
(``(-0.5, -0.5)`` to ``(width - 0.5, height - 0.5)``) mapped through the WCS to unit vectors,
joined by great-circle arcs. For a TAN WCS the edges of a pixel rectangle *are* great circles, so
the polygon is exact; for TAN-SIP the edges bow by the distortion across one exposure (well
under an arcsecond for a CCD), which the margin of any search covers.

Unit vectors make the geometry free of RA wrap-around (a patch straddling RA 0/360 is no special
case) and of the poles. Two tests are combined:

1. a bounding cap per polygon (centre = normalised vertex sum, radius = largest angle to a
   vertex: it contains the whole convex polygon) and a KD-tree of the cap centres find the
   candidates whose caps come within the margin;
2. the exact angular distance between two convex polygons - zero when one holds a vertex of the
   other or two edges cross, otherwise the smallest vertex-to-edge distance either way - keeps the
   candidates within the margin. Both are vectorised over the candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

__all__ = [
    "SkyPolygon",
    "SkyPolygonSet",
    "pixel_corners_radec",
    "polygon_distance",
    "radec_to_unit",
    "unit_to_radec",
]


def pixel_corners_radec(wcs: WCS, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (degrees) of the outer corners of a ``(height, width)`` grid of 0-based pixels.

    The corners are ``(-0.5, -0.5)``, ``(width - 0.5, -0.5)``, ``(width - 0.5, height - 0.5)``,
    ``(-0.5, height - 0.5)``: the footprint of every pixel, not just of the pixel centres.
    """
    height, width = shape
    x = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    y = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    ra, dec = wcs.all_pix2world(x, y, 0)
    return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def radec_to_unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Unit vectors ``(..., 3)`` of sky positions in degrees."""
    ra_rad = np.radians(np.asarray(ra, dtype=float))
    dec_rad = np.radians(np.asarray(dec, dtype=float))
    cos_dec = np.cos(dec_rad)
    return np.stack([cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)], -1)


def unit_to_radec(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA in [0, 360) and Dec (degrees) of unit vectors ``(..., 3)``."""
    v = np.asarray(vectors, dtype=float)
    ra = np.degrees(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
    return ra, dec


@dataclass(frozen=True)
class SkyPolygon:
    """A convex spherical polygon smaller than a hemisphere.

    Attributes
    ----------
    vertices : numpy.ndarray
        ``(n, 3)`` unit vectors, counter-clockwise seen from outside the sphere (the interior
        is on the left of each edge), ``n >= 3``.
    """

    vertices: np.ndarray
    center: np.ndarray = field(init=False, repr=False, compare=False)
    radius: float = field(init=False, repr=False, compare=False)
    edge_frames: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        v = np.asarray(self.vertices, dtype=float)
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3 or not np.isfinite(v).all():
            raise ValueError(f"a sky polygon needs n >= 3 finite unit vectors, got {v.shape}")
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        center = v.sum(axis=0)
        norm = float(np.linalg.norm(center))
        if norm == 0.0:
            raise ValueError("a sky polygon must be smaller than a hemisphere")
        center /= norm
        # orientation from the edges' normals about the centre: the pixel parity of a WCS
        # (East left or right) decides it, so normalise rather than assume
        if float(np.einsum("ij,j->", _cross(v, np.roll(v, -1, axis=0)), center)) < 0:
            v = v[::-1].copy()
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "radius", float(np.max(_angle(v, center))))
        object.__setattr__(self, "edge_frames", _edge_frames(v))

    @classmethod
    def from_radec(cls, ra: Sequence[float], dec: Sequence[float]) -> SkyPolygon:
        """Polygon through vertices given in degrees, in either winding order."""
        return cls(radec_to_unit(np.asarray(ra), np.asarray(dec)))

    @classmethod
    def from_wcs(cls, wcs: WCS, shape: tuple[int, int]) -> SkyPolygon:
        """The footprint of a ``(height, width)`` pixel grid (0-based pixels) through ``wcs``.

        Raises
        ------
        ValueError
            If a corner does not map to a finite sky position.
        """
        ra, dec = pixel_corners_radec(wcs, shape)
        if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
            raise ValueError("a pixel corner has no finite sky position through the WCS")
        return cls.from_radec(ra, dec)

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Whether each position (degrees) is inside or on the polygon."""
        p = radec_to_unit(ra, dec)
        normals = _cross(self.vertices, np.roll(self.vertices, -1, axis=0))
        return np.all(p @ normals.T >= 0.0, axis=-1) & (p @ self.center > 0.0)

    def to_radec(self) -> tuple[np.ndarray, np.ndarray]:
        """The vertices' RA and Dec in degrees."""
        return unit_to_radec(self.vertices)


def polygon_distance(a: SkyPolygon, b: SkyPolygon) -> float:
    """Angular distance (radians) between two polygons; 0 when they overlap or touch."""
    return float(_distances(a.vertices, a.edge_frames, b.vertices[None], b.edge_frames[None])[0])


class SkyPolygonSet:
    """Many polygons of the same vertex count, indexed for "which are within a margin of this".

    Parameters
    ----------
    polygons : sequence of SkyPolygon
        All with the same number of vertices (exposure footprints have four).
    """

    def __init__(self, polygons: Sequence[SkyPolygon]):
        self.polygons = list(polygons)
        counts = {p.vertices.shape[0] for p in self.polygons}
        if len(counts) > 1:
            raise ValueError(f"polygons of a set need one vertex count, got {sorted(counts)}")
        n = counts.pop() if counts else 3
        self.vertices = (
            np.stack([p.vertices for p in self.polygons]) if self.polygons else np.empty((0, n, 3))
        )
        self.centers = (
            np.stack([p.center for p in self.polygons]) if self.polygons else np.empty((0, 3))
        )
        self.frames = (
            np.stack([p.edge_frames for p in self.polygons])
            if self.polygons
            else np.empty((0, 3 * n, 3))
        )
        self.radii = np.array([p.radius for p in self.polygons], dtype=float)
        self._max_radius = float(self.radii.max()) if self.polygons else 0.0
        self._tree = cKDTree(self.centers) if self.polygons else None

    def __len__(self) -> int:
        return len(self.polygons)

    def near(self, region: SkyPolygon, margin: float) -> np.ndarray:
        """Indexes (sorted) of the polygons within ``margin`` radians of ``region``.

        Parameters
        ----------
        region : SkyPolygon
        margin : float
            Largest angular distance, radians (>= 0); 0 keeps only overlapping polygons.
        """
        if self._tree is None:
            return np.empty(0, dtype=np.int64)
        reach = region.radius + self._max_radius + margin
        chord = 2.0 * math.sin(min(reach, math.pi) / 2.0)
        candidates = np.asarray(
            sorted(self._tree.query_ball_point(region.center, chord * (1 + 1e-12))), dtype=np.int64
        )
        if candidates.size == 0:
            return candidates
        caps_apart = _angle(self.centers[candidates], region.center)
        candidates = candidates[caps_apart <= region.radius + self.radii[candidates] + margin]
        if candidates.size == 0:
            return candidates
        distance = _distances(
            region.vertices, region.edge_frames, self.vertices[candidates], self.frames[candidates]
        )
        return candidates[distance <= margin]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product over the last axis (numpy's costs ~20x more on the small arrays here)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) between unit vectors, accurate at small angles (atan2 of |a x b|, a.b)."""
    return np.arctan2(np.linalg.norm(_cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def _edge_frames(vertices: np.ndarray) -> np.ndarray:
    """``(..., 3 n, 3)``: each edge's unit normal, then its two fences, for ``(..., n, 3)``.

    The normal ``u`` of edge ``s -> e`` points inside (counter-clockwise polygons). The fences
    ``u x s`` and ``e x u`` are normals of the great circles through ``u`` and each end: a
    point ``p`` projects onto the arc itself exactly when ``p . (u x s) >= 0`` and
    ``p . (e x u) >= 0``. With these precomputed, every test below is a dot product.
    """
    start, end = vertices, np.roll(vertices, -1, axis=-2)
    normal = _cross(start, end)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return np.concatenate([normal, _cross(normal, start), _cross(end, normal)], axis=-2)


def _distances(
    a: np.ndarray, a_frames: np.ndarray, b: np.ndarray, b_frames: np.ndarray
) -> np.ndarray:
    """Angular distance (radians) from polygon ``a`` ``(m, 3)`` to each of ``b`` ``(P, n, 3)``.

    ``a_frames`` and ``b_frames`` are their :func:`_edge_frames`. The polygons are convex,
    counter-clockwise and near each other (the caller's cap test), so great circles never meet
    at the antipodal point of an intersection that matters.
    """
    m, n = a.shape[0], b.shape[1]
    # dot products of b's vertices with a's vertices, edge normals and fences: (P, n, 4 m)
    b_on_a = b @ np.concatenate([a, a_frames]).T
    cos_ba, side_b, b_fence1, b_fence2 = (b_on_a[..., k * m : (k + 1) * m] for k in range(4))
    # a's vertices against b's edge normals and fences: (P, 3 n, m)
    a_on_b = b_frames @ a.T
    side_a, a_fence1, a_fence2 = (a_on_b[:, k * n : (k + 1) * n] for k in range(3))
    # side_b[p, j, i]: b's vertex j against a's edge i; side_a[p, k, i]: a's vertex i, b's edge k
    b_in_a = np.all(side_b >= 0.0, axis=2).any(axis=1)
    a_in_b = np.all(side_a >= 0.0, axis=1).any(axis=1)
    # a's edge i crosses b's edge k when each edge's ends lie on opposite sides of the other's
    # great circle
    b_straddles = side_b * np.roll(side_b, -1, axis=1) < 0.0  # (P, k, i)
    a_straddles = side_a * np.roll(side_a, -1, axis=2) < 0.0  # (P, k, i)
    overlap = b_in_a | a_in_b | (b_straddles & a_straddles).any(axis=(1, 2))
    # vertex to edge: the perpendicular when the foot is on the arc, else the nearer end
    # (largest cosine); b's vertex j to a's edge i (ends a_i, a_i+1), and a's vertex i to b's
    # edge k (ends b_k, b_k+1)
    near_end_ba = np.maximum(cos_ba, np.roll(cos_ba, -1, axis=2))
    near_end_ab = np.maximum(cos_ba, np.roll(cos_ba, -1, axis=1))
    to_a = np.where(
        (b_fence1 >= 0.0) & (b_fence2 >= 0.0),
        np.arcsin(np.minimum(np.abs(side_b), 1.0)),
        np.arccos(np.clip(near_end_ba, -1.0, 1.0)),
    )
    to_b = np.where(
        (a_fence1 >= 0.0) & (a_fence2 >= 0.0),
        np.arcsin(np.minimum(np.abs(side_a), 1.0)),
        np.arccos(np.clip(near_end_ab, -1.0, 1.0)),
    )
    nearest = np.minimum(to_a.min(axis=(1, 2)), to_b.min(axis=(1, 2)))
    return np.where(overlap, 0.0, nearest)

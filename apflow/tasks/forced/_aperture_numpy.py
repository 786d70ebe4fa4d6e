"""Numpy backend of :mod:`apflow.tasks.forced.apertures` (vectorised over sources).

Same algorithm and results as the numba kernel, written as array operations over a chunk of
sources: the arc pieces of every source form ``(n, pieces)`` arrays, the table look-ups are
``numpy.take`` gathers, and the pieces that cross a pixel edge are corrected through a compact
list. 2-3x slower than the compiled kernel; used when numba is not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Sources per vectorised call: keeps the temporaries in the CPU cache.
_CHUNK = 1024


def tile_sums(
    image: np.ndarray,
    variance: np.ndarray,
    missing: np.ndarray,
    x0: int,
    y0: int,
    side: int,
    x: np.ndarray,
    y: np.ndarray,
    radii: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of the sources of one tile whose (padded) square starts at ``(x0, y0)``."""
    tables = _NumpyTables.build(image, variance, missing, x0, y0, side)
    flux = np.empty((x.size, radii.size))
    var_sum = np.empty((x.size, radii.size))
    x_edge = x - x0 + 0.5
    y_edge = y - y0 + 0.5
    for start in range(0, x.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        for p, r in enumerate(radii):
            total = tables.disc(x_edge[sl], y_edge[sl], float(r))
            flux[sl, p] = total.real
            var_sum[sl, p] = total.imag
    return flux, var_sum


@dataclass(frozen=True)
class _NumpyTables:
    """Prefix sums of one tile, image in the real and variance in the imaginary part.

    The row strip reads the row prefix sums stored transposed (and the column strip the column
    prefix sums stored as is), so that consecutive lines of an arc are adjacent in memory.
    """

    values_t: np.ndarray  # flat (side+1)^2, [column, row]
    row_prefix_t: np.ndarray  # flat, [column k, row j] = sum of row j left of column k
    values: np.ndarray  # flat, [row, column]
    column_prefix: np.ndarray  # flat, [row j, column k] = sum of column k above row j
    sat: np.ndarray  # (side+1, side+1) summed-area table
    stride: int

    @classmethod
    def build(
        cls,
        image: np.ndarray,
        variance: np.ndarray,
        missing: np.ndarray,
        x0: int,
        y0: int,
        side: int,
    ) -> _NumpyTables:
        height, width = image.shape
        z = np.zeros((side + 1, side + 1), dtype=np.complex128)
        gy0, gy1 = max(y0, 0), min(y0 + side, height)
        gx0, gx1 = max(x0, 0), min(x0 + side, width)
        if gy1 > gy0 and gx1 > gx0:
            sl = (slice(gy0, gy1), slice(gx0, gx1))
            keep = ~missing[sl]
            dst = (slice(gy0 - y0, gy1 - y0), slice(gx0 - x0, gx1 - x0))
            z.real[dst] = np.where(keep, image[sl], 0.0)
            z.imag[dst] = np.where(keep, variance[sl], 0.0)
        z_t = np.ascontiguousarray(z.T)
        column_prefix = _prefix_along_rows(z)
        row_prefix_t = _prefix_along_rows(z_t)
        sat = np.zeros_like(z)
        np.cumsum(column_prefix[:, :-1], axis=1, out=sat[:, 1:])
        return cls(
            z_t.ravel(), row_prefix_t.ravel(), z.ravel(), column_prefix.ravel(), sat, side + 1
        )

    def disc(self, x_edge: np.ndarray, y_edge: np.ndarray, r: float) -> np.ndarray:
        """Complex (image + 1j variance) sum over the disc for each source (edge coordinates)."""
        h = r / math.sqrt(2.0)
        rows = _strip(self.values_t, self.row_prefix_t, self.stride, x_edge, y_edge, r)
        cols = _strip(self.values, self.column_prefix, self.stride, y_edge, x_edge, r)
        return rows + cols - self._box(x_edge - h, x_edge + h, y_edge - h, y_edge + h)

    def _box(self, x1: np.ndarray, x2: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
        sat = self.sat
        total = np.zeros(x1.shape, dtype=np.complex128)
        for xs, ys, sign in ((x2, y2, 1), (x1, y2, -1), (x2, y1, -1), (x1, y1, 1)):
            i = np.floor(xs)
            j = np.floor(ys)
            fx = xs - i
            fy = ys - j
            i = i.astype(np.int64)
            j = j.astype(np.int64)
            total += sign * (
                sat[j, i] * ((1 - fx) * (1 - fy))
                + sat[j, i + 1] * (fx * (1 - fy))
                + sat[j + 1, i] * ((1 - fx) * fy)
                + sat[j + 1, i + 1] * (fx * fy)
            )
        return total


def _prefix_along_rows(values: np.ndarray) -> np.ndarray:
    """``out[j] = sum(values[:j])``: a loop over rows, 3x faster than a strided ``cumsum``."""
    out = np.empty_like(values)
    out[0] = 0
    for j in range(1, values.shape[0]):
        np.add(out[j - 1], values[j - 1], out=out[j])
    return out


def _chord_primitive(a: np.ndarray, s: np.ndarray, r: float) -> np.ndarray:
    """``G(a) = integral_0^a sqrt(r^2 - t^2) dt`` given ``s = sqrt(r^2 - a^2)``."""
    return 0.5 * (a * s + r * r * np.arcsin(np.minimum(a / r, 1.0)))


def _strip(
    values: np.ndarray,
    prefix: np.ndarray,
    stride: int,
    xc: np.ndarray,
    yc: np.ndarray,
    r: float,
) -> np.ndarray:
    """Sum over the disc cut to the strip ``|line - yc| <= r / sqrt(2)`` (vectorised over sources).

    Lines run along the flat tables with stride 1, positions along them with ``stride``; ``xc``
    is the centre along positions and ``yc`` across lines, both in edge coordinates. The same
    arithmetic as the numba kernel, piece by piece.
    """
    n = xc.size
    h = r / math.sqrt(2.0)
    r2 = r * r
    n_pieces = int(h) + 2
    knots = np.arange(n_pieces + 1, dtype=np.float64)
    xk = xc[:, None]
    total = np.zeros(n, dtype=np.complex128)
    halves = (
        (yc - np.floor(yc), np.floor(yc), 1),
        (np.ceil(yc) - yc, np.ceil(yc) - 1, -1),
    )
    for frac, line0, step in halves:
        # Knots of the arc: 0, then the pixel-row boundaries, clipped to the strip half-height.
        a = knots - frac[:, None]
        a[:, 0] = 0.0
        np.minimum(a, h, out=a)
        s = np.sqrt(r2 - a * a)
        g = _chord_primitive(a, s, r)
        da = np.diff(a, axis=1)
        dg = np.diff(g, axis=1)
        lines = (line0[:, None] + step * knots[:n_pieces]).astype(np.int64)
        for side in (1.0, -1.0):
            # Pixel column of the arc at every knot; a piece's reference pixel holds its end.
            columns = np.floor(xk + side * s)
            k = columns[:, 1:]
            idx = lines + k.astype(np.int64) * stride
            p_vals = np.take(prefix, idx)
            z_vals = np.take(values, idx)
            coef_value = side * da * (xk - k) + dg
            coef_prefix = side * da
            total += np.einsum("ij,ij->i", coef_prefix, p_vals.real) + 1j * np.einsum(
                "ij,ij->i", coef_prefix, p_vals.imag
            )
            total += np.einsum("ij,ij->i", coef_value, z_vals.real) + 1j * np.einsum(
                "ij,ij->i", coef_value, z_vals.imag
            )
            # Pieces whose arc crosses a pixel edge: correct the part in the other pixel. The
            # crossings are found from the same column values, so pieces and corrections agree
            # even when the arc passes exactly through a pixel corner.
            src, piece = np.nonzero(columns[:, :-1] != columns[:, 1:])
            if src.size == 0:
                continue
            k_end = k[src, piece]
            edge = k_end + 1.0 if side > 0 else k_end
            d = side * (edge - xc[src])
            a0 = a[src, piece]
            a_cross = np.clip(np.sqrt(np.maximum(r2 - d * d, 0.0)), a0, a[src, piece + 1])
            coef = (_chord_primitive(a_cross, d, r) - g[src, piece]) - d * (a_cross - a0)
            other = (edge if side > 0 else edge - 1.0).astype(np.int64)
            z_other = np.take(values, lines[src, piece] + other * stride)
            contrib = coef * (z_other - z_vals[src, piece])
            total += np.bincount(src, contrib.real, minlength=n) + 1j * np.bincount(
                src, contrib.imag, minlength=n
            )
    return total

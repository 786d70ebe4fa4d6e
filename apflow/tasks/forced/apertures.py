"""Exact circular-aperture photometry by Green's theorem on prefix sums.

The flux in a circle of radius ``r`` is the integral of the piecewise-constant pixel surface over
the disc: every pixel weighted by the exact area of its square inside the circle (what photutils
calls ``method="exact"`` and SEP ``subpix=0``). Instead of visiting the ``~pi r^2`` pixels of
every aperture, we split the disc into three pieces that prefix sums integrate cheaply:

``disc = (disc cut to the row strip |dy| <= h) + (disc cut to the column strip |dx| <= h)
- (the square |dx|, |dy| <= h)``,   with ``h = r / sqrt(2)``.

- The square is four look-ups of the summed-area table, which is exactly bilinear inside a pixel.
- Inside the row strip the circle's left and right arcs are steep (slope <= 1), so Green's theorem
  turns the area integral into a line integral along the arcs of the row prefix sum
  ``R_j(X) = sum of row j left of X``, which is linear inside a pixel. The arc is cut at the
  pixel-row boundaries into pieces; each piece meets at most one vertical pixel edge. A piece
  contributes ``da * (P[j, k] + (xc - k) z[j, k]) + z[j, k] * dG`` with ``G(a) = integral of
  sqrt(r^2 - t^2)``, plus a correction where it crosses into the neighbouring pixel.
- The column strip is the same with rows and columns swapped (column prefix sums).

Cost per aperture is ``O(r)`` (about ``5.7 r + 20`` pieces) instead of ``O(r^2)``, exact to
floating-point round-off (1e-12 relative against photutils). Errors follow photutils and SEP:
``variance = sum(w * V)`` with ``w`` the overlap area (not ``w**2``); this overestimates the
variance of small apertures by a few per cent where pixel noise is independent, and is what both
reference libraries report.

Coordinates: pixel ``(i, j)`` is ``image[j, i]`` and covers ``[i - 0.5, i + 0.5)`` in x.
Pixels outside the image count as 0 (like photutils); so do *missing* pixels (non-finite image or
variance, or a caller's mask such as NO_DATA). Both set the ``truncated`` flag.

Two interchangeable backends compute the same sums: ``"numba"`` (a compiled scalar loop, used when
numba is installed) and ``"numpy"`` (vectorised over sources; 2-3x slower).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError

#: Radii (pixels) of Rubin's ``base_CircularApertureFlux`` default configuration.
DEFAULT_RADII: tuple[float, ...] = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0)

_BACKENDS = ("auto", "numba", "numpy")


@dataclass(frozen=True)
class ApertureSums:
    """Exact circular-aperture sums for ``n`` sources and ``m`` radii.

    Attributes
    ----------
    flux : numpy.ndarray
        ``(n, m)`` sum of overlap area x pixel value (image units); NaN where the centre is not
        finite or lies off the image.
    variance : numpy.ndarray
        ``(n, m)`` sum of overlap area x variance (image units squared); ``sqrt`` is the error.
    truncated : numpy.ndarray
        ``(n, m)`` bool: the circle extends off the image or overlaps a missing pixel (the sum
        then covers only the available pixels). True also where ``flux`` is NaN.
    """

    flux: np.ndarray
    variance: np.ndarray
    truncated: np.ndarray


def numba_available() -> bool:
    """Whether the compiled backend can be used (``numba`` importable)."""
    try:
        from . import _aperture_numba  # noqa: F401
    except ImportError:
        return False
    return True


def circular_aperture_sums(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radii: tuple[float, ...] | list[float] | np.ndarray = DEFAULT_RADII,
    *,
    missing: np.ndarray | None = None,
    backend: str = "auto",
    tile_size: int = 1024,
) -> ApertureSums:
    """Exact circular-aperture sums of ``image`` and ``variance`` at many positions.

    Parameters
    ----------
    image, variance : numpy.ndarray
        ``(height, width)`` planes (any float dtype); variance in image units squared.
    x, y : numpy.ndarray
        ``(n,)`` aperture centres in pixel coordinates (0-based, pixel centres at integers).
    radii : sequence of float
        Aperture radii in pixels, each > 0.
    missing : numpy.ndarray, optional
        ``(height, width)`` bool, True for pixels without data (e.g. NO_DATA). Non-finite image or
        variance pixels are always missing.
    backend : {"auto", "numba", "numpy"}
        ``"auto"`` uses numba when it is installed.
    tile_size : int
        Side of the square tiles (pixels) whose prefix sums are built at a time; they take about
        32 (numba) or 80 (numpy) bytes per pixel of ``(tile_size + 2 max(radii) + 4)**2``.

    Returns
    -------
    ApertureSums
        Per source and radius; sources whose centre is not finite or lies off the image get NaN.

    Raises
    ------
    ConfigError
        On a non-positive radius, an unknown backend, or ``backend="numba"`` without numba.
    """
    radii_arr = np.asarray(radii, dtype=np.float64).ravel()
    if radii_arr.size == 0 or not np.all(np.isfinite(radii_arr) & (radii_arr > 0)):
        raise ConfigError(f"aperture radii must be positive finite pixels, got {list(radii_arr)}")
    if backend not in _BACKENDS:
        raise ConfigError(f"aperture backend must be one of {_BACKENDS}, got {backend!r}")
    if tile_size < 16:
        raise ConfigError(f"aperture tile_size must be >= 16 pixels, got {tile_size}")
    if backend == "auto":
        backend = "numba" if numba_available() else "numpy"
    elif backend == "numba" and not numba_available():
        raise ConfigError("aperture backend 'numba' requested but numba is not installed")

    image = np.asarray(image)
    variance = np.asarray(variance)
    height, width = image.shape
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n, m = x.size, radii_arr.size
    flux = np.full((n, m), np.nan)
    var_sum = np.full((n, m), np.nan)
    truncated = np.ones((n, m), dtype=bool)

    missing_all = ~(np.isfinite(image) & np.isfinite(variance))
    if missing is not None:
        missing_all |= np.asarray(missing, dtype=bool)
    on_image = (
        np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < width - 0.5)
        & (y >= -0.5) & (y < height - 0.5)
    )  # fmt: skip
    todo = np.flatnonzero(on_image)
    if todo.size == 0:
        return ApertureSums(flux, var_sum, truncated)

    margin = int(math.ceil(radii_arr.max())) + 2
    if backend == "numba":
        sums = _tile_sums_numba
    else:
        from ._aperture_numpy import tile_sums as sums
    tiles = _group_by_tile(x[todo], y[todo], tile_size)
    for (tile_x, tile_y), members in tiles:
        idx = todo[members]
        x0 = tile_x * tile_size - margin
        y0 = tile_y * tile_size - margin
        side = tile_size + 2 * margin
        f, v = sums(image, variance, missing_all, x0, y0, side, x[idx], y[idx], radii_arr)
        flux[idx] = f
        var_sum[idx] = v

    xs, ys = x[todo][:, None], y[todo][:, None]
    off_edge = (
        (xs - radii_arr < -0.5) | (xs + radii_arr > width - 0.5)
        | (ys - radii_arr < -0.5) | (ys + radii_arr > height - 0.5)
    )  # fmt: skip
    truncated[todo] = off_edge | _touches_missing(
        missing_all, x[todo], y[todo], radii_arr, backend, tile_size
    )
    return ApertureSums(flux, var_sum, truncated)


def _group_by_tile(
    x: np.ndarray, y: np.ndarray, tile_size: int
) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Source indices per tile, each tile's sources sorted by y (neighbours share cache lines)."""
    tx = np.floor((x + 0.5) / tile_size).astype(np.int64)
    ty = np.floor((y + 0.5) / tile_size).astype(np.int64)
    order = np.lexsort((y, tx, ty))
    keys = np.stack([tx[order], ty[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    bounds = np.r_[starts, order.size]
    return [
        ((int(keys[s, 0]), int(keys[s, 1])), order[s:e])
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _touches_missing(
    missing: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radii: np.ndarray,
    backend: str,
    tile_size: int,
) -> np.ndarray:
    """``(n, m)`` bool: the circle overlaps a missing pixel with non-zero area."""
    out = np.zeros((x.size, radii.size), dtype=bool)
    if not missing.any():
        return out
    # Cheap bounding-box test on an integer summed-area table first; the exact overlap (the same
    # aperture sum of the missing indicator) only for the few boxes that contain a missing pixel.
    height, width = missing.shape
    counts = np.zeros((height + 1, width + 1), dtype=np.int32)
    np.cumsum(np.cumsum(missing, axis=0, dtype=np.int32), axis=1, out=counts[1:, 1:])
    i0 = np.clip(np.floor(x[:, None] - radii + 0.5).astype(np.int64), 0, width)
    i1 = np.clip(np.floor(x[:, None] + radii + 0.5).astype(np.int64) + 1, 0, width)
    j0 = np.clip(np.floor(y[:, None] - radii + 0.5).astype(np.int64), 0, height)
    j1 = np.clip(np.floor(y[:, None] + radii + 0.5).astype(np.int64) + 1, 0, height)
    in_box = counts[j1, i1] - counts[j0, i1] - counts[j1, i0] + counts[j0, i0]
    candidates = np.flatnonzero(np.any(in_box > 0, axis=1))
    if candidates.size == 0:
        return out
    indicator = missing.astype(np.float64)
    exact = circular_aperture_sums(
        indicator,
        np.zeros_like(indicator),
        x[candidates],
        y[candidates],
        radii,
        backend=backend,
        tile_size=tile_size,
    )
    # Overlap areas are exact to ~1e-12 of the aperture area; anything above is a real overlap.
    out[candidates] = (in_box[candidates] > 0) & (exact.flux > 1e-9 * radii**2)
    return out


def _tile_sums_numba(
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
    from . import _aperture_numba as kernel

    values_image = np.empty((side, side))
    values_variance = np.empty((side, side))
    sat_image = np.empty((side + 1, side + 1))
    sat_variance = np.empty((side + 1, side + 1))
    kernel.build_tile(
        image, variance, missing, y0, x0, values_image, values_variance, sat_image, sat_variance
    )
    flux = np.empty((x.size, radii.size))
    var_sum = np.empty((x.size, radii.size))
    kernel.circle_sums(
        sat_image,
        sat_variance,
        values_image,
        values_variance,
        x - x0 + 0.5,
        y - y0 + 0.5,
        radii,
        flux,
        var_sum,
    )
    return flux, var_sum

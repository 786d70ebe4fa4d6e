"""Focal-plane background, part 1: the superpixel grid, per-CCD partials and their merge.

The grid covers the camera's focal-plane bounds with square superpixels of ``bin_size_mm`` plus
one border superpixel on every side (as Rubin's ``FocalPlaneBackground.fromCamera``); cell
``(i, j)`` covers ``origin + [j, j + 1) * bin`` in x and ``origin + [i, i + 1) * bin`` in y, so
every detector's partial of a camera has the same shape and partials add element-wise.

A CCD contributes, per superpixel, the sigma-clipped mean of its good pixels whose centres fall in
the cell, times their number (``values``), and that number (``counts``). Sums are associative, so
partials can be merged in any tree. The sums of the good pixels' focal-plane positions travel
with them, so the model (:mod:`~apflow.tasks.sky.focal_plane_model`) knows where in a superpixel
cut by a gap or the camera edge its data sit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core import Camera, Detector, Exposure
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig
from ..stats import clipped_stats
from .bundle import ArrayBundle, as_bundle, visit_attrs
from .object_mask import apply_object_mask

__all__ = [
    "PARTIAL_KIND",
    "FocalPlaneGrid",
    "FocalPlanePartialConfig",
    "FocalPlanePartialResult",
    "FocalPlanePartialTask",
    "measure_focal_plane_partial",
    "merge_partials",
]

PARTIAL_KIND = "focal_plane_partial"

#: Rubin's FocalPlaneBackgroundConfig.mask: pixels never used for the superpixel statistics.
DEFAULT_MASK_PLANES = ["BAD", "SAT", "INTRP", "DETECTED", "DETECTED_NEGATIVE", "EDGE", "NO_DATA"]


@dataclass(frozen=True)
class FocalPlaneGrid:
    """Geometry of the superpixel grid.

    Attributes
    ----------
    origin_mm : tuple of float
        Focal-plane ``(x, y)`` mm of the lower-left corner of cell ``(0, 0)``.
    bin_size_mm : float
        Superpixel side in mm.
    shape : tuple of int
        ``(ny, nx)`` number of cells.
    """

    origin_mm: tuple[float, float]
    bin_size_mm: float
    shape: tuple[int, int]

    @classmethod
    def from_camera(cls, camera: Camera, bin_size_mm: float | None = None) -> FocalPlaneGrid:
        """The grid of a camera: its focal-plane bounds plus one border cell on each side.

        Parameters
        ----------
        camera : Camera
        bin_size_mm : float, optional
            Superpixel side; ``camera.focal_plane_bin_mm`` when omitted.
        """
        size = float(bin_size_mm if bin_size_mm else camera.focal_plane_bin_mm)
        if not size > 0:
            raise ConfigError(f"focal-plane superpixel size must be positive, got {size}")
        xmin, xmax, ymin, ymax = camera.focal_plane_bounds()
        nx = math.ceil((xmax - xmin) / size) + 2
        ny = math.ceil((ymax - ymin) / size) + 2
        return cls((xmin - size, ymin - size), size, (ny, nx))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> FocalPlaneGrid:
        """Inverse of :meth:`to_attrs`."""
        ox, oy = attrs["origin_mm"]
        ny, nx = attrs["shape"]
        return cls((float(ox), float(oy)), float(attrs["bin_size_mm"]), (int(ny), int(nx)))

    def to_attrs(self) -> dict[str, Any]:
        """JSON attributes describing the grid."""
        return {
            "origin_mm": [self.origin_mm[0], self.origin_mm[1]],
            "bin_size_mm": self.bin_size_mm,
            "shape": [self.shape[0], self.shape[1]],
        }

    def centers_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """``(y, x)`` focal-plane mm of the cell centres along each axis."""
        ny, nx = self.shape
        x = self.origin_mm[0] + (np.arange(nx) + 0.5) * self.bin_size_mm
        y = self.origin_mm[1] + (np.arange(ny) + 0.5) * self.bin_size_mm
        return y, x

    def matches(self, other: FocalPlaneGrid) -> bool:
        """True if both grids have the same cells (to 1e-9 mm)."""
        return (
            self.shape == other.shape
            and math.isclose(self.bin_size_mm, other.bin_size_mm, rel_tol=1e-12)
            and all(
                math.isclose(a, b, abs_tol=1e-9)
                for a, b in zip(self.origin_mm, other.origin_mm, strict=True)
            )
        )


# --------------------------------------------------------------------------------------------
# per-CCD partial


@dataclass
class FocalPlanePartialConfig(TaskConfig):
    """Configuration of :class:`FocalPlanePartialTask`.

    Attributes
    ----------
    bin_size_mm : float
        Superpixel side in focal-plane mm; 0 (default) uses ``camera.focal_plane_bin_mm``
        (mini 2.56 mm = 256 px; lsstcam 40.96 mm = one 4096-px CCD, as cp_pipe's LSSTCam
        override). This answers open question 2: the size is a property of the camera.
    mask_planes : list of str
        Pixels with any of these planes are ignored (Rubin's FocalPlaneBackgroundConfig.mask).
    nsigma : float
        Clipping half-width of the superpixel MEANCLIP, standard deviations. Default 3.0.
    n_iter : int
        Clipping passes. Default 3.
    """

    bin_size_mm: float = 0.0
    mask_planes: list[str] = field(default_factory=lambda: list(DEFAULT_MASK_PLANES))
    nsigma: float = 3.0
    n_iter: int = 3

    def validate(self) -> None:
        if self.bin_size_mm < 0 or self.nsigma <= 0 or self.n_iter < 0:
            raise ConfigError(
                "FocalPlanePartialConfig: need bin_size_mm >= 0, nsigma > 0, n_iter >= 0"
            )


@dataclass
class FocalPlanePartialResult:
    """One CCD's contribution to its visit's focal-plane background.

    Attributes
    ----------
    focal_plane_partial : ArrayBundle
        Arrays ``values`` (float64, sum of clipped mean x number of good pixels per superpixel)
        and ``counts`` (int64, number of good pixels), both ``(ny, nx)``; attrs ``kind``,
        grid (``origin_mm``, ``bin_size_mm``, ``shape``), ``pixel_size_mm``, ``detectors``,
        ``visit``, ``band``, ``physical_filter``, ``camera``.
    """

    focal_plane_partial: ArrayBundle

    def summary(self) -> dict[str, float | int]:
        """Number of superpixels touched and good pixels used."""
        counts = self.focal_plane_partial["counts"]
        return {"superpixels": int((counts > 0).sum()), "good_pixels": int(counts.sum())}


class FocalPlanePartialTask(Task):
    """Accumulate one CCD into the focal-plane superpixel grid (Rubin's ``addCcd``)."""

    ConfigClass = FocalPlanePartialConfig
    config: FocalPlanePartialConfig

    def run(
        self,
        exposure: Exposure,
        detector: Detector,
        camera: Camera,
        object_mask: ArrayBundle | None = None,
    ) -> FocalPlanePartialResult:
        """Measure the CCD's superpixel sums.

        Parameters
        ----------
        exposure : Exposure
            Object-masked exposure (``DETECTED`` set by :class:`MaskObjectsTask`), or the
            post-ISR exposure when ``object_mask`` is given.
        detector : Detector
            Its detector (context parameter).
        camera : Camera
            The camera, for the grid bounds (context parameter).
        object_mask : ArrayBundle, optional
            The exposure's ``sky_object_mask``: set as its DETECTED plane first
            (:func:`apply_object_mask`).
        """
        if object_mask is not None:
            exposure = apply_object_mask(exposure, object_mask)
        cfg = self.config
        grid = FocalPlaneGrid.from_camera(camera, cfg.bin_size_mm or None)
        bad = exposure.mask_of(*cfg.mask_planes) if cfg.mask_planes else None
        arrays = measure_focal_plane_partial(
            exposure.image, bad, detector, grid, nsigma=cfg.nsigma, n_iter=cfg.n_iter
        )
        attrs = {
            "kind": PARTIAL_KIND,
            **grid.to_attrs(),
            "pixel_size_mm": float(detector.pixel_size),
            "camera": camera.name,
            "detectors": [int(detector.id)],
            **visit_attrs(exposure),
        }
        return FocalPlanePartialResult(ArrayBundle(arrays, attrs))


def measure_focal_plane_partial(
    image: np.ndarray,
    bad: np.ndarray | None,
    detector: Detector,
    grid: FocalPlaneGrid,
    nsigma: float = 3.0,
    n_iter: int = 3,
) -> dict[str, np.ndarray]:
    """Superpixel sums of one CCD.

    Every pixel belongs to the cell that contains its centre (exact for any detector rotation;
    Rubin instead takes an axis-aligned pixel box per cell, which double counts under rotation).

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width)`` pixel values (counts).
    bad : numpy.ndarray of bool or None
        ``(height, width)``, True for pixels to ignore; non-finite pixels are ignored too.
    detector : Detector
        Pixel -> focal-plane transform.
    grid : FocalPlaneGrid
    nsigma, n_iter : float, int
        MEANCLIP clipping parameters.

    Returns
    -------
    dict of str to numpy.ndarray
        ``values`` (float64 ``grid.shape``: clipped mean x number of good pixels, 0 where
        unused), ``counts`` (int64: number of good pixels, NPOINT, before clipping, as Rubin),
        ``sum_fx``, ``sum_fy`` (float64: sums of the good pixels' focal-plane mm, so the model
        knows where in a partly covered superpixel its data sit).
    """
    height, width = image.shape
    values = np.zeros(grid.shape, dtype=np.float64)
    counts = np.zeros(grid.shape, dtype=np.int64)
    sum_fx = np.zeros(grid.shape, dtype=np.float64)
    sum_fy = np.zeros(grid.shape, dtype=np.float64)
    fx0, fy0 = (float(c) for c in detector.pixel_to_focal_plane(0.0, 0.0))
    fx1, fy1 = (float(c) for c in detector.pixel_to_focal_plane(1.0, 0.0))
    fx2, fy2 = (float(c) for c in detector.pixel_to_focal_plane(0.0, 1.0))
    # cell coordinates are affine in pixel coordinates: u = u0 + ux x + uy y (likewise v)
    (u0, v0), (ux, vx), (uy, vy) = (
        _cell_coords(detector, grid, x, y) for x, y in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    )
    ux, vx, uy, vy = ux - u0, vx - v0, uy - u0, vy - v0
    corners_u = (
        u0
        + ux * np.array([0, width - 1, 0, width - 1])
        + uy * np.array([0, 0, height - 1, height - 1])
    )
    corners_v = (
        v0
        + vx * np.array([0, width - 1, 0, width - 1])
        + vy * np.array([0, 0, height - 1, height - 1])
    )
    axis_aligned = abs(uy) < 1e-12 * abs(ux) and abs(vx) < 1e-12 * abs(vy)
    x = np.arange(width)
    y = np.arange(height)
    cell_of_x = np.floor(u0 + ux * x).astype(np.int64) if axis_aligned else None
    cell_of_y = np.floor(v0 + vy * y).astype(np.int64) if axis_aligned else None
    cells: list[tuple[int, int]] = []
    samples: list[np.ndarray] = []
    for i in range(int(np.floor(corners_v.min())), int(np.floor(corners_v.max())) + 1):
        for j in range(int(np.floor(corners_u.min())), int(np.floor(corners_u.max())) + 1):
            if not (0 <= i < grid.shape[0] and 0 <= j < grid.shape[1]):
                raise TaskError(
                    f"detector {detector.id} reaches outside the focal-plane grid at cell {(i, j)}"
                )
            if axis_aligned:
                cols = np.flatnonzero(cell_of_x == j)
                rows = np.flatnonzero(cell_of_y == i)
                if cols.size == 0 or rows.size == 0:
                    continue
                box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                inside = None
            else:
                box, inside = _rotated_cell(
                    detector, grid, i, j, (u0, ux, uy, v0, vx, vy), image.shape
                )
                if box is None:
                    continue
            sample = image[box]
            exclude = ~np.isfinite(sample)
            if bad is not None:
                exclude |= bad[box]
            if inside is not None:
                exclude |= ~inside
            good = ~exclude
            n_good = int(good.sum())
            if n_good == 0:
                continue
            cells.append((i, j))
            samples.append(sample[good])
            col_sum = float(good.sum(axis=0) @ np.arange(box[1].start, box[1].stop))
            row_sum = float(good.sum(axis=1) @ np.arange(box[0].start, box[0].stop))
            sum_fx[i, j] = n_good * fx0 + (fx1 - fx0) * col_sum + (fx2 - fx0) * row_sum
            sum_fy[i, j] = n_good * fy0 + (fy1 - fy0) * col_sum + (fy2 - fy0) * row_sum
    for (i, j), n_good, mean in zip(cells, *_cell_stats(samples, nsigma, n_iter), strict=True):
        if n_good > 0 and np.isfinite(mean):
            values[i, j] = mean * n_good
            counts[i, j] = n_good
        else:
            sum_fx[i, j] = sum_fy[i, j] = 0.0
    return {"values": values, "counts": counts, "sum_fx": sum_fx, "sum_fy": sum_fy}


def _cell_stats(
    samples: list[np.ndarray], nsigma: float, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(n_good, clipped mean)`` of each cell's good pixel values.

    Many small cells (a 1k CCD under 256-px superpixels) go through one vectorised call, rows
    padded with NaN; when padding would more than double the work (a few huge cells of very
    different sizes, as on a 4k CCD), each cell is its own call.
    """
    if not samples:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    longest = max(v.size for v in samples)
    if len(samples) * longest <= 2 * sum(v.size for v in samples):
        rows = np.full((len(samples), longest), np.nan, dtype=samples[0].dtype)
        for row, cell_values in zip(rows, samples, strict=True):
            row[: cell_values.size] = cell_values
        stats = clipped_stats(rows, nsigma=nsigma, n_iter=n_iter)
        return stats.n_good, stats.mean
    each = [clipped_stats(v.reshape(1, -1), nsigma=nsigma, n_iter=n_iter) for v in samples]
    return np.array([s.n_good[0] for s in each]), np.array([s.mean[0] for s in each])


def merge_partials(a: ArrayBundle, b: ArrayBundle) -> ArrayBundle:
    """Sum two focal-plane partials (associative and commutative: safe in any tree reduction).

    Parameters
    ----------
    a, b : ArrayBundle
        Partials (or merged partials) of the same visit on the same grid.

    Returns
    -------
    ArrayBundle
        ``values`` and ``counts`` summed; ``detectors`` the sorted union.

    Raises
    ------
    TaskError
        On different grids ("size mismatch" / "dimensions mismatch" in Rubin), different visits,
        or a detector present in both (it would be counted twice).
    """
    a = as_bundle(a, PARTIAL_KIND, ("values", "counts"))
    b = as_bundle(b, PARTIAL_KIND, ("values", "counts"))
    grid_a, grid_b = FocalPlaneGrid.from_attrs(a.attrs), FocalPlaneGrid.from_attrs(b.attrs)
    if not grid_a.matches(grid_b):
        raise TaskError(f"focal-plane partials on different grids: {grid_a} vs {grid_b}")
    visit_a, visit_b = a.attrs.get("visit"), b.attrs.get("visit")
    if visit_a is not None and visit_b is not None and visit_a != visit_b:
        raise TaskError(f"cannot merge focal-plane partials of visits {visit_a} and {visit_b}")
    twice = sorted(set(a.attrs["detectors"]) & set(b.attrs["detectors"]))
    if twice:
        raise TaskError(f"focal-plane partials both contain detector(s) {twice}")
    attrs = dict(a.attrs)
    attrs["detectors"] = sorted(set(a.attrs["detectors"]) | set(b.attrs["detectors"]))
    attrs["visit"] = visit_a if visit_a is not None else visit_b
    if set(a.arrays) != set(b.arrays):
        raise TaskError(f"focal-plane partials hold different arrays: {sorted(a)} vs {sorted(b)}")
    return ArrayBundle({name: a[name] + b[name] for name in a.arrays}, attrs)


def _cell_coords(
    detector: Detector, grid: FocalPlaneGrid, x: float, y: float
) -> tuple[float, float]:
    fx, fy = detector.pixel_to_focal_plane(x, y)
    return (
        (float(fx) - grid.origin_mm[0]) / grid.bin_size_mm,
        (float(fy) - grid.origin_mm[1]) / grid.bin_size_mm,
    )


def _rotated_cell(
    detector: Detector,
    grid: FocalPlaneGrid,
    i: int,
    j: int,
    affine: tuple[float, ...],
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice] | None, np.ndarray | None]:
    """Pixel box around cell (i, j) and which of its pixels have their centre in the cell."""
    u0, ux, uy, v0, vx, vy = affine
    height, width = shape
    corners_fx = grid.origin_mm[0] + grid.bin_size_mm * np.array([j, j + 1, j, j + 1])
    corners_fy = grid.origin_mm[1] + grid.bin_size_mm * np.array([i, i, i + 1, i + 1])
    px, py = detector.focal_plane_to_pixel(corners_fx, corners_fy)
    x0, x1 = max(int(np.floor(px.min())), 0), min(int(np.ceil(px.max())) + 1, width)
    y0, y1 = max(int(np.floor(py.min())), 0), min(int(np.ceil(py.max())) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None, None
    x = np.arange(x0, x1, dtype=np.float64)[None, :]
    y = np.arange(y0, y1, dtype=np.float64)[:, None]
    inside = (np.floor(u0 + ux * x + uy * y) == j) & (np.floor(v0 + vx * x + vy * y) == i)
    if not inside.any():
        return None, None
    return (slice(y0, y1), slice(x0, x1)), inside

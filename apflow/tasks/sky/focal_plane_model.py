"""The per-visit focal-plane background model: merge, fill, scale, evaluation on a CCD.

The model is ``values / counts`` of the merged partials where a superpixel has at least
``min_frac`` of a full superpixel of good pixels. Superpixels cut by CCD gaps or the camera edge
are moved from their data's centroid to their centre, and bad superpixels (the empty border,
gaps, masked regions) are filled by a thin plate through the good ones, which continues
gradients instead of flattening them. The visit scale is the count-weighted median of the good
superpixels. On a CCD the model is a bicubic spline through the superpixel centres (focal-plane
mm), sampled every 32 px and interpolated between the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.interpolate import RectBivariateSpline
from scipy.ndimage import gaussian_filter

from ...core import Camera, Detector
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig
from .bundle import ArrayBundle, as_bundle
from .focal_plane import (
    PARTIAL_KIND,
    FocalPlaneGrid,
    measure_focal_plane_partial,
    merge_partials,
)
from .interpolate import fill_bad_bins, upsample_grid

__all__ = [
    "MODEL_KIND",
    "absorbed_by_focal_plane_model",
    "FocalPlaneBackgroundConfig",
    "FocalPlaneBackgroundResult",
    "FocalPlaneBackgroundTask",
    "evaluate_focal_plane_background",
    "focal_plane_model",
    "weighted_median",
]

MODEL_KIND = "focal_plane_background"


@dataclass
class FocalPlaneBackgroundConfig(TaskConfig):
    """Configuration of :class:`FocalPlaneBackgroundTask`.

    Attributes
    ----------
    min_frac : float
        A superpixel is bad with fewer good pixels than ``min_frac`` of a full superpixel
        (Rubin's minFrac). Default 0.1.
    smoothing : float
        Gaussian smoothing of the superpixel grid, sigma in superpixels (normalised convolution
        over good cells; Rubin's doSmooth/smoothScale). Default 0: no smoothing.
    scale_statistic : str
        How the visit scale is taken from the model (open question 3):
        ``"weighted_median"`` (default): median of the good superpixels weighted by their pixel
        counts, i.e. the median sky per CCD pixel, independent of the grid's empty border and of
        interpolated cells; ``"median"``: Rubin's plain median of every cell after filling.
    """

    min_frac: float = 0.1
    smoothing: float = 0.0
    scale_statistic: str = "weighted_median"

    def validate(self) -> None:
        if not 0.0 <= self.min_frac <= 1.0:
            raise ConfigError("FocalPlaneBackgroundConfig.min_frac must be in [0, 1]")
        if self.smoothing < 0:
            raise ConfigError("FocalPlaneBackgroundConfig.smoothing must be >= 0")
        if self.scale_statistic not in ("weighted_median", "median"):
            raise ConfigError(
                "FocalPlaneBackgroundConfig.scale_statistic must be 'weighted_median' or 'median'"
            )


@dataclass
class FocalPlaneBackgroundResult:
    """A visit's focal-plane background model and its scale.

    Attributes
    ----------
    focal_plane_background : ArrayBundle
        Arrays ``model`` (float64 ``(ny, nx)``, counts per pixel, every cell filled),
        ``counts`` (int64 good pixels per cell) and ``good`` (bool, cells measured well enough);
        attrs: the grid, ``scale``, ``visit``, ``detectors``, ``band``, ``physical_filter``.
    scale : float
        The visit's sky level (counts per pixel) that residuals are divided by.
    """

    focal_plane_background: ArrayBundle
    scale: float

    def summary(self) -> dict[str, float | int]:
        """Scale and number of good superpixels."""
        return {
            "scale": self.scale,
            "good_superpixels": int(self.focal_plane_background["good"].sum()),
            "detectors": len(self.focal_plane_background.attrs["detectors"]),
        }


class FocalPlaneBackgroundTask(Task):
    """Merge a visit's CCD partials into its focal-plane background model and scale."""

    ConfigClass = FocalPlaneBackgroundConfig
    config: FocalPlaneBackgroundConfig

    def run(self, partials: list[ArrayBundle]) -> FocalPlaneBackgroundResult:
        """Merge the partials, fill bad superpixels and measure the scale.

        Parameters
        ----------
        partials : list of ArrayBundle
            Gathered :class:`FocalPlanePartialTask` outputs of one visit (any subset of its
            detectors; already-merged partials are fine too).

        Raises
        ------
        TaskError
            With no partials, on inconsistent grids, or if no superpixel is good.
        """
        if not partials:
            raise TaskError("no focal-plane partials to merge")
        merged = partials[0]
        for partial in partials[1:]:
            merged = merge_partials(merged, partial)
        merged = as_bundle(merged, PARTIAL_KIND, ("values", "counts"))
        return FocalPlaneBackgroundResult(*focal_plane_model(merged, **self._model_options()))

    def _model_options(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "min_frac": cfg.min_frac,
            "smoothing": cfg.smoothing,
            "scale_statistic": cfg.scale_statistic,
        }


def focal_plane_model(
    partial: ArrayBundle,
    min_frac: float = 0.1,
    smoothing: float = 0.0,
    scale_statistic: str = "weighted_median",
) -> tuple[ArrayBundle, float]:
    """The focal-plane background model of a merged partial (Rubin's ``getStatsImage``).

    Parameters
    ----------
    partial : ArrayBundle
        Merged partial of all (or the available) CCDs of one visit.
    min_frac, smoothing, scale_statistic
        See :class:`FocalPlaneBackgroundConfig`.

    Returns
    -------
    model : ArrayBundle
        See :class:`FocalPlaneBackgroundResult`.
    scale : float
        The visit scale (counts per pixel).

    Raises
    ------
    TaskError
        If no superpixel has enough good pixels, or the scale is not positive.
    """
    partial = as_bundle(partial, PARTIAL_KIND, ("values", "counts"))
    grid = FocalPlaneGrid.from_attrs(partial.attrs)
    values = np.asarray(partial["values"], dtype=np.float64)
    counts = np.asarray(partial["counts"])
    pixels_per_cell = (grid.bin_size_mm / float(partial.attrs["pixel_size_mm"])) ** 2
    good = counts >= max(min_frac * pixels_per_cell, 1.0)
    if not good.any():
        raise TaskError(
            f"visit {partial.attrs.get('visit')}: no focal-plane superpixel has "
            f"{min_frac:.0%} of its pixels good"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(good, values / counts, 0.0)
    if smoothing > 0:
        # normalised convolution: a weighted mean of the good cells, so empty cells pull nothing
        weight = gaussian_filter(good.astype(np.float64), smoothing, mode="constant")
        smooth = gaussian_filter(mean, smoothing, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(good, smooth / weight, 0.0)
    model = fill_bad_bins(mean, ~good, smoothness=2)
    if "sum_fx" in partial.arrays and "sum_fy" in partial.arrays:
        model = _centroid_corrected(model, mean, good, counts, partial, grid)
    if scale_statistic == "weighted_median":
        scale = weighted_median(model[good], counts[good].astype(np.float64))
    else:
        scale = float(np.median(model))
    if not (np.isfinite(scale) and scale > 0):
        raise TaskError(
            f"visit {partial.attrs.get('visit')}: focal-plane background scale {scale} is not "
            "positive; the sky frame is in units of the sky level and cannot be normalised"
        )
    attrs = dict(partial.attrs)
    attrs.update(
        kind=MODEL_KIND,
        scale=scale,
        scale_statistic=scale_statistic,
        min_frac=min_frac,
        smoothing=smoothing,
        good_superpixels=int(good.sum()),
    )
    arrays = {"model": model, "counts": counts.astype(np.int64), "good": good}
    return ArrayBundle(arrays, attrs), scale


def _centroid_corrected(
    model: np.ndarray,
    mean: np.ndarray,
    good: np.ndarray,
    counts: np.ndarray,
    partial: ArrayBundle,
    grid: FocalPlaneGrid,
    n_iter: int = 3,
) -> np.ndarray:
    """Move each superpixel's mean from its data's centroid to the cell centre.

    A superpixel cut by a CCD gap or the camera's edge averages the sky over where its pixels
    are, not over the whole cell; treating that mean as the cell-centre value shifts a gradient
    by up to half a cell. The mean is corrected by the model's gradient times the offset of the
    centroid from the centre, iterating with the re-filled model (exact for linear gradients).
    """
    centers_y, centers_x = grid.centers_mm()
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(good, centers_x[None, :] - partial["sum_fx"] / counts, 0.0)
        dy = np.where(good, centers_y[:, None] - partial["sum_fy"] / counts, 0.0)
    for _ in range(n_iter):
        grad_y, grad_x = np.gradient(model, grid.bin_size_mm)
        model = fill_bad_bins(mean + grad_x * dx + grad_y * dy, ~good, smoothness=2)
    return model


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Median of ``values`` with ``weights`` (the value where the cumulative weight reaches half).

    When the half falls exactly between two values, their mean is returned, so equal weights give
    :func:`numpy.median`.
    """
    order = np.argsort(values)
    v, w = np.asarray(values, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    cumulative = np.cumsum(w)
    half = 0.5 * cumulative[-1]
    k = int(np.searchsorted(cumulative, half, side="left"))
    if math.isclose(cumulative[k], half, rel_tol=1e-12) and k + 1 < v.size:
        return float(0.5 * (v[k] + v[k + 1]))
    return float(v[k])


def evaluate_focal_plane_background(
    model: ArrayBundle,
    detector: Detector,
    shape: tuple[int, int] | None = None,
    sample_spacing: int = 32,
) -> np.ndarray:
    """The smooth focal-plane model at every pixel of a CCD (Rubin's ``toCcdBackground``).

    A bicubic interpolating spline through the superpixel centres (focal-plane mm; reduced order
    for grids under 4 cells) is evaluated on a grid of CCD pixels every ``sample_spacing`` px
    (plus the last row/column), and those samples are interpolated to every pixel with the local
    cubic of :func:`~apflow.tasks.sky.interpolate.upsample_grid`. The model varies on the
    superpixel scale (hundreds of px or more), so the second step adds errors far below 1e-4 of
    the model while keeping a 4k x 4k evaluation at about 0.1 s.

    Parameters
    ----------
    model : ArrayBundle
        :class:`FocalPlaneBackgroundTask` output.
    detector : Detector
    shape : tuple of int, optional
        ``(height, width)`` of the CCD image; ``detector.shape`` when omitted.
    sample_spacing : int
        Pixels between exact spline evaluations.

    Returns
    -------
    numpy.ndarray
        float32 ``(height, width)`` model in the units of the model (counts per pixel).
    """
    model = as_bundle(model, MODEL_KIND, ("model",))
    grid = FocalPlaneGrid.from_attrs(model.attrs)
    height, width = shape if shape is not None else detector.shape
    centers_y, centers_x = grid.centers_mm()
    values = np.asarray(model["model"], dtype=np.float64)
    spline = RectBivariateSpline(
        centers_y,
        centers_x,
        values,
        kx=min(3, grid.shape[0] - 1),  # along the first coordinate, y
        ky=min(3, grid.shape[1] - 1),
    )
    knots_x = _sample_positions(width, sample_spacing)
    knots_y = _sample_positions(height, sample_spacing)
    fx, fy = detector.pixel_to_focal_plane(knots_x[None, :], knots_y[:, None])
    samples = spline.ev(fy, fx)
    return upsample_grid(samples, knots_y, knots_x, (height, width))


def _sample_positions(n_pixels: int, spacing: int) -> np.ndarray:
    positions = np.arange(0, n_pixels, max(int(spacing), 1), dtype=np.float64)
    if positions[-1] != n_pixels - 1:
        positions = np.append(positions, n_pixels - 1)
    return positions


def absorbed_by_focal_plane_model(
    camera: Camera, images: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """``M[X]``: what the focal-plane background model makes of noise-free images ``X``.

    The sky-frame chain's own operator applied exactly (plain superpixel means of all pixels of
    all detectors, no clipping or mask, bad superpixels filled, the model evaluated on every CCD).
    It is linear, so ``M[1 + X] = 1 + M[X]``; the 1 keeps the model's scale positive. A sky frame
    can only recover the part of a sky pattern ``P`` that the model does not absorb, which is
    what tests compare against truth.

    Parameters
    ----------
    camera : Camera
        The camera whose focal-plane grid the chain uses.
    images : dict of int to numpy.ndarray
        Dimensionless image per detector id, shape ``detector.shape``.

    Returns
    -------
    dict of int to numpy.ndarray
        ``M[X]`` per detector (float64, same shapes).
    """
    grid = FocalPlaneGrid.from_camera(camera)
    arrays: dict[str, np.ndarray] = {}
    for det in camera.detectors:
        partial = measure_focal_plane_partial(1.0 + images[det.id], None, det, grid, n_iter=0)
        arrays = {k: arrays.get(k, 0) + v for k, v in partial.items()}
    attrs = {
        "kind": PARTIAL_KIND,
        **grid.to_attrs(),
        "pixel_size_mm": camera.detectors[0].pixel_size,
        "detectors": camera.detector_ids,
        "visit": None,
    }
    model, _ = focal_plane_model(ArrayBundle(arrays, attrs))
    return {
        det.id: evaluate_focal_plane_background(model, det).astype(np.float64) - 1.0
        for det in camera.detectors
    }

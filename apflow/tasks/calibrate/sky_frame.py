"""Sky-frame subtraction inside calibrate, with a scale fitted on the one CCD.

The better correction fits one scale per visit over all CCDs (:mod:`apflow.tasks.sky`'s
``SkyFrameScaleTask`` and ``SubtractSkyFrameTask``, stages of a workflow that then feeds
calibrate its output). :func:`apply_sky_frame` is the fallback when calibrate is given the
detector's ``sky_frame`` directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...core import Exposure
from ...errors import TaskError
from ...io import ArrayBundle
from .background import BackgroundConfig, estimate_background
from .psf.pixel_psf import normalized_coordinates


def apply_sky_frame(
    exposure: Exposure, sky_frame: Exposure | ArrayBundle | None, bin_size: int = 32
) -> tuple[Exposure, dict[str, Any]]:
    """Subtract a detector's sky frame, scaled to this CCD alone.

    The sky module's correction fits one scale per visit over all its CCDs (a gather) before
    calibration. A single CCD can still fit its own: the image's clipped means in
    ``bin_size`` bins ``v`` are modelled as a plane ``L(x, y)`` (the smooth sky) plus
    ``s f N``, with ``f`` the frame's bin means and ``N`` its normaliser (``L`` itself for a
    ``"local"`` frame, the CCD's median level for a ``"visit_scale"`` one), by least squares
    with 3-sigma clipping of the stars' bins. :func:`apflow.tasks.sky.subtract_sky_frame` then
    removes ``s f N``.

    Parameters
    ----------
    exposure : Exposure
        Counts, nothing subtracted yet.
    sky_frame : Exposure or ArrayBundle or None
        The ``sky_frame`` exposure (fraction of the sky) or a ``sky_frame_binned`` bundle.
    bin_size : int
        Bin of the fit, px.

    Returns
    -------
    exposure : Exposure
        The corrected exposure (the input itself when there is no frame).
    info : dict
        ``applied``, and ``scale``, ``normalization``, ``n_bins``, ``rms`` (fraction of the sky)
        when applied. Without a frame: the exposure's own ``metadata["sky_correction"]`` when
        an earlier stage corrected it, else ``applied: False``.

    Raises
    ------
    TaskError
        If the frame's shape differs from the exposure's or the fit has too few bins.
    """
    if sky_frame is None:
        # an upstream correction (nightly's per-visit sky_correct stages) has its own record
        upstream = exposure.metadata.get("sky_correction")
        if isinstance(upstream, dict):
            return exposure, dict(upstream)
        return exposure, {"applied": False, "reason": "no sky frame given"}
    from ..sky import subtract_sky_frame, upsample_bins

    if isinstance(sky_frame, Exposure):
        frame, attrs = sky_frame.image, sky_frame.metadata
    else:
        attrs = dict(getattr(sky_frame, "attrs", {}))
        binned = np.asarray(sky_frame["sky"], np.float64)
        frame = upsample_bins(binned, exposure.shape, int(attrs["bin_size"]))
    if frame.shape != exposure.shape:
        raise TaskError(f"sky frame of shape {frame.shape} for an exposure of {exposure.shape}")
    normalization = str(attrs.get("normalization", "visit_scale"))
    config = BackgroundConfig(bin_size=bin_size)
    image_bins = estimate_background(exposure.image, exposure.mask, config)
    frame_bins = _bin_means(np.asarray(frame, np.float32), image_bins.values.shape)
    x, y = np.meshgrid(image_bins.x_centers, image_bins.y_centers)
    u, v = normalized_coordinates(x.ravel(), y.ravel(), exposure.width, exposure.height)
    values, f = image_bins.values.ravel(), frame_bins.ravel()
    measured = (image_bins.n_pixels.ravel() > 0) & np.isfinite(f)
    keep = measured.copy()
    level = np.full(values.shape, float(np.median(values[measured])))
    for _ in range(4):
        design = np.column_stack([np.ones_like(u), u, v, f * level])
        coeffs, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coeffs
        if normalization == "local":
            level = design[:, :3] @ coeffs[:3]
        q25, q75 = np.percentile(residual[keep], [25.0, 75.0])
        keep = measured & (np.abs(residual) <= 3.0 * 0.741 * (q75 - q25))
    if keep.sum() < 10:
        raise TaskError(f"sky frame: only {int(keep.sum())} usable {bin_size}-px bins to fit")
    scale = float(coeffs[3])
    if normalization == "local":
        # the plane is separable: a column term plus a row term, added by broadcasting
        pu, pv = normalized_coordinates(
            np.arange(exposure.width), np.arange(exposure.height), exposure.width, exposure.height
        )
        normalizer: np.ndarray | float = np.add(
            (coeffs[0] + coeffs[1] * pu).astype(np.float32)[None, :],
            (coeffs[2] * pv).astype(np.float32)[:, None],
        )
    else:
        normalizer = float(level[0])
    corrected = subtract_sky_frame(exposure, np.asarray(frame), scale, normalizer)
    rms = float(np.sqrt(np.mean(residual[keep] ** 2)) / np.median(level))
    info = {
        "applied": True,
        "scale": scale,
        "normalization": normalization,
        "n_bins": int(keep.sum()),
        "rms": rms,
    }
    return corrected, info


def _bin_means(frame: np.ndarray, n_bins: tuple[int, int]) -> np.ndarray:
    """Plain means of a sky frame over the bins of :func:`estimate_background` (NaN ignored).

    A sky frame is smooth: within a 32 px bin its values span less than the 3-sigma window of
    a clipped mean, which would keep them all, so the mean is the same number at a fraction of
    the cost (no sort of 16 M values).
    """
    height, width = frame.shape
    n_y, n_x = n_bins
    bin_h, bin_w = math.ceil(height / n_y), math.ceil(width / n_x)
    valid = np.isfinite(frame)
    padded = np.zeros((n_y * bin_h, n_x * bin_w), np.float32)
    padded[:height, :width] = frame if valid.all() else np.where(valid, frame, np.float32(0))
    count = np.zeros(padded.shape, np.float32)
    count[:height, :width] = valid
    total = padded.reshape(n_y, bin_h, n_x, bin_w).sum(axis=3, dtype=np.float64).sum(axis=1)
    n = count.reshape(n_y, bin_h, n_x, bin_w).sum(axis=3, dtype=np.float64).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)

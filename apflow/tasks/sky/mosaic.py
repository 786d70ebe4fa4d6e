"""Camera mosaic of the sky frames: one image in focal-plane coordinates and a PNG of it.

Each detector's sky frame is block-averaged by ``binning`` pixels and resampled (nearest block)
onto a focal-plane grid of ``binning x pixel_size`` mm pixels, so detector rotations and gaps are
drawn where they are; pixels outside every detector are NaN (Rubin's ``makeCameraImage``).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core import Camera, Detector, Exposure, MaskPlanes
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig
from .bundle import ArrayBundle, as_bundle
from .combine import SKY_FRAME_BINNED_KIND
from .interpolate import upsample_bins

__all__ = [
    "SkyCameraConfig",
    "SkyCameraResult",
    "SkyCameraTask",
    "render_sky_camera_png",
    "sky_camera_mosaic",
]

_log = logging.getLogger(__name__)


@dataclass
class SkyCameraConfig(TaskConfig):
    """Configuration of :class:`SkyCameraTask`.

    Attributes
    ----------
    binning : int
        CCD pixels per mosaic pixel along each axis. Default 32 (the sky-frame bin, so every
        bin is visible; Rubin uses 64).
    make_png : bool
        Also render the PNG. Default True.
    """

    binning: int = 32
    make_png: bool = True

    def validate(self) -> None:
        if self.binning < 1:
            raise ConfigError("SkyCameraConfig.binning must be >= 1")


@dataclass
class SkyCameraResult:
    """The camera mosaic.

    Attributes
    ----------
    sky_camera : Exposure
        ``image``: float32 mosaic (fraction of sky; NaN off the detectors, flagged NO_DATA);
        ``metadata``: ``origin_mm`` (focal-plane mm of the lower-left corner of pixel (0, 0)),
        ``pixel_mm``, ``binning``, ``detectors``, ``band``, ``physical_filter``.
    sky_camera_png : bytes or None
        PNG rendering with detector outlines and names.
    """

    sky_camera: Exposure
    sky_camera_png: bytes | None

    def summary(self) -> dict[str, Any]:
        """Mosaic size and number of detectors."""
        return {
            "shape": list(self.sky_camera.shape),
            "detectors": len(self.sky_camera.metadata["detectors"]),
        }


class SkyCameraTask(Task):
    """Assemble the detectors' sky frames into a focal-plane mosaic and a PNG."""

    ConfigClass = SkyCameraConfig
    config: SkyCameraConfig

    def run(self, sky_frames: list[Exposure | ArrayBundle], camera: Camera) -> SkyCameraResult:
        """Build the mosaic.

        Parameters
        ----------
        sky_frames : list of Exposure or ArrayBundle
            Gathered sky frames (:class:`SkyCombineTask` ``sky_frame`` exposures, or the smaller
            ``sky_frame_binned`` bundles), any subset of the camera's detectors.
        camera : Camera
            Context parameter.

        Raises
        ------
        TaskError
            With no sky frames, or a frame of a detector the camera does not have.
        """
        if not sky_frames:
            raise TaskError("sky_camera: no sky frames to assemble")
        frames = {}
        for frame in sky_frames:
            det_id, image = _frame_image(frame)
            try:
                detector = camera[det_id]
            except KeyError as exc:
                raise TaskError(f"sky_camera: {exc.args[0]}") from None
            frames[detector.id] = image
        mosaic, meta = sky_camera_mosaic(frames, camera, self.config.binning)
        meta.update(_filter_attrs(sky_frames))
        exposure = Exposure(
            image=mosaic,
            mask=np.where(np.isfinite(mosaic), 0, np.int32(MaskPlanes.NO_DATA)),
            metadata=meta,
        )
        png = None
        if self.config.make_png:
            title = f"sky frames {meta.get('physical_filter') or ''}".strip()
            png = render_sky_camera_png(mosaic, meta, camera, title=title)
        return SkyCameraResult(exposure, png)


def sky_camera_mosaic(
    frames: dict[int, np.ndarray], camera: Camera, binning: int = 32
) -> tuple[np.ndarray, dict[str, Any]]:
    """Resample full-resolution detector images onto one focal-plane grid.

    Parameters
    ----------
    frames : dict of int to numpy.ndarray
        Detector id -> ``(height, width)`` image.
    camera : Camera
    binning : int
        CCD pixels per mosaic pixel.

    Returns
    -------
    mosaic : numpy.ndarray
        float32 ``(ny, nx)``; NaN where no detector (or a missing one) covers the pixel.
    metadata : dict
        ``origin_mm``, ``pixel_mm``, ``binning``, ``detectors``.
    """
    pixel_mm = binning * camera.detectors[0].pixel_size
    xmin, xmax, ymin, ymax = camera.focal_plane_bounds()
    nx = int(np.ceil((xmax - xmin) / pixel_mm))
    ny = int(np.ceil((ymax - ymin) / pixel_mm))
    mosaic = np.full((ny, nx), np.nan, dtype=np.float32)
    for det_id, image in sorted(frames.items()):
        detector = camera[det_id]
        blocks = _block_mean(image, binning)
        corners = detector.corners_focal_plane()
        j0 = max(int((corners[:, 0].min() - xmin) / pixel_mm), 0)
        j1 = min(int(np.ceil((corners[:, 0].max() - xmin) / pixel_mm)), nx)
        i0 = max(int((corners[:, 1].min() - ymin) / pixel_mm), 0)
        i1 = min(int(np.ceil((corners[:, 1].max() - ymin) / pixel_mm)), ny)
        fx = xmin + (np.arange(j0, j1) + 0.5) * pixel_mm
        fy = ymin + (np.arange(i0, i1) + 0.5) * pixel_mm
        px, py = detector.focal_plane_to_pixel(fx[None, :], fy[:, None])
        inside = detector.contains_pixel(px, py)
        bx = np.clip(np.floor((px + 0.5) / binning).astype(int), 0, blocks.shape[1] - 1)
        by = np.clip(np.floor((py + 0.5) / binning).astype(int), 0, blocks.shape[0] - 1)
        region = mosaic[i0:i1, j0:j1]
        region[inside] = blocks[by[inside], bx[inside]]
    metadata = {
        "origin_mm": [xmin, ymin],
        "pixel_mm": pixel_mm,
        "binning": binning,
        "detectors": sorted(int(d) for d in frames),
    }
    return mosaic, metadata


def render_sky_camera_png(
    mosaic: np.ndarray, metadata: dict[str, Any], camera: Camera, title: str = ""
) -> bytes:
    """PNG of a mosaic with each detector's outline and name, colour scale at the 1-99 %ile.

    Uses a bare matplotlib ``Figure`` with the Agg canvas (no pyplot, no GUI backend), so it is
    safe in worker threads and processes; writing into memory is not I/O.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite = mosaic[np.isfinite(mosaic)]
    low, high = np.percentile(finite, [1.0, 99.0]) if finite.size else (0.0, 1.0)
    if not high > low:
        low, high = low - 1e-6, high + 1e-6
    ny, nx = mosaic.shape
    x0, y0 = metadata["origin_mm"]
    pixel = metadata["pixel_mm"]
    extent = (x0, x0 + nx * pixel, y0, y0 + ny * pixel)
    figure = Figure(figsize=(7.0, 6.0), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(
        mosaic,
        origin="lower",
        extent=extent,
        cmap="viridis",
        vmin=low,
        vmax=high,
        interpolation="nearest",
    )
    figure.colorbar(shown, ax=axes, label="sky frame (fraction of sky level)")
    present = set(metadata.get("detectors", []))
    for detector in camera.detectors:
        _outline(axes, detector, present)
    axes.set_xlabel("focal plane x (mm)")
    axes.set_ylabel("focal plane y (mm)")
    if title:
        axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _outline(axes: Any, detector: Detector, present: set[int]) -> None:
    corners = detector.corners_focal_plane()
    closed = np.vstack([corners, corners[:1]])
    style = "-" if detector.id in present else ":"
    axes.plot(closed[:, 0], closed[:, 1], style, color="white", linewidth=0.6)
    cx, cy = detector.center_mm
    axes.text(cx, cy, detector.name, color="white", fontsize=6, ha="center", va="center")


def _frame_image(frame: Exposure | ArrayBundle) -> tuple[int, np.ndarray]:
    """Detector id and full-resolution image of a sky frame (an Exposure or a binned bundle)."""
    if isinstance(frame, Exposure):
        det = frame.detector if frame.detector is not None else frame.metadata.get("detector")
        if det is None:
            raise TaskError("sky_camera: a sky frame has no detector id")
        return int(det), frame.image
    bundle = as_bundle(frame, SKY_FRAME_BINNED_KIND, ("sky",))
    shape = (int(bundle.attrs["shape"][0]), int(bundle.attrs["shape"][1]))
    image = upsample_bins(
        np.asarray(bundle["sky"], dtype=np.float64), shape, int(bundle.attrs["bin_size"])
    )
    return int(bundle.attrs["detector"]), image


def _block_mean(image: np.ndarray, binning: int) -> np.ndarray:
    """Mean of ``binning x binning`` blocks (partial blocks at the upper edges averaged too)."""
    height, width = image.shape
    ny, nx = -(-height // binning), -(-width // binning)
    padded = np.full((ny * binning, nx * binning), np.nan, dtype=np.float64)
    padded[:height, :width] = image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks without a finite pixel: NaN
        return np.nanmean(padded.reshape(ny, binning, nx, binning), axis=(1, 3))


def _filter_attrs(frames: list[Any]) -> dict[str, str]:
    """Band and physical filter shared by the frames ('' when unknown or mixed, with a warning)."""
    values: dict[str, set[str]] = {"band": set(), "physical_filter": set()}
    for frame in frames:
        attrs = frame.metadata if isinstance(frame, Exposure) else getattr(frame, "attrs", {})
        for key in values:
            if attrs.get(key):
                values[key].add(str(attrs[key]))
    out = {}
    for key, found in values.items():
        if len(found) > 1:
            _log.warning("sky_camera: frames of several %s values: %s", key, sorted(found))
        out[key] = found.pop() if len(found) == 1 else ""
    return out

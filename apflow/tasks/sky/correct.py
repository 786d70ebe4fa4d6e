"""Sky correction of science exposures: fit one sky-frame scale per visit, subtract it per CCD.

For a visit, every CCD's binned residual background (image minus the visit's focal-plane model,
normalised like the sky frame, 32-px clipped means, from :class:`SkyMeasurementTask`) is compared
with the same bins of that detector's sky frame; one scale ``s`` for the whole visit solves
``residual = s x frame`` by least squares without intercept, pooled over all CCDs, with Rubin's
rejection (``skyIter`` = 3 passes dropping ``|r| > skyRej x 0.741 x IQR(r)``, skyRej = 3). Each CCD
then gets ``image -= s x frame x N`` where ``N`` is what the frame was normalised by: the
focal-plane model at each pixel (``normalization="local"``, the default) or the visit scale
(Rubin's convention). ``s`` is close to 1 when the frame describes the visit.

Entry points: :func:`fit_sky_frame_scale` / :func:`subtract_sky_frame` on arrays, and for a
workflow (``workflows/sky_correct.yaml``) the per-CCD :class:`SkyFrameSamplesTask` (the residual
and the sky frame on the same bins), the per-visit :class:`SkyFrameScaleTask` and the per-CCD
:class:`SubtractSkyFrameTask`; :class:`~apflow.tasks.sky.sky_correction.SkyCorrectionTask` chains
them for a visit in memory. The samples stage exists because a per-visit stage cannot gather the
per-detector sky frames (their data ids have no visit): each CCD pairs its residual with its own
detector's frame, and the visit's fit gathers the pairs.

Detectors without a sky frame degrade gracefully, so that a workflow that sky-corrects first
(``nightly``) runs on a repository where no sky frame was built: their samples carry no frame
(``attrs["has_sky_frame"] = False``) and are left out of the visit's fit; a visit with no frame at
all gets ``scale = None``; and :class:`SubtractSkyFrameTask` then writes the exposure unchanged,
with ``metadata["sky_correction"] = {"applied": False, "reason": ...}`` and a ``warning`` in its
summary. A frame of another detector, filter or normalisation is still an error: it is a wrong
input, not a missing one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core import Detector, Exposure
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig
from ..stats import binned_clipped_stats
from .bundle import ArrayBundle, as_bundle
from .combine import SKY_FRAME_BINNED_KIND
from .focal_plane_model import MODEL_KIND, evaluate_focal_plane_background
from .interpolate import upsample_bins
from .measure import RESIDUAL_KIND, SkyMeasurementResult, SkyMeasurementTask
from .object_mask import apply_object_mask

__all__ = [
    "SkyFrameScaleConfig",
    "SkyFrameScaleFit",
    "SkyFrameScaleResult",
    "SkyFrameSamplesTask",
    "SkyFrameScaleTask",
    "SubtractSkyFrameConfig",
    "SubtractSkyFrameResult",
    "SubtractSkyFrameTask",
    "check_sky_frame",
    "fit_sky_frame_scale",
    "sample_sky_frame",
    "subtract_sky_frame",
]

_log = logging.getLogger(__name__)

#: 1 / (2 x 0.6745): Gaussian sigma per unit inter-quartile range (Rubin's 0.741).
IQR_TO_SIGMA = 0.741


@dataclass(frozen=True)
class SkyFrameScaleFit:
    """Result of :func:`fit_sky_frame_scale`.

    Attributes
    ----------
    scale : float
        Best-fit ``s`` in ``residual = s x frame``.
    n_used, n_total : int
        Bins kept after rejection, and bins with both values finite.
    rms : float
        Rms of the kept residuals ``residual - s x frame`` (units of the residuals).
    """

    scale: float
    n_used: int
    n_total: int
    rms: float


def fit_sky_frame_scale(
    residuals: Sequence[np.ndarray],
    frames: Sequence[np.ndarray],
    nsigma: float = 3.0,
    n_iter: int = 3,
) -> SkyFrameScaleFit:
    """Fit one scale of a sky frame to a visit's binned residual backgrounds (Rubin's solveScales).

    Parameters
    ----------
    residuals : sequence of numpy.ndarray
        One binned residual per CCD (any shapes; NaN where not measured).
    frames : sequence of numpy.ndarray
        The same CCDs' sky frames binned the same way, in the same order.
    nsigma : float
        Rejection threshold in robust sigmas (0.741 x IQR of the residuals). Default 3.0.
    n_iter : int
        Rejection passes. Default 3.

    Returns
    -------
    SkyFrameScaleFit

    Raises
    ------
    TaskError
        If the lists differ in length or shapes, fewer than 2 bins are usable, or the frame is
        zero where the residuals are measured.
    """
    if len(residuals) != len(frames):
        raise TaskError(f"{len(residuals)} residual backgrounds but {len(frames)} sky frames")
    r_parts, f_parts = [], []
    for r, f in zip(residuals, frames, strict=True):
        r, f = np.asarray(r, dtype=np.float64), np.asarray(f, dtype=np.float64)
        if r.shape != f.shape:
            raise TaskError(f"binned residual {r.shape} and sky frame {f.shape} differ in shape")
        use = np.isfinite(r) & np.isfinite(f)
        r_parts.append(r[use])
        f_parts.append(f[use])
    r = np.concatenate(r_parts) if r_parts else np.zeros(0)
    f = np.concatenate(f_parts) if f_parts else np.zeros(0)
    if r.size < 2 or not np.any(f != 0):
        raise TaskError(f"only {r.size} usable bins (or an all-zero sky frame): cannot fit a scale")
    keep = np.ones(r.size, dtype=bool)
    scale = _solve(r, f, keep)
    for _ in range(n_iter):
        resid = r - scale * f
        q25, q75 = np.percentile(resid[keep], [25.0, 75.0])
        limit = nsigma * IQR_TO_SIGMA * (q75 - q25)
        new_keep = np.abs(resid) <= limit if limit > 0 else keep
        if new_keep.sum() < 2 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
        scale = _solve(r, f, keep)
    rms = float(np.sqrt(np.mean((r[keep] - scale * f[keep]) ** 2)))
    return SkyFrameScaleFit(scale, int(keep.sum()), int(r.size), rms)


def subtract_sky_frame(
    exposure: Exposure, frame: np.ndarray, scale: float, normalizer: np.ndarray | float = 1.0
) -> Exposure:
    """``image - scale x frame x normalizer`` as a new exposure (mask and variance shared).

    Parameters
    ----------
    exposure : Exposure
    frame : numpy.ndarray
        Full-resolution sky frame, the exposure's shape.
    scale : float
        Fitted sky-frame scale of the visit.
    normalizer : numpy.ndarray or float
        What the frame is relative to, in the image's units: the focal-plane model image of
        this CCD (local normalisation) or the visit scale.
    """
    if frame.shape != exposure.shape:
        raise TaskError(
            f"sky frame shape {frame.shape} differs from the exposure's {exposure.shape}"
        )
    correction = np.multiply(frame, normalizer, dtype=np.float32)
    correction *= np.float32(scale)
    metadata = dict(exposure.metadata)
    metadata["sky_correction"] = {"applied": True, "scale": float(scale)}
    return dataclasses.replace(exposure, image=exposure.image - correction, metadata=metadata)


# --------------------------------------------------------------------------------------------
# per-visit fit


@dataclass
class SkyFrameScaleConfig(TaskConfig):
    """Configuration of :class:`SkyFrameScaleTask`.

    Attributes
    ----------
    nsigma : float
        Rejection threshold in robust sigmas (Rubin's skyRej). Default 3.0.
    n_iter : int
        Rejection passes (Rubin's skyIter). Default 3.
    """

    nsigma: float = 3.0
    n_iter: int = 3

    def validate(self) -> None:
        if self.nsigma <= 0 or self.n_iter < 0:
            raise ConfigError("SkyFrameScaleConfig: need nsigma > 0 and n_iter >= 0")


@dataclass
class SkyFrameScaleResult:
    """The visit's sky-frame scale.

    Attributes
    ----------
    sky_scale : dict
        JSON: ``scale``, ``n_bins``, ``n_total``, ``rms``, ``visit``, ``detectors`` (those in
        the fit), ``without_sky_frame`` (detectors left out for want of a frame). ``scale`` and
        ``rms`` are None, with a ``warning``, when no CCD of the visit has a sky frame.
    """

    sky_scale: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The scale, the bins used and any warning."""
        out = {k: self.sky_scale[k] for k in ("scale", "n_bins", "rms")}
        if self.sky_scale.get("warning"):
            out["warning"] = self.sky_scale["warning"]
        return out


class SkyFrameScaleTask(Task):
    """Fit one sky-frame scale for a visit from all its CCDs."""

    ConfigClass = SkyFrameScaleConfig
    config: SkyFrameScaleConfig

    def run(
        self,
        residual_skies: list[ArrayBundle],
        sky_frames: list[Exposure | ArrayBundle] | None = None,
    ) -> SkyFrameScaleResult:
        """Pair each CCD's residual with its detector's sky frame and fit the scale.

        Parameters
        ----------
        residual_skies : list of ArrayBundle
            The visit's CCDs: :class:`SkyFrameSamplesTask` outputs (residual and frame on the
            same bins) or, with ``sky_frames``, plain :class:`SkyMeasurementTask` outputs.
        sky_frames : list of Exposure or ArrayBundle, optional
            Sky frames (full ``sky_frame`` exposures or ``sky_frame_binned`` bundles) to pair
            with the residuals by detector; detectors without a residual are ignored,
            residuals without a frame are left out with a warning. Default: use the frame
            samples each residual carries (samples made without a frame are left out).

        Returns
        -------
        SkyFrameScaleResult
            ``scale`` None (and a ``warning``) when no CCD has a sky frame.

        Raises
        ------
        TaskError
            If no residual is given, a residual has no frame samples (without ``sky_frames``;
            a plain :class:`SkyMeasurementTask` output), or the fit fails.
        """
        if not residual_skies:
            raise TaskError("sky-frame scale: no residual backgrounds")
        frames = None if sky_frames is None else {frame_detector(f): f for f in sky_frames}
        residuals, paired, detectors, without, visits = [], [], [], [], set()
        for item in residual_skies:
            bundle = as_bundle(item, RESIDUAL_KIND, ("sky",))
            det_id = int(bundle.attrs["detector"])
            visits.add(bundle.attrs.get("visit"))
            if frames is None and not bundle.attrs.get("has_sky_frame", True):
                without.append(det_id)
                continue
            if frames is None:
                if "frame" not in bundle.arrays:
                    raise TaskError(
                        f"detector {det_id}: residual sky without sky-frame samples; give "
                        "sky_frames or measure it with SkyFrameSamplesTask"
                    )
                frame_values = np.asarray(bundle["frame"])
            elif det_id in frames:
                frame_values = sample_sky_frame(frames[det_id], bundle)
            else:
                without.append(det_id)
                continue
            residuals.append(np.asarray(bundle["sky"]))
            paired.append(frame_values)
            detectors.append(det_id)
        visit = visits.pop() if len(visits) == 1 else None
        if without:
            _log.warning(
                "visit %s: detector(s) %s have no sky frame: left out of the scale fit",
                visit,
                without,
            )
        if not residuals:
            return SkyFrameScaleResult(
                {
                    "scale": None,
                    "n_bins": 0,
                    "n_total": 0,
                    "rms": None,
                    "visit": visit,
                    "detectors": [],
                    "without_sky_frame": without,
                    "warning": f"visit {visit}: no CCD has a sky frame; no sky correction",
                }
            )
        fit = fit_sky_frame_scale(residuals, paired, self.config.nsigma, self.config.n_iter)
        return SkyFrameScaleResult(
            {
                "scale": fit.scale,
                "n_bins": fit.n_used,
                "n_total": fit.n_total,
                "rms": fit.rms,
                "visit": visit,
                "detectors": detectors,
                "without_sky_frame": without,
            }
        )


class SkyFrameSamplesTask(SkyMeasurementTask):
    """The residual sky of a science CCD plus its detector's sky frame on the same bins.

    Same configuration and measurement as :class:`SkyMeasurementTask` (use the one the sky
    frames were built with); the output bundle gains an array ``frame``, the sky frame's values
    on the residual's bins, which is all :class:`SkyFrameScaleTask` needs from the frame, and
    the attribute ``has_sky_frame``.
    """

    def run(  # type: ignore[override]
        self,
        exposure: Exposure,
        focal_plane_background: ArrayBundle,
        detector: Detector,
        sky_frame: Exposure | ArrayBundle | None = None,
        object_mask: ArrayBundle | None = None,
    ) -> SkyMeasurementResult:
        """Measure the binned residual sky and sample the sky frame on its bins.

        Parameters
        ----------
        exposure : Exposure
            Object-masked science exposure of this (visit, detector), or the post-ISR exposure
            when ``object_mask`` is given.
        focal_plane_background : ArrayBundle
            The visit's focal-plane model (a broadcast input).
        detector : Detector
            Context parameter.
        sky_frame : Exposure or ArrayBundle, optional
            This detector's sky frame, full or binned (a broadcast input). None (no frame was
            built for the detector): the residual alone, with ``has_sky_frame`` False.
        object_mask : ArrayBundle, optional
            The exposure's ``sky_object_mask`` (see :class:`SkyMeasurementTask`).

        Raises
        ------
        TaskError
            If the frame is of another detector, filter or normalisation, or binned otherwise.
        """
        if object_mask is not None:
            exposure = apply_object_mask(exposure, object_mask)
        if sky_frame is None:
            residual = super().run(exposure, focal_plane_background, detector).residual_sky
            _log.info("detector %s has no sky frame: no sky-frame samples", detector.id)
            return SkyMeasurementResult(
                ArrayBundle(dict(residual.arrays), {**residual.attrs, "has_sky_frame": False})
            )
        if frame_detector(sky_frame) != detector.id:
            raise TaskError(
                f"detector {detector.id}: given the sky frame of detector "
                f"{frame_detector(sky_frame)}"
            )
        residual = super().run(exposure, focal_plane_background, detector).residual_sky
        frame = sample_sky_frame(sky_frame, residual).astype(np.float32)
        return SkyMeasurementResult(
            ArrayBundle(
                {**residual.arrays, "frame": frame}, {**residual.attrs, "has_sky_frame": True}
            )
        )


def sample_sky_frame(frame: Exposure | ArrayBundle, residual: ArrayBundle) -> np.ndarray:
    """A sky frame's values on the bins of a residual sky of the same detector.

    Parameters
    ----------
    frame : Exposure or ArrayBundle
        Full-resolution ``sky_frame`` (binned here with plain means) or ``sky_frame_binned``
        (used as it is; its bins must be the residual's).
    residual : ArrayBundle
        A :class:`SkyMeasurementTask` output.

    Returns
    -------
    numpy.ndarray
        float64, the residual's bin grid.

    Raises
    ------
    TaskError
        If the two differ in physical filter, normalisation or bin size.
    """
    det_id = int(residual.attrs["detector"])
    frame_attrs = frame.metadata if isinstance(frame, Exposure) else frame.attrs
    _check_same(residual.attrs, frame_attrs, det_id)
    bin_size = int(residual.attrs["bin_size"])
    frame_bin, values = _binned_frame(frame)
    if frame_bin is None:  # a full-resolution frame: bin it like the residual
        return binned_clipped_stats(values, None, bin_size, n_iter=0).mean
    if frame_bin != bin_size:
        raise TaskError(
            f"detector {det_id}: sky frame bins of {frame_bin} px, residual bins of {bin_size} px"
        )
    return np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# per-CCD subtraction


@dataclass
class SubtractSkyFrameConfig(TaskConfig):
    """Configuration of :class:`SubtractSkyFrameTask`.

    Attributes
    ----------
    subtract_focal_plane : bool
        Also subtract the visit's focal-plane background model (Rubin's full sky correction:
        large-scale background plus sky frame). Default False: only the sky frame.
    sample_spacing : int
        Pixels between exact focal-plane spline evaluations. Default 32.
    """

    subtract_focal_plane: bool = False
    sample_spacing: int = 32


@dataclass
class SubtractSkyFrameResult:
    """The sky-corrected exposure.

    ``metadata["sky_correction"]`` records ``applied``, the ``scale`` and the frame's
    ``physical_filter``, or, when no frame could be applied, ``applied: False`` and the
    ``reason`` (the pixels are the input's).
    """

    exposure: Exposure

    def summary(self) -> dict[str, Any]:
        """The scale applied (None if none), and a warning when no sky frame was applied."""
        record = self.exposure.metadata["sky_correction"]
        out: dict[str, Any] = {"scale": record.get("scale")}
        if not record.get("applied", True):
            out["warning"] = record["reason"]
        return out


class SubtractSkyFrameTask(Task):
    """Subtract the visit's scaled sky frame from one CCD."""

    ConfigClass = SubtractSkyFrameConfig
    config: SubtractSkyFrameConfig

    def run(
        self,
        exposure: Exposure,
        detector: Detector,
        sky_scale: dict[str, Any] | None = None,
        focal_plane_background: ArrayBundle | None = None,
        sky_frame: Exposure | ArrayBundle | None = None,
    ) -> SubtractSkyFrameResult:
        """Apply the correction.

        Parameters
        ----------
        exposure : Exposure
            The science CCD (counts).
        detector : Detector
            Context parameter.
        sky_scale : dict, optional
            :class:`SkyFrameScaleTask` output of the visit (a broadcast input). None (no CCD
            of the visit has a sky frame, so none was masked or fitted) or a null ``scale``:
            the exposure is returned unchanged.
        focal_plane_background : ArrayBundle, optional
            The visit's focal-plane model (the frame's normaliser; a broadcast input). Needed
            whenever a correction is applied.
        sky_frame : Exposure or ArrayBundle, optional
            This detector's sky frame (full or binned). None (no frame was built): the
            exposure is returned unchanged; the metadata and the summary say why.

        Raises
        ------
        TaskError
            If the sky frame is of another filter than the exposure, or a correction is due
            but the visit's focal-plane model is missing.
        """
        reason = None
        if sky_frame is None:
            reason = f"detector {detector.id}: no sky frame; sky correction not applied"
        elif sky_scale is None or sky_scale.get("scale") is None:
            visit = (sky_scale or {}).get("visit")
            if visit is None and exposure.visit_info is not None:
                visit = exposure.visit_info.visit
            reason = (
                f"visit {visit}: no sky-frame scale (no CCD of the visit had a "
                f"sky frame); sky correction of detector {detector.id} not applied"
            )
        elif focal_plane_background is None:
            raise TaskError(
                f"visit {sky_scale.get('visit')}, detector {detector.id}: a sky-frame scale "
                "but no focal-plane background model to normalise the sky frame with"
            )
        if reason is not None:
            _log.info("%s", reason)
            metadata = {**exposure.metadata, "sky_correction": {"applied": False, "reason": reason}}
            return SubtractSkyFrameResult(dataclasses.replace(exposure, metadata=metadata))
        _check_filter(exposure, sky_frame, detector.id)
        frame = _full_frame(sky_frame, exposure.shape)
        model = as_bundle(focal_plane_background, MODEL_KIND, ("model",))
        normalization = _frame_normalization(sky_frame)
        background = evaluate_focal_plane_background(
            model, detector, exposure.shape, sample_spacing=self.config.sample_spacing
        )
        normalizer = background if normalization == "local" else float(model.attrs["scale"])
        corrected = subtract_sky_frame(exposure, frame, float(sky_scale["scale"]), normalizer)
        # which frame: sky frames are per physical filter
        frame_attrs = sky_frame.metadata if isinstance(sky_frame, Exposure) else sky_frame.attrs
        corrected.metadata["sky_correction"]["physical_filter"] = str(
            frame_attrs.get("physical_filter", "")
        )
        if self.config.subtract_focal_plane:
            corrected.image = corrected.image - background
            corrected.metadata["sky_correction"]["focal_plane_subtracted"] = True
        return SubtractSkyFrameResult(corrected)


def _solve(r: np.ndarray, f: np.ndarray, keep: np.ndarray) -> float:
    """Least-squares ``s`` of ``r = s f`` without intercept over the kept bins."""
    denominator = float(np.dot(f[keep], f[keep]))
    if denominator == 0:
        raise TaskError("the sky frame is zero on every usable bin: cannot fit a scale")
    return float(np.dot(f[keep], r[keep]) / denominator)


def frame_detector(frame: Exposure | ArrayBundle) -> int:
    """Detector id of a sky frame (an Exposure or a ``sky_frame_binned`` bundle)."""
    if isinstance(frame, Exposure):
        det = frame.detector if frame.detector is not None else frame.metadata.get("detector")
    else:
        det = as_bundle(frame, SKY_FRAME_BINNED_KIND, ("sky",)).attrs.get("detector")
    if det is None:
        raise TaskError("a sky frame has no detector id")
    return int(det)


def _binned_frame(frame: Exposure | ArrayBundle) -> tuple[int | None, np.ndarray]:
    """Bin size (None for a full-resolution frame) and values of a sky frame."""
    if isinstance(frame, Exposure):
        return None, frame.image
    bundle = as_bundle(frame, SKY_FRAME_BINNED_KIND, ("sky",))
    return int(bundle.attrs["bin_size"]), np.asarray(bundle["sky"])


def _full_frame(frame: Exposure | ArrayBundle, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(frame, Exposure):
        return frame.image
    bundle = as_bundle(frame, SKY_FRAME_BINNED_KIND, ("sky",))
    if tuple(bundle.attrs["shape"]) != tuple(shape):
        raise TaskError(f"sky frame of shape {bundle.attrs['shape']} for an exposure of {shape}")
    return upsample_bins(
        np.asarray(bundle["sky"], dtype=np.float64), shape, int(bundle.attrs["bin_size"])
    )


def _frame_normalization(frame: Exposure | ArrayBundle) -> str:
    attrs = frame.metadata if isinstance(frame, Exposure) else frame.attrs
    return str(attrs.get("normalization", "visit_scale"))


def _check_same(residual: dict[str, Any], frame: dict[str, Any], det_id: int) -> None:
    """A residual and a sky frame must share the physical filter and the normalisation."""
    for key in ("physical_filter", "normalization"):
        mine = str(residual.get(key) or "")
        theirs = str(frame.get(key) or "")
        if key == "normalization":
            mine, theirs = mine or "visit_scale", theirs or "visit_scale"
        if mine and theirs and mine != theirs:
            raise TaskError(
                f"detector {det_id}: residual background has {key} {mine!r}, sky frame {theirs!r}"
            )


def check_sky_frame(frame: Exposure | ArrayBundle, exposure: Exposure) -> None:
    """Raise :class:`TaskError` unless ``frame`` is a sky frame of the exposure's detector and
    physical filter (either side unknown: not checked).

    Parameters
    ----------
    frame : Exposure or ArrayBundle
        A ``sky_frame`` or ``sky_frame_binned``.
    exposure : Exposure
    """
    det_id = frame_detector(frame)
    if exposure.detector is not None and int(exposure.detector) != det_id:
        raise TaskError(f"detector {exposure.detector}: given the sky frame of detector {det_id}")
    _check_filter(exposure, frame, det_id)


def _check_filter(exposure: Exposure, frame: Exposure | ArrayBundle, detector_id: int) -> None:
    attrs = frame.metadata if isinstance(frame, Exposure) else frame.attrs
    want = exposure.visit_info.physical_filter if exposure.visit_info is not None else ""
    have = str(attrs.get("physical_filter", ""))
    if want and have and want != have:
        raise TaskError(
            f"detector {detector_id}: sky frame of physical filter {have!r} for an exposure "
            f"in {want!r}"
        )

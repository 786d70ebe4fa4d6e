"""Sky correction of a whole visit in memory (Rubin's SkyCorrectionTask, sky-frame part).

Chains, for the CCDs of one visit held in memory: object masking, focal-plane partials, the
visit's focal-plane model, binned residual skies, one sky-frame scale, and the per-CCD
subtraction (:mod:`~apflow.tasks.sky.correct`). Meant for notebooks and small cameras; a
workflow runs the same tasks as separate per-CCD and per-visit stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...core import Camera, Exposure
from ...errors import TaskError
from ..base import Task, TaskConfig
from .bundle import ArrayBundle
from .correct import (
    SkyFrameScaleConfig,
    SkyFrameScaleTask,
    SubtractSkyFrameConfig,
    SubtractSkyFrameTask,
    frame_detector,
)
from .focal_plane import FocalPlanePartialConfig, FocalPlanePartialTask
from .focal_plane_model import FocalPlaneBackgroundConfig, FocalPlaneBackgroundTask
from .mask_objects import MaskObjectsConfig, MaskObjectsTask
from .measure import SkyMeasurementConfig, SkyMeasurementTask

__all__ = ["SkyCorrectionConfig", "SkyCorrectionResult", "SkyCorrectionTask"]


@dataclass
class SkyCorrectionConfig(TaskConfig):
    """Configuration of :class:`SkyCorrectionTask`.

    Attributes
    ----------
    mask_objects : bool
        Run :class:`MaskObjectsTask` first (else use the exposures' DETECTED plane). Default True.
    mask : MaskObjectsConfig
    partial : FocalPlanePartialConfig
    background : FocalPlaneBackgroundConfig
    measure : SkyMeasurementConfig
        Its ``normalization`` must match the sky frames'.
    scale : SkyFrameScaleConfig
    subtract : SubtractSkyFrameConfig
    """

    mask_objects: bool = True
    mask: MaskObjectsConfig = field(default_factory=MaskObjectsConfig)
    partial: FocalPlanePartialConfig = field(default_factory=FocalPlanePartialConfig)
    background: FocalPlaneBackgroundConfig = field(default_factory=FocalPlaneBackgroundConfig)
    measure: SkyMeasurementConfig = field(default_factory=SkyMeasurementConfig)
    scale: SkyFrameScaleConfig = field(default_factory=SkyFrameScaleConfig)
    subtract: SubtractSkyFrameConfig = field(default_factory=SubtractSkyFrameConfig)

    def validate(self) -> None:
        for sub in (self.mask, self.partial, self.background, self.measure, self.scale):
            sub.validate()


@dataclass
class SkyCorrectionResult:
    """A sky-corrected visit.

    Attributes
    ----------
    exposures : list of Exposure
        The corrected exposures, in input order (DETECTED as found or as masked here).
    sky_scale : dict
        See :class:`SkyFrameScaleResult`.
    focal_plane_background : ArrayBundle
        The visit's focal-plane model.
    residual_skies : list of ArrayBundle
        Binned residuals before correction (diagnostics).
    """

    exposures: list[Exposure]
    sky_scale: dict[str, Any]
    focal_plane_background: ArrayBundle
    residual_skies: list[ArrayBundle]

    def summary(self) -> dict[str, Any]:
        """The scale and the number of CCDs."""
        return {"scale": self.sky_scale["scale"], "detectors": len(self.exposures)}


class SkyCorrectionTask(Task):
    """Sky-correct one visit in memory: focal-plane model, scale fit, per-CCD subtraction.

    Meant for notebooks and small cameras, where a whole visit fits in memory; a workflow uses
    the per-CCD and per-visit tasks this one chains.
    """

    ConfigClass = SkyCorrectionConfig
    config: SkyCorrectionConfig

    def run(
        self, exposures: list[Exposure], sky_frames: list[Exposure | ArrayBundle], camera: Camera
    ) -> SkyCorrectionResult:
        """Correct every exposure of the visit.

        Parameters
        ----------
        exposures : list of Exposure
            The visit's CCDs; ``exposure.detector`` identifies each one.
        sky_frames : list of Exposure or ArrayBundle
            Sky frames of (at least) those detectors, in the visit's filter.
        camera : Camera

        Raises
        ------
        TaskError
            With no exposures, an exposure without a detector id, or a detector without a sky
            frame.
        """
        cfg = self.config
        if not exposures:
            raise TaskError("sky correction: no exposures")
        frames = {frame_detector(f): f for f in sky_frames}
        masked = []
        for exposure in exposures:
            if exposure.detector is None:
                raise TaskError("sky correction: an exposure has no detector id")
            if exposure.detector not in frames:
                raise TaskError(f"sky correction: no sky frame for detector {exposure.detector}")
            if cfg.mask_objects:
                exposure = MaskObjectsTask(cfg.mask).run(exposure=exposure).exposure
            masked.append(exposure)
        partial_task = FocalPlanePartialTask(cfg.partial)
        partials = [
            partial_task.run(
                exposure=e, detector=camera[e.detector], camera=camera
            ).focal_plane_partial
            for e in masked
        ]
        model = (
            FocalPlaneBackgroundTask(cfg.background).run(partials=partials).focal_plane_background
        )
        measure_task = SkyMeasurementTask(cfg.measure)
        residuals = [
            measure_task.run(
                exposure=e, focal_plane_background=model, detector=camera[e.detector]
            ).residual_sky
            for e in masked
        ]
        sky_scale = (
            SkyFrameScaleTask(cfg.scale)
            .run(residual_skies=residuals, sky_frames=[frames[e.detector] for e in masked])
            .sky_scale
        )
        subtract_task = SubtractSkyFrameTask(cfg.subtract)
        corrected = [
            subtract_task.run(
                exposure=e,
                sky_frame=frames[e.detector],
                sky_scale=sky_scale,
                focal_plane_background=model,
                detector=camera[e.detector],
            ).exposure
            for e in masked
        ]
        return SkyCorrectionResult(corrected, sky_scale, model, residuals)

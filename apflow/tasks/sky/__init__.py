"""Sky frames (issue 4): Rubin's SkyTask chain as pure tasks on in-memory objects.

Stages and their quanta (see each task's ``run`` for inputs and result fields):

=============================  ==================  =====================================
task                           quantum             inputs
=============================  ==================  =====================================
:class:`MaskObjectsTask`       visit, detector     ``exposure`` -> ``object_mask``
:class:`FocalPlanePartialTask` visit, detector     ``exposure``, ``object_mask`` + context
                                                   ``detector``, ``camera``
:class:`FocalPlaneBackgroundTask` visit            ``partials`` (gathered list)
:class:`SkyMeasurementTask`    visit, detector     ``exposure``, ``object_mask``,
                                                   ``focal_plane_background`` + ``detector``
:class:`SkyCombineTask`        detector            ``residual_skies`` (gathered over visits)
:class:`SkyCameraTask`         (none)              ``sky_frames`` (gathered) + ``camera``
:class:`SkyFrameSamplesTask`   visit, detector     ``exposure``, ``object_mask``,
                                                   ``focal_plane_background``, optional
                                                   ``sky_frame`` + ``detector``
:class:`SkyFrameScaleTask`     visit               ``residual_skies`` (gathered samples; or
                                                   residuals + ``sky_frames``)
:class:`SubtractSkyFrameTask`  visit, detector     ``exposure``, optional ``sky_frame``,
                                                   ``sky_scale``, ``focal_plane_background``
                                                   + ``detector``
:class:`SkyCorrectionTask`     visit (in memory)   ``exposures``, ``sky_frames`` + ``camera``
=============================  ==================  =====================================

The object mask (``sky_object_mask``: the DETECTED pixels alone, :mod:`.object_mask`) is set
on the post-ISR exposure by :func:`apply_object_mask`; without it, the tasks use the exposure's
own DETECTED plane.

A detector without a sky frame is passed through unchanged (see :mod:`.correct`), so the
``nightly`` workflow, which sky-corrects first, also runs where no sky frame was built.

The plain functions underneath (:func:`clipped_stats`, :func:`binned_clipped_stats`,
:func:`merge_partials`, :func:`evaluate_focal_plane_background`, :func:`fit_sky_frame_scale`,
...) work on numpy arrays.
"""

from ..stats import ClippedStats, binned_clipped_stats, binned_median, clipped_stats
from .combine import SkyCombineConfig, SkyCombineResult, SkyCombineTask, combine_residual_skies
from .correct import (
    SkyFrameSamplesTask,
    SkyFrameScaleConfig,
    SkyFrameScaleFit,
    SkyFrameScaleResult,
    SkyFrameScaleTask,
    SubtractSkyFrameConfig,
    SubtractSkyFrameResult,
    SubtractSkyFrameTask,
    check_sky_frame,
    fit_sky_frame_scale,
    sample_sky_frame,
    subtract_sky_frame,
)
from .focal_plane import (
    FocalPlaneGrid,
    FocalPlanePartialConfig,
    FocalPlanePartialResult,
    FocalPlanePartialTask,
    measure_focal_plane_partial,
    merge_partials,
)
from .focal_plane_model import (
    FocalPlaneBackgroundConfig,
    FocalPlaneBackgroundResult,
    FocalPlaneBackgroundTask,
    absorbed_by_focal_plane_model,
    evaluate_focal_plane_background,
    focal_plane_model,
)
from .interpolate import bin_centers, fill_bad_bins, interpolation_matrix, upsample_bins
from .mask_objects import MaskObjectsConfig, MaskObjectsResult, MaskObjectsTask, detect_objects
from .measure import (
    SkyMeasurementConfig,
    SkyMeasurementResult,
    SkyMeasurementTask,
    measure_binned_sky,
)
from .mosaic import (
    SkyCameraConfig,
    SkyCameraResult,
    SkyCameraTask,
    render_sky_camera_png,
    sky_camera_mosaic,
)
from .object_mask import OBJECT_MASK_KIND, apply_object_mask, object_mask_bundle
from .sky_correction import SkyCorrectionConfig, SkyCorrectionResult, SkyCorrectionTask

__all__ = [
    "ClippedStats",
    "FocalPlaneBackgroundConfig",
    "FocalPlaneBackgroundResult",
    "FocalPlaneBackgroundTask",
    "absorbed_by_focal_plane_model",
    "apply_object_mask",
    "FocalPlaneGrid",
    "FocalPlanePartialConfig",
    "FocalPlanePartialResult",
    "FocalPlanePartialTask",
    "MaskObjectsConfig",
    "MaskObjectsResult",
    "MaskObjectsTask",
    "OBJECT_MASK_KIND",
    "SkyCameraConfig",
    "SkyCameraResult",
    "SkyCameraTask",
    "SkyCombineConfig",
    "SkyCombineResult",
    "SkyCombineTask",
    "SkyCorrectionConfig",
    "SkyCorrectionResult",
    "SkyCorrectionTask",
    "SkyFrameSamplesTask",
    "SkyFrameScaleConfig",
    "SkyFrameScaleFit",
    "SkyFrameScaleResult",
    "SkyFrameScaleTask",
    "SkyMeasurementConfig",
    "SkyMeasurementResult",
    "SkyMeasurementTask",
    "SubtractSkyFrameConfig",
    "SubtractSkyFrameResult",
    "SubtractSkyFrameTask",
    "bin_centers",
    "binned_clipped_stats",
    "check_sky_frame",
    "binned_median",
    "clipped_stats",
    "combine_residual_skies",
    "detect_objects",
    "evaluate_focal_plane_background",
    "fill_bad_bins",
    "fit_sky_frame_scale",
    "focal_plane_model",
    "interpolation_matrix",
    "measure_binned_sky",
    "measure_focal_plane_partial",
    "merge_partials",
    "object_mask_bundle",
    "render_sky_camera_png",
    "sample_sky_frame",
    "sky_camera_mosaic",
    "subtract_sky_frame",
    "upsample_bins",
]

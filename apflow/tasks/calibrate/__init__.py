"""Per-CCD calibration (issue 5).

Image characterisation, in the order ``CalibrateImageTask`` chains it::

    snaps      = SnapCombineTask().run(exposures)                       # 1 or 2 snaps -> 1
    background = SubtractBackgroundTask().run(snaps.exposure)
    detection  = DetectSourcesTask().run(background.exposure)          # sets DETECTED, EDGE
    background = SubtractBackgroundTask().run(detection.exposure,      # re-estimate with the
                     previous_background=background.background)        # sources masked
    measured   = MeasureStarsTask().run(background.exposure, detection.sources)
    psf        = PsfModelTask().run(background.exposure, measured.stars)
    psf_only   = MeasurementConfig(measure_moments=False, measure_aperture=False)
    measured   = MeasureStarsTask(psf_only).run(psf.exposure, psf.stars)  # adds PSF fluxes
    apcorr     = ApertureCorrectionTask().run(psf.exposure, measured.stars)
    # apcorr.exposure (background-subtracted, PSF attached), apcorr.stars (psf_instflux on the
    # 12 px aperture scale), background.background (calexp_background), psf.psf_stars
"""

from .apcorr import (
    ApertureCorrection,
    ApertureCorrectionConfig,
    ApertureCorrectionResult,
    ApertureCorrectionTask,
    apply_aperture_correction,
    measure_aperture_correction,
)
from .background import (
    BackgroundConfig,
    BackgroundModel,
    BackgroundResult,
    SubtractBackgroundTask,
    estimate_background,
)
from .detection import DetectionConfig, DetectionResult, DetectSourcesTask, detect_sources
from .measurement import (
    MeasurementConfig,
    MeasurementResult,
    MeasureStarsTask,
    adaptive_moments,
    aperture_flux,
    cut_stamps,
    pixel_flags,
    psf_flux,
    render_psf_stack,
)
from .psf import PixelPsf, PsfModelConfig, PsfModelResult, PsfModelTask
from .snaps import SnapCombineConfig, SnapCombineResult, SnapCombineTask, combine_two_snaps

__all__ = [
    "ApertureCorrection",
    "ApertureCorrectionConfig",
    "ApertureCorrectionResult",
    "ApertureCorrectionTask",
    "BackgroundConfig",
    "BackgroundModel",
    "BackgroundResult",
    "DetectSourcesTask",
    "DetectionConfig",
    "DetectionResult",
    "MeasureStarsTask",
    "MeasurementConfig",
    "MeasurementResult",
    "PixelPsf",
    "PsfModelConfig",
    "PsfModelResult",
    "PsfModelTask",
    "SnapCombineConfig",
    "SnapCombineResult",
    "SnapCombineTask",
    "SubtractBackgroundTask",
    "adaptive_moments",
    "aperture_flux",
    "apply_aperture_correction",
    "combine_two_snaps",
    "cut_stamps",
    "detect_sources",
    "estimate_background",
    "measure_aperture_correction",
    "pixel_flags",
    "psf_flux",
    "render_psf_stack",
]

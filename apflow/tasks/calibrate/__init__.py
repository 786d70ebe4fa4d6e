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
    astrometry = AstrometryTask().run(apcorr.stars, ref_cat, wcs, image_shape, band=band,
                                      camera=camera, detector=detector)
    photometry = PhotometryTask().run(astrometry.sources, ref_cat, band)
    stats      = compute_summary_stats(exposure, background, psf_stars, astrometry.summary(),
                                       photometry.photo_calib)

:class:`CalibrateImageTask` (:mod:`.calibrate_image`) runs the whole chain on one CCD, adds the
aperture-to-total correction (:mod:`.aperture_to_total`), selects the ``stars`` catalog
(:mod:`.star_selection`), converts the pixels to nJy and returns partial outputs on failure;
:mod:`.sky_frame` subtracts an optional sky frame first.
"""

from .apcorr import (
    ApertureCorrection,
    ApertureCorrectionConfig,
    ApertureCorrectionResult,
    ApertureCorrectionTask,
    apply_aperture_correction,
    measure_aperture_correction,
)
from .aperture_to_total import ApertureToTotal, apply_aperture_to_total, measure_aperture_to_total
from .astrometry import AstrometryConfig, AstrometryResult, AstrometryTask
from .background import (
    BackgroundConfig,
    BackgroundModel,
    BackgroundResult,
    SubtractBackgroundTask,
    background_bundle,
    background_model,
    estimate_background,
)
from .calibrate_image import CalibrateImageConfig, CalibrateImageResult, CalibrateImageTask
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
from .photometry import (
    PhotometryConfig,
    PhotometryResult,
    PhotometryTask,
    calibrate_catalog,
    robust_zero_point,
)
from .psf import PixelPsf, PsfModelConfig, PsfModelResult, PsfModelTask
from .sky_frame import apply_sky_frame
from .snaps import SnapCombineConfig, SnapCombineResult, SnapCombineTask, combine_two_snaps
from .star_selection import classify_extendedness, psf_sigma_field, select_stars
from .summary import SummaryStatsConfig, SummaryStatsResult, SummaryStatsTask, compute_summary_stats

__all__ = [
    "ApertureCorrection",
    "ApertureCorrectionConfig",
    "ApertureCorrectionResult",
    "ApertureCorrectionTask",
    "ApertureToTotal",
    "AstrometryConfig",
    "AstrometryResult",
    "AstrometryTask",
    "BackgroundConfig",
    "BackgroundModel",
    "BackgroundResult",
    "CalibrateImageConfig",
    "CalibrateImageResult",
    "CalibrateImageTask",
    "DetectSourcesTask",
    "DetectionConfig",
    "DetectionResult",
    "MeasureStarsTask",
    "MeasurementConfig",
    "MeasurementResult",
    "PhotometryConfig",
    "PhotometryResult",
    "PhotometryTask",
    "PixelPsf",
    "PsfModelConfig",
    "PsfModelResult",
    "PsfModelTask",
    "SnapCombineConfig",
    "SnapCombineResult",
    "SnapCombineTask",
    "SubtractBackgroundTask",
    "SummaryStatsConfig",
    "SummaryStatsResult",
    "SummaryStatsTask",
    "adaptive_moments",
    "aperture_flux",
    "apply_aperture_correction",
    "apply_aperture_to_total",
    "apply_sky_frame",
    "background_bundle",
    "background_model",
    "calibrate_catalog",
    "classify_extendedness",
    "combine_two_snaps",
    "compute_summary_stats",
    "cut_stamps",
    "detect_sources",
    "estimate_background",
    "measure_aperture_correction",
    "measure_aperture_to_total",
    "pixel_flags",
    "psf_sigma_field",
    "psf_flux",
    "render_psf_stack",
    "robust_zero_point",
    "select_stars",
]

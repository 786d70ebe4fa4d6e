"""PSF determination (step 4 of calibrate): star selection, pixel-basis or Moffat model, task."""

from .analytic import MoffatFit, fit_moffat_psf
from .determiner import PsfModelConfig, PsfModelResult, PsfModelTask, fit_pixel_psf
from .flux_error import MoffatFluxError
from .pixel_psf import PixelPsf, fourier_shift, half_maximum_fwhm, polynomial_terms
from .selection import select_psf_candidates

__all__ = [
    "MoffatFit",
    "MoffatFluxError",
    "PixelPsf",
    "PsfModelConfig",
    "PsfModelResult",
    "PsfModelTask",
    "fit_moffat_psf",
    "fit_pixel_psf",
    "fourier_shift",
    "half_maximum_fwhm",
    "polynomial_terms",
    "select_psf_candidates",
]

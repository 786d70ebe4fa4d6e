"""Difference-image analysis: DiaSource detection and measurement, forced PSF photometry.

:class:`DetectAndMeasureTask` finds positive, negative and dipole DiaSources on a difference
image and measures them into an APDB ``DiaSource`` frame; :func:`psf_flux_at` is forced PSF
photometry at fixed pixel positions (DiaSource fluxes, science/template fluxes, DiaObject forced
photometry); :func:`psf_fit_centroids` fits PSF positions leaving masked pixels out.
"""

from .centroid import PsfCentroids, psf_fit_centroids
from .forced import PsfFluxAt, psf_flux_at
from .task import DetectAndMeasureConfig, DetectAndMeasureResult, DetectAndMeasureTask

__all__ = [
    "DetectAndMeasureConfig",
    "DetectAndMeasureResult",
    "DetectAndMeasureTask",
    "PsfCentroids",
    "PsfFluxAt",
    "psf_fit_centroids",
    "psf_flux_at",
]

"""Forced photometry of deep-coadd patches at reference positions (the ``forced_phot`` stage).

:class:`ForcedPhotTask` measures PSF fluxes (with joint fits of blends), exact circular-aperture
fluxes, local backgrounds, centroids and pixel flags; :func:`circular_aperture_sums` is the
exact-aperture algorithm on its own.
"""

from .apertures import DEFAULT_RADII, ApertureSums, circular_aperture_sums, numba_available
from .catalog import aperture_column
from .task import ForcedPhotConfig, ForcedPhotResult, ForcedPhotTask

__all__ = [
    "DEFAULT_RADII",
    "ApertureSums",
    "ForcedPhotConfig",
    "ForcedPhotResult",
    "ForcedPhotTask",
    "aperture_column",
    "circular_aperture_sums",
    "numba_available",
]

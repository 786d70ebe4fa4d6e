"""Synthetic difference, science and template images with known point sources.

Sources are rendered with the core PSF models' own ``compute_image`` (the exact model, not the
stamp renderer the code under test uses); noise is Gaussian with exactly the variance plane's
variance, so flux errors and detection rates have known expectations.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from apflow.core import Exposure, PhotoCalib, Psf, VisitInfo

# one set of synthetic-image helpers for the task tests: forced photometry's
from tests.tasks.forced.forced_data import make_wcs
from tests.tasks.forced.forced_data import render_stars as render_sources
from tests.tasks.forced.forced_data import star_grid as isolated_positions

__all__ = ["isolated_positions", "make_exposure", "make_wcs", "render_sources"]

PIXEL_SCALE = 0.2  # arcsec per pixel
VISIT = 4242
DETECTOR = 7
MJD = 60500.25
BAND = "r"


def make_exposure(
    psf: Psf,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    shape: tuple[int, int] = (256, 256),
    sigma: float = 10.0,
    seed: int = 0,
    photo_calib: PhotoCalib | None = None,
    wcs: WCS | None = None,
) -> Exposure:
    """An exposure in nJy: sources + Gaussian noise of variance ``sigma**2`` (the variance plane).

    ``x``, ``y``, ``flux`` may hold negative fluxes (difference-image sources).
    """
    rng = np.random.default_rng(seed)
    image = render_sources(shape, psf, x, y, flux)
    if sigma > 0:
        image = image + rng.normal(0.0, sigma, shape)
    return Exposure(
        image=image,
        variance=np.full(shape, max(sigma, 1e-3) ** 2),
        wcs=wcs if wcs is not None else make_wcs(shape),
        psf=psf,
        photo_calib=photo_calib,
        visit_info=VisitInfo(visit=VISIT, band=BAND, mjd=MJD, exposure_time=30.0),
        detector=DETECTOR,
    )

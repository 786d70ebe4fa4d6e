"""Small synthetic CCDs: Gaussian-PSF stars on a TAN WCS and their DiaSources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from apflow.apdb.ids import pack_source_ids
from apflow.core import Exposure, VisitInfo
from apflow.core.psf import GaussianPsf

RA0, DEC0 = 150.0, 2.0
PIXEL_SCALE = 0.2  # arcsec
SIZE = 128
FWHM = 3.0
NOISE = 5.0  # nJy per pixel
MJD0 = 60000.0


def make_wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [RA0, DEC0]
    wcs.wcs.crpix = [SIZE / 2 + 0.5, SIZE / 2 + 0.5]  # 1-based: the centre of the image
    wcs.wcs.cdelt = [-PIXEL_SCALE / 3600.0, PIXEL_SCALE / 3600.0]
    return wcs


def offset(dx_arcsec: float, dy_arcsec: float) -> tuple[float, float]:
    """Sky position ``(dx, dy)`` arcsec (east, north) from the image centre."""
    return RA0 + dx_arcsec / 3600.0 / np.cos(np.radians(DEC0)), DEC0 + dy_arcsec / 3600.0


@dataclass
class Star:
    ra: float
    dec: float
    flux: float  # nJy on the difference image
    template_flux: float = 1000.0  # nJy in the template (calexp flux = template + flux)


def render(stars: list[Star], total: bool, rng: np.random.Generator, wcs: WCS) -> np.ndarray:
    """Noise plus the stars' difference-image flux (``total``: plus their template flux)."""
    image = rng.normal(0.0, NOISE, (SIZE, SIZE))
    psf = GaussianPsf(fwhm=FWHM)
    for star in stars:
        x, y = wcs.world_to_pixel_values(star.ra, star.dec)
        stamp = psf.compute_image(float(x), float(y), size=21)
        x0, y0 = int(round(float(x))) - 10, int(round(float(y))) - 10
        flux = star.flux + (star.template_flux if total else 0.0)
        image[y0 : y0 + 21, x0 : x0 + 21] += stamp * flux
    return image


def make_ccd(
    visit: int,
    stars: list[Star],
    *,
    detector: int = 0,
    mjd: float | None = None,
    band: str = "r",
    seed: int = 0,
    jitter_arcsec: float = 0.05,
) -> tuple[pd.DataFrame, Exposure, Exposure]:
    """``(dia_source, diff_image, calexp)`` of one visit: every star is a DiaSource."""
    mjd = MJD0 + visit if mjd is None else mjd
    rng = np.random.default_rng(seed + 1000 * visit + detector)
    wcs = make_wcs()
    info = VisitInfo(visit=visit, band=band, mjd=mjd, exposure_time=30.0)

    def exposure(pixels: np.ndarray) -> Exposure:
        return Exposure(
            image=pixels,
            variance=np.full((SIZE, SIZE), NOISE**2),
            wcs=wcs,
            psf=GaussianPsf(fwhm=FWHM),
            visit_info=info,
            detector=detector,
        )

    diff = exposure(render(stars, False, rng, wcs))
    calexp = exposure(render(stars, True, rng, wcs))
    n = len(stars)
    jitter = rng.normal(0.0, jitter_arcsec / 3600.0, (2, n))
    ra = np.array([s.ra for s in stars]) + jitter[0] / np.cos(np.radians(DEC0))
    dec = np.array([s.dec for s in stars]) + jitter[1]
    x, y = wcs.world_to_pixel_values(ra, dec)
    flux = np.array([s.flux for s in stars])
    err = np.full(n, 2.0 * np.sqrt(np.pi) * (FWHM / 2.3548) * NOISE)
    sources = pd.DataFrame(
        {
            "diaSourceId": pack_source_ids(visit, detector, np.arange(n)),
            "visit": visit,
            "detector": detector,
            "midpointMjdTai": mjd,
            "ra": ra,
            "dec": dec,
            "raErr": 0.05 / 3600.0,
            "decErr": 0.05 / 3600.0,
            "x": x,
            "y": y,
            "psfFlux": flux + rng.normal(0.0, err),
            "psfFluxErr": err,
            "scienceFlux": flux + np.array([s.template_flux for s in stars]),
            "scienceFluxErr": err,
            "isNegative": flux < 0,
            "psfNdata": 0,
            "trailNdata": 0,
            "dipoleNdata": 0,
            "bboxSize": 21,
            "band": band,
            "timeProcessedMjdTai": mjd + 0.01,
        }
    )
    return sources, diff, calexp

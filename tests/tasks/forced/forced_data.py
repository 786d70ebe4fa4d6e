"""Small simulated coadds with known truth for the forced-photometry tests.

Stars are rendered with the core PSF models' own ``compute_image`` (the exact model, not the
task's stamp renderer), noise is Gaussian with the variance plane's variance, and the reference
catalog is made by passing the true pixel positions through the WCS.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from apflow.core import Exposure, PhotoCalib, Psf

PIXEL_SCALE = 0.2  # arcsec per pixel


def make_wcs(shape: tuple[int, int], rotation_deg: float = 0.0, sip: bool = False) -> WCS:
    """TAN (optionally TAN-SIP) WCS, East left, North up before ``rotation_deg``."""
    height, width = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [width / 2 + 0.5, height / 2 + 0.5]
    s = PIXEL_SCALE / 3600.0
    c, si = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    wcs.wcs.cd = np.array([[-s * c, s * si], [s * si, s * c]])
    if sip:
        from astropy.wcs import Sip

        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[3, 0] = a[1, 2] = 2e-9
        b[2, 1] = b[0, 3] = 2e-9
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def render_stars(
    shape: tuple[int, int], psf: Psf, x: np.ndarray, y: np.ndarray, flux: np.ndarray
) -> np.ndarray:
    """Noise-free image of point sources (float64), each the model's full default stamp."""
    image = np.zeros(shape)
    height, width = shape
    for xs, ys, fs in zip(x, y, flux, strict=True):
        stamp = psf.compute_image(float(xs), float(ys))
        half = stamp.shape[0] // 2
        x0, y0 = round(xs) - half, round(ys) - half
        ys0, ys1 = max(y0, 0), min(y0 + stamp.shape[0], height)
        xs0, xs1 = max(x0, 0), min(x0 + stamp.shape[1], width)
        if ys1 > ys0 and xs1 > xs0:
            image[ys0:ys1, xs0:xs1] += fs * stamp[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]
    return image


def make_coadd(
    psf: Psf,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    shape: tuple[int, int] = (256, 256),
    sigma: float = 10.0,
    seed: int = 0,
    background: float = 0.0,
    photo_calib: PhotoCalib | None = None,
    **kwargs,
) -> Exposure:
    """A coadd in nJy: stars + background + Gaussian noise of variance ``sigma**2``."""
    rng = np.random.default_rng(seed)
    image = render_stars(shape, psf, x, y, flux) + background
    if sigma > 0:
        image = image + rng.normal(0.0, sigma, shape)
    return Exposure(
        image=image,
        variance=np.full(shape, max(sigma, 1e-3) ** 2),
        wcs=kwargs.pop("wcs", None) or make_wcs(shape),
        psf=psf,
        photo_calib=photo_calib,
        **kwargs,
    )


def make_ref(wcs: WCS, x: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None) -> pd.DataFrame:
    """Reference catalog of the given pixel positions."""
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    if ids is None:
        ids = np.arange(1000, 1000 + len(ra), dtype=np.int64)
    return pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "ra": ra, "dec": dec})


def star_grid(
    shape: tuple[int, int], spacing: float, margin: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Isolated positions on a jittered grid (random sub-pixel offsets)."""
    rng = np.random.default_rng(seed)
    height, width = shape
    gx, gy = np.meshgrid(
        np.arange(margin, width - margin, spacing), np.arange(margin, height - margin, spacing)
    )
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    return x, y

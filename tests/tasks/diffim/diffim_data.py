"""Synthetic science/template pairs with known truth for the difference-imaging tests.

One star field (positions on the sky, fluxes in nJy) is rendered twice with the simulator's
Moffat renderer (:func:`apflow.sim.render.render_stars`, exact pixel-integrated PSF models):

- the **science** exposure: TAN-SIP WCS, rotated by ``rotation_deg`` and shifted against the
  template grid, a spatially varying Moffat PSF (FWHM from ``science_fwhm[0]`` to
  ``science_fwhm[1]`` arcsec across the detector, slightly elliptical), plus a few transients
  that only it contains;
- the **template**: a tract of 2 x 2 patches with North-up TAN WCSs at a slightly different
  pixel scale, a constant sharp Moffat PSF.

Noise is Gaussian with exactly the variance in the variance planes: a sky term plus a
source term proportional to the noise-free model (as photon noise in nJy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip

from apflow.core import Exposure, MoffatPsf, PhotoCalib, VariablePsf, VisitInfo
from apflow.sim.render import render_stars
from apflow.sim.wcs import tan_wcs

RA0, DEC0 = 150.0, 2.0
SCIENCE_SCALE = 0.2  # arcsec per pixel
TEMPLATE_SCALE = 0.199
BETA = 3.5


@dataclass
class Scene:
    """A science exposure, its template patches and the truth."""

    calexp: Exposure
    templates: list[Exposure]
    star_ra: np.ndarray
    star_dec: np.ndarray
    star_flux: np.ndarray  # in the template
    star_science_flux: np.ndarray  # differs from star_flux for variable stars
    star_x: np.ndarray  # science pixels
    star_y: np.ndarray
    transient_x: np.ndarray
    transient_y: np.ndarray
    transient_flux: np.ndarray
    science_sky_sigma: float
    template_sky_sigma: float


def science_wcs(size: int, rotation_deg: float, sip: bool = True) -> WCS:
    """TAN-SIP WCS of the science detector, rotated and shifted from the tract."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    # a pointing offset of a few arcsec: a non-integer shift against the template grid
    wcs.wcs.crval = [RA0 + 3.3 / 3600.0, DEC0 - 2.1 / 3600.0]
    wcs.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    s = SCIENCE_SCALE / 3600.0
    c, si = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    wcs.wcs.cd = np.array([[-s * c, s * si], [s * si, s * c]])
    if sip:
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[3, 0] = a[1, 2] = 1e-10
        b[2, 1] = b[0, 3] = 1e-10
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


def science_psf(size: int, fwhm_arcsec: tuple[float, float]) -> VariablePsf:
    """Moffat whose FWHM grows linearly in x from ``fwhm[0]`` to ``fwhm[1]`` arcsec."""
    lo, hi = (f / SCIENCE_SCALE for f in fwhm_arcsec)
    # coefficient order [1, v, v^2, u, uv, u^2]; ellipticity varies a little in v
    return VariablePsf(
        profile="moffat",
        width=size,
        height=size,
        fwhm_coeffs=(0.5 * (lo + hi), 0.0, 0.0, 0.5 * (hi - lo), 0.0, 0.0),
        e1_coeffs=(0.02, 0.03, 0.0),
        e2_coeffs=(-0.01, 0.0, 0.02),
        beta=BETA,
    )


def make_scene(
    size: int = 1024,
    n_stars: int = 500,
    seed: int = 1,
    rotation_deg: float = 0.6,
    science_fwhm: tuple[float, float] = (0.7, 1.1),
    template_fwhm: float = 0.5,
    n_transients: int = 6,
    drop_patches: tuple[int, ...] = (),
    noise: bool = True,
    template_offset_arcsec: float = 0.0,
    wing_floor: float = 0.5,
    variable_fraction: float = 0.0,
    science_sky_sigma: float = 20.0,
) -> Scene:
    """Render a science exposure and its template patches.

    Parameters
    ----------
    size : int
        Science detector side in pixels.
    n_stars : int
        Stars over the tract (log-uniform fluxes 1e3..3e6 nJy).
    seed : int
        Random seed.
    rotation_deg : float
        Rotation of the science pixel grid against the North-up template.
    science_fwhm : tuple of float
        Science FWHM (arcsec) at the left and right edges.
    template_fwhm : float
        Template FWHM in arcsec.
    n_transients : int
        Science-only point sources (2e4..1e5 nJy) placed away from stars.
    drop_patches : tuple of int
        Patches (0..3) left out of the template list, leaving part of the detector uncovered.
    noise : bool
        Add noise (False gives noise-free images with the same variance planes).
    template_offset_arcsec : float
        Move the tract centre by this much (far away gives no overlap).
    wing_floor : float
        nJy per pixel at which star stamps are truncated (well below the noise).
    variable_fraction : float
        Fraction of the stars that are variable: their science flux is their template flux
        times a factor uniform in 0.5-1.5 (``Scene.star_science_flux``; a separate random
        stream, so the rest of the scene does not change with it).
    science_sky_sigma : float
        Sky noise of the science image, nJy per pixel.
    """
    rng = np.random.default_rng(seed)
    sci_wcs = science_wcs(size, rotation_deg)
    tract_half = int(math.ceil(0.55 * size * SCIENCE_SCALE / TEMPLATE_SCALE)) + 40
    tract_ra = RA0 + template_offset_arcsec / 3600.0 / math.cos(math.radians(DEC0))
    tract = tan_wcs(tract_ra, DEC0, (tract_half - 0.5, tract_half - 0.5), TEMPLATE_SCALE)

    # stars spread over the tract, at least a little apart so that some are isolated
    tx = rng.uniform(0, 2 * tract_half, n_stars)
    ty = rng.uniform(0, 2 * tract_half, n_stars)
    ra, dec = tract.all_pix2world(tx, ty, 0)
    flux = np.exp(rng.uniform(math.log(1e3), math.log(3e6), n_stars))
    sx, sy = sci_wcs.all_world2pix(ra, dec, 0)
    variability = np.random.default_rng([seed, 7])
    science_flux = flux * np.where(
        variability.random(n_stars) < variable_fraction,
        variability.uniform(0.5, 1.5, n_stars),
        1.0,
    )

    psf_s = science_psf(size, science_fwhm)
    sci_sigma = science_sky_sigma
    sci_source_term = 0.05  # nJy: variance per nJy of model flux
    model = np.zeros((size, size))
    near = (sx > -200) & (sx < size + 200) & (sy > -200) & (sy < size + 200)
    render_stars(model, sx[near], sy[near], science_flux[near], psf_s, wing_floor=wing_floor)
    tr_x, tr_y, tr_flux = _transients(rng, sx, sy, size, n_transients)
    render_stars(model, tr_x, tr_y, tr_flux, psf_s, wing_floor=wing_floor)
    variance = sci_sigma**2 + sci_source_term * np.maximum(model, 0.0)
    image = model + (np.sqrt(variance) * rng.standard_normal(model.shape) if noise else 0.0)
    calexp = Exposure(
        image=image,
        variance=variance,
        wcs=sci_wcs,
        psf=psf_s,
        photo_calib=PhotoCalib(1.0, 0.001),
        visit_info=VisitInfo(visit=7, band="r"),
        detector=4,
    )

    psf_t = MoffatPsf(fwhm=template_fwhm / TEMPLATE_SCALE, beta=BETA)
    tmpl_sigma = 5.0
    patch = tract_half
    templates = []
    for index in range(4):
        if index in drop_patches:
            continue
        ix, iy = index % 2, index // 2
        wcs = tan_wcs(
            tract_ra, DEC0, (tract_half - 0.5 - ix * patch, tract_half - 0.5 - iy * patch),
            TEMPLATE_SCALE,
        )  # fmt: skip
        px, py = wcs.all_world2pix(ra, dec, 0)
        near = (px > -200) & (px < patch + 200) & (py > -200) & (py < patch + 200)
        t_model = np.zeros((patch, patch))
        render_stars(t_model, px[near], py[near], flux[near], psf_t, wing_floor=wing_floor)
        t_var = tmpl_sigma**2 + 0.005 * np.maximum(t_model, 0.0)
        t_image = t_model + (np.sqrt(t_var) * rng.standard_normal(t_model.shape) if noise else 0.0)
        templates.append(
            Exposure(
                image=t_image,
                variance=t_var,
                wcs=wcs,
                psf=psf_t,
                photo_calib=PhotoCalib(1.0),
                metadata={"patch": index, "xy0": [ix * patch, iy * patch]},
            )
        )
    return Scene(
        calexp, templates, ra, dec, flux, science_flux, sx, sy, tr_x, tr_y, tr_flux, sci_sigma,
        tmpl_sigma,
    )  # fmt: skip


def _transients(
    rng: np.random.Generator, sx: np.ndarray, sy: np.ndarray, size: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions at least 40 px from any star and the edges, fluxes 2e4..1e5 nJy."""
    xs, ys = [], []
    while len(xs) < n:
        x, y = rng.uniform(60, size - 60, 2)
        if np.min(np.hypot(sx - x, sy - y)) > 40 and all(
            math.hypot(x - a, y - b) > 60 for a, b in zip(xs, ys, strict=True)
        ):
            xs.append(x)
            ys.append(y)
    return np.array(xs), np.array(ys), rng.uniform(2e4, 1e5, n)


def psf_flux(
    image: np.ndarray, variance: np.ndarray, psf, x: float, y: float, half: int = 12
) -> tuple[float, float]:
    """Weighted PSF-fit flux and error at a fixed position (no background)."""
    stamp_psf = psf.compute_image(x, y, 2 * half + 1)
    ix, iy = round(x), round(y)
    data = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    var = variance[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    w = stamp_psf / var
    norm = float(np.sum(w * stamp_psf))
    return float(np.sum(w * data) / norm), math.sqrt(1.0 / norm)

"""Deep coadds of the static sky: one tract of patches covering the union of the visits.

The tract is a North-up, East-left TAN projection about the field centre at
``SimConfig.coadd_pixel_scale``. It is cut into ``nx x ny`` equal patches (no overlap) covering
every visit's footprint; each patch is an :class:`~apflow.core.Exposure` in nJy with its own TAN
WCS (the tract's, shifted to the patch origin; ``metadata["xy0"]`` is the patch origin in tract
pixels), a constant Moffat PSF, a variance plane and a zero mask.

The coadds are "deep": Gaussian noise set by a 5-sigma point-source depth (``coadd_depth``),
plus a small source term, and no sky (background-subtracted). ``coadd_ref`` lists every source
whose expected PSF S/N reaches ``coadd_ref_snr`` in any coadd band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from ..core import Camera, Exposure, MoffatPsf, PhotoCalib, ab_mag_to_njy
from .config import TAG_COADD, SimConfig
from .render import galaxy_shape_matrices, render_galaxies, render_stars
from .visits import VisitParameters
from .wcs import pixel_to_sky, sky_to_tangent, tan_wcs

# nJy per count of a single visit at zero point 32, divided by an effective number of visits:
# scales the (small) source Poisson term of the coadd variance.
_SOURCE_VARIANCE_NJY = float(ab_mag_to_njy(32.0)) / 100.0


@dataclass(frozen=True)
class TractGeometry:
    """Pixel layout of the simulated tract.

    Attributes
    ----------
    ra, dec : float
        Tangent point (tract centre), degrees.
    pixel_scale : float
        Arcsec per pixel.
    nx, ny : int
        Patches along x and y; patch id ``= iy * nx + ix``.
    patch_width, patch_height : int
        Patch size in pixels.
    """

    ra: float
    dec: float
    pixel_scale: float
    nx: int
    ny: int
    patch_width: int
    patch_height: int

    @property
    def shape(self) -> tuple[int, int]:
        """Tract ``(height, width)`` in pixels."""
        return (self.ny * self.patch_height, self.nx * self.patch_width)

    @property
    def n_patches(self) -> int:
        """Number of patches."""
        return self.nx * self.ny

    def crpix(self) -> tuple[float, float]:
        """0-based tract pixel of the tangent point (the tract centre)."""
        height, width = self.shape
        return ((width - 1) / 2.0, (height - 1) / 2.0)

    def wcs(self) -> WCS:
        """TAN WCS of the whole tract."""
        return tan_wcs(self.ra, self.dec, self.crpix(), self.pixel_scale)

    def patch_origin(self, patch: int) -> tuple[int, int]:
        """Tract pixel ``(x0, y0)`` of a patch's first pixel."""
        if not 0 <= patch < self.n_patches:
            raise ValueError(f"patch {patch} not in 0..{self.n_patches - 1}")
        return ((patch % self.nx) * self.patch_width, (patch // self.nx) * self.patch_height)

    def patch_wcs(self, patch: int) -> WCS:
        """TAN WCS of a patch in its own 0-based pixel coordinates."""
        x0, y0 = self.patch_origin(patch)
        cx, cy = self.crpix()
        return tan_wcs(self.ra, self.dec, (cx - x0, cy - y0), self.pixel_scale)

    def sky_to_patch_pixel(
        self, patch: int, ra: np.ndarray, dec: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact TAN pixel coordinates of (ra, dec) in a patch (same as the patch WCS)."""
        xi, eta = sky_to_tangent(ra, dec, self.ra, self.dec)
        x0, y0 = self.patch_origin(patch)
        cx, cy = self.crpix()
        scale = self.pixel_scale / 3600.0
        return cx - x0 - xi / scale, cy - y0 + eta / scale

    def to_dict(self) -> dict[str, float | int]:
        """JSON form (stored in coadd metadata)."""
        return {
            "ra": self.ra,
            "dec": self.dec,
            "pixel_scale": self.pixel_scale,
            "nx": self.nx,
            "ny": self.ny,
            "patch_width": self.patch_width,
            "patch_height": self.patch_height,
        }


def make_tract(camera: Camera, visits: list[VisitParameters], config: SimConfig) -> TractGeometry:
    """The tract covering the union of the visits' footprints (detector corners)."""
    xi_all, eta_all = [], []
    for visit in visits:
        for det in camera:
            corners = det.corners_focal_plane()
            cx, cy = det.focal_plane_to_pixel(corners[:, 0], corners[:, 1])
            ra, dec = pixel_to_sky(
                camera, det, cx, cy, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle
            )
            xi, eta = sky_to_tangent(ra, dec, config.field_ra, config.field_dec)
            xi_all.append(xi)
            eta_all.append(eta)
    scale = config.coadd_pixel_scale / 3600.0
    # symmetric about the field centre so that the tangent point is the tract centre
    half_x = float(np.max(np.abs(np.concatenate(xi_all)))) / scale + 8
    half_y = float(np.max(np.abs(np.concatenate(eta_all)))) / scale + 8
    nx = max(config.patches_per_side, math.ceil(2 * half_x / config.max_patch_size))
    ny = max(config.patches_per_side, math.ceil(2 * half_y / config.max_patch_size))
    return TractGeometry(
        ra=config.field_ra,
        dec=config.field_dec,
        pixel_scale=config.coadd_pixel_scale,
        nx=nx,
        ny=ny,
        patch_width=math.ceil(2 * half_x / nx),
        patch_height=math.ceil(2 * half_y / ny),
    )


def coadd_psf(config: SimConfig) -> MoffatPsf:
    """The constant PSF of the deep coadds."""
    return MoffatPsf(fwhm=config.coadd_fwhm_arcsec / config.coadd_pixel_scale, beta=config.psf_beta)


def coadd_pixel_sigma(config: SimConfig) -> float:
    """Per-pixel noise (nJy) giving a 5-sigma PSF-flux detection at ``coadd_depth``."""
    kernel = coadd_psf(config).compute_kernel_image(0.0, 0.0)
    n_eff = 1.0 / float(np.sum(kernel**2))
    return float(ab_mag_to_njy(config.coadd_depth)) / 5.0 / math.sqrt(n_eff)


def expected_snr(catalog: pd.DataFrame, band: str, config: SimConfig) -> np.ndarray:
    """Approximate PSF S/N of each source in a deep coadd.

    Galaxies get a larger effective area, ``n_eff = n_eff_psf + 2 pi r_e^2`` (r_e in pixels).
    """
    kernel = coadd_psf(config).compute_kernel_image(0.0, 0.0)
    n_eff_psf = 1.0 / float(np.sum(kernel**2))
    re_pix = catalog["half_light_radius"].to_numpy() / config.coadd_pixel_scale
    n_eff = n_eff_psf + 2.0 * math.pi * re_pix**2
    sigma = coadd_pixel_sigma(config)
    return catalog[f"{band}_flux"].to_numpy() / (sigma * np.sqrt(n_eff))


def sources_in_patch(
    tract: TractGeometry, patch: int, catalog: pd.DataFrame, margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (into ``catalog``) and patch pixel positions of sources within ``margin`` of a patch."""
    x, y = tract.sky_to_patch_pixel(patch, catalog["ra"].to_numpy(), catalog["dec"].to_numpy())
    lo = -0.5 - margin
    inside = (x >= lo) & (x < tract.patch_width - 0.5 + margin)
    inside &= (y >= lo) & (y < tract.patch_height - 0.5 + margin)
    idx = np.flatnonzero(inside)
    return idx, x[idx], y[idx]


def render_coadd(
    tract: TractGeometry,
    patch: int,
    band: str,
    catalog: pd.DataFrame,
    config: SimConfig,
    seed: int,
    noise: bool = True,
    stream: int = TAG_COADD,
) -> Exposure:
    """Render one deep-coadd patch in nJy.

    ``stream`` tags the noise's random stream (templates use their own).

    Returns
    -------
    Exposure
        Image and variance in nJy (and nJy^2), ``photo_calib`` of 1 nJy per unit, constant Moffat
        PSF, patch WCS; ``metadata`` holds ``tract``, ``patch``, ``band``, ``xy0`` and the tract
        geometry.
    """
    psf = coadd_psf(config)
    sigma = coadd_pixel_sigma(config)
    idx, x, y = sources_in_patch(tract, patch, catalog, margin=64.0)
    flux = catalog[f"{band}_flux"].to_numpy()[idx]
    is_star = catalog["is_star"].to_numpy()[idx]
    shape = (tract.patch_height, tract.patch_width)
    model = np.zeros(shape)
    render_stars(model, x[is_star], y[is_star], flux[is_star], psf, wing_floor=0.2 * sigma)
    gal = ~is_star
    if np.any(gal):
        scale = config.coadd_pixel_scale
        cd_arcsec = np.array([[-scale, 0.0], [0.0, scale]])
        shapes = galaxy_shape_matrices(
            catalog["half_light_radius"].to_numpy()[idx][gal],
            catalog["axis_ratio"].to_numpy()[idx][gal],
            catalog["position_angle"].to_numpy()[idx][gal],
            cd_arcsec,
        )
        render_galaxies(model, x[gal], y[gal], flux[gal], shapes, psf, n_regions=1)
    variance = sigma**2 + np.maximum(model, 0.0) * _SOURCE_VARIANCE_NJY
    if noise:
        band_index = "ugrizy".index(band)
        rng = np.random.default_rng([seed, stream, patch, band_index])
        image = model + np.sqrt(variance) * rng.standard_normal(shape)
    else:
        image = model
    return Exposure(
        image=image.astype(np.float32),
        variance=variance.astype(np.float32),
        wcs=tract.patch_wcs(patch),
        psf=psf,
        photo_calib=PhotoCalib(1.0),
        metadata={
            "tract": 0,
            "patch": int(patch),
            "band": band,
            "xy0": list(tract.patch_origin(patch)),
            "tract_geometry": tract.to_dict(),
            "units": "nJy",
            "simulated": True,
        },
    )


def coadd_reference(
    tract: TractGeometry, patch: int, catalog: pd.DataFrame, config: SimConfig
) -> pd.DataFrame:
    """``coadd_ref`` of a patch: detectable sources centred in it.

    Returns
    -------
    pandas.DataFrame
        ``id``, ``ra``, ``dec`` (deg), ``is_star``; sorted by id.
    """
    idx, _, _ = sources_in_patch(tract, patch, catalog)
    sub = catalog.iloc[idx]
    snr = np.max([expected_snr(sub, band, config) for band in config.coadd_bands], axis=0)
    keep = sub[snr >= config.coadd_ref_snr]
    return keep[["id", "ra", "dec", "is_star"]].sort_values("id").reset_index(drop=True)


def coadd_truth(
    tract: TractGeometry, patch: int, band: str, catalog: pd.DataFrame, config: SimConfig
) -> pd.DataFrame:
    """Truth of one coadd patch and band: every source centred in the patch.

    Returns
    -------
    pandas.DataFrame
        ``id``, ``ra``, ``dec``, ``x``, ``y`` (patch pixels), ``is_star``, ``flux`` (nJy, true),
        ``mag`` (AB), ``half_light_radius`` (arcsec), ``expected_snr``, ``in_coadd_ref``.
    """
    idx, x, y = sources_in_patch(tract, patch, catalog)
    sub = catalog.iloc[idx]
    snr_all = np.max([expected_snr(sub, b, config) for b in config.coadd_bands], axis=0)
    out = pd.DataFrame(
        {
            "id": sub["id"].to_numpy(),
            "ra": sub["ra"].to_numpy(),
            "dec": sub["dec"].to_numpy(),
            "x": x,
            "y": y,
            "is_star": sub["is_star"].to_numpy(),
            "flux": sub[f"{band}_flux"].to_numpy(),
            "mag": sub[f"{band}_mag"].to_numpy(),
            "half_light_radius": sub["half_light_radius"].to_numpy(),
            "expected_snr": expected_snr(sub, band, config),
            "in_coadd_ref": snr_all >= config.coadd_ref_snr,
        }
    )
    return out.sort_values("id").reset_index(drop=True)

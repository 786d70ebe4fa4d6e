"""Templates for difference imaging: deep, sharp coadds of the sky at an epoch before the run.

A ``template`` patch has the tract/patch geometry and every convention of ``deep_coadd``
(:func:`~apflow.sim.coadd.render_coadd`: nJy pixels, photo-calib of 1, constant Moffat PSF, patch
TAN WCS, variance, zero mask) but its own PSF (``template_fwhm_arcsec``, sharper than any visit),
depth (``template_depth``) and noise stream. It holds the static sky (stars and galaxies), the
variable stars at their mean flux, the transients already on at the template epoch
(``mjd_start + template_epoch_days``; none for the default year-old template) and no movers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import Exposure, MoffatPsf
from .coadd import TractGeometry, render_coadd
from .config import TAG_TEMPLATE, SimConfig
from .transients import template_flux


def template_mjd(config: SimConfig) -> float:
    """Epoch (MJD TAI) of the templates."""
    return config.mjd_start + config.template_epoch_days


def template_config(config: SimConfig) -> SimConfig:
    """The coadd configuration that renders templates (their PSF and depth)."""
    return config.updated(
        coadd_fwhm_arcsec=config.template_fwhm_arcsec, coadd_depth=config.template_depth
    )


def template_psf(config: SimConfig) -> MoffatPsf:
    """The constant PSF of the templates."""
    return MoffatPsf(
        fwhm=config.template_fwhm_arcsec / config.coadd_pixel_scale, beta=config.psf_beta
    )


def template_sources(
    catalog: pd.DataFrame, transients: pd.DataFrame | None, band: str, mjd: float
) -> pd.DataFrame:
    """The static catalog plus the variables and transients as they appear in a template.

    Variables and transients are point sources at their :func:`template_flux`; transients
    that are off at ``mjd`` are left out.
    """
    if transients is None or len(transients) == 0:
        return catalog
    flux = template_flux(transients, band, mjd)
    on = flux > 0
    extra = pd.DataFrame(
        {
            "id": transients["id"].to_numpy()[on],
            "ra": transients["ra"].to_numpy()[on],
            "dec": transients["dec"].to_numpy()[on],
            "is_star": np.ones(int(on.sum()), dtype=bool),
            f"{band}_flux": flux[on],
            "half_light_radius": np.zeros(int(on.sum())),
            "axis_ratio": np.ones(int(on.sum())),
            "position_angle": np.zeros(int(on.sum())),
        }
    )
    columns = list(extra.columns)
    return pd.concat([catalog[columns], extra], ignore_index=True)


def render_template(
    tract: TractGeometry,
    patch: int,
    band: str,
    catalog: pd.DataFrame,
    transients: pd.DataFrame | None,
    config: SimConfig,
    seed: int,
    noise: bool = True,
) -> Exposure:
    """Render one template patch in nJy (see the module docstring).

    Returns
    -------
    Exposure
        As :func:`~apflow.sim.coadd.render_coadd`; ``metadata`` also holds ``template_mjd`` and
        ``kind = "template"``.
    """
    mjd = template_mjd(config)
    sources = template_sources(catalog, transients, band, mjd)
    exposure = render_coadd(
        tract, patch, band, sources, template_config(config), seed, noise, stream=TAG_TEMPLATE
    )
    exposure.metadata.update({"kind": "template", "template_mjd": mjd})
    return exposure

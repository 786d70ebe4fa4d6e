"""The static sky: stars and galaxies with true positions, fluxes and shapes, and a reference catalog.

Magnitudes follow number counts ``dN/dm ~ 10**(slope * m)`` (0.3 dex/mag by default), drawn by
inverting the cumulative counts. Colours are drawn per source type (stars along a simple stellar
locus, galaxies bluer and broader) so every source has a true flux in g, r and i. Galaxies are
elliptical exponential discs described by their circularised half-light radius, axis ratio and
position angle (North through East) on the sky.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core import Camera, ab_mag_to_njy
from .config import BANDS, TAG_CATALOG, TAG_REFCAT, SimConfig
from .wcs import tangent_to_sky

#: Columns of the truth source table (``truth_sources``) in order.
SOURCE_COLUMNS: tuple[str, ...] = (
    "id",
    "ra",
    "dec",
    "is_star",
    "type",
    *(f"{b}_flux" for b in BANDS),
    *(f"{b}_mag" for b in BANDS),
    "half_light_radius",
    "axis_ratio",
    "position_angle",
)


def catalog_radius_deg(camera: Camera, config: SimConfig) -> float:
    """Radius (deg) of the circle about the field centre that every dithered visit sees."""
    xmin, xmax, ymin, ymax = camera.focal_plane_bounds()
    r_mm = max(math.hypot(x, y) for x in (xmin, xmax) for y in (ymin, ymax))
    r_mm *= 1.0 + camera.distortion_k * r_mm**2
    return (
        r_mm * camera.plate_scale + config.dither_arcmin * 60.0 + config.catalog_margin_arcsec
    ) / 3600.0


def draw_magnitudes(
    rng: np.random.Generator, n: int, mag_range: tuple[float, float], slope: float
) -> np.ndarray:
    """Magnitudes with differential counts ``10**(slope * m)`` between the limits."""
    lo, hi = mag_range
    u = rng.random(n)
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def uniform_in_cap(
    rng: np.random.Generator, n: int, ra0: float, dec0: float, radius_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform in area within ``radius_deg`` of (ra0, dec0)."""
    cos_max = math.cos(math.radians(radius_deg))
    theta = np.arccos(1.0 - rng.random(n) * (1.0 - cos_max))
    phi = rng.random(n) * 2.0 * math.pi
    # a point at angular distance theta, azimuth phi is at tangent-plane radius tan(theta)
    rho = np.degrees(np.tan(theta))
    return tangent_to_sky(rho * np.sin(phi), rho * np.cos(phi), ra0, dec0)


def make_catalog(camera: Camera, config: SimConfig, seed: int) -> pd.DataFrame:
    """Draw the static sky over the camera's dithered footprint.

    Parameters
    ----------
    camera : Camera
    config : SimConfig
    seed : int
        Master seed; the catalog uses its own stream, so it is the same for any number of visits.

    Returns
    -------
    pandas.DataFrame
        One row per source with :data:`SOURCE_COLUMNS`: ``id`` (int64, from 1), ``ra``/``dec``
        (deg), ``is_star``, ``type`` ("star"/"galaxy"), ``<band>_flux`` (nJy), ``<band>_mag`` (AB),
        and for galaxies ``half_light_radius`` (arcsec, circularised), ``axis_ratio`` (b/a) and
        ``position_angle`` (deg, North through East); stars have 0, 1, 0.
    """
    rng = np.random.default_rng([seed, TAG_CATALOG])
    radius = catalog_radius_deg(camera, config)
    area = 2.0 * math.pi * (1.0 - math.cos(math.radians(radius))) * (180.0 / math.pi) ** 2
    n_star = int(rng.poisson(config.star_density * area))
    n_gal = int(rng.poisson(config.galaxy_density * area))

    star_r = draw_magnitudes(rng, n_star, config.star_mag_range, config.count_slope)
    # A simple stellar locus: g-r in [0.2, 1.5], r-i grows with g-r with some scatter.
    star_gr = rng.uniform(0.2, 1.5, n_star)
    star_ri = 0.45 * star_gr - 0.05 + rng.normal(0.0, 0.04, n_star)

    gal_r = draw_magnitudes(rng, n_gal, config.galaxy_mag_range, config.count_slope)
    gal_gr = rng.uniform(0.3, 1.1, n_gal)
    gal_ri = 0.35 * gal_gr + rng.normal(0.0, 0.08, n_gal)
    # Fainter galaxies are smaller: r_e halves every 3 mag, with 0.15 dex log-normal scatter.
    gal_re = config.galaxy_re_arcsec * 10.0 ** (-0.1 * (gal_r - 20.0) + rng.normal(0, 0.15, n_gal))
    gal_re = np.clip(gal_re, 0.15, 4.0)
    gal_q = rng.uniform(0.3, 1.0, n_gal)
    gal_pa = rng.uniform(0.0, 180.0, n_gal)

    ra, dec = uniform_in_cap(rng, n_star + n_gal, config.field_ra, config.field_dec, radius)
    r_mag = np.concatenate([star_r, gal_r])
    gr = np.concatenate([star_gr, gal_gr])
    ri = np.concatenate([star_ri, gal_ri])
    mags = {"g": r_mag + gr, "r": r_mag, "i": r_mag - ri}
    is_star = np.concatenate([np.ones(n_star, bool), np.zeros(n_gal, bool)])
    data = {
        "id": np.arange(1, n_star + n_gal + 1, dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "is_star": is_star,
        "type": np.where(is_star, "star", "galaxy"),
    }
    for band in BANDS:
        data[f"{band}_flux"] = np.asarray(ab_mag_to_njy(mags[band]))
    for band in BANDS:
        data[f"{band}_mag"] = mags[band]
    data["half_light_radius"] = np.concatenate([np.zeros(n_star), gal_re])
    data["axis_ratio"] = np.concatenate([np.ones(n_star), gal_q])
    data["position_angle"] = np.concatenate([np.zeros(n_star), gal_pa])
    return pd.DataFrame(data, columns=list(SOURCE_COLUMNS))


def make_reference_catalog(catalog: pd.DataFrame, config: SimConfig, seed: int) -> pd.DataFrame:
    """Reference catalog: stars brighter than ``ref_mag_limit`` with noisy catalogue fluxes.

    Flux errors combine a fractional floor (``ref_flux_error_floor``) and photon noise of a
    survey with 5-sigma depth ``ref_depth``; the catalogue flux is the truth plus a draw from that
    error. Positions are exact unless ``ref_position_error_mas`` > 0.

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``ra``, ``dec`` (deg), ``<band>_flux``, ``<band>_fluxErr`` (nJy) for each
        band, ``is_star`` (always True).
    """
    rng = np.random.default_rng([seed, TAG_REFCAT])
    stars = catalog[catalog["is_star"] & (catalog["r_mag"] < config.ref_mag_limit)]
    n = len(stars)
    out = {
        "id": stars["id"].to_numpy(),
        "ra": stars["ra"].to_numpy(),
        "dec": stars["dec"].to_numpy(),
    }
    if config.ref_position_error_mas > 0:
        sigma = config.ref_position_error_mas / 3.6e6
        out["dec"] = out["dec"] + rng.normal(0.0, sigma, n)
        out["ra"] = out["ra"] + rng.normal(0.0, sigma, n) / np.cos(np.radians(out["dec"]))
    sigma_depth = float(ab_mag_to_njy(config.ref_depth)) / 5.0
    for band in BANDS:
        true = stars[f"{band}_flux"].to_numpy()
        # photon noise of a source-dominated measurement grows as sqrt(flux); sky-limited at depth
        err = np.sqrt(
            (config.ref_flux_error_floor * true) ** 2
            + sigma_depth**2 * (1.0 + true / (25 * sigma_depth))
        )
        out[f"{band}_flux"] = true + rng.normal(0.0, 1.0, n) * err
        out[f"{band}_fluxErr"] = err
    out["is_star"] = np.ones(n, dtype=bool)
    return pd.DataFrame(out).reset_index(drop=True)

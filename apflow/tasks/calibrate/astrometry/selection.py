"""Selection of the sources and reference objects that take part in a calibration fit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from astropy.coordinates import angular_separation
from astropy.wcs import WCS


def unflagged(sources: pd.DataFrame, flag_columns: Sequence[str]) -> np.ndarray:
    """Boolean mask, False where any of the flag columns present in ``sources`` is set."""
    good = np.ones(len(sources), dtype=bool)
    for column in flag_columns:
        if column in sources.columns:
            good &= ~sources[column].to_numpy(dtype=bool)
    return good


def source_ids(sources: pd.DataFrame, id_column: str = "id") -> np.ndarray:
    """The id column of a catalog, or its index when it has none."""
    return np.asarray(sources[id_column] if id_column in sources.columns else sources.index)


def usable_sources(
    sources: pd.DataFrame,
    image_shape: tuple[int, int],
    flag_columns: Sequence[str],
    flux_columns: Sequence[str],
) -> pd.DataFrame:
    """Unflagged sources with finite centroids on the image, brightest first.

    Brightness is the first of ``flux_columns`` present; without one, catalog order is kept.
    """
    height, width = image_shape
    x = sources["x"].to_numpy(dtype=float)
    y = sources["y"].to_numpy(dtype=float)
    good = np.isfinite(x) & np.isfinite(y) & unflagged(sources, flag_columns)
    good &= (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    usable = sources[good]
    flux_column = next((c for c in flux_columns if c in sources.columns), None)
    return usable.iloc[brightness_order(usable, flux_column)]


def brightness_order(table: pd.DataFrame, flux_column: str | None) -> np.ndarray:
    """Row positions, brightest first; NaN fluxes last; table order without a column."""
    if flux_column is None:
        return np.arange(len(table))
    flux = table[flux_column].to_numpy(dtype=float)
    return np.argsort(-np.nan_to_num(flux, nan=-np.inf), kind="stable")


def ref_flux_column(refs: pd.DataFrame, configured: str, band: str | None) -> str | None:
    """The configured flux column, else ``<band>_flux``, else the first ``*_flux`` column."""
    if configured:
        return configured if configured in refs.columns else None
    if band and f"{band}_flux" in refs.columns:
        return f"{band}_flux"
    return next((c for c in refs.columns if str(c).endswith("_flux")), None)


def refs_on_image(
    ref_cat: pd.DataFrame,
    wcs: WCS,
    image_shape: tuple[int, int],
    margin_pix: float,
    pixel_scale: float,
) -> tuple[pd.DataFrame, np.ndarray]:
    """References whose initial-WCS pixel position lies on the image padded by ``margin_pix``."""
    height, width = image_shape
    ra = ref_cat["ra"].to_numpy(dtype=float)
    dec = ref_cat["dec"].to_numpy(dtype=float)
    centre = wcs.all_pix2world([[(width - 1) / 2.0, (height - 1) / 2.0]], 0)[0]
    # A cone cut first: projecting points far from the tangent point is meaningless.
    cone_deg = (np.hypot(width, height) / 2.0 + 2.0 * margin_pix) * pixel_scale / 3600.0
    separation = np.degrees(
        angular_separation(np.radians(ra), np.radians(dec), *np.radians(centre))
    )
    near = np.flatnonzero(np.isfinite(separation) & (separation < cone_deg))
    px, py = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
    inside = (
        (px > -0.5 - margin_pix)
        & (px < width - 0.5 + margin_pix)
        & (py > -0.5 - margin_pix)
        & (py < height - 0.5 + margin_pix)
    )
    return ref_cat.iloc[near[inside]], np.column_stack([px[inside], py[inside]])


def centroid_sigma(sources: pd.DataFrame, floor_pix: float) -> np.ndarray | None:
    """Per-source 1-D centroid error in pixels, or None without ``x_err``/``y_err``."""
    if "x_err" not in sources.columns or "y_err" not in sources.columns:
        return None
    x_err = sources["x_err"].to_numpy(dtype=float)
    y_err = sources["y_err"].to_numpy(dtype=float)
    sigma = np.sqrt(0.5 * (x_err**2 + y_err**2) + floor_pix**2)
    # A missing error must not give a source infinite weight: use the worst known error.
    worst = np.nanmax(sigma) if np.any(np.isfinite(sigma)) else 1.0
    return np.where(np.isfinite(sigma) & (sigma > 0), sigma, worst)

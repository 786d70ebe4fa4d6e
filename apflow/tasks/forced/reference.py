"""The reference catalog of forced photometry: validation and transformation into coadd pixels.

A ``coadd_ref`` table lists the objects to measure, one catalog for all bands of a patch:

- ``id`` (int64, unique), ``ra``, ``dec`` (ICRS degrees): required;
- ``shape_xx``, ``shape_yy``, ``shape_xy``: optional second moments in arcsec^2 on the local
  tangent plane, x towards East (increasing RA) and y towards North. All three or none.

Positions go through the coadd WCS (astropy, TAN-SIP included) into 0-based pixel coordinates;
shapes through the WCS's local Jacobian (Rubin's ``base_TransformedShape``). Rows whose position is
not finite are kept and flagged (``coord_flag``): one bad row must not lose a patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from ...errors import TaskError

REQUIRED_COLUMNS = ("id", "ra", "dec")
SHAPE_COLUMNS = ("shape_xx", "shape_yy", "shape_xy")
# Step (arcsec) of the finite differences giving the local Jacobian of the WCS.
_JACOBIAN_STEP_ARCSEC = 1.0
# A position whose pixel -> sky round trip misses by more than this (arcsec) is not on the
# projection (e.g. behind a TAN tangent plane) and is treated as off the image.
_ROUND_TRIP_TOLERANCE_ARCSEC = 0.01


@dataclass(frozen=True)
class ReferencePositions:
    """Reference sources in the coadd's pixel frame.

    Attributes
    ----------
    ids : numpy.ndarray
        ``(n,)`` int64 reference ids.
    ra, dec : numpy.ndarray
        ``(n,)`` reference coordinates (degrees), as given.
    x, y : numpy.ndarray
        ``(n,)`` pixel coordinates (0-based); NaN where ``bad_coord`` or where the projection
        cannot reach the position (e.g. behind a TAN tangent plane: off the image).
    bad_coord : numpy.ndarray
        ``(n,)`` bool: ra/dec not finite or |dec| > 90.
    shape : numpy.ndarray or None
        ``(n, 3)`` transformed moments ``(xx, yy, xy)`` in pixel^2, or None without shapes.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    x: np.ndarray
    y: np.ndarray
    bad_coord: np.ndarray
    shape: np.ndarray | None


def validate_reference(coadd_ref: pd.DataFrame) -> None:
    """Check the reference table's structure.

    Raises
    ------
    TaskError
        If it is not a DataFrame, lacks a required column, has a partial set of shape columns,
        non-integer or missing ids, or duplicate ids. The message names the problem.
    """
    if not isinstance(coadd_ref, pd.DataFrame):
        raise TaskError(f"coadd_ref must be a pandas DataFrame, got {type(coadd_ref).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in coadd_ref.columns]
    if missing:
        raise TaskError(
            f"coadd_ref lacks required column(s) {missing}; has {list(coadd_ref.columns)}"
        )
    present = [c for c in SHAPE_COLUMNS if c in coadd_ref.columns]
    if present and len(present) != len(SHAPE_COLUMNS):
        absent = [c for c in SHAPE_COLUMNS if c not in present]
        raise TaskError(f"coadd_ref has shape column(s) {present} but not {absent}: give all three")
    ids = coadd_ref["id"]
    if ids.isna().any():
        raise TaskError(f"coadd_ref has {int(ids.isna().sum())} row(s) without an id")
    if not pd.api.types.is_integer_dtype(ids.dtype):
        raise TaskError(f"coadd_ref column 'id' must be integer, got dtype {ids.dtype}")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        shown = sorted(set(dup.tolist()))[:5]
        raise TaskError(
            f"coadd_ref has {dup.nunique()} duplicate id value(s), e.g. {shown}: ids must be unique"
        )
    for column in ("ra", "dec", *present):
        if not pd.api.types.is_numeric_dtype(coadd_ref[column].dtype):
            raise TaskError(
                f"coadd_ref column {column!r} must be numeric, got dtype {coadd_ref[column].dtype}"
            )


def transform_reference(coadd_ref: pd.DataFrame, wcs: WCS) -> ReferencePositions:
    """Validate ``coadd_ref`` and put its sources into the pixel frame of ``wcs``.

    Parameters
    ----------
    coadd_ref : pandas.DataFrame
        See the module docstring.
    wcs : astropy.wcs.WCS
        Celestial WCS of the coadd (0-based pixels).

    Returns
    -------
    ReferencePositions
        Same order as ``coadd_ref``.

    Raises
    ------
    TaskError
        On a structural problem (see :func:`validate_reference`) or a WCS that is not celestial.
    """
    validate_reference(coadd_ref)
    if wcs is None or not wcs.has_celestial:
        raise TaskError("the coadd has no celestial WCS: cannot place the reference sources")
    ids = coadd_ref["id"].to_numpy(dtype=np.int64)
    ra = coadd_ref["ra"].to_numpy(dtype=np.float64)
    dec = coadd_ref["dec"].to_numpy(dtype=np.float64)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    x = np.full(ra.shape, np.nan)
    y = np.full(ra.shape, np.nan)
    if ok.any():
        px, py = _sky_to_pixel(wcs, ra[ok], dec[ok])
        back_ra, back_dec = wcs.all_pix2world(px, py, 0)
        miss = _separation_arcsec(ra[ok], dec[ok], back_ra, back_dec)
        good = np.isfinite(px) & np.isfinite(py) & (miss < _ROUND_TRIP_TOLERANCE_ARCSEC)
        # A valid sky position that the projection cannot reach keeps NaN pixels: off the image.
        x[ok] = np.where(good, px, np.nan)
        y[ok] = np.where(good, py, np.nan)
    shape = None
    if all(c in coadd_ref.columns for c in SHAPE_COLUMNS):
        sky_moments = coadd_ref[list(SHAPE_COLUMNS)].to_numpy(dtype=np.float64)
        shape = np.full(sky_moments.shape, np.nan)
        placed = np.isfinite(x)
        if placed.any():
            jac = local_jacobian(wcs, ra[placed], dec[placed])
            shape[placed] = transform_moments(sky_moments[placed], jac)
    return ReferencePositions(ids, ra, dec, x, y, ~ok, shape)


def local_jacobian(wcs: WCS, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """``(n, 2, 2)`` derivative of pixel (x, y) with respect to tangent-plane (East, North) arcsec.

    Central finite differences of the full WCS (SIP included) with a 1 arcsec step: the local
    linearisation (a CD matrix per source) that maps sky-frame moments into pixel moments.
    """
    step_deg = _JACOBIAN_STEP_ARCSEC / 3600.0
    cos_dec = np.cos(np.radians(dec))
    dra = step_deg / np.maximum(cos_dec, 1e-12)
    xe1, ye1 = _sky_to_pixel(wcs, ra + dra, dec)
    xe0, ye0 = _sky_to_pixel(wcs, ra - dra, dec)
    xn1, yn1 = _sky_to_pixel(wcs, ra, dec + step_deg)
    xn0, yn0 = _sky_to_pixel(wcs, ra, dec - step_deg)
    scale = 2.0 * _JACOBIAN_STEP_ARCSEC
    jac = np.empty((ra.size, 2, 2))
    jac[:, 0, 0] = (xe1 - xe0) / scale
    jac[:, 1, 0] = (ye1 - ye0) / scale
    jac[:, 0, 1] = (xn1 - xn0) / scale
    jac[:, 1, 1] = (yn1 - yn0) / scale
    return jac


def transform_moments(moments: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """Map second moments ``(n, 3)`` = (xx, yy, xy) through ``(n, 2, 2)`` Jacobians: J Q J^T."""
    q = np.empty((moments.shape[0], 2, 2))
    q[:, 0, 0] = moments[:, 0]
    q[:, 1, 1] = moments[:, 1]
    q[:, 0, 1] = q[:, 1, 0] = moments[:, 2]
    out = jacobian @ q @ np.transpose(jacobian, (0, 2, 1))
    return np.stack([out[:, 0, 0], out[:, 1, 1], out[:, 0, 1]], axis=1)


def _sky_to_pixel(wcs: WCS, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # all_world2pix includes SIP (iterative inverse); quiet: return the best solution for points
    # where the iteration does not converge (far off the image) instead of raising.
    x, y = wcs.all_world2pix(ra, dec, 0, tolerance=1e-8, maxiter=50, quiet=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _separation_arcsec(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray
) -> np.ndarray:
    """Angular separation (haversine, accurate at small angles) in arcsec; NaN-propagating."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    hav = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0)))) * 3600.0

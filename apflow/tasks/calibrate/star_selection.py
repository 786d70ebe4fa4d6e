"""The ``stars`` catalog of calibrate: point sources above an S/N cut.

Extendedness compares a source's adaptive-moment size with the PSF's at its position
(:func:`classify_extendedness`); :func:`select_stars` keeps the point sources with PSF-flux
S/N above the cut (Rubin's ``science`` star selector: flags, unresolved, S/N >= 10).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...core import Psf
from .psf.pixel_psf import normalized_coordinates, polynomial_terms


def classify_extendedness(
    stars: pd.DataFrame, psf: Psf, max_size_excess: float = 0.05
) -> pd.DataFrame:
    """Add ``size_ratio`` and ``extendedness`` (0 point source, 1 extended, NaN unmeasured).

    The adaptive-moment size ``sqrt((ixx + iyy) / 2)`` is divided by the PSF's
    Gaussian-equivalent sigma at the source; the ratio of a point source is a constant of the
    PSF's profile, measured as the median over the PSF stars (``calib_psf_used``). A source is
    extended when its ratio exceeds that by more than ``max_size_excess`` plus three times the
    ratio's noise, taken as ``ratio / (S/N)``.
    """
    out = stars.copy()
    sigma = psf_sigma_field(psf, stars["x"].to_numpy(), stars["y"].to_numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        size = np.sqrt(0.5 * (stars["ixx"].to_numpy() + stars["iyy"].to_numpy()))
        ratio = size / sigma
        snr = stars["psf_instflux"].to_numpy() / stars["psf_instflux_err"].to_numpy()
    reference = ratio[stars["calib_psf_used"].to_numpy(bool)] if "calib_psf_used" in stars else []
    point = float(np.nanmedian(reference)) if len(reference) else float(np.nanmedian(ratio))
    noise = point / np.maximum(np.nan_to_num(snr, nan=1.0), 1.0)
    excess = ratio / point - 1.0
    extended = np.where(
        np.isfinite(ratio), (excess > max_size_excess + 3.0 * noise / point).astype(float), np.nan
    )
    out["size_ratio"] = ratio / point
    out["extendedness"] = extended
    return out


def psf_sigma_field(psf: Psf, x: np.ndarray, y: np.ndarray, grid: int = 3) -> np.ndarray:
    """Gaussian-equivalent PSF sigma at many positions from a ``grid x grid`` polynomial fit.

    ``fwhm_at`` of a pixel model costs an FFT; the PSF varies smoothly, so it is evaluated on a
    small grid only.
    """
    width = int(getattr(psf, "width", 0) or max(np.max(x, initial=0.0) + 1, 1))
    height = int(getattr(psf, "height", 0) or max(np.max(y, initial=0.0) + 1, 1))
    gx, gy = (
        a.ravel()
        for a in np.meshgrid(np.linspace(0, width - 1, grid), np.linspace(0, height - 1, grid))
    )
    sigma = np.array([psf.sigma_at(float(a), float(b)) for a, b in zip(gx, gy, strict=True)])
    order = min(2, grid - 1)
    coeffs, *_ = np.linalg.lstsq(
        polynomial_terms(*normalized_coordinates(gx, gy, width, height), order), sigma, rcond=None
    )
    u, v = normalized_coordinates(np.asarray(x), np.asarray(y), width, height)
    return polynomial_terms(u, v, order) @ coeffs


def select_stars(stars: pd.DataFrame, min_snr: float, unresolved_only: bool = True) -> pd.DataFrame:
    """The ``stars`` catalog: sources with S/N >= ``min_snr`` (point sources only).

    The S/N is the PSF flux's, or the aperture flux's when the chain stopped before a PSF.

    Parameters
    ----------
    stars : pandas.DataFrame
        Measured catalog (``psf_instflux``/``ap_instflux`` and their ``_err``, optionally
        ``extendedness``).
    min_snr : float
        Minimum S/N.
    unresolved_only : bool
        Keep only sources with ``extendedness`` 0 (when the column exists).
    """
    column = "psf_instflux"
    if column not in stars or not np.isfinite(stars[column].to_numpy(dtype=float)).any():
        column = "ap_instflux"
    flux = stars[column].to_numpy(dtype=float)
    err = stars[f"{column}_err"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.isfinite(flux) & (err > 0) & (flux / err >= min_snr)
    if unresolved_only and "extendedness" in stars:
        keep &= stars["extendedness"].to_numpy(dtype=float) == 0.0
    return stars[keep].copy()

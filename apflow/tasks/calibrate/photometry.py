"""PhotometryTask: photometric zero point of one CCD from reference stars (Rubin's PhotoCalTask).

Sources with astrometrically calibrated positions are matched to the reference catalog within
0.25"; for each good match ``delta_mag = ref_mag - inst_mag`` (``inst_mag = -2.5 log10(counts)``)
estimates the zero point, the AB magnitude of one count. The estimate follows Rubin's
``getZeroPoint``: a histogram mode to start, sigma clipping about the median with a robust width
(0.7413 IQR, capped at ``sigma_max``) until the kept set stops changing, then the
inverse-variance weighted mean of the kept stars. Two departures from Rubin: the clipping width
never falls below the median quoted error (with few stars Rubin's width from the half-maximum of
a 20-bin histogram can be one bin wide and keep a handful of stars), and the error, formally
``1 / sqrt(sum w)``, is inflated by the square root of the reduced chi-square when the scatter
exceeds the quoted errors (colour terms, reference-catalog systematics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from ...core import PhotoCalib, njy_to_ab_mag
from ...errors import ConfigError, PhotometryError, format_data_id
from ..base import Task, TaskConfig
from .astrometry import match_on_sky
from .astrometry.selection import source_ids, unflagged

# d(mag) / d(ln flux): 2.5 / ln(10).
_MAG_PER_LN_FLUX = 2.5 / np.log(10.0)
# 0.7413 x IQR is the standard deviation of a Gaussian.
_IQR_TO_SIGMA = 0.7413
# Histogram of the first zero-point guess (Rubin: 20 bins).
_N_HISTOGRAM_BINS = 20


@dataclasses.dataclass
class PhotometryConfig(TaskConfig):
    """Configuration of :class:`PhotometryTask` (Rubin PhotoCalTask defaults where they exist).

    Attributes
    ----------
    match_radius_arcsec : float
        Source-reference match radius, arcsec (Rubin 0.25).
    flux_column : str
        Instrumental flux (counts) of the zero point; its error is ``<flux_column>_err``.
    flag_columns : tuple of str
        Boolean source columns that exclude a star when True (absent columns are ignored):
        failed flux, edge, saturated or interpolated centre, bad pixels, sky sources.
    min_snr : float
        Minimum ``flux / flux_err`` of a calibration star (Rubin 10).
    ref_flux_column : str
        Reference flux column in nJy; empty means ``<band>_flux``. Its error, when present, is
        ``<ref_flux_column>_err`` or ``<ref_flux_column>Err``.
    n_sigma : float
        Clipping threshold in units of the robust width (Rubin nSigma 3).
    sigma_max : float
        Cap on the robust width used for clipping, mag (Rubin sigmaMax 0.25).
    max_iterations : int
        Maximum clipping iterations (Rubin nIter 20).
    mag_error_floor : float
        Added in quadrature to each star's magnitude error, mag (Rubin magErrFloor 0).
    min_matches : int
        Fewer calibration stars after clipping raise :class:`~apflow.errors.PhotometryError`.
    """

    match_radius_arcsec: float = 0.25
    flux_column: str = "psf_instflux"
    flag_columns: tuple[str, ...] = (
        "flag_psf_flux_failed",
        "flag_edge",
        "flag_saturated_center",
        "flag_interpolated_center",
        "flag_bad",
        "sky_source",
    )
    min_snr: float = 10.0
    ref_flux_column: str = ""
    n_sigma: float = 3.0
    sigma_max: float = 0.25
    max_iterations: int = 20
    mag_error_floor: float = 0.0
    min_matches: int = 10

    def validate(self) -> None:
        """Reject values the algorithm cannot use."""
        if not self.match_radius_arcsec > 0:
            raise ConfigError("PhotometryConfig.match_radius_arcsec must be > 0")
        if self.min_matches < 1:
            raise ConfigError("PhotometryConfig.min_matches must be >= 1")
        if not (self.n_sigma > 0 and self.sigma_max > 0):
            raise ConfigError("PhotometryConfig.n_sigma and sigma_max must be > 0")


@dataclasses.dataclass
class PhotometryResult:
    """Output of :meth:`PhotometryTask.run`.

    Attributes
    ----------
    photo_calib : PhotoCalib
        nJy per count and its error.
    zero_point, zero_point_err : float
        AB magnitude of one count and its 1-sigma error.
    scatter_mag : float
        Robust scatter (0.7413 IQR) of ``delta_mag`` over the kept stars.
    n_matches : int
        Good sources matched to a reference star.
    n_used : int
        Stars kept by the clipping.
    matches : pandas.DataFrame
        One row per match: ``source_id``, ``ref_id``, ``separation_arcsec``, ``instflux``,
        ``instflux_err`` (counts), ``inst_mag``, ``inst_mag_err``, ``ref_mag``, ``ref_mag_err``,
        ``delta_mag`` (ref - inst) and ``used``.
    stars : pandas.DataFrame
        The input catalog with calibrated columns added by :func:`calibrate_catalog`.
    """

    photo_calib: PhotoCalib
    zero_point: float
    zero_point_err: float
    scatter_mag: float
    n_matches: int
    n_used: int
    matches: pd.DataFrame
    stars: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        """Small JSON numbers for the engine's report and provenance."""
        return {
            "zero_point": self.zero_point,
            "zero_point_err": self.zero_point_err,
            "zero_point_scatter": self.scatter_mag,
            "photometry_matches_count": self.n_used,
        }


class PhotometryTask(Task):
    """Fit the photometric zero point of an image against a reference catalog."""

    ConfigClass = PhotometryConfig
    config: PhotometryConfig

    def run(
        self,
        sources: pd.DataFrame,
        ref_cat: pd.DataFrame,
        band: str,
        wcs: WCS | None = None,
        data_id: Mapping[str, Any] | None = None,
    ) -> PhotometryResult:
        """Compute the zero point and calibrate the source catalog.

        Parameters
        ----------
        sources : pandas.DataFrame
            Measured sources: ``x``, ``y`` (pixels) when ``wcs`` is given, else ``ra``, ``dec``
            (ICRS degrees); ``config.flux_column`` and ``<flux_column>_err`` (counts); optional
            flag columns and an ``id`` column (else the index is the source id).
        ref_cat : pandas.DataFrame
            Reference stars: ``id``, ``ra``, ``dec`` (degrees), ``<band>_flux`` (nJy) and
            optionally ``<band>_flux_err`` or ``<band>_fluxErr``.
        band : str
            Band of the image.
        wcs : astropy.wcs.WCS, optional
            Calibrated WCS to place the sources on the sky.
        data_id : mapping, optional
            Data id named in error messages.

        Returns
        -------
        PhotometryResult

        Raises
        ------
        PhotometryError
            No reference flux for the band or fewer than ``min_matches`` calibration stars.
        """
        cfg = self.config
        where = f"photometry [{format_data_id(data_id)}]"
        ref_column = cfg.ref_flux_column or f"{band}_flux"
        if ref_column not in ref_cat.columns:
            raise PhotometryError(f"{where}: reference catalog has no {ref_column!r} column")

        good = self._calibration_stars(sources)
        if wcs is not None:
            ra, dec = wcs.all_pix2world(
                sources["x"].to_numpy(dtype=float), sources["y"].to_numpy(dtype=float), 0
            )
        else:
            ra, dec = sources["ra"].to_numpy(dtype=float), sources["dec"].to_numpy(dtype=float)
        ref_flux = ref_cat[ref_column].to_numpy(dtype=float)
        ref_ok = np.flatnonzero(np.isfinite(ref_flux) & (ref_flux > 0))
        idx, ref_pos, separation = match_on_sky(
            np.where(good, ra, np.nan),
            dec,
            ref_cat["ra"].to_numpy(dtype=float)[ref_ok],
            ref_cat["dec"].to_numpy(dtype=float)[ref_ok],
            cfg.match_radius_arcsec,
        )
        ref_idx = ref_ok[ref_pos]
        if len(idx) < cfg.min_matches:
            raise PhotometryError(
                f"{where}: {len(idx)} calibration stars matched within "
                f'{cfg.match_radius_arcsec}" (need {cfg.min_matches})'
            )
        matches = self._match_table(sources, ref_cat, ref_column, idx, ref_idx, separation)
        delta = matches["delta_mag"].to_numpy()
        error = np.hypot(
            np.hypot(matches["inst_mag_err"].to_numpy(), matches["ref_mag_err"].to_numpy()),
            cfg.mag_error_floor,
        )
        zero_point, zero_point_err, used, scatter = robust_zero_point(
            delta, error, cfg.n_sigma, cfg.sigma_max, cfg.max_iterations
        )
        matches["used"] = used
        if used.sum() < cfg.min_matches:
            raise PhotometryError(
                f"{where}: {int(used.sum())} calibration stars left after clipping "
                f"(need {cfg.min_matches})"
            )
        photo_calib = PhotoCalib.from_zero_point(zero_point, zero_point_err)
        return PhotometryResult(
            photo_calib=photo_calib,
            zero_point=zero_point,
            zero_point_err=zero_point_err,
            scatter_mag=scatter,
            n_matches=len(idx),
            n_used=int(used.sum()),
            matches=matches,
            stars=calibrate_catalog(sources, photo_calib),
        )

    def _calibration_stars(self, sources: pd.DataFrame) -> np.ndarray:
        """Boolean mask of unflagged sources with a finite flux of S/N >= min_snr."""
        cfg = self.config
        flux = sources[cfg.flux_column].to_numpy(dtype=float)
        err = sources[f"{cfg.flux_column}_err"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            good = np.isfinite(flux) & (flux > 0) & (err > 0) & (flux / err >= cfg.min_snr)
        return good & unflagged(sources, cfg.flag_columns)

    def _match_table(
        self,
        sources: pd.DataFrame,
        ref_cat: pd.DataFrame,
        ref_column: str,
        idx: np.ndarray,
        ref_idx: np.ndarray,
        separation: np.ndarray,
    ) -> pd.DataFrame:
        flux_column = self.config.flux_column
        matched = sources.iloc[idx]
        instflux = matched[flux_column].to_numpy(dtype=float)
        instflux_err = matched[f"{flux_column}_err"].to_numpy(dtype=float)
        ref_flux = ref_cat[ref_column].to_numpy(dtype=float)[ref_idx]
        # apflow's ``_err`` or the refcat convention ``fluxErr`` (the simulator writes the latter).
        err_column = next(
            (c for c in (f"{ref_column}_err", f"{ref_column}Err") if c in ref_cat.columns), None
        )
        if err_column is not None:
            ref_flux_err = ref_cat[err_column].to_numpy(dtype=float)[ref_idx]
            ref_mag_err = _MAG_PER_LN_FLUX * np.nan_to_num(ref_flux_err / ref_flux, nan=0.0)
        else:
            ref_mag_err = np.zeros(len(idx))
        inst_mag = -2.5 * np.log10(instflux)
        ref_mag = np.asarray(njy_to_ab_mag(ref_flux))
        return pd.DataFrame(
            {
                "source_id": source_ids(matched),
                "ref_id": ref_cat["id"].to_numpy()[ref_idx],
                "separation_arcsec": separation,
                "instflux": instflux,
                "instflux_err": instflux_err,
                "inst_mag": inst_mag,
                "inst_mag_err": _MAG_PER_LN_FLUX * instflux_err / instflux,
                "ref_mag": ref_mag,
                "ref_mag_err": ref_mag_err,
                "delta_mag": ref_mag - inst_mag,
            }
        )


def robust_zero_point(
    delta_mag: np.ndarray,
    delta_mag_err: np.ndarray,
    n_sigma: float = 3.0,
    sigma_max: float = 0.25,
    max_iterations: int = 20,
) -> tuple[float, float, np.ndarray, float]:
    """Clipped, inverse-variance weighted mean of ``ref_mag - inst_mag`` (Rubin getZeroPoint).

    Parameters
    ----------
    delta_mag, delta_mag_err : numpy.ndarray
        Per-star zero-point estimates and their 1-sigma errors, mag.
    n_sigma, sigma_max, max_iterations : float, float, int
        Clip at ``n_sigma * min(max(width, median error), sigma_max)`` about the median, at
        most this many times.

    Returns
    -------
    zero_point, zero_point_err : float
        Weighted mean of the kept stars and its error (formal, times ``sqrt(chi2 / dof)``
        when that exceeds 1), mag.
    used : numpy.ndarray
        Boolean mask of the kept stars.
    scatter : float
        Robust width (0.7413 IQR) of the kept ``delta_mag``, mag.
    """
    delta = np.asarray(delta_mag, dtype=float)
    error = np.asarray(delta_mag_err, dtype=float)
    finite = np.isfinite(delta) & np.isfinite(error)
    # Stars without a usable error get the median error rather than infinite weight.
    typical = np.median(error[finite & (error > 0)]) if np.any(finite & (error > 0)) else 1.0
    error = np.where(error > 0, error, typical)
    # Start from the histogram mode (a clump of outliers cannot pull it) with the robust width of
    # the stars within sigma_max of it. The width never drops below the typical quoted error:
    # with a few dozen stars the IQR of a lucky tight subset would otherwise shrink the kept set
    # onto itself.
    centre = _histogram_mode(delta[finite])
    near = finite & (np.abs(delta - centre) <= sigma_max)
    width = _robust_width(delta[near])
    used = finite.copy()
    for _ in range(max(max_iterations, 1)):
        floor = float(np.median(error[used])) if used.any() else 0.0
        keep = finite & (np.abs(delta - centre) <= n_sigma * min(max(width, floor), sigma_max))
        if keep.sum() == 0 or np.array_equal(keep, used):
            break
        used = keep
        centre = float(np.median(delta[used]))
        width = _robust_width(delta[used])
    weight = 1.0 / error[used] ** 2
    zero_point = float(np.sum(weight * delta[used]) / np.sum(weight))
    formal = 1.0 / np.sqrt(np.sum(weight))
    dof = max(int(used.sum()) - 1, 1)
    reduced_chi2 = float(np.sum(weight * (delta[used] - zero_point) ** 2)) / dof
    zero_point_err = float(formal * max(1.0, np.sqrt(reduced_chi2)))
    return zero_point, zero_point_err, used, _robust_width(delta[used])


def calibrate_catalog(
    catalog: pd.DataFrame, photo_calib: PhotoCalib, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Add nJy fluxes and AB magnitudes for instrumental flux columns.

    Parameters
    ----------
    catalog : pandas.DataFrame
        Catalog with instrumental fluxes in counts.
    photo_calib : PhotoCalib
        Calibration to apply; its error is added to the flux errors in quadrature.
    columns : sequence of str, optional
        Instrumental flux columns. Default: every numeric column named ``<name>_instflux`` or
        ``<name>_flux`` (but not ``*_err``).

    Returns
    -------
    pandas.DataFrame
        A copy with, for each column ``<name>_instflux`` or ``<name>_flux`` (errors from
        ``<column>_err`` when present): ``<name>_flux_njy``, ``<name>_flux_err_njy`` (nJy),
        ``<name>_mag``, ``<name>_mag_err`` (AB; NaN for non-positive fluxes).
    """
    out = catalog.copy()
    if columns is None:
        columns = [
            c
            for c in catalog.columns
            if str(c).endswith(("_instflux", "_flux")) and pd.api.types.is_numeric_dtype(catalog[c])
        ]
    new: dict[str, np.ndarray] = {}
    for column in columns:
        name = column.removesuffix("_instflux").removesuffix("_flux")
        err_column = f"{column}_err"
        instflux = catalog[column].to_numpy(dtype=float)
        instflux_err = (
            catalog[err_column].to_numpy(dtype=float) if err_column in catalog.columns else None
        )
        flux, flux_err = photo_calib.instflux_to_njy(instflux, instflux_err)
        flux = np.asarray(flux)
        new[f"{name}_flux_njy"] = flux
        new[f"{name}_mag"] = np.asarray(njy_to_ab_mag(flux))
        if flux_err is not None:
            new[f"{name}_flux_err_njy"] = np.asarray(flux_err)
            with np.errstate(divide="ignore", invalid="ignore"):
                new[f"{name}_mag_err"] = np.where(
                    flux > 0, _MAG_PER_LN_FLUX * np.asarray(flux_err) / flux, np.nan
                )
    for key, values in new.items():
        out[key] = values
    return out


def _histogram_mode(delta: np.ndarray) -> float:
    """Centre of the fullest bin of a 20-bin histogram of the 1st-99th percentile range.

    The percentile range keeps a few wild outliers from making every bin wide.
    """
    low, high = np.percentile(delta, [1.0, 99.0])
    if not high > low:
        return float(np.median(delta))
    counts, edges = np.histogram(delta, bins=_N_HISTOGRAM_BINS, range=(low, high))
    peak = int(np.argmax(counts))
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def _robust_width(values: np.ndarray) -> float:
    if len(values) < 2:
        return 0.0
    q25, q75 = np.percentile(values, [25.0, 75.0])
    return float(_IQR_TO_SIGMA * (q75 - q25))

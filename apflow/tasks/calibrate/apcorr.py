"""Aperture correction: put PSF fluxes on the scale of the calibration aperture.

A PSF flux is the amplitude of a model normalised over its finite stamp; the calibration flux
is the flux in a circular aperture of 12 px (Rubin's ``slot_CalibFlux``), which itself misses
the PSF's far wings. The ratio ``ap_instflux / psf_instflux`` of bright PSF stars is fitted as
a low-order 2-D polynomial over the CCD (Rubin's ``MeasureApCorrTask``: clipped fit,
``numIter`` 4, ``numSigmaClip`` 4, final median shift) and multiplied into every PSF flux.
After the correction both ``psf_instflux`` and ``ap_instflux`` measure the flux inside the
12 px aperture: the photometric calibration maps that scale to the reference catalog, which
absorbs the (constant) missing-wing fraction into the zero point.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import sep
from astropy.stats import mad_std

from ...core import Exposure, Psf
from ...core.psf import poly2d_n_terms
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig
from .psf.pixel_psf import normalized_coordinates, polynomial_terms

#: Flags that exclude a star from the aperture-correction fit.
APCORR_BAD_FLAGS = (
    "flag_psf_flux_failed",
    "flag_saturated",
    "flag_bad",
    "flag_edge",
    "flag_aperture_truncated",
    "flag_cr",
    "flag_interpolated",
)


@dataclasses.dataclass
class ApertureCorrectionConfig(TaskConfig):
    """Configuration of :class:`ApertureCorrectionTask`.

    Attributes
    ----------
    order : int
        Degree of the 2-D polynomial (Rubin fits a degree-2 Chebyshev field); lowered when
        fewer than ``n_terms + min_dof`` stars remain.
    n_iter : int
        Fit-and-clip iterations (Rubin ``numIter`` 4).
    n_sigma_clip : float
        Clip residuals beyond this many (robustly rescaled) standard deviations (Rubin 4.0).
    min_dof : int
        Minimum degrees of freedom of the fit (Rubin ``minDegreesOfFreedom`` 1).
    min_snr : float
        Minimum aperture S/N of a star in the fit. Default 50.
    aperture_column : str
        Aperture flux column the PSF flux is scaled to: ``"ap_instflux"`` (default, Rubin's)
        or ``"ap_local_instflux"`` (the 12 px sum minus the mean of a local annulus, see
        ``MeasurementConfig.local_sky_annulus``), falling back to ``"ap_instflux"`` when the
        catalog lacks it. On a default simulated 1k x 1k CCD with ten PSF stars and a 2%
        sky pattern the local version cut the correction's star-to-star scatter from ~10%
        to 1-4%; on crowded CCDs neighbours in the annulus moved it by ~0.3%.
    use_psf_stars : bool
        Fit only stars with ``calib_psf_used`` (Rubin's choice) when that column exists;
        otherwise every unflagged star above ``min_snr``.
    final_median_shift : bool
        Shift the fit so that the median residual is 0 (Rubin ``doFinalMedianShift``).
    propagate_error : bool
        Add the correction's uncertainty to ``psf_instflux_err`` (Rubin does not; it is a
        real, if correlated, error of the calibrated flux). Default True.
    """

    order: int = 2
    n_iter: int = 4
    n_sigma_clip: float = 4.0
    min_dof: int = 1
    min_snr: float = 50.0
    aperture_column: str = "ap_instflux"
    use_psf_stars: bool = True
    final_median_shift: bool = True
    propagate_error: bool = True

    def validate(self) -> None:
        if self.order < 0 or self.n_iter < 1 or self.min_dof < 0:
            raise ConfigError("order and min_dof must be >= 0, n_iter >= 1")
        if not self.n_sigma_clip > 0:
            raise ConfigError("n_sigma_clip must be > 0")


@dataclasses.dataclass(eq=False)
class ApertureCorrection:
    """Ratio of the aperture flux to the PSF flux as a 2-D polynomial over the CCD.

    Attributes
    ----------
    coeffs : numpy.ndarray
        ``(n_terms,)`` coefficients, terms as :func:`~apflow.tasks.calibrate.psf.polynomial_terms`
        in coordinates normalised to [-1, 1] over the CCD.
    covariance : numpy.ndarray
        ``(n_terms, n_terms)`` covariance of the coefficients (scaled by the fit's reduced
        chi^2 when that exceeds 1).
    order : int
        Polynomial degree.
    width, height : int
        CCD size in pixels.
    aperture_radius : float
        Radius (px) of the aperture the correction refers to.
    n_stars : int
        Stars in the final fit.
    scatter : float
        Robust standard deviation of the fit's residual ratios.
    """

    coeffs: np.ndarray
    covariance: np.ndarray
    order: int
    width: int
    height: int
    aperture_radius: float = 12.0
    n_stars: int = 0
    scatter: float = float("nan")

    def evaluate(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Correction factor and its 1-sigma error at pixel positions (x, y) (arrays, same shape)."""
        x = np.asarray(x, np.float64)
        u, v = normalized_coordinates(
            x.ravel(), np.asarray(y, np.float64).ravel(), self.width, self.height
        )
        terms = polynomial_terms(u, v, self.order)
        value = terms @ self.coeffs
        error = np.sqrt(np.einsum("nt,ts,ns->n", terms, self.covariance, terms))
        return value.reshape(x.shape), error.reshape(x.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "type": "polynomial_aperture_correction",
            "order": int(self.order),
            "width": int(self.width),
            "height": int(self.height),
            "aperture_radius": float(self.aperture_radius),
            "n_stars": int(self.n_stars),
            "scatter": float(self.scatter),
            "coeffs": np.asarray(self.coeffs, np.float64).tolist(),
            "covariance": np.asarray(self.covariance, np.float64).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApertureCorrection:
        """Inverse of :meth:`to_dict`."""
        return cls(
            coeffs=np.asarray(data["coeffs"], np.float64),
            covariance=np.asarray(data["covariance"], np.float64),
            order=int(data["order"]),
            width=int(data["width"]),
            height=int(data["height"]),
            aperture_radius=float(data.get("aperture_radius", 12.0)),
            n_stars=int(data.get("n_stars", 0)),
            scatter=float(data.get("scatter", float("nan"))),
        )


@dataclasses.dataclass
class ApertureCorrectionResult:
    """Output of :class:`ApertureCorrectionTask`.

    Attributes
    ----------
    aperture_correction : ApertureCorrection
    stars : pandas.DataFrame
        The input catalog with ``psf_instflux``/``psf_instflux_err`` aperture-corrected in place
        and new columns ``psf_apcorr``, ``psf_apcorr_err`` (the factor applied) and
        ``calib_apcorr_used`` (bool, star in the final fit).
    exposure : Exposure
        The input exposure with ``metadata["aperture_correction"]`` set to
        ``aperture_correction.to_dict()`` (pixel planes shared).
    """

    aperture_correction: ApertureCorrection
    stars: pd.DataFrame
    exposure: Exposure

    def summary(self) -> dict[str, float]:
        """Correction at the CCD centre, its scatter and the number of stars."""
        ap = self.aperture_correction
        value, error = ap.evaluate((ap.width - 1) / 2, (ap.height - 1) / 2)
        return {
            "apcorr_center": float(value),
            "apcorr_center_err": float(error),
            "apcorr_scatter": ap.scatter,
            "apcorr_n_stars": ap.n_stars,
        }


class ApertureCorrectionTask(Task):
    """Measure the PSF-to-aperture flux correction on bright stars and apply it to all stars."""

    ConfigClass = ApertureCorrectionConfig
    config: ApertureCorrectionConfig

    def run(self, exposure: Exposure, stars: pd.DataFrame) -> ApertureCorrectionResult:
        """Fit and apply the aperture correction.

        Parameters
        ----------
        exposure : Exposure
            The measured exposure (its size defines the polynomial's coordinates).
        stars : pandas.DataFrame
            Measured catalog with ``x``, ``y``, ``psf_instflux(_err)``, ``ap_instflux(_err)``,
            flags and (optionally) ``calib_psf_used``; not yet aperture-corrected.

        Returns
        -------
        ApertureCorrectionResult

        Raises
        ------
        TaskError
            If the catalog is already corrected or too few stars are usable.
        """
        apcorr, used = measure_aperture_correction(
            stars, exposure.width, exposure.height, self.config
        )
        corrected = apply_aperture_correction(stars, apcorr, self.config.propagate_error)
        corrected["calib_apcorr_used"] = used
        metadata = {**exposure.metadata, "aperture_correction": apcorr.to_dict()}
        return ApertureCorrectionResult(
            aperture_correction=apcorr,
            stars=corrected,
            exposure=dataclasses.replace(exposure, metadata=metadata),
        )


def measure_aperture_correction(
    stars: pd.DataFrame, width: int, height: int, config: ApertureCorrectionConfig
) -> tuple[ApertureCorrection, np.ndarray]:
    """Fit ``ap_instflux / psf_instflux`` of clean bright stars as a clipped 2-D polynomial.

    Returns
    -------
    aperture_correction : ApertureCorrection
    used : numpy.ndarray
        ``(n_stars,)`` bool, stars in the final fit.

    Raises
    ------
    TaskError
        With fewer than ``1 + min_dof`` usable stars.
    """
    column = config.aperture_column if config.aperture_column in stars else "ap_instflux"
    ap = stars[column].to_numpy(np.float64)
    ap_err = stars[f"{column}_err"].to_numpy(np.float64)
    psf = stars["psf_instflux"].to_numpy(np.float64)
    psf_err = stars["psf_instflux_err"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = ap / psf
        ratio_err = np.abs(ratio) * np.hypot(ap_err / ap, psf_err / psf)
        snr = ap / ap_err
    good = np.isfinite(ratio) & np.isfinite(ratio_err) & (ratio_err > 0) & (psf > 0)
    good &= snr >= config.min_snr
    for flag in APCORR_BAD_FLAGS:
        if flag in stars:
            good &= ~stars[flag].to_numpy(bool)
    if config.use_psf_stars and "calib_psf_used" in stars:
        good &= stars["calib_psf_used"].to_numpy(bool)
    if good.sum() < 1 + config.min_dof:
        raise TaskError(f"aperture correction: only {int(good.sum())} usable stars")
    u, v = normalized_coordinates(stars["x"].to_numpy(), stars["y"].to_numpy(), width, height)

    def usable_order(n_used: int) -> int:
        order = config.order
        while order > 0 and n_used < poly2d_n_terms(order) + config.min_dof:
            order -= 1
        return order

    used = good.copy()
    for _ in range(config.n_iter):
        terms = polynomial_terms(u, v, usable_order(int(used.sum())))
        coeffs, covariance = _weighted_fit(terms[used], ratio[used], ratio_err[used])
        normalised = (ratio - terms @ coeffs) / ratio_err
        # Rescale by the robust spread: the flux errors ignore the PSF model's own error.
        spread = mad_std(normalised[used])
        keep = good & (np.abs(normalised) <= config.n_sigma_clip * max(spread, 1e-12))
        if keep.sum() < poly2d_n_terms(0) + config.min_dof or np.array_equal(keep, used):
            break
        used = keep
    order = usable_order(int(used.sum()))
    terms = polynomial_terms(u, v, order)
    coeffs, covariance = _weighted_fit(terms[used], ratio[used], ratio_err[used])
    residual = ratio - terms @ coeffs
    if config.final_median_shift:
        coeffs[0] += np.median(residual[used])
        residual = ratio - terms @ coeffs
    scatter = float(mad_std(residual[used]))
    apcorr = ApertureCorrection(
        coeffs=coeffs,
        covariance=covariance,
        order=order,
        width=width,
        height=height,
        n_stars=int(used.sum()),
        scatter=scatter,
    )
    return apcorr, used


def apply_aperture_correction(
    stars: pd.DataFrame, apcorr: ApertureCorrection, propagate_error: bool = True
) -> pd.DataFrame:
    """Multiply ``psf_instflux`` (and its error) by the correction at each star's position.

    Returns a new DataFrame with ``psf_apcorr`` and ``psf_apcorr_err`` added; with
    ``propagate_error`` the flux error becomes ``sqrt((e c)^2 + (f c_err)^2)``.

    Raises
    ------
    TaskError
        If ``stars`` already has ``psf_apcorr`` (a second correction would be applied twice).
    """
    if "psf_apcorr" in stars:
        raise TaskError("aperture correction: the catalog is already aperture-corrected")
    value, error = apcorr.evaluate(stars["x"].to_numpy(), stars["y"].to_numpy())
    flux = stars["psf_instflux"].to_numpy(np.float64)
    flux_err = stars["psf_instflux_err"].to_numpy(np.float64)
    out = stars.copy()
    out["psf_instflux"] = flux * value
    out["psf_instflux_err"] = (
        np.hypot(flux_err * value, flux * error) if propagate_error else flux_err * value
    )
    out["psf_apcorr"] = value
    out["psf_apcorr_err"] = error
    return out


def model_aperture_correction(
    psf: Psf, width: int, height: int, radius: float, error: float, grid: int = 3
) -> ApertureCorrection:
    """Aperture correction predicted by a PSF model instead of measured on stars.

    A PSF flux measures the light inside the model's stamp (the model sums to 1 there), so
    ``ap / psf`` of a star whose profile the model follows is the model's own light inside
    the aperture: the exact-overlap aperture sum of the stamp-normalised model image
    (``psf.default_size``, the stamp :func:`~.measurement.psf_flux` fits). It is evaluated
    on a ``grid x grid`` set of positions and fitted by a polynomial of degree
    ``min(2, grid - 1)``.

    Parameters
    ----------
    psf : Psf
        The PSF model.
    width, height : int
        CCD size, px.
    radius : float
        Aperture radius, px.
    error : float
        Assumed error of the prediction (the model's profile error), put on the constant
        term's variance.
    grid : int
        Positions per axis.

    Returns
    -------
    ApertureCorrection
        With ``n_stars`` 0 and ``scatter`` 0.
    """
    along_x = np.linspace(0, width - 1, grid) if grid > 1 else np.array([(width - 1) / 2])
    along_y = np.linspace(0, height - 1, grid) if grid > 1 else np.array([(height - 1) / 2])
    gx, gy = (a.ravel() for a in np.meshgrid(along_x, along_y))
    size = psf.default_size((width - 1) / 2, (height - 1) / 2)
    half = float(size // 2)
    ratio = []
    for x, y in zip(gx, gy, strict=True):
        stamp = np.ascontiguousarray(psf.compute_kernel_image(float(x), float(y), size))
        ratio.append(sep.sum_circle(stamp, [half], [half], radius, subpix=0)[0][0])
    order = min(2, grid - 1)
    u, v = normalized_coordinates(gx, gy, width, height)
    coeffs, *_ = np.linalg.lstsq(polynomial_terms(u, v, order), np.array(ratio), rcond=None)
    covariance = np.zeros((len(coeffs), len(coeffs)))
    covariance[0, 0] = error**2
    return ApertureCorrection(
        coeffs=coeffs,
        covariance=covariance,
        order=order,
        width=int(width),
        height=int(height),
        aperture_radius=float(radius),
        n_stars=0,
        scatter=0.0,
    )


def _weighted_fit(
    terms: np.ndarray, values: np.ndarray, errors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted linear least squares; covariance scaled by the reduced chi^2 when above 1."""
    weights = 1.0 / errors**2
    normal = terms.T @ (terms * weights[:, None])
    coeffs = np.linalg.solve(normal, terms.T @ (values * weights))
    covariance = np.linalg.inv(normal)
    dof = len(values) - len(coeffs)
    if dof > 0:
        chi2 = float(np.sum(weights * (values - terms @ coeffs) ** 2)) / dof
        covariance *= max(chi2, 1.0)
    return coeffs, covariance

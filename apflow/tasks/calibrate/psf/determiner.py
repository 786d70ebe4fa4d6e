"""PSF determination task: select stars, fit a PSF model, check it on reserved stars.

Two models, chosen by the number of fit stars (``model="auto"``): with at least
``pixel_min_stars`` a :class:`PixelPsf`, whose pixels follow any PSF shape; with fewer (a
1k x 1k CCD at high latitude has ~10) an elliptical Moffat of smoothly varying FWHM and
ellipticity (:func:`~.analytic.fit_moffat_psf`), whose few parameters ten stars constrain to
~1%, where a pixel basis fitted to them is mostly noise.

The pixel model's recipe is PSFEx's (Rubin's default ``psfex`` determiner) at native sampling:

1. select bright isolated stars (:func:`select_psf_candidates`) and reserve a random
   ``reserve_fraction`` of them, which never enter the fit;
2. shift every fit star's stamp so that its centroid sits on the central pixel (Fourier shift,
   which keeps the noise white) and divide it by the star's flux;
3. fit each model pixel as a polynomial of degree ``order`` in the normalised CCD coordinates
   by inverse-variance weighted least squares over the stars;
4. refit every star's flux with the model, drop fit stars whose chi^2 is an outlier, iterate;
5. report the chi^2 per degree of freedom of the model on the reserved stars (about 1 when the
   model is as good as the noise).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ....core import Exposure, MaskPlanes, VariablePsf
from ....core.psf import poly2d_n_terms
from ....errors import ConfigError, PsfError
from ...base import Task, TaskConfig
from ..measurement import cut_stamps
from .analytic import fit_moffat_psf
from .flux_error import MoffatFluxError
from .pixel_psf import PixelPsf, fourier_shift, normalized_coordinates, polynomial_terms
from .selection import select_psf_candidates

#: Values of :attr:`PsfModelConfig.model`.
PSF_MODELS = ("auto", "pixel", "moffat")


@dataclasses.dataclass
class PsfModelConfig(TaskConfig):
    """Configuration of :class:`PsfModelTask`.

    Attributes
    ----------
    model : str
        ``"auto"`` (default): ``"pixel"`` with at least ``pixel_min_stars`` fit stars, else
        ``"moffat"``; or either of them always.
    order : int
        Polynomial degree of the spatial variation (PSFEx ``PSFVAR_DEGREES`` 2). Lowered
        automatically when there are fewer than ``3 * n_terms`` fit stars (pixel model) or
        ``4 * n_terms`` (Moffat model).
    pixel_min_stars : int
        Fit stars needed for the pixel model under ``"auto"``. Default 50: with ten stars the
        pixel model's FWHM was off by 3-5% on simulated 1k x 1k CCDs (the Moffat model:
        1-3%); with 60-70 stars the Moffat model's FWHM was within 0.5% where the pixel
        model's was within 1-2.7%, but the Moffat fit costs ~5 s for 20 stars.
    stamp_size : int
        Side of the model stamp (odd, px); 0 derives it from the stars' size as
        ``2 ceil(3.5 FWHM) + 1``.
    min_snr : float
        Minimum aperture S/N of a PSF star. Default 50.
    size_clip_sigma : float
        Size-cluster half-width in robust standard deviations. Default 3.
    size_min_width : float
        ... but never narrower than this fraction of the median size (the PSF size varies
        across the CCD). Default 0.05.
    isolation_radius : float
        No other detection within this radius (px) of a PSF star; 0 means half the stamp plus
        one FWHM.
    max_candidates : int
        At most this many candidates (highest S/N first). Default 1000.
    reserve_fraction : float
        Fraction of the candidates kept out of the fit to check the model (Rubin reserves
        20%). Default 0.15.
    reserve_seed : int
        Seed of the reserve draw (deterministic for a given catalog).
    n_iter : int
        Fit / flux-refit / outlier-rejection iterations. Default 3.
    outlier_sigma : float
        A fit star whose chi^2/dof exceeds the median by this many robust standard deviations
        is dropped. Default 4.
    min_stars : int
        Fewer fit stars raise :class:`~apflow.errors.PsfError` for the pixel model. Default 10.
    moffat_min_stars : int
        The same for the Moffat model. Default 3.
    moffat_max_stars : int
        The Moffat model is fitted to at most this many stars (the highest aperture S/N; the
        others are evaluated like reserved stars but keep ``calib_psf_used`` False). Its
        handful of parameters are settled by 20 stars, and the fit's cost grows with each.
    stamp_bad_mask_planes : tuple of str
        A candidate's stamp may hold none of these planes.
    """

    model: str = "auto"
    order: int = 2
    pixel_min_stars: int = 50
    stamp_size: int = 0
    min_snr: float = 50.0
    size_clip_sigma: float = 3.0
    size_min_width: float = 0.05
    isolation_radius: float = 0.0
    max_candidates: int = 1000
    reserve_fraction: float = 0.15
    reserve_seed: int = 1
    n_iter: int = 3
    outlier_sigma: float = 4.0
    min_stars: int = 10
    moffat_min_stars: int = 3
    moffat_max_stars: int = 20
    stamp_bad_mask_planes: tuple[str, ...] = (
        "BAD",
        "SAT",
        "CR",
        "INTRP",
        "NO_DATA",
        "EDGE",
        "SUSPECT",
    )

    def validate(self) -> None:
        if self.order < 0 or self.n_iter < 1 or self.min_stars < 1 or self.moffat_min_stars < 1:
            raise ConfigError("order must be >= 0, n_iter >= 1 and min_stars >= 1")
        if self.model not in PSF_MODELS:
            raise ConfigError(f"model must be one of {PSF_MODELS}, got {self.model!r}")
        if self.stamp_size < 0 or (self.stamp_size and self.stamp_size % 2 == 0):
            raise ConfigError(f"stamp_size must be 0 (auto) or odd, got {self.stamp_size}")
        if not 0 <= self.reserve_fraction < 1:
            raise ConfigError("reserve_fraction must be in [0, 1)")
        MaskPlanes.bits(*self.stamp_bad_mask_planes)


@dataclasses.dataclass
class PsfModelResult:
    """Output of :class:`PsfModelTask`.

    Attributes
    ----------
    exposure : Exposure
        The input exposure with ``psf`` set to the model (pixel planes shared).
    psf : PixelPsf or VariablePsf
        The fitted model (a ``VariablePsf`` Moffat when the Moffat model was chosen).
    stars : pandas.DataFrame
        The input catalog plus bool columns ``calib_psf_candidate``, ``calib_psf_used``
        (in the final fit) and ``calib_psf_reserved`` (Rubin's names).
    psf_stars : pandas.DataFrame
        The candidates only (``psf_stars`` dataset): ``id``, ``x``, ``y``, ``ap_instflux``,
        ``psf_model_flux`` (counts, flux fitted with the model), ``psf_model_chi2`` (chi^2 per
        dof of that fit over the full stamp), ``psf_model_dof``, ``calib_psf_used``,
        ``calib_psf_reserved``.
    reserved_chi2_dof : float
        Median chi^2 / dof of the reserved stars (robust to the occasional reserved star
        with an undetected close neighbour); NaN if none.
    reserved_chi2_dof_pooled : float
        Sum of chi^2 over sum of dof of all reserved stars.
    used_chi2_dof : float
        Median chi^2 / dof of the fit stars (below 1 for the brightest, whose noise the
        model partly fits).
    selection_counts : dict of str to int
        Stars left after each selection cut.
    flux_error : MoffatFluxError or None
        The Moffat model's parameter covariance and the PSF-flux error it implies
        (:mod:`.flux_error`); None for the pixel model, whose ~50+ stars leave its own
        error in a PSF flux well below the photon noise.
    """

    exposure: Exposure
    psf: PixelPsf | VariablePsf
    stars: pd.DataFrame
    psf_stars: pd.DataFrame
    reserved_chi2_dof: float
    reserved_chi2_dof_pooled: float
    used_chi2_dof: float
    selection_counts: dict[str, int]
    flux_error: MoffatFluxError | None = None

    def summary(self) -> dict[str, float]:
        """Star counts, FWHM at the CCD centre and model quality."""
        psf = self.psf
        return {
            "n_psf_candidates": int(self.stars["calib_psf_candidate"].sum()),
            "n_psf_used": int(self.stars["calib_psf_used"].sum()),
            "n_psf_reserved": int(self.stars["calib_psf_reserved"].sum()),
            "psf_fwhm": psf.fwhm_at((psf.width - 1) / 2, (psf.height - 1) / 2),
            "psf_reserved_chi2_dof": self.reserved_chi2_dof,
            "psf_used_chi2_dof": self.used_chi2_dof,
        }


class PsfModelTask(Task):
    """Determine a spatially varying pixel-basis PSF model from the stars of an exposure."""

    ConfigClass = PsfModelConfig
    config: PsfModelConfig

    def run(self, exposure: Exposure, stars: pd.DataFrame) -> PsfModelResult:
        """Select PSF stars, fit the model and evaluate it on the reserved stars.

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted exposure (counts) with mask and variance.
        stars : pandas.DataFrame
            Output of :class:`~apflow.tasks.calibrate.measurement.MeasureStarsTask`
            (positions, adaptive moments, aperture fluxes, flags).

        Returns
        -------
        PsfModelResult

        Raises
        ------
        PsfError
            With fewer than ``min_stars`` usable stars.
        """
        config = self.config
        candidate, counts, fwhm = select_psf_candidates(
            stars,
            exposure,
            min_snr=config.min_snr,
            size_clip_sigma=config.size_clip_sigma,
            size_min_width=config.size_min_width,
            stamp_half=config.stamp_size // 2 if config.stamp_size else None,
            isolation_radius=config.isolation_radius or None,
            bad_mask_planes=config.stamp_bad_mask_planes,
            max_candidates=config.max_candidates,
        )
        index = np.nonzero(candidate)[0]
        # A seeded draw: the same catalog always reserves the same stars.
        rng = np.random.default_rng(config.reserve_seed)
        reserved = rng.uniform(size=len(index)) < config.reserve_fraction
        n_fit = int(len(index) - reserved.sum())
        model = config.model
        if model == "auto":
            model = "pixel" if n_fit >= config.pixel_min_stars else "moffat"
        need = config.min_stars if model == "pixel" else config.moffat_min_stars
        if n_fit < need:
            raise PsfError(
                f"PSF: only {n_fit} usable PSF stars for the {model} model (need {need}); "
                f"selection: {counts}"
            )
        size = config.stamp_size or 2 * int(np.ceil(3.5 * fwhm)) + 1
        flux_error: MoffatFluxError | None = None
        subset = stars.iloc[index]
        sx, sy = subset["x"].to_numpy(np.float64), subset["y"].to_numpy(np.float64)
        if model == "pixel":
            psf, used, flux, chi2, dof = fit_pixel_psf(
                exposure,
                sx,
                sy,
                subset["ap_instflux"].to_numpy(np.float64),
                ~reserved,
                size,
                config,
            )
        else:
            fit = ~reserved
            snr = (subset["ap_instflux"] / subset["ap_instflux_err"]).to_numpy(np.float64)
            if fit.sum() > config.moffat_max_stars:
                rank = np.argsort(-np.where(fit, snr, -np.inf), kind="stable")
                fit = np.zeros_like(fit)
                fit[rank[: config.moffat_max_stars]] = True
            moffat = fit_moffat_psf(
                exposure,
                sx,
                sy,
                fit,
                size,
                config.order,
                fwhm_guess=fwhm,
                min_stars=config.moffat_min_stars,
                outlier_sigma=config.outlier_sigma,
            )
            psf, used, flux, chi2, dof, flux_error = moffat

        out = stars.copy()
        out["calib_psf_candidate"] = candidate
        out["calib_psf_used"] = False
        out["calib_psf_reserved"] = False
        out.iloc[index, out.columns.get_loc("calib_psf_used")] = used
        out.iloc[index, out.columns.get_loc("calib_psf_reserved")] = reserved
        psf_stars = pd.DataFrame(
            {
                "id": subset["id"].to_numpy() if "id" in subset else index,
                "x": subset["x"].to_numpy(),
                "y": subset["y"].to_numpy(),
                "ap_instflux": subset["ap_instflux"].to_numpy(),
                "psf_model_flux": flux,
                "psf_model_chi2": chi2,
                "psf_model_dof": dof,
                "calib_psf_used": used,
                "calib_psf_reserved": reserved,
            }
        )
        counts["used"] = int(used.sum())
        counts["reserved"] = int(reserved.sum())
        return PsfModelResult(
            exposure=dataclasses.replace(exposure, psf=psf),
            psf=psf,
            stars=out,
            psf_stars=psf_stars,
            reserved_chi2_dof=float(np.median(chi2[reserved])) if reserved.any() else float("nan"),
            reserved_chi2_dof_pooled=_pooled(chi2, dof, reserved),
            used_chi2_dof=float(np.median(chi2[used])),
            selection_counts=counts,
            flux_error=flux_error,
        )


def fit_pixel_psf(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fit: np.ndarray,
    size: int,
    config: PsfModelConfig,
) -> tuple[PixelPsf, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit a :class:`PixelPsf` to star stamps (steps 2-4 of the module docstring).

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted image and variance.
    x, y : numpy.ndarray
        ``(n,)`` star centroids, px.
    flux : numpy.ndarray
        ``(n,)`` starting fluxes (e.g. aperture fluxes); refitted with the model.
    fit : numpy.ndarray
        ``(n,)`` bool, stars that may enter the fit (the others are only evaluated).
    size : int
        Model stamp side (odd), px.
    config : PsfModelConfig

    Returns
    -------
    psf : PixelPsf
    used : numpy.ndarray
        ``(n,)`` bool, stars in the final fit (``fit`` minus the rejected outliers).
    flux, chi2, dof : numpy.ndarray
        ``(n,)`` model flux of every star, chi^2 per dof of that fit and its dof.

    Raises
    ------
    PsfError
        If too few stars remain.
    """
    half = size // 2
    margin = 6  # extra ring so that the Fourier shift's edge effects fall outside the stamp
    cx, cy = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    wide, _ = cut_stamps(exposure.image, cx, cy, half + margin)
    data = wide[:, margin:-margin, margin:-margin].astype(np.float64)
    variance = cut_stamps(exposure.variance, cx, cy, half)[0].astype(np.float64)
    centred = fourier_shift(wide.astype(np.float64), -(x - cx), -(y - cy))
    centred = centred[:, margin:-margin, margin:-margin]
    u, v = normalized_coordinates(x, y, exposure.width, exposure.height)

    used = fit.copy()
    flux = flux.astype(np.float64).copy()
    for iteration in range(config.n_iter):
        order = _usable_order(config.order, int(used.sum()), config.min_stars)
        terms = polynomial_terms(u[used], v[used], order)
        coeffs = _fit_pixels(
            centred[used] / flux[used, None, None],
            flux[used, None, None] ** 2 / variance[used],
            terms,
        )
        psf = PixelPsf(coeffs.reshape(-1, size, size), exposure.width, exposure.height, order)
        model = psf.compute_image_stack(x, y, size)
        flux, chi2, dof = _fit_flux(data, variance, model)
        if iteration < config.n_iter - 1:
            used &= ~_outliers(chi2, used, config.outlier_sigma)
    return psf, used, flux, chi2, dof


def _usable_order(order: int, n_stars: int, min_stars: int) -> int:
    if n_stars < min_stars:
        raise PsfError(f"PSF: only {n_stars} PSF stars left after outlier rejection")
    # At least three stars per polynomial term, so each pixel's fit is overdetermined.
    while order > 0 and n_stars < 3 * poly2d_n_terms(order):
        order -= 1
    return order


def _fit_pixels(values: np.ndarray, weights: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Weighted least-squares polynomial of every pixel: ``(n_terms, n_pixels)`` coefficients.

    ``values`` and ``weights`` are ``(n_stars, size, size)``; ``terms`` is ``(n_stars, n_terms)``.
    """
    n_stars = values.shape[0]
    values = values.reshape(n_stars, -1)
    weights = weights.reshape(n_stars, -1)
    normal = np.einsum("kp,kt,ks->pts", weights, terms, terms)
    rhs = np.einsum("kp,kt->pt", weights * values, terms)
    # A whisker of ridge keeps pixels solvable if a weight pattern makes them degenerate.
    normal += 1e-12 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(terms.shape[1])
    return np.linalg.solve(normal, rhs[..., None])[..., 0].T


def _fit_flux(
    data: np.ndarray, variance: np.ndarray, model: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-variance weighted amplitude of ``model`` in ``data``, chi^2/dof and dof."""
    weight = 1.0 / variance
    flux = (weight * model * data).sum(axis=(1, 2)) / (weight * model * model).sum(axis=(1, 2))
    residual = data - flux[:, None, None] * model
    dof = np.full(len(flux), data.shape[1] * data.shape[2] - 1)
    chi2 = (residual * residual * weight).sum(axis=(1, 2)) / dof
    return flux, chi2, dof


def _outliers(chi2: np.ndarray, used: np.ndarray, n_sigma: float) -> np.ndarray:
    """Stars whose chi^2/dof exceeds the fit stars' median by ``n_sigma`` robust sigmas."""
    median = np.median(chi2[used])
    spread = 1.4826 * np.median(np.abs(chi2[used] - median))
    return chi2 > median + n_sigma * max(spread, 0.05 * median)


def _pooled(chi2: np.ndarray, dof: np.ndarray, select: np.ndarray) -> float:
    if not select.any():
        return float("nan")
    return float((chi2[select] * dof[select]).sum() / dof[select].sum())

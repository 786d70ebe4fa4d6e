"""The PSF model's own error in a star's PSF flux (for the Moffat model of few stars).

A PSF flux is the amplitude of the PSF model fitted to the star's pixels; when the model is
1% too narrow at the star, the amplitude moves by about 0.8% (uniform weights, no local sky).
A Moffat model fitted to the 6-20 PSF stars of a 1k x 1k CCD has FWHM errors of 1-2% at the
stars' positions: at S/N 30-100 that is as large as the photon noise, and without it the flux
pulls of the simulator's sparse CCDs had a standard deviation of 1.29.

The error follows from the Moffat fit's parameter covariance ``C`` (Gauss-Newton, from the
Jacobian of its variable-projection residuals; see :func:`~.analytic.fit_moffat_psf`) and
the gradient ``g = d ln f / d p`` of a star's measured flux with respect to the model
parameters ``p``: ``var(ln f) = g' C g``. The gradient is measured numerically with the PSF
flux's own linear fit (:func:`~apflow.tasks.calibrate.measurement.weighted_linear_fit`): a
noise-free star whose profile is the model is refitted with the model's local FWHM,
ellipticity or ``beta`` perturbed. These local sensitivities change slowly over a CCD (with
the FWHM and ellipticity), so they are computed at the four corners and interpolated
by a plane; the polynomial terms of the star's position carry them to the coefficients.

The covariance is not the whole error: with 6-10 stars the model is a constant or a plane,
while the true FWHM follows the optics over the CCD. On the simulator's sparse CCDs the
covariance predicted FWHM errors of 0.1-0.9% where they were 0.4-2.3%. The fit stars' own
FWHMs about the model measure that unmodelled part (``fwhm_scatter``, see
:func:`~.analytic.fit_moffat_psf`); it is added as ``(d ln f / d ln FWHM * fwhm_scatter)^2``,
independent from star to star.

Only the part the zero point does not absorb reaches calibrated fluxes: a model error common
to all stars moves the calibration stars' fluxes as much, and the zero point fitted to them
cancels it. Given the calibration stars' mean gradient ``r`` (``reference``), the error of a
calibrated flux is ``(g - r)' C (g - r)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ....core import MoffatPsf, VariablePsf
from ..measurement import weighted_linear_fit
from .pixel_psf import normalized_coordinates, polynomial_terms

#: Relative step of the numerical derivatives (FWHM and beta), and absolute step of e1, e2.
_STEP = 1e-3
#: Side of the grid the local sensitivities are computed on (interpolated by a plane: over a
#: sparse simulated CCD d ln f / d ln FWHM changed by < 0.01).
_GRID = 2


@dataclasses.dataclass(frozen=True, eq=False)
class MoffatFluxError:
    """Fractional PSF-flux error that a fitted Moffat model's uncertainty puts on each star.

    Attributes
    ----------
    psf : VariablePsf
        The fitted Moffat model (``profile="moffat"``).
    covariance : numpy.ndarray
        ``(n_params, n_params)`` covariance of the fit's parameters, in the order of
        :func:`~.analytic.fit_moffat_psf`: ``ln(beta - 1)``, then the polynomial
        coefficients of the FWHM (px), of ``e1`` and of ``e2``.
    fwhm_scatter : float
        Fractional rms of the true FWHM about the model that its polynomial does not follow
        (measured on the fit stars), taken as independent from star to star. Default 0.
    """

    psf: VariablePsf
    covariance: np.ndarray
    fwhm_scatter: float = 0.0
    _cache: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def degree(self) -> int:
        """Degree of the model's spatial polynomials."""
        n_terms = len(self.psf.fwhm_coeffs)
        return next(d for d in range(10) if (d + 1) * (d + 2) // 2 >= n_terms)

    def gradient(
        self, x: np.ndarray, y: np.ndarray, *, size: int = 0, fit_local_sky: bool = False
    ) -> np.ndarray:
        """``d ln(flux) / d p`` of the PSF flux of stars at (x, y), ``(n, n_params)``.

        Parameters
        ----------
        x, y : numpy.ndarray
            ``(n,)`` star positions, px.
        size : int
            Side of the PSF-flux stamp (odd); 0 means the model's ``default_size`` at the CCD
            centre (what :func:`~apflow.tasks.calibrate.measurement.psf_flux` uses).
        fit_local_sky : bool
            Whether the PSF flux fits a constant sky with the amplitude.
        """
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        return self._gradient(x, y, self._sensitivities(x, y, size, fit_local_sky))

    def _sensitivities(
        self, x: np.ndarray, y: np.ndarray, size: int, fit_local_sky: bool
    ) -> np.ndarray:
        """``d ln f / d (beta, FWHM, e1, e2)`` of the local PSF at (x, y), ``(n, 4)``."""
        psf = self.psf
        size = size or psf.default_size((psf.width - 1) / 2, (psf.height - 1) / 2)
        key = (size, fit_local_sky)
        if key not in self._cache:
            # sensitivities on a grid of pixel centres, then a plane over the CCD
            gx = np.round(np.linspace(0, psf.width - 1, _GRID))
            gy = np.round(np.linspace(0, psf.height - 1, _GRID))
            nx, ny = (a.ravel() for a in np.meshgrid(gx, gy, indexing="ij"))
            local = np.array(
                [
                    _local_sensitivity(psf, xi, yi, size, fit_local_sky)
                    for xi, yi in zip(nx, ny, strict=True)
                ]
            )
            grid = polynomial_terms(*normalized_coordinates(nx, ny, psf.width, psf.height), 1)
            self._cache[key] = np.linalg.lstsq(grid, local, rcond=None)[0]
        u, v = normalized_coordinates(x, y, psf.width, psf.height)
        return polynomial_terms(u, v, 1) @ self._cache[key]

    def _gradient(self, x: np.ndarray, y: np.ndarray, sens: np.ndarray) -> np.ndarray:
        psf = self.psf
        terms = polynomial_terms(*normalized_coordinates(x, y, psf.width, psf.height), self.degree)
        # beta = 1 + exp(p0): d beta / d p0 = beta - 1
        return np.concatenate(
            [
                (sens[:, 0] * (psf.beta - 1.0))[:, None],
                sens[:, 1:2] * terms,
                sens[:, 2:3] * terms,
                sens[:, 3:4] * terms,
            ],
            axis=1,
        )

    def fractional_error(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        reference: np.ndarray | None = None,
        size: int = 0,
        fit_local_sky: bool = False,
    ) -> np.ndarray:
        """1-sigma fractional PSF-flux error from the model's uncertainty, ``(n,)``.

        Parameters
        ----------
        x, y : numpy.ndarray
            ``(n,)`` star positions, px.
        reference : numpy.ndarray, optional
            ``(n_params,)`` gradient the calibration absorbs (the zero point's weighted mean
            of its stars' :meth:`gradient`); subtracted from every star's. None gives the
            error of an uncalibrated flux.
        size, fit_local_sky
            As in :meth:`gradient`.

        Returns
        -------
        numpy.ndarray
            ``sqrt((g - r)' C (g - r) + (d ln f / d ln FWHM * fwhm_scatter)^2)`` per star.
        """
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        sens = self._sensitivities(x, y, size, fit_local_sky)
        g = self._gradient(x, y, sens)
        if reference is not None:
            g = g - np.asarray(reference, np.float64)[None, :]
        variance = np.einsum("np,pq,nq->n", g, self.covariance, g)
        # the unmodelled FWHM variation: d ln f / d ln FWHM times its fractional rms
        fwhm = polynomial_terms(
            *normalized_coordinates(x, y, self.psf.width, self.psf.height), self.degree
        ) @ np.asarray(self.psf.fwhm_coeffs)
        variance += (sens[:, 1] * fwhm * self.fwhm_scatter) ** 2
        return np.sqrt(np.maximum(variance, 0.0))


def _local_sensitivity(
    psf: VariablePsf, x: float, y: float, size: int, fit_local_sky: bool
) -> np.ndarray:
    """``d ln f / d (beta, FWHM, e1, e2)`` of the model's own star at (x, y).

    Forward differences: the star is the model, so its unperturbed fit gives exactly f = 1.
    """
    local = psf.local_psf(x, y)
    star = local.compute_image(x, y, size)[None]
    base = {"beta": psf.beta, "fwhm": local.fwhm, "e1": local.e1, "e2": local.e2}
    steps = {"beta": _STEP * psf.beta, "fwhm": _STEP * local.fwhm, "e1": _STEP, "e2": _STEP}
    ones = np.ones_like(star)
    out = np.empty(4)
    for k, (name, step) in enumerate(steps.items()):
        model = MoffatPsf(**{**base, name: base[name] + step}).compute_image(x, y, size)[None]
        columns = [model, ones] if fit_local_sky else [model]
        flux, _, _ = weighted_linear_fit(star, ones, ones, columns)
        out[k] = math.log(float(flux[0])) / step
    return out

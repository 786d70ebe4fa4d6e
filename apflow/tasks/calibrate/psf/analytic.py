"""Analytic PSF model for CCDs with few stars: an elliptical Moffat whose shape varies smoothly.

A pixel-basis model has one free number per pixel and per polynomial term: with the ten or so
PSF stars of a 1k x 1k CCD at high latitude its pixels are noise, and its FWHM is off by
several per cent. An analytic profile has a handful of parameters -- the Moffat index ``beta``
(one per CCD) and the FWHM and ellipticity (``e1``, ``e2``), each a polynomial of the position
-- and is fitted jointly to the stamps of all fit stars, so three stars already constrain it.
The result is the core :class:`~apflow.core.VariablePsf` (``profile="moffat"``). It is a model
choice, not truth: a real PSF departs from a Moffat in its wings, which the aperture correction
(PSF to 12 px aperture flux) and the aperture-to-total correction absorb.

Each star's amplitude and a constant local sky are solved linearly inside every model
evaluation (variable projection), so the non-linear fit only sees the shape parameters, and a
residual sky structure under a star (e.g. an unsubtracted fringe) does not bend the profile.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.optimize import least_squares

from ....core import Exposure, VariablePsf
from ....core.psf import poly2d_n_terms
from ....errors import PsfError
from ..measurement import cut_stamps
from .flux_error import MoffatFluxError
from .pixel_psf import normalized_coordinates, polynomial_terms

#: Largest |e| the fit may reach: beyond this a "star" is a blend or a trail, not a PSF.
MAX_ELLIPTICITY = 0.6


class MoffatFit(NamedTuple):
    """Result of :func:`fit_moffat_psf`.

    Attributes
    ----------
    psf : VariablePsf
    used : numpy.ndarray
        ``(n,)`` bool, stars of the final fit.
    flux, chi2, dof : numpy.ndarray
        ``(n,)`` model flux of every star (with its local sky free), chi^2 per dof of that fit
        over the stamp, and the dof.
    flux_error : MoffatFluxError
        The parameters' covariance and the PSF-flux error it implies.
    """

    psf: VariablePsf
    used: np.ndarray
    flux: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    flux_error: MoffatFluxError


def fit_moffat_psf(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    fit: np.ndarray,
    size: int,
    order: int,
    *,
    fwhm_guess: float,
    min_stars: int = 3,
    stars_per_term: float = 4.0,
    n_iter: int = 2,
    outlier_sigma: float = 4.0,
) -> MoffatFit:
    """Fit a spatially varying Moffat PSF to star stamps.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted image and variance (counts).
    x, y : numpy.ndarray
        ``(n,)`` star centroids, px (held fixed: centroid errors of a few hundredths of a pixel
        change the fitted FWHM by ~1e-4).
    fit : numpy.ndarray
        ``(n,)`` bool, stars that may enter the fit (the others, e.g. reserved stars, are
        only evaluated).
    size : int
        Stamp side (odd), px.
    order : int
        Polynomial degree of FWHM, ``e1`` and ``e2`` over the CCD (lowered while there are
        fewer than ``stars_per_term`` fit stars per polynomial term).
    fwhm_guess : float
        Starting FWHM, px (e.g. from the stars' adaptive moments).
    stars_per_term : float
        Fit stars needed per polynomial term (each star constrains FWHM, e1 and e2; four
        per term keep the corners of a linear model within ~1% with ten stars of S/N > 20).
    min_stars : int
        Fewer fit stars raise :class:`~apflow.errors.PsfError`.
    n_iter : int
        Fit / outlier-rejection passes.
    outlier_sigma : float
        Fit stars whose chi^2/dof exceeds the median by this many robust sigmas are dropped
        before the next pass.

    Returns
    -------
    MoffatFit
        The model, the stars used, every star's model flux and chi^2, and the parameters'
        covariance: Gauss-Newton ``(J'J)^-1`` of the final fit's weighted residuals (the
        amplitudes and skies projected out, so it is that of the shape parameters alone),
        times the fit's chi^2 per dof when above 1 (a profile the model does not follow).

    Raises
    ------
    PsfError
        With fewer than ``min_stars`` fit stars, or when the fit does not converge to a
        valid profile.
    """
    half = size // 2
    cx, cy = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    data = cut_stamps(exposure.image, cx, cy, half)[0].astype(np.float64)
    variance = cut_stamps(exposure.variance, cx, cy, half)[0].astype(np.float64)
    weight = np.where(np.isfinite(variance) & (variance > 0), 1.0 / variance, 0.0)
    u, v = normalized_coordinates(x, y, exposure.width, exposure.height)
    width, height = exposure.width, exposure.height

    used = fit.copy()
    params: np.ndarray | None = None
    psf: VariablePsf | None = None
    for iteration in range(n_iter):
        n_used = int(used.sum())
        if n_used < min_stars:
            raise PsfError(f"PSF: only {n_used} PSF stars for the Moffat model (need {min_stars})")
        degree = order
        while degree > 0 and n_used < stars_per_term * poly2d_n_terms(degree):
            degree -= 1
        start = _start(fwhm_guess, degree) if params is None else _reorder(params, degree)
        index = np.nonzero(used)[0]
        terms = polynomial_terms(u[index], v[index], degree)

        def residual(p: np.ndarray, index=index, terms=terms, degree=degree) -> np.ndarray:
            # three quadrature nodes per axis while fitting (pixel integrals good to ~1e-4
            # of the peak, a third of the cost); the final evaluation uses the core's five
            models = _render(p, degree, terms, x[index], y[index], size, order=3)
            return _projected_residual(data[index], weight[index], models).ravel()

        solution = least_squares(residual, start, x_scale=_scales(degree), xtol=1e-6, ftol=1e-6)
        params = solution.x
        psf = _variable_psf(params, degree, width, height)
        models = _render(params, degree, polynomial_terms(u, v, degree), x, y, size)
        flux, chi2, dof = _fit_amplitudes(data, weight, models)
        if iteration < n_iter - 1:
            median = float(np.median(chi2[used]))
            spread = 1.4826 * float(np.median(np.abs(chi2[used] - median)))
            used &= ~(chi2 > median + outlier_sigma * max(spread, 0.05 * median))
    assert psf is not None and params is not None
    covariance = _covariance(solution.jac, solution.fun, weight[used], len(params))
    index = np.nonzero(used)[0]
    scatter = _fwhm_scatter(
        params,
        degree,
        polynomial_terms(u[index], v[index], degree),
        data[index],
        weight[index],
        x[index],
        y[index],
        size,
    )
    return MoffatFit(psf, used, flux, chi2, dof, MoffatFluxError(psf, covariance, scatter))


def _covariance(
    jacobian: np.ndarray, residual: np.ndarray, weight: np.ndarray, n_params: int
) -> np.ndarray:
    """Parameter covariance of a least-squares fit of weighted residuals."""
    # dof: the unmasked pixels less one amplitude and one sky per star and the shape parameters
    dof = max(int(np.count_nonzero(weight)) - 2 * len(weight) - n_params, 1)
    scale = max(float(residual @ residual) / dof, 1.0)
    return np.linalg.pinv(jacobian.T @ jacobian) * scale


def _fwhm_scatter(
    params: np.ndarray,
    degree: int,
    terms: np.ndarray,
    data: np.ndarray,
    weight: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    size: int,
) -> float:
    """Fractional rms of the fit stars' own FWHMs about the model beyond their noise.

    With few stars the model's variation is a constant or a plane, while the true FWHM
    follows the optics (a quadratic over a 1k x 1k CCD of the simulator): the difference,
    1-2% on the sparse CCDs, is no statistical error of the parameters. Each star's FWHM
    scale ``s`` about the model (its shape otherwise the model's) comes from one Gauss-Newton
    step of its stamp's residual, amplitude and sky projected out, with variance
    ``1 / sum J^2``; the method of moments then gives
    ``tau^2 = sum ds^2 / (n - p) - mean(var)`` (``p`` the FWHM polynomial's terms, which the
    fit spent on these same stars), when ``sum ds^2 / var`` is significantly above ``n - p``
    (else 0).
    """
    n_terms = poly2d_n_terms(degree)
    n = len(x)
    if n <= n_terms:
        return 0.0
    step = 1e-3
    wider = params.copy()
    wider[1 : 1 + n_terms] *= 1.0 + step
    base = _projected_residual(data, weight, _render(params, degree, terms, x, y, size))
    moved = _projected_residual(data, weight, _render(wider, degree, terms, x, y, size))
    jacobian = (moved - base) / step
    information = (jacobian * jacobian).sum(axis=(1, 2))
    ds = -(jacobian * base).sum(axis=(1, 2)) / information
    # only a significant excess (2 sigma above the chi^2's mean): with ~10 stars the estimate
    # of a null excess scatters by ~1/2 of the noise variance, and clipping it at 0 alone
    # put a spurious ~0.15% on a model of the true PSF's family (1.3x the right flux error)
    dof = n - n_terms
    if float(np.sum(ds * ds * information)) < dof + 2.0 * math.sqrt(2.0 * dof):
        return 0.0
    tau2 = float(np.sum(ds * ds)) / dof - float(np.mean(1.0 / information))
    return math.sqrt(max(tau2, 0.0))


def _start(fwhm: float, degree: int) -> np.ndarray:
    n = poly2d_n_terms(degree)
    start = np.zeros(1 + 3 * n)
    # a moment-based FWHM overestimates a Moffat's (its wings weigh in): start a little smaller
    start[0] = math.log(3.0 - 1.0)
    start[1] = 0.9 * fwhm
    return start


def _reorder(params: np.ndarray, degree: int) -> np.ndarray:
    """Parameters of a previous pass, cut or padded to the terms of ``degree``."""
    n_old = (len(params) - 1) // 3
    n_new = poly2d_n_terms(degree)
    out = np.zeros(1 + 3 * n_new)
    out[0] = params[0]
    for k in range(3):
        block = params[1 + k * n_old : 1 + k * n_old + min(n_old, n_new)]
        out[1 + k * n_new : 1 + k * n_new + len(block)] = block
    return out


def _scales(degree: int) -> np.ndarray:
    n = poly2d_n_terms(degree)
    return np.concatenate([[0.2], np.full(n, 0.05), np.full(2 * n, 0.01)])


def _split(params: np.ndarray, degree: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    n = poly2d_n_terms(degree)
    beta = 1.0 + math.exp(float(np.clip(params[0], -3.0, 3.0)))
    return beta, params[1 : 1 + n], params[1 + n : 1 + 2 * n], params[1 + 2 * n : 1 + 3 * n]


def _render(
    params: np.ndarray,
    degree: int,
    terms: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    size: int,
    order: int = 5,
) -> np.ndarray:
    """``(n, size, size)`` pixel-integrated Moffat stamps at (x, y), each summing to 1.

    Vectorised over the stars; the same profile, Gauss-Legendre pixel integration
    (``order`` nodes per axis) and stamp convention as :class:`~apflow.core.MoffatPsf`'s
    ``compute_image``, so the fitted parameters mean what the core model renders.
    """
    beta, fwhm_c, e1_c, e2_c = _split(params, degree)
    fwhm = np.maximum(terms @ fwhm_c, 0.5)
    e1, e2 = terms @ e1_c, terms @ e2_c
    norm = np.hypot(e1, e2)
    shrink = np.where(norm > MAX_ELLIPTICITY, MAX_ELLIPTICITY / np.maximum(norm, 1e-12), 1.0)
    e1, e2 = e1 * shrink, e2 * shrink
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    root = np.sqrt(1.0 - e1 * e1 - e2 * e2)
    # inverse of the unit-determinant shape matrix, scaled by 1 / alpha^2
    a = ((1.0 - e1) / root / alpha**2)[:, None, None]
    b = (-e2 / root / alpha**2)[:, None, None]
    c = ((1.0 + e1) / root / alpha**2)[:, None, None]
    nodes, weights = np.polynomial.legendre.leggauss(order)
    half = size // 2
    coords = ((np.arange(size) - half)[:, None] + 0.5 * nodes[None, :]).ravel()
    dx = (np.asarray(x) - np.round(x))[:, None, None]
    dy = (np.asarray(y) - np.round(y))[:, None, None]
    u = coords[None, None, :] - dx
    v = coords[None, :, None] - dy
    profile = (1.0 + a * u * u + 2.0 * b * u * v + c * v * v) ** (-beta)
    w = np.tile(weights, size)
    profile *= np.outer(w, w)[None]
    images = profile.reshape(len(fwhm), size, order, size, order).sum(axis=(2, 4))
    return images / images.sum(axis=(1, 2), keepdims=True)


def _projected_residual(data: np.ndarray, weight: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Weighted residual after the best amplitude and constant sky of every stamp."""
    sw = np.sqrt(weight)
    a11 = (weight * models * models).sum(axis=(1, 2))
    a12 = (weight * models).sum(axis=(1, 2))
    a22 = weight.sum(axis=(1, 2))
    b1 = (weight * models * data).sum(axis=(1, 2))
    b2 = (weight * data).sum(axis=(1, 2))
    det = a11 * a22 - a12 * a12
    amplitude = (a22 * b1 - a12 * b2) / det
    sky = (a11 * b2 - a12 * b1) / det
    return sw * (data - amplitude[:, None, None] * models - sky[:, None, None])


def _fit_amplitudes(
    data: np.ndarray, weight: np.ndarray, models: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitude (flux) with a free local sky, chi^2 per dof and dof of every stamp."""
    residual = _projected_residual(data, weight, models)
    a11 = (weight * models * models).sum(axis=(1, 2))
    a12 = (weight * models).sum(axis=(1, 2))
    a22 = weight.sum(axis=(1, 2))
    b1 = (weight * models * data).sum(axis=(1, 2))
    b2 = (weight * data).sum(axis=(1, 2))
    flux = (a22 * b1 - a12 * b2) / (a11 * a22 - a12 * a12)
    dof = np.count_nonzero(weight, axis=(1, 2)) - 2
    chi2 = (residual * residual).sum(axis=(1, 2)) / np.maximum(dof, 1)
    return flux, chi2, dof


def _variable_psf(params: np.ndarray, degree: int, width: int, height: int) -> VariablePsf:
    beta, fwhm_c, e1_c, e2_c = _split(params, degree)
    if not (np.isfinite(params).all() and fwhm_c[0] > 0.5):
        raise PsfError(f"PSF: the Moffat fit did not converge (parameters {params.tolist()})")
    return VariablePsf(
        profile="moffat",
        width=int(width),
        height=int(height),
        fwhm_coeffs=tuple(float(c) for c in fwhm_c),
        e1_coeffs=tuple(float(c) for c in e1_c),
        e2_coeffs=tuple(float(c) for c in e2_c),
        beta=beta,
    )

"""The PSF of a template warped onto a science grid.

A linear map of pixel offsets turns an elliptical profile into another elliptical profile of the
same radial shape: if template offsets are ``d = J s`` for science offsets ``s`` (J the local
Jacobian of the science -> template pixel map), a profile ``f(d^T M^-1 d / w^2)`` becomes
``f(s^T (J^T M^-1 J) s / w^2)``. With ``det M^-1 = 1`` that is a profile of FWHM
``w / sqrt(|det J|)`` and shape ``J^T M^-1 J / |det J|``, from which the distortion ellipticity
(e1, e2) is read back. This is exact for the continuous profile; the pixel response of the
template (a pixel of area ``|det J|`` science pixels, slightly rotated) is treated like the
science pixel's, a negligible difference for similar pixel scales.

The transformed parameters are evaluated on a grid of science positions (each through the
template that covers it, at that template pixel, so a spatially varying template PSF is
followed). If they are constant (to 0.1% of the FWHM) the result is a :class:`~apflow.core.MoffatPsf` or
:class:`~apflow.core.GaussianPsf`; otherwise a :class:`~apflow.core.VariablePsf` fitted with
second-order polynomials.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS

from ...core import Exposure, GaussianPsf, MoffatPsf, Psf, VariablePsf
from ...core.psf import _shape_matrix_inverse

#: Step (science pixels) of the finite differences of the Jacobian.
_JACOBIAN_STEP = 8.0
#: Parameters varying less than this (relative to the FWHM) across the detector give a constant
#: PSF: 0.1% of the FWHM is far below any measurable effect.
_CONSTANT_TOLERANCE = 1e-3


def transform_psf_parameters(
    fwhm: float, e1: float, e2: float, jacobian: np.ndarray
) -> tuple[float, float, float]:
    """FWHM and ellipticity of an elliptical profile after a linear map of pixel offsets.

    Parameters
    ----------
    fwhm, e1, e2 : float
        Profile in the template frame (FWHM in template pixels, distortion ellipticity).
    jacobian : numpy.ndarray
        ``(2, 2)`` ``d(template pixel) / d(science pixel)``, rows (u, v), columns (x, y).

    Returns
    -------
    tuple of float
        ``(fwhm, e1, e2)`` in the science frame.
    """
    jac = np.asarray(jacobian, dtype=float)
    det = abs(float(np.linalg.det(jac)))
    shape_inv = jac.T @ _shape_matrix_inverse(e1, e2) @ jac / det
    trace = float(shape_inv[0, 0] + shape_inv[1, 1])
    new_e1 = float(shape_inv[1, 1] - shape_inv[0, 0]) / trace
    new_e2 = -2.0 * float(shape_inv[0, 1]) / trace
    return fwhm / math.sqrt(det), new_e1, new_e2


def warped_psf(
    science_wcs: WCS,
    shape: tuple[int, int],
    templates: list[Exposure],
    n_grid: int = 5,
) -> Psf | None:
    """The PSF of the templates resampled onto the science grid.

    Parameters
    ----------
    science_wcs : astropy.wcs.WCS
        Science WCS.
    shape : tuple of int
        ``(height, width)`` of the science grid.
    templates : list of Exposure
        Template patches with PSF models (Gaussian, Moffat or VariablePsf; another model is
        treated as a round Gaussian of its FWHM).
    n_grid : int
        Positions per side at which the transformed PSF is evaluated.

    Returns
    -------
    Psf or None
        None if no template with a PSF covers any grid position. When templates differ in
        profile, the profile (and Moffat beta) of the first covering one is used.
    """
    height, width = shape
    gx, gy = np.meshgrid(np.linspace(0, width - 1, n_grid), np.linspace(0, height - 1, n_grid))
    x, y = gx.ravel(), gy.ravel()
    h = _JACOBIAN_STEP
    px = np.concatenate([x, x + h, x - h, x, x])
    py = np.concatenate([y, y, y, y + h, y - h])
    ra, dec = science_wcs.all_pix2world(px, py, 0)
    n = x.size
    params = np.full((n, 3), np.nan)
    profile: tuple[str, float] | None = None
    for template in templates:
        if template.psf is None or template.wcs is None:
            continue
        u, v = (np.asarray(c).reshape(5, n) for c in template.wcs.all_world2pix(ra, dec, 0))
        th, tw = template.shape
        inside = (u[0] >= -0.5) & (u[0] < tw - 0.5) & (v[0] >= -0.5) & (v[0] < th - 0.5)
        for k in np.flatnonzero(inside & np.isnan(params[:, 0])):
            local, kind = _local_profile(template.psf, float(u[0, k]), float(v[0, k]))
            if profile is None:
                profile = kind
            jac = np.array(
                [
                    [(u[1, k] - u[2, k]) / (2 * h), (u[3, k] - u[4, k]) / (2 * h)],
                    [(v[1, k] - v[2, k]) / (2 * h), (v[3, k] - v[4, k]) / (2 * h)],
                ]
            )
            params[k] = transform_psf_parameters(*local, jac)
    if profile is None:
        return None
    good = np.isfinite(params[:, 0])
    kind, beta = profile
    mean = params[good].mean(axis=0)
    if np.all(np.abs(params[good] - mean) <= _CONSTANT_TOLERANCE * max(mean[0], 1.0)):
        if kind == "moffat":
            return MoffatPsf(fwhm=float(mean[0]), e1=float(mean[1]), e2=float(mean[2]), beta=beta)
        return GaussianPsf(fwhm=float(mean[0]), e1=float(mean[1]), e2=float(mean[2]))
    order = 2 if good.sum() >= 6 else 0
    coeffs = [
        _fit_poly2d(x[good], y[good], params[good, i], width, height, order) for i in range(3)
    ]
    return VariablePsf(
        profile=kind,
        width=width,
        height=height,
        fwhm_coeffs=coeffs[0],
        e1_coeffs=coeffs[1],
        e2_coeffs=coeffs[2],
        beta=beta,
    )


def _local_profile(psf: Psf, x: float, y: float) -> tuple[tuple[float, float, float], tuple]:
    """``((fwhm, e1, e2), (profile, beta))`` of a PSF model at a template position."""
    if isinstance(psf, VariablePsf):
        psf = psf.local_psf(x, y)
    if isinstance(psf, MoffatPsf):
        return (psf.fwhm, psf.e1, psf.e2), ("moffat", float(psf.beta))
    if isinstance(psf, GaussianPsf):
        return (psf.fwhm, psf.e1, psf.e2), ("gaussian", 3.5)
    return (float(psf.fwhm_at(x, y)), 0.0, 0.0), ("gaussian", 3.5)


def _fit_poly2d(
    x: np.ndarray, y: np.ndarray, values: np.ndarray, width: int, height: int, order: int
) -> tuple[float, ...]:
    """Least-squares coefficients in :class:`~apflow.core.VariablePsf`'s convention."""
    u = 2.0 * x / max(width - 1, 1) - 1.0
    v = 2.0 * y / max(height - 1, 1) - 1.0
    design = np.stack([u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, values, rcond=None)
    return tuple(float(c) for c in coeffs)

"""Aperture-to-total correction: the fraction of a point source's light inside the 12 px aperture.

Rubin calibrates the flux inside its 12 px calibration aperture against the reference catalog,
so the light in the PSF wings beyond 12 px ends up in the zero point (1-2% for a 1" Moffat PSF
of 0.2" pixels). Here a Moffat profile fitted to the PSF model measures the fraction of a point
source's light inside the aperture, and PSF fluxes are divided by it before the zero point is
fitted: the zero point is then that of total fluxes, the one reference catalogs quote.
``ap_instflux`` keeps meaning "flux inside 12 px".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import sep
from scipy.optimize import least_squares

from ...core import MoffatPsf, Psf
from .psf.pixel_psf import normalized_coordinates, polynomial_terms


@dataclasses.dataclass
class ApertureToTotal:
    """Fraction of a point source's light inside the calibration aperture, over the CCD.

    Attributes
    ----------
    coeffs : numpy.ndarray
        Polynomial (terms of :func:`~apflow.tasks.calibrate.psf.polynomial_terms`) of the
        fraction in coordinates normalised to [-1, 1].
    order, width, height : int
    radius : float
        Aperture radius, px.
    beta : float
        Index of the Moffat fitted to the PSF model.
    grid_x, grid_y, grid_fraction, grid_fwhm : numpy.ndarray
        Where the fraction was measured, its value and the Moffat FWHM there (px).
    """

    coeffs: np.ndarray
    order: int
    width: int
    height: int
    radius: float
    beta: float
    grid_x: np.ndarray
    grid_y: np.ndarray
    grid_fraction: np.ndarray
    grid_fwhm: np.ndarray

    def fraction(self, x: Any, y: Any) -> np.ndarray:
        """Fraction of the total light inside ``radius`` at pixel positions (x, y)."""
        x = np.asarray(x, np.float64)
        u, v = normalized_coordinates(x.ravel(), np.ravel(y), self.width, self.height)
        return (polynomial_terms(u, v, self.order) @ self.coeffs).reshape(x.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the calexp's metadata)."""
        return {
            "type": "polynomial_aperture_fraction",
            "definition": "fraction of a point source's total flux inside radius (Moffat fit)",
            "radius": float(self.radius),
            "order": int(self.order),
            "beta": float(self.beta),
            "width": int(self.width),
            "height": int(self.height),
            "coeffs": [float(c) for c in self.coeffs],
            "grid_x": [float(v) for v in self.grid_x],
            "grid_y": [float(v) for v in self.grid_y],
            "grid_fraction": [float(v) for v in self.grid_fraction],
            "grid_fwhm": [float(v) for v in self.grid_fwhm],
        }


def measure_aperture_to_total(psf: Psf, radius: float, grid: int = 3) -> ApertureToTotal:
    """Fraction of a point source's light inside a circular aperture, from the PSF model.

    A PSF model stamp spans about +-3.5 FWHM and is normalised over it, so the light beyond
    (1-2% for a beta = 3.5 Moffat at 12 px) is not in the model. A pixel-integrated elliptical
    Moffat (FWHM, beta, e1, e2 free) is fitted to the model image at the CCD centre; elsewhere
    on the ``grid`` its FWHM is scaled by the model's FWHM there (beta and ellipticity barely
    change the fraction across a CCD). The fraction is the profile's exact-overlap aperture
    sum (as ``sep.sum_circle`` measures the stars) over its total flux.

    Parameters
    ----------
    psf : Psf
        PSF model with ``width``/``height`` attributes (CCD size), e.g. a ``PixelPsf``.
    radius : float
        Aperture radius, px.
    grid : int
        Positions per axis.
    """
    width, height = int(psf.width), int(psf.height)  # type: ignore[attr-defined]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    along_x = np.linspace(0, width - 1, grid) if grid > 1 else np.array([cx])
    along_y = np.linspace(0, height - 1, grid) if grid > 1 else np.array([cy])
    gx, gy = (a.ravel() for a in np.meshgrid(along_x, along_y))
    centre = _fit_moffat(psf.compute_kernel_image(cx, cy))
    scale = centre.fwhm / psf.fwhm_at(cx, cy)
    fwhm = np.array([scale * psf.fwhm_at(x, y) for x, y in zip(gx, gy, strict=True)])
    fraction = np.array(
        [_moffat_fraction(dataclasses.replace(centre, fwhm=float(f)), radius) for f in fwhm]
    )
    order = min(2, grid - 1)
    u, v = normalized_coordinates(gx, gy, width, height)
    coeffs, *_ = np.linalg.lstsq(polynomial_terms(u, v, order), fraction, rcond=None)
    return ApertureToTotal(
        coeffs=coeffs,
        order=order,
        width=width,
        height=height,
        radius=float(radius),
        beta=float(centre.beta),
        grid_x=gx,
        grid_y=gy,
        grid_fraction=fraction,
        grid_fwhm=fwhm,
    )


def apply_aperture_to_total(stars: pd.DataFrame, correction: ApertureToTotal) -> pd.DataFrame:
    """Divide ``psf_instflux`` (aperture-corrected) and its error by the aperture fraction.

    Adds ``psf_aperture_fraction``; ``ap_instflux`` is left as the flux inside the aperture.
    """
    fraction = correction.fraction(stars["x"].to_numpy(), stars["y"].to_numpy())
    out = stars.copy()
    out["psf_aperture_fraction"] = fraction
    out["psf_instflux"] = stars["psf_instflux"].to_numpy() / fraction
    out["psf_instflux_err"] = stars["psf_instflux_err"].to_numpy() / fraction
    return out


def _fit_moffat(kernel: np.ndarray) -> MoffatPsf:
    """Pixel-integrated elliptical Moffat of least squares to a centred PSF image."""
    size = kernel.shape[0]
    data = kernel / kernel.sum()
    peak = data.max()
    # starting FWHM from the area above half maximum
    fwhm0 = max(2.0 * math.sqrt(np.count_nonzero(data > 0.5 * peak) / math.pi), 1.5)

    def model(params: np.ndarray) -> np.ndarray:
        fwhm, beta, e1, e2 = _moffat_parameters(params)
        return MoffatPsf(fwhm=fwhm, e1=e1, e2=e2, beta=beta).compute_kernel_image(0.0, 0.0, size)

    def residual(params: np.ndarray) -> np.ndarray:
        image = model(params)
        amplitude = float(np.sum(image * data) / np.sum(image * image))
        return (amplitude * image - data).ravel()

    start = np.array([math.log(fwhm0), math.log(3.5 - 1.0), 0.0, 0.0])
    solution = least_squares(residual, start, x_scale=[0.1, 0.3, 0.02, 0.02], xtol=1e-10)
    fwhm, beta, e1, e2 = _moffat_parameters(solution.x)
    return MoffatPsf(fwhm=fwhm, e1=e1, e2=e2, beta=beta)


def _moffat_parameters(params: np.ndarray) -> tuple[float, float, float, float]:
    # log parameters keep FWHM > 0 and beta > 1; |e| is capped well below 1
    e1, e2 = float(params[2]), float(params[3])
    norm = math.hypot(e1, e2)
    if norm > 0.5:
        e1, e2 = 0.5 * e1 / norm, 0.5 * e2 / norm
    return math.exp(params[0]), 1.0 + math.exp(params[1]), e1, e2


def _moffat_fraction(moffat: MoffatPsf, radius: float, order: int = 5) -> float:
    """Exact-overlap circular aperture sum of a pixel-integrated Moffat over its total flux.

    The pixels are integrated by Gauss-Legendre quadrature (as :mod:`apflow.core.psf` renders
    them) without normalising the stamp, and divided by the profile's analytic integral
    ``pi alpha^2 / (beta - 1)`` (the shape matrix has unit determinant).
    """
    half = int(math.ceil(radius)) + 1
    nodes, weights = np.polynomial.legendre.leggauss(order)
    coords = (np.arange(-half, half + 1)[:, None] + 0.5 * nodes[None, :]).ravel()
    u, v = np.meshgrid(coords, coords)
    e1, e2 = moffat.e1, moffat.e2
    norm = math.sqrt(1.0 - e1 * e1 - e2 * e2)
    r_sq = ((1.0 - e1) * u * u - 2.0 * e2 * u * v + (1.0 + e1) * v * v) / norm
    profile = (1.0 + r_sq / moffat.alpha**2) ** (-moffat.beta)
    w = np.tile(weights, 2 * half + 1) * 0.5  # a pixel is [-0.5, 0.5]: half the [-1, 1] weights
    size = 2 * half + 1
    image = (profile * np.outer(w, w)).reshape(size, order, size, order).sum(axis=(1, 3))
    inside, _, _ = sep.sum_circle(image, [float(half)], [float(half)], radius, subpix=0)
    total = math.pi * moffat.alpha**2 / (moffat.beta - 1.0)
    return float(inside[0] / total)

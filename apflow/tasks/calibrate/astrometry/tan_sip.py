"""Least-squares fit of a TAN-SIP WCS to matched pixel and sky positions.

The model is the FITS TAN-SIP convention (Shupe et al. 2005) as astropy evaluates it: with
``u = x - (CRPIX1 - 1)``, ``v = y - (CRPIX2 - 1)`` (0-based pixels),

    (xi, eta) = CD @ (u + f(u, v), v + g(u, v))

where ``(xi, eta)`` are gnomonic intermediate world coordinates about CRVAL and ``f``, ``g`` are
the SIP polynomials ``A``, ``B`` of degrees 2..order. Written out, each of ``xi`` and ``eta`` is a
polynomial of total degree ``order`` in ``(u, v)``, so for a fixed tangent point the fit is
linear. The constant terms of that polynomial are a shift of the tangent point: CRVAL is moved
onto them and the fit repeated until they vanish (two or three passes). CRPIX stays fixed, by
default at the centre of the image, where the polynomial is best conditioned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS, Sip

# Chi-square with 2 degrees of freedom has median 2 ln 2: a robust 1-D sigma of a 2-D residual
# is sqrt(median(|r|^2) / (2 ln 2)).
_MEDIAN_CHI2_2DOF = 2.0 * np.log(2.0)
# Constant terms below this (degrees, 0.4 micro-arcsec) mean CRVAL is the sky position of CRPIX.
_CRVAL_TOLERANCE_DEG = 1e-10
_MAX_CRVAL_PASSES = 10


@dataclass
class TanSipFit:
    """Outcome of :func:`fit_tan_sip`.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        The fitted WCS: ``RA---TAN-SIP`` (``RA---TAN`` for order 1) with forward ``A``/``B``
        and inverse ``AP``/``BP`` polynomials.
    used : numpy.ndarray
        Boolean, one per input point: True where it survived the sigma clipping.
    residuals_arcsec : numpy.ndarray
        ``(n, 2)`` fit residuals (reference minus model, tangent-plane arcsec) of every input point.
    scatter_arcsec : float
        Robust 1-D scatter of the residuals of the used points, arcsec.
    inverse_max_error_pix : float
        Largest pixel error of the AP/BP inverse over the image (0 without SIP).
    order : int
        Total polynomial degree fitted.
    """

    wcs: WCS
    used: np.ndarray
    residuals_arcsec: np.ndarray
    scatter_arcsec: float
    inverse_max_error_pix: float
    order: int


def fit_tan_sip(
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    image_shape: tuple[int, int],
    order: int = 3,
    sigma_pix: np.ndarray | None = None,
    n_sigma_clip: float = 3.0,
    max_clip_iterations: int = 5,
    inverse_order: int | None = None,
    crpix: tuple[float, float] | None = None,
    crval: tuple[float, float] | None = None,
) -> TanSipFit:
    """Fit a TAN-SIP WCS to matched positions, with iterative sigma clipping.

    Parameters
    ----------
    x, y : numpy.ndarray
        0-based pixel positions of the matched sources.
    ra, dec : numpy.ndarray
        ICRS positions (degrees) of the matched reference objects.
    image_shape : tuple of int
        ``(height, width)`` of the image.
    order : int
        Total polynomial degree (1 = TAN with a CD matrix only, 3 = cubic SIP).
    sigma_pix : numpy.ndarray, optional
        1-sigma positional error of each point in pixels; equal weights if omitted.
    n_sigma_clip : float
        Points whose error-normalised residual exceeds this many robust sigma are rejected.
    max_clip_iterations : int
        Maximum number of fit / clip passes (stops earlier when nothing changes).
    inverse_order : int, optional
        Degree of the AP/BP inverse; ``order + 1`` when omitted.
    crpix : tuple of float, optional
        FITS (1-based) reference pixel; the image centre when omitted, where a polynomial is
        best conditioned. The optical axis suits a pure TAN (order 1) of distortion-free pixels.
    crval : tuple of float, optional
        Starting guess of CRVAL (degrees), e.g. from a previous fit; the mean direction of the
        references when omitted. Each pass shrinks the error about 1000-fold.

    Returns
    -------
    TanSipFit

    Raises
    ------
    ValueError
        If there are fewer points than twice the number of coefficients.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    terms = polynomial_terms(order)
    if len(x) < 2 * len(terms):
        raise ValueError(
            f"a degree-{order} fit needs at least {2 * len(terms)} points, got {len(x)}"
        )
    height, width = image_shape
    if crpix is None:
        crpix = ((width + 1) / 2.0, (height + 1) / 2.0)
    # Normalising (u, v) to about [-1, 1] keeps the design matrix well conditioned at degree 3+.
    scale = max(width, height) / 2.0
    u = (x - (crpix[0] - 1.0)) / scale
    v = (y - (crpix[1] - 1.0)) / scale
    design = _design_matrix(u, v, terms)
    weight = np.ones_like(x) if sigma_pix is None else 1.0 / np.asarray(sigma_pix, dtype=float)

    if crval is None:
        crval = _mean_direction(ra, dec)
    used = np.ones(len(x), dtype=bool)
    for _ in range(max(max_clip_iterations, 1)):
        coeffs, crval, xi_eta = _fit_polynomial(design, ra, dec, weight, used, crval)
        residuals = (xi_eta - design @ coeffs) * 3600.0
        norm_sq = np.sum(residuals**2, axis=1) * weight**2
        robust_sigma = np.sqrt(np.median(norm_sq[used]) / _MEDIAN_CHI2_2DOF)
        keep = norm_sq <= (n_sigma_clip * robust_sigma) ** 2
        if np.array_equal(keep, used) or keep.sum() < 2 * len(terms):
            break
        used = keep
    else:
        # Out of passes with the clipped set still changing: fit the final set once more.
        coeffs, crval, xi_eta = _fit_polynomial(design, ra, dec, weight, used, crval)
        residuals = (xi_eta - design @ coeffs) * 3600.0
    scatter = float(np.sqrt(np.median(np.sum(residuals[used] ** 2, axis=1)) / _MEDIAN_CHI2_2DOF))

    raw = coeffs / scale ** np.array([p + q for p, q in terms], dtype=float)[:, None]
    wcs, inverse_error = _build_wcs(raw, terms, crval, crpix, image_shape, order, inverse_order)
    return TanSipFit(wcs, used, residuals, scatter, inverse_error, order)


def polynomial_terms(order: int) -> list[tuple[int, int]]:
    """Exponents ``(p, q)`` of ``u^p v^q`` with ``p + q <= order``, by increasing degree."""
    if order < 1:
        raise ValueError(f"polynomial order must be >= 1, got {order}")
    return [(p, degree - p) for degree in range(order + 1) for p in range(degree, -1, -1)]


def tangent_plane_wcs(ra0: float, dec0: float, unit_deg: float = 1.0) -> WCS:
    """A TAN WCS about ``(ra0, dec0)`` whose 'pixels' are ``unit_deg`` of the tangent plane.

    Pixel 0 is the tangent point, +x is east (increasing RA) and +y is north, so
    ``wcs_world2pix(ra, dec, 0)`` is the gnomonic projection in units of ``unit_deg``.
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [1.0, 1.0]
    wcs.wcs.cd = np.diag([unit_deg, unit_deg])
    wcs.wcs.set()
    return wcs


def _mean_direction(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    """RA, Dec (degrees) of the mean unit vector: a starting CRVAL that is safe across RA = 0."""
    mean = SkyCoord(ra, dec, unit="deg").cartesian.mean()
    centre = SkyCoord(mean, frame="icrs")
    return float(centre.ra.deg), float(centre.dec.deg)


def _design_matrix(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, int]]) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in terms])


def _fit_polynomial(
    design: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    weight: np.ndarray,
    used: np.ndarray,
    crval: tuple[float, float],
) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """Weighted linear fit of (xi, eta) in degrees, moving CRVAL onto the constant terms."""
    for _ in range(_MAX_CRVAL_PASSES):
        plane = tangent_plane_wcs(*crval)
        xi_eta = np.column_stack(plane.wcs_world2pix(ra, dec, 0))
        w = weight[used, None]
        coeffs = _lstsq(design[used] * w, xi_eta[used] * w)
        constant = coeffs[0]
        if np.all(np.abs(constant) < _CRVAL_TOLERANCE_DEG):
            break
        ra0, dec0 = plane.wcs_pix2world(constant[0], constant[1], 0)
        crval = (float(ra0), float(dec0))
    return coeffs, crval, xi_eta


def _build_wcs(
    raw: np.ndarray,
    terms: list[tuple[int, int]],
    crval: tuple[float, float],
    crpix: tuple[float, float],
    image_shape: tuple[int, int],
    order: int,
    inverse_order: int | None,
) -> tuple[WCS, float]:
    index = {term: i for i, term in enumerate(terms)}
    cd = np.array([raw[index[(1, 0)]], raw[index[(0, 1)]]]).T  # rows: xi, eta
    sip = None
    inverse_error = 0.0
    if order >= 2:
        # SIP terms are distortions in pixel units: CD @ (f, g) = higher-order part of (xi, eta).
        a = np.zeros((order + 1, order + 1))
        b = np.zeros((order + 1, order + 1))
        cd_inv = np.linalg.inv(cd)
        for p, q in terms:
            if p + q >= 2:
                a[p, q], b[p, q] = cd_inv @ raw[index[(p, q)]]
        ap, bp, inverse_error = _fit_inverse(
            Sip(a, b, None, None, crpix), crpix, image_shape, inverse_order or order + 1
        )
        sip = Sip(a, b, ap, bp, crpix)
    wcs = WCS(naxis=2)
    suffix = "-SIP" if sip is not None else ""
    wcs.wcs.ctype = ["RA---TAN" + suffix, "DEC--TAN" + suffix]
    wcs.wcs.crpix = crpix
    wcs.wcs.crval = crval
    wcs.wcs.cd = cd
    wcs.wcs.radesys = "ICRS"
    wcs.sip = sip
    wcs.pixel_shape = (image_shape[1], image_shape[0])
    wcs.wcs.set()
    return wcs, inverse_error


def _fit_inverse(
    forward: Sip, crpix: tuple[float, float], image_shape: tuple[int, int], inverse_order: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit AP/BP on a grid over the image plus a 5% margin; return them and the max error (px)."""
    height, width = image_shape
    margin_x, margin_y = 0.05 * width, 0.05 * height
    gx, gy = np.meshgrid(
        np.linspace(-0.5 - margin_x, width - 0.5 + margin_x, 41),
        np.linspace(-0.5 - margin_y, height - 0.5 + margin_y, 41),
    )
    pix = np.column_stack([gx.ravel(), gy.ravel()])
    crpix0 = np.asarray(crpix) - 1.0
    uv = pix - crpix0
    # With 1-based input, pix2foc returns (u + f(u, v), v + g(u, v)) relative to CRPIX: the
    # 'focal' coordinates that the inverse polynomial takes back to pixels. (With origin 0 it
    # shifts its output by one pixel as well.)
    foc = forward.pix2foc(pix + 1.0, 1)
    scale = max(width, height) / 2.0
    terms = polynomial_terms(inverse_order)
    design = _design_matrix(foc[:, 0] / scale, foc[:, 1] / scale, terms)
    coeffs = _lstsq(design, uv - foc)
    raw = coeffs / scale ** np.array([p + q for p, q in terms], dtype=float)[:, None]
    ap = np.zeros((inverse_order + 1, inverse_order + 1))
    bp = np.zeros((inverse_order + 1, inverse_order + 1))
    for (p, q), (ap_pq, bp_pq) in zip(terms, raw, strict=True):
        ap[p, q], bp[p, q] = ap_pq, bp_pq
    max_error = float(np.max(np.hypot(*(uv - foc - design @ coeffs).T)))
    return ap, bp, max_error


def _lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares solution through the normal equations.

    The systems are tall and thin (thousands of rows, at most 15 columns) and well conditioned
    because ``u, v`` are normalised to [-1, 1], so squaring the condition number costs nothing
    measurable (about 1e-10 relative), while LAPACK's least-squares drivers spend 10-100x longer
    on thread start-up when BLAS threads compete with other work on the node.
    """
    normal = design.T @ design
    return scipy.linalg.solve(normal, design.T @ target, assume_a="pos", check_finite=False)

"""Two-PSF dipole fit: a positive and a negative point source at free positions.

A dipole on a difference image is a source that moved, or a misregistration of template and
science image: ``D = a P(x+, y+) + b P(x-, y-)`` with ``a > 0 > b``. The fit is weighted least
squares over the good pixels of a square stamp around the pair (``V`` the variance plane):

- the two amplitudes are linear: for given lobe positions they are the weighted linear
  least-squares solution (variable projection), so the non-linear search
  (``scipy.optimize.least_squares``, trust-region reflective) runs over the four coordinates
  only, each bounded to ``max_shift`` pixels of its detected peak;
- the covariance of all six parameters is ``(J^T J)^-1`` of the weighted residuals at the
  optimum (position derivatives by central differences of the rendered PSF), not rescaled by
  chi^2, because the variance plane is the noise;
- ``chi2 = sum((D - model)^2 / V)`` over the ``ndata`` fitted pixels.

Rubin's ``DipoleFitTask`` can also fit the science and template images jointly; this fit uses the
difference image alone, which is enough to separate and measure the two lobes of a dipole whose
lobes are both detected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from ...core import Exposure, MaskPlanes
from ..forced.stamps import PsfStampRenderer, extract_stamps, fwhm_at, inside_image

#: Central-difference step (px) of the position derivatives of the covariance.
_STEP = 1e-3


@dataclass(frozen=True)
class DipoleFit:
    """Results of ``n`` dipole fits (every array ``(n,)``; fluxes in image units).

    Attributes
    ----------
    pos_x, pos_y, neg_x, neg_y : numpy.ndarray
        Fitted lobe positions (px).
    pos_flux, neg_flux : numpy.ndarray
        Lobe amplitudes ``a`` and ``b`` (``b`` < 0 for a dipole) and their errors
        ``pos_flux_err``, ``neg_flux_err``.
    mean_flux, mean_flux_err : numpy.ndarray
        Mean absolute lobe flux ``(a - b) / 2`` and its error.
    flux_diff, flux_diff_err : numpy.ndarray
        Difference of absolute fluxes ``|a| - |b| = a + b`` and its error.
    x, y, x_err, y_err : numpy.ndarray
        Dipole centroid, the midpoint of the lobes, and its errors (px).
    chi2 : numpy.ndarray
        chi^2 of the best fit.
    ndata : numpy.ndarray
        int32 number of fitted pixels.
    success : numpy.ndarray
        bool: the fit converged to finite values with ``a > 0 > b``.
    """

    pos_x: np.ndarray
    pos_y: np.ndarray
    neg_x: np.ndarray
    neg_y: np.ndarray
    pos_flux: np.ndarray
    pos_flux_err: np.ndarray
    neg_flux: np.ndarray
    neg_flux_err: np.ndarray
    mean_flux: np.ndarray
    mean_flux_err: np.ndarray
    flux_diff: np.ndarray
    flux_diff_err: np.ndarray
    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    chi2: np.ndarray
    ndata: np.ndarray
    success: np.ndarray


def fit_dipoles(
    exposure: Exposure,
    pos_x: np.ndarray,
    pos_y: np.ndarray,
    neg_x: np.ndarray,
    neg_y: np.ndarray,
    *,
    fit_radius_fwhm: float = 2.0,
    max_shift: float = 3.0,
    bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA"),
) -> DipoleFit:
    """Fit a two-PSF dipole model to each (positive, negative) peak pair.

    Parameters
    ----------
    exposure : Exposure
        Difference image with variance, mask and ``psf``.
    pos_x, pos_y, neg_x, neg_y : numpy.ndarray
        ``(n,)`` starting positions of the lobes (the detected peaks), px.
    fit_radius_fwhm : float
        The stamp reaches this many PSF FWHMs beyond the lobes' midpoint plus half their
        separation.
    max_shift : float
        Bound (px) on the distance each lobe coordinate may move from its starting value.
    bad_mask_planes : tuple of str
        Pixels left out of the fit.

    Returns
    -------
    DipoleFit
    """
    starts = np.stack([pos_x, pos_y, neg_x, neg_y], axis=1).astype(np.float64)
    n = starts.shape[0]
    out = {name: np.full(n, np.nan) for name in DipoleFit.__dataclass_fields__}
    out["ndata"] = np.zeros(n, np.int32)
    out["success"] = np.zeros(n, bool)
    bad_bits = MaskPlanes.bits(*bad_mask_planes)
    for k in range(n):
        for name, value in _fit_one(exposure, starts[k], fit_radius_fwhm, max_shift, bad_bits):
            out[name][k] = value
    return DipoleFit(**out)


def _fit_one(
    exposure: Exposure, start: np.ndarray, fit_radius_fwhm: float, max_shift: float, bad_bits: int
) -> list[tuple[str, float]]:
    psf = exposure.psf
    mid_x, mid_y = 0.5 * (start[0] + start[2]), 0.5 * (start[1] + start[3])
    fwhm = float(fwhm_at(psf, np.array([mid_x]), np.array([mid_y]))[0])
    separation = math.hypot(start[0] - start[2], start[1] - start[3])
    half = math.ceil(0.5 * separation + fit_radius_fwhm * fwhm) + 1
    xc, yc = np.array([round(mid_x)]), np.array([round(mid_y)])
    data = extract_stamps(exposure.image, xc, yc, half, np.nan)[0].astype(np.float64)
    var = extract_stamps(exposure.variance, xc, yc, half, np.nan)[0].astype(np.float64)
    mask = extract_stamps(exposure.mask, xc, yc, half, 0)[0]
    good = inside_image(xc, yc, half, exposure.shape)[0] & np.isfinite(data) & np.isfinite(var)
    good &= ((mask & bad_bits) == 0) & (np.where(good, var, 0.0) > 0)
    if good.sum() < 8:
        return [("ndata", int(good.sum()))]
    weight = 1.0 / np.sqrt(var[good])
    data_w = data[good] * weight
    # Lobe stamps are rendered around their own nearest pixel with a margin wide enough for
    # any allowed position, then cut to the dipole's stamp.
    margin = math.ceil(0.5 * separation + max_shift) + 2
    render = PsfStampRenderer(psf, half + margin, start[[0, 2]], start[[1, 3]])

    def lobes(pos: np.ndarray) -> np.ndarray:
        """``(2, n_good)`` weighted PSF images of the lobes at ``pos = (x+, y+, x-, y-)``."""
        xs, ys = pos[[0, 2]], pos[[1, 3]]
        stamps = render(xs, ys)
        ox = np.rint(xs).astype(int) - int(xc[0])
        oy = np.rint(ys).astype(int) - int(yc[0])
        size = 2 * half + 1
        cut = [
            stamps[
                i, margin - oy[i] : margin - oy[i] + size, margin - ox[i] : margin - ox[i] + size
            ]
            for i in range(2)
        ]
        return np.stack([c[good] * weight for c in cut])

    def amplitudes(design: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(design.T, data_w, rcond=None)[0]

    def residuals(pos: np.ndarray) -> np.ndarray:
        design = lobes(pos)
        return data_w - amplitudes(design) @ design

    lower, upper = start - max_shift, start + max_shift
    try:
        solution = least_squares(residuals, start, bounds=(lower, upper), method="trf", x_scale=0.5)
    except (ValueError, np.linalg.LinAlgError):
        return [("ndata", int(good.sum()))]
    pos = solution.x
    design = lobes(pos)
    amp = amplitudes(design)
    resid = data_w - amp @ design
    # Jacobian of the weighted model in (a, b, x+, y+, x-, y-).
    columns = [design[0], design[1]]
    for i in range(4):
        step = np.zeros(4)
        step[i] = _STEP
        diff = (lobes(pos + step) - lobes(pos - step)) / (2 * _STEP)
        columns.append(amp[0 if i < 2 else 1] * diff[0 if i < 2 else 1])
    jac = np.stack(columns, axis=1)
    try:
        cov = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        cov = np.full((6, 6), np.nan)
    a, b = amp
    var_a, var_b, cov_ab = cov[0, 0], cov[1, 1], cov[0, 1]
    var_x = 0.25 * (cov[2, 2] + cov[4, 4] + 2 * cov[2, 4])
    var_y = 0.25 * (cov[3, 3] + cov[5, 5] + 2 * cov[3, 5])
    values = {
        "pos_x": pos[0],
        "pos_y": pos[1],
        "neg_x": pos[2],
        "neg_y": pos[3],
        "pos_flux": a,
        "neg_flux": b,
        "pos_flux_err": math.sqrt(var_a) if var_a >= 0 else np.nan,
        "neg_flux_err": math.sqrt(var_b) if var_b >= 0 else np.nan,
        "mean_flux": 0.5 * (a - b),
        "flux_diff": a + b,
        "x": 0.5 * (pos[0] + pos[2]),
        "y": 0.5 * (pos[1] + pos[3]),
        "chi2": float(resid @ resid),
        "ndata": int(good.sum()),
    }
    with np.errstate(invalid="ignore"):
        values["mean_flux_err"] = 0.5 * np.sqrt(var_a + var_b - 2 * cov_ab)
        values["flux_diff_err"] = np.sqrt(var_a + var_b + 2 * cov_ab)
        values["x_err"] = np.sqrt(var_x)
        values["y_err"] = np.sqrt(var_y)
    finite = all(np.isfinite(v) for v in values.values())
    values["success"] = bool(solution.status > 0 and finite and a > 0 > b)
    return list(values.items())

"""Forced PSF photometry at fixed pixel positions of one exposure.

:func:`psf_flux_at` fits the amplitude of the exposure's PSF model, rendered at each (sub-pixel)
position, to the pixels around it. It is the PSF flux of DiaSources (on the difference image, at
the measured centroid), their ``scienceFlux`` and ``templateFlux`` (on the science image and the
warped template, at the same position) and the forced photometry of DiaObjects.

The fit is the inverse-variance weighted linear least squares of ``D = F P (+ b)``:

``F = sum(P D / V) / sum(P^2 / V)``,   ``sigma_F = 1 / sqrt(sum(P^2 / V))``,
``chi2 = sum((D - F P)^2 / V)``,   ``lnL = -chi2 / 2 - sum(ln(2 pi V)) / 2``,

over the good pixels of a square stamp of half-size ``ceil(fit_radius_fwhm * FWHM)``. The PSF
stamp is the model's normalised image cropped, *not* renormalised, so ``F`` is the total flux
however much of the wings the stamp cuts. On a difference image the variance plane is that of the
sky plus the template, not of the source, so the weights do not depend on the measured flux and
the fit is unbiased (unlike a weighted fit on a variance plane estimated from the same pixels).

The machinery is forced photometry's (:mod:`apflow.tasks.forced`): the stamp cut-outs, the PSF
stamp renderer (exact for round Gaussians, sinc-shifted kernels otherwise, interpolated kernels
for position-dependent models) and the per-source sums of :class:`~apflow.tasks.forced.psf_flux.
PsfSums`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...core import Exposure, MaskPlanes
from ...errors import TaskError
from ..forced.psf_flux import PsfSums, isolated_chi2
from ..forced.stamps import PsfStampRenderer, extract_stamps, fwhm_at, inside_image

#: Pixels left out of the fit.
DEFAULT_BAD_MASK_PLANES: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA")


@dataclass(frozen=True)
class PsfFluxAt:
    """Forced PSF fluxes at ``n`` positions (every array ``(n,)``).

    Attributes
    ----------
    flux, flux_err : numpy.ndarray
        float64, nJy (through the exposure's ``photo_calib``; the pixels are taken to be nJy
        when it has none). NaN where ``flag_no_good_pixels``. ``flux_err`` includes the
        calibration error in quadrature, as Rubin's ``PhotoCalib`` does.
    chi2 : numpy.ndarray
        float64 ``sum((D - F P - b)^2 / V)`` over the fitted pixels (not reduced).
    ndata : numpy.ndarray
        int32 number of fitted pixels.
    log_likelihood : numpy.ndarray
        float64 Gaussian log-likelihood of the best fit, ``-chi2/2 - sum(ln(2 pi V))/2``.
    background : numpy.ndarray
        float64 fitted flat background (image units per pixel), 0 unless fitted.
    flag : numpy.ndarray
        bool, any failure: no good pixels, a non-finite result, or ``flag_edge``.
    flag_edge : numpy.ndarray
        bool, the stamp runs off the image or over NO_DATA / non-finite pixels.
    flag_no_good_pixels : numpy.ndarray
        bool, nothing left to fit (off the image, or every pixel masked).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    chi2: np.ndarray
    ndata: np.ndarray
    log_likelihood: np.ndarray
    background: np.ndarray
    flag: np.ndarray
    flag_edge: np.ndarray
    flag_no_good_pixels: np.ndarray

    def __len__(self) -> int:
        return int(self.flux.size)


def psf_flux_at(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fit_radius_fwhm: float = 2.0,
    bad_mask_planes: tuple[str, ...] = DEFAULT_BAD_MASK_PLANES,
    fit_background: bool = False,
    chunk_size: int = 4096,
    psf_cell_size: int = 256,
) -> PsfFluxAt:
    """Forced PSF-fit flux at fixed pixel positions (see the module docstring).

    Parameters
    ----------
    exposure : Exposure
        Image with variance, mask and ``psf``; ``photo_calib`` converts to nJy (pixels are
        taken as nJy without one).
    x, y : numpy.ndarray
        ``(n,)`` positions in the exposure's 0-based pixel coordinates (pixel centres are
        integers). Positions off the image get NaN fluxes and both flags.
    fit_radius_fwhm : float
        Half-size of the fitted stamp in PSF FWHMs (default 2, as forced photometry): beyond
        that a point source adds < 1% to the weighted sums.
    bad_mask_planes : tuple of str
        Mask planes whose pixels are left out of the fit.
    fit_background : bool
        Also fit a flat local background (default False: difference images and
        background-subtracted images have none).
    chunk_size : int
        Sources per vectorised batch (bounds the memory to ~10 stamps per source).
    psf_cell_size : int
        Grid (pixels) of the kernels of a position-dependent PSF model.

    Returns
    -------
    PsfFluxAt

    Raises
    ------
    TaskError
        If the exposure has no PSF model, or the PSF width is not positive and finite.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got {x.shape}, {y.shape}")
    psf = exposure.psf
    if psf is None:
        raise TaskError(f"PSF photometry needs a PSF model; {_describe(exposure)} has none")
    n = x.size
    flux = np.full(n, np.nan)
    flux_err = np.full(n, np.nan)
    chi2 = np.full(n, np.nan)
    lnl = np.full(n, np.nan)
    background = np.zeros(n)
    ndata = np.zeros(n, dtype=np.int32)
    edge = np.ones(n, dtype=bool)
    idx = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if idx.size:
        # The model is only defined on the detector: take the width at the nearest point on it.
        fwhm = fwhm_at(
            psf,
            np.clip(x[idx], 0, exposure.width - 1),
            np.clip(y[idx], 0, exposure.height - 1),
        )
        if not np.all(np.isfinite(fwhm) & (fwhm > 0)):
            raise TaskError(f"the PSF model of {_describe(exposure)} has a non-positive FWHM")
        half = max(2, math.ceil(fit_radius_fwhm * float(fwhm.max())))
        # Stamps of positions farther off the image than ``half`` hold no pixel at all.
        near = (
            (x[idx] > -half - 1)
            & (x[idx] < exposure.width + half)
            & (y[idx] > -half - 1)
            & (y[idx] < exposure.height + half)
        )
        idx = idx[near]
    if idx.size:
        render = PsfStampRenderer(psf, half, x[idx], y[idx], psf_cell_size)
        bad_bits = MaskPlanes.bits(*bad_mask_planes)
        nodata_bit = MaskPlanes.bits("NO_DATA")
        for start in range(0, idx.size, chunk_size):
            rows = idx[start : start + chunk_size]
            fit = _fit_chunk(
                exposure, render, x[rows], y[rows], half, bad_bits, nodata_bit, fit_background
            )
            flux[rows], flux_err[rows], chi2[rows], lnl[rows] = fit[:4]
            background[rows], ndata[rows], edge[rows] = fit[4:]
    no_good = ndata == 0
    flux[no_good] = flux_err[no_good] = chi2[no_good] = lnl[no_good] = np.nan
    if exposure.photo_calib is not None:
        flux, flux_err = exposure.photo_calib.instflux_to_njy(flux, flux_err)
    flag = no_good | edge | ~np.isfinite(flux) | ~np.isfinite(flux_err)
    return PsfFluxAt(
        flux=np.asarray(flux, dtype=np.float64),
        flux_err=np.asarray(flux_err, dtype=np.float64),
        chi2=chi2,
        ndata=ndata,
        log_likelihood=lnl,
        background=background,
        flag=flag,
        flag_edge=edge,
        flag_no_good_pixels=no_good,
    )


def _fit_chunk(
    exposure: Exposure,
    render: PsfStampRenderer,
    x: np.ndarray,
    y: np.ndarray,
    half: int,
    bad_bits: int,
    nodata_bit: int,
    fit_background: bool,
) -> tuple[np.ndarray, ...]:
    """Weighted fits of one batch: flux, err, chi2, lnL, background (image units), ndata, edge."""
    xi = np.rint(x).astype(np.int64)
    yi = np.rint(y).astype(np.int64)
    data = extract_stamps(exposure.image, xi, yi, half, np.nan).astype(np.float64)
    var = extract_stamps(exposure.variance, xi, yi, half, np.nan).astype(np.float64)
    mask = extract_stamps(exposure.mask, xi, yi, half, 0)
    inside = inside_image(xi, yi, half, exposure.shape)
    finite = np.isfinite(data) & np.isfinite(var)
    usable = inside & finite & ((mask & nodata_bit) == 0)
    # A pixel without a positive variance carries no weight; leaving it out keeps ndata honest.
    good = usable & ((mask & bad_bits) == 0) & (np.where(finite, var, 0.0) > 0)
    sums = PsfSums.from_stamps(render(x, y), data, var, good)
    with np.errstate(divide="ignore", invalid="ignore"):
        if fit_background:
            # 2x2 weighted normal equations of D = F P + b; the inverse is the covariance.
            det = sums.w_pp * sums.w_1 - sums.w_p**2
            flux = (sums.w_1 * sums.w_pd - sums.w_p * sums.w_d) / det
            background = (sums.w_pp * sums.w_d - sums.w_p * sums.w_pd) / det
            err = np.sqrt(sums.w_1 / det)
        else:
            flux = sums.w_pd / sums.w_pp
            background = np.zeros_like(flux)
            err = 1.0 / np.sqrt(sums.w_pp)
    chi2 = isolated_chi2(sums, flux, background)
    log_var = np.log(2.0 * np.pi * np.where(good, var, 1.0)).sum(axis=(1, 2))
    lnl = -0.5 * chi2 - 0.5 * log_var
    edge = ~np.all(usable, axis=(1, 2))
    return flux, err, chi2, lnl, background, sums.n_pixels.astype(np.int32), edge


def _describe(exposure: Exposure) -> str:
    """``visit=.., detector=..`` of an exposure, for error messages."""
    parts = []
    if exposure.visit_info is not None:
        parts.append(f"visit={exposure.visit_info.visit}")
    if exposure.detector is not None:
        parts.append(f"detector={exposure.detector}")
    return "the exposure " + (" ".join(parts) if parts else "(no data id)")

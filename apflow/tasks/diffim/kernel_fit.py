"""Least-squares fit of a spatially varying Alard-Lupton PSF-matching kernel on stamps.

Model of a stamp of the reference image ``R`` around a kernel candidate at ``(x, y)``:

    R = sum_k a_k(x, y) (B_k * I) + b(x, y)

with ``I`` the image being convolved, ``B_k`` the basis (:mod:`.basis`), ``a_k`` and ``b``
(the differential background) polynomials of total degree ``spatial_order`` and
``background_order`` (``b = 0`` unless the background is fitted: both images are normally
background-subtracted, and Rubin fits none by default) in the normalised detector coordinates of
:class:`~apflow.core.VariablePsf` (``u = 2 x / (width - 1) - 1``, likewise ``v``). As in Alard &
Lupton and Rubin, the spatial polynomials are evaluated at the stamp centre (their change across
one stamp is negligible), so each stamp contributes its own small normal equations, expanded
into the spatial parameters by outer products. Pixels are weighted by ``1 / (var_R + var_I)``.

Outlier stamps (variable sources, blends, artefacts) are rejected in three stages: as Rubin
does, each stamp is first fitted on its own (a constant kernel) and stamps whose normalised
residuals (residual / sigma) have an rms or mean beyond the thresholds, or whose kernel sum is an
outlier, are dropped; then (apflow) each stamp's flux scale under the common spatial kernel
(:func:`stamp_scales`, a one-parameter fit far less noisy than a stamp's own kernel sum) is
clipped, which catches variable stars; finally the spatial model is fitted and stamps that it
fits badly are dropped, iterating until none is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .basis import AlardLuptonBasis, convolve_stamps


def poly2d_terms(x: np.ndarray, y: np.ndarray, width: int, height: int, order: int) -> np.ndarray:
    """Spatial terms ``u^i v^j`` (``i + j <= order``) at pixel positions, shape ``(..., n)``.

    Ordered as :class:`~apflow.core.VariablePsf`'s coefficients: ``i`` outer, ``j`` inner.
    """
    u = 2.0 * np.asarray(x, dtype=float) / max(width - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, dtype=float) / max(height - 1, 1) - 1.0
    return np.stack([u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)], axis=-1)


@dataclass
class KernelSolution:
    """A fitted PSF-matching kernel and differential background.

    Attributes
    ----------
    basis : AlardLuptonBasis
    coefficients : numpy.ndarray
        ``(n_basis, n_spatial)`` polynomial coefficients of each basis function's weight.
    background : numpy.ndarray
        ``(n_background,)`` polynomial coefficients of the differential background (nJy).
    spatial_order, background_order : int
        Polynomial degrees.
    width, height : int
        Detector size defining the normalised coordinates.
    valid_box : tuple of float, optional
        ``(x_min, x_max, y_min, y_max)`` (px) of the stamps that constrained the fit. When set,
        the polynomials are evaluated at the nearest point of this box: beyond the stamps the
        kernel is held at its value on the box's edge instead of extrapolated.
    """

    basis: AlardLuptonBasis
    coefficients: np.ndarray
    background: np.ndarray
    spatial_order: int
    background_order: int
    width: int
    height: int
    valid_box: tuple[float, float, float, float] | None = None

    def clamp(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions moved to the nearest point of ``valid_box`` (unchanged without one)."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if self.valid_box is None:
            return x, y
        x0, x1, y0, y1 = self.valid_box
        return np.clip(x, x0, x1), np.clip(y, y0, y1)

    def spatial_terms(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Kernel spatial terms at pixel positions (clamped to ``valid_box``), ``(..., n)``."""
        x, y = self.clamp(x, y)
        return poly2d_terms(x, y, self.width, self.height, self.spatial_order)

    def background_terms(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Background spatial terms at pixel positions (clamped to ``valid_box``), ``(..., n)``."""
        x, y = self.clamp(x, y)
        return poly2d_terms(x, y, self.width, self.height, self.background_order)

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        """The ``(2 half + 1)`` square kernel at pixel ``(x, y)``."""
        weights = self.coefficients @ self.spatial_terms(x, y)
        return np.einsum("k,kij->ij", weights, self.basis.images)

    def kernel_sum(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Kernel sum (photometric scale) at pixel positions: the flux-carrying coefficient."""
        return self.spatial_terms(x, y) @ self.coefficients[0]

    def background_at(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Differential background (nJy per pixel) at pixel positions."""
        return self.background_terms(x, y) @ self.background


@dataclass
class KernelFit:
    """A kernel solution with the bookkeeping of its stamps.

    Attributes
    ----------
    solution : KernelSolution
    used : numpy.ndarray
        bool per stamp: kept in the final fit.
    residual_rms, residual_mean : numpy.ndarray
        Normalised residual rms and mean per stamp under the final solution (all stamps).
    spatially_constant_fallback : bool
        Too few stamps for any spatial variation: a constant kernel was fitted although a
        spatial order above 0 was requested.
    """

    solution: KernelSolution
    used: np.ndarray
    residual_rms: np.ndarray
    residual_mean: np.ndarray
    spatially_constant_fallback: bool


@dataclass(frozen=True)
class FitSettings:
    """Knobs of :func:`fit_kernel` (documented in :class:`~.task.SubtractImagesConfig`)."""

    spatial_order: int
    fit_background: bool
    background_order: int
    constant_kernel_sum: bool
    clip_sigma: float
    max_residual_rms: float
    max_residual_mean: float
    clip_iterations: int
    min_stamps: int
    stamps_per_spatial_term: float
    scale_tolerance: float = 0.01
    """Systematic allowance of :func:`stamp_scales` in the variable-source clipping."""
    clamp_to_stamps: bool = True
    """Hold the kernel constant beyond the box of the used stamps (``KernelSolution.valid_box``)."""


def spatial_order_for(n_stamps: int, max_order: int, stamps_per_term: float) -> int:
    """Highest spatial degree ``<= max_order`` that ``n_stamps`` stamps constrain.

    A degree ``p`` polynomial has ``(p + 1)(p + 2) / 2`` terms per basis function; each stamp
    pins the kernel at one position only, so the degree is allowed when there are at least
    ``stamps_per_term`` stamps per term (10 by default: 30 stamps for a linear, 60 for a
    quadratic variation). Fewer stamps than that let the polynomial swing freely between and
    beyond them -- on 1k x 1k CCDs with ~30 stamps a quadratic kernel reached 0.6-2.7 times its
    central sum in the corners.
    """
    order = 0
    for p in range(1, max_order + 1):
        if n_stamps >= stamps_per_term * (p + 1) * (p + 2) / 2:
            order = p
    return order


class TooFewStampsError(ValueError):
    """Fewer usable stamps than the fit needs (the task turns this into a TaskError)."""


def stamp_normal_equations(
    convolved: np.ndarray, reference: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-stamp normal equations of a constant kernel plus constant background.

    Parameters
    ----------
    convolved : numpy.ndarray
        ``(n, n_basis, h, w)`` basis-convolved stamps.
    reference : numpy.ndarray
        ``(n, h, w)`` reference stamps (0 where unusable).
    weights : numpy.ndarray
        ``(n, h, w)`` inverse variances (0 where unusable).

    Returns
    -------
    tuple of numpy.ndarray
        ``(n, n_basis + 1, n_basis + 1)`` matrices and ``(n, n_basis + 1)`` right-hand sides;
        the last parameter is the background.
    """
    n, nb = convolved.shape[:2]
    design = np.concatenate(
        [convolved.reshape(n, nb, -1), np.ones((n, 1, convolved.shape[2] * convolved.shape[3]))],
        axis=1,
    )
    weighted = design * weights.reshape(n, 1, -1)
    normal = weighted @ design.transpose(0, 2, 1)
    rhs = (weighted @ reference.reshape(n, -1, 1))[:, :, 0]
    return normal, rhs


def stamp_residuals(
    convolved: np.ndarray, reference: np.ndarray, weights: np.ndarray, params: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised residual rms and mean of each stamp under per-stamp parameters ``(n, nb + 1)``."""
    nb = convolved.shape[1]
    model = np.einsum("nkyx,nk->nyx", convolved, params[:, :nb], optimize=True)
    model += params[:, nb][:, None, None]
    z = (reference - model) * np.sqrt(weights)
    count = np.maximum((weights > 0).sum(axis=(1, 2)), 1)
    rms = np.sqrt((z**2).sum(axis=(1, 2)) / count)
    mean = z.sum(axis=(1, 2)) / count
    return rms, mean


def fit_kernel(
    basis: AlardLuptonBasis,
    convolved: np.ndarray,
    reference: np.ndarray,
    weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    width: int,
    height: int,
    settings: FitSettings,
) -> KernelFit:
    """Fit the spatial kernel model with rejection of bad stamps.

    Parameters
    ----------
    basis : AlardLuptonBasis
    convolved, reference, weights : numpy.ndarray
        Stamps as for :func:`stamp_normal_equations`.
    x, y : numpy.ndarray
        ``(n,)`` stamp centres in detector pixels.
    width, height : int
        Detector size.
    settings : FitSettings

    Returns
    -------
    KernelFit

    Raises
    ------
    TooFewStampsError
        If fewer than ``settings.min_stamps`` stamps survive the rejection.
    """
    n = reference.shape[0]
    if n < settings.min_stamps:
        raise TooFewStampsError(f"{n} kernel candidate stamps, need {settings.min_stamps}")
    normal, rhs = stamp_normal_equations(convolved, reference, weights)
    n_par = basis.size + (1 if settings.fit_background else 0)
    local = np.zeros((n, basis.size + 1))
    local[:, :n_par] = _solve(normal[:, :n_par, :n_par], rhs[:, :n_par])
    rms, mean = stamp_residuals(convolved, reference, weights, local)
    used = ~_outliers(rms, mean, np.ones(n, bool), settings)
    # the kernel sum of a stamp fitted alone flags strongly variable sources; its ~10% noise
    # (27 free kernel weights per stamp) hides the rest, which the common-kernel scales catch
    used &= ~_robust_outliers(local[:, 0], used, settings.clip_sigma)
    used &= ~_scale_outliers(basis, normal, rhs, x, y, used, width, height, settings)
    iterations = max(1, settings.clip_iterations)
    for iteration in range(iterations):
        if used.sum() < settings.min_stamps:
            raise TooFewStampsError(
                f"{int(used.sum())} of {n} kernel stamps survive rejection, "
                f"need {settings.min_stamps}"
            )
        order = spatial_order_for(
            int(used.sum()), settings.spatial_order, settings.stamps_per_spatial_term
        )
        solution = _solve_spatial(basis, normal, rhs, x, y, used, width, height, settings, order)
        rms, mean = stamp_residuals(
            convolved, reference, weights, _stamp_parameters(solution, x, y)
        )
        bad = _outliers(rms, mean, used, settings) & used
        if not bad.any() or iteration == iterations - 1:
            break
        used &= ~bad
    fallback = solution.spatial_order == 0 < settings.spatial_order
    return KernelFit(solution, used, rms, mean, bool(fallback))


def _outliers(
    rms: np.ndarray, mean: np.ndarray, among: np.ndarray, settings: FitSettings
) -> np.ndarray:
    """Stamps whose residual rms or |mean| exceed both the absolute and the clipped limits."""
    out = np.zeros(rms.shape, bool)
    for values, limit in (
        (rms, settings.max_residual_rms),
        (np.abs(mean), settings.max_residual_mean),
    ):
        ref = values[among]
        if ref.size == 0:
            continue
        median = float(np.median(ref))
        spread = 1.4826 * float(np.median(np.abs(ref - median)))
        # an absolute limit alone would reject every bright star when the model is imperfect
        # everywhere; a clipped limit alone would reject good stamps of a tight distribution
        out |= values > max(limit, median + settings.clip_sigma * spread)
    return out


def stamp_scales(
    solution: KernelSolution, normal: np.ndarray, rhs: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flux scale of each stamp relative to a kernel solution, and its error.

    The one-parameter fit ``R = s (K * I)`` of each stamp, with ``K`` the solution's kernel at
    the stamp centre: ``s = k.b / k.A.k`` and ``sigma_s = 1 / sqrt(k.A.k)`` from the stamp's
    normal equations ``A``, ``b`` (:func:`stamp_normal_equations`; weights are inverse
    variances, so ``sigma_s`` is the photon-noise error). A non-variable star gives ``s = 1``
    within ``sigma_s`` -- 0.1-2% for kernel candidates -- while a variable source gives its
    flux ratio between the two epochs.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n,)`` scales and errors (NaN for a stamp without weight).
    """
    nb = solution.basis.size
    kernels = solution.spatial_terms(x, y) @ solution.coefficients.T
    power = np.einsum("nk,nkl,nl->n", kernels, normal[:, :nb, :nb], kernels)
    cross = np.einsum("nk,nk->n", kernels, rhs[:, :nb])
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(power > 0, cross / power, np.nan)
        error = np.where(power > 0, 1.0 / np.sqrt(power), np.nan)
    return scale, error


def _scale_outliers(
    basis: AlardLuptonBasis,
    normal: np.ndarray,
    rhs: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    used: np.ndarray,
    width: int,
    height: int,
    settings: FitSettings,
) -> np.ndarray:
    """Stamps whose flux scale under the common kernel disagrees with the others.

    Variable stars look like any other isolated star in the template, and in a variable-rich
    field they are a good fraction of the candidates (a third to a half on the simulator's e2e
    CCDs), each pulling the kernel sum -- the photometric scale of the whole difference --
    towards its own flux ratio: with exact calibrations the kernel sum came out between 0.95
    and 1.014 there, leaving that fraction of every static star in the difference. The spatial
    model is fitted, each stamp's scale (:func:`stamp_scales`) is compared with the median in
    units of ``hypot(error, settings.scale_tolerance)`` (photon noise plus an allowance for
    the kernel's shape errors), and stamps beyond ``clip_sigma`` of those units are dropped;
    refitted and repeated until nothing changes. Should the variance planes understate the
    noise so much that this would drop more than half of the stamps, the limit widens to the
    median deviation instead.
    """
    out = np.zeros(used.shape, bool)
    for _ in range(max(1, settings.clip_iterations)):
        keep = used & ~out
        if keep.sum() < max(settings.min_stamps, 5):
            break
        order = spatial_order_for(
            int(keep.sum()), settings.spatial_order, settings.stamps_per_spatial_term
        )
        solution = _solve_spatial(basis, normal, rhs, x, y, keep, width, height, settings, order)
        scale, error = stamp_scales(solution, normal, rhs, x, y)
        tolerance = np.hypot(error, settings.scale_tolerance)
        z = (scale - float(np.nanmedian(scale[keep]))) / tolerance
        centre = float(np.nanmedian(z[keep]))
        deviation = np.abs(z - centre)
        # no robust spread of the deviations: variables can be half of them and inflate it
        limit = max(settings.clip_sigma, float(np.nanmedian(deviation[used])))
        bad = used & ~(deviation <= limit)
        if np.array_equal(bad, out):
            break
        out = bad
    return out


def _robust_outliers(values: np.ndarray, among: np.ndarray, clip: float) -> np.ndarray:
    ref = values[among]
    if ref.size < 5:
        return np.zeros(values.shape, bool)
    median = float(np.median(ref))
    spread = 1.4826 * float(np.median(np.abs(ref - median)))
    return np.abs(values - median) > clip * max(spread, 1e-3 * abs(median))


def _solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve symmetric positive semi-definite systems (stacked), dropping near-null directions.

    The Gaussian basis functions of neighbouring widths are nearly collinear; scaling to unit
    diagonal and cutting eigenvalues below 1e-12 of the largest keeps the solution stable.
    """
    diag = np.sqrt(np.maximum(np.diagonal(matrix, axis1=-2, axis2=-1), 1e-300))
    scaled = matrix / diag[..., :, None] / diag[..., None, :]
    values, vectors = np.linalg.eigh(scaled)
    cut = 1e-12 * values.max(axis=-1, keepdims=True)
    inv_values = np.where(values > cut, 1.0 / np.where(values > cut, values, 1.0), 0.0)
    projected = np.einsum("...ji,...j->...i", vectors, rhs / diag)
    return np.einsum("...ij,...j->...i", vectors, projected * inv_values) / diag


def _solve_spatial(
    basis: AlardLuptonBasis,
    normal: np.ndarray,
    rhs: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    used: np.ndarray,
    width: int,
    height: int,
    settings: FitSettings,
    spatial_order: int,
) -> KernelSolution:
    background_order = (
        0 if not settings.fit_background else min(settings.background_order, spatial_order)
    )
    nb = basis.size
    sel = np.flatnonzero(used)
    p = poly2d_terms(x[sel], y[sel], width, height, spatial_order)
    q = poly2d_terms(x[sel], y[sel], width, height, background_order)
    ns, nq = p.shape[1], q.shape[1]
    a = normal[sel]
    r = rhs[sel]
    kk = np.einsum("nkl,ns,nt->kslt", a[:, :nb, :nb], p, p, optimize=True).reshape(nb * ns, -1)
    kb = np.einsum("nk,ns,nq->ksq", a[:, :nb, nb], p, q, optimize=True).reshape(nb * ns, nq)
    bb = np.einsum("n,nq,nr->qr", a[:, nb, nb], q, q)
    matrix = np.block([[kk, kb], [kb.T, bb]])
    vector = np.concatenate(
        [np.einsum("nk,ns->ks", r[:, :nb], p).ravel(), np.einsum("n,nq->q", r[:, nb], q)]
    )
    free = np.ones(nb * ns + nq, bool)
    if settings.constant_kernel_sum:
        free[1:ns] = False  # the flux-carrying function (k = 0) keeps only its constant term
    if not settings.fit_background:
        free[nb * ns :] = False
    params = np.zeros(free.size)
    params[free] = _solve(matrix[np.ix_(free, free)], vector[free])
    return KernelSolution(
        basis=basis,
        coefficients=params[: nb * ns].reshape(nb, ns),
        background=params[nb * ns :],
        spatial_order=spatial_order,
        background_order=background_order,
        width=width,
        height=height,
        valid_box=(
            (float(x[sel].min()), float(x[sel].max()), float(y[sel].min()), float(y[sel].max()))
            if settings.clamp_to_stamps and sel.size
            else None
        ),
    )


def _stamp_parameters(solution: KernelSolution, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-stamp ``(n, n_basis + 1)`` kernel weights and background under a spatial solution."""
    kernel = solution.spatial_terms(x, y) @ solution.coefficients.T
    background = solution.background_at(x, y)
    return np.concatenate([kernel, background[:, None]], axis=1)


def kernel_stamps(
    conv_image: np.ndarray,
    conv_var: np.ndarray,
    ref_image: np.ndarray,
    ref_var: np.ndarray,
    bad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    stamp_half: int,
    half: int,
    basis: AlardLuptonBasis,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basis-convolved stamps, reference stamps and inverse-variance weights for :func:`fit_kernel`.

    Parameters
    ----------
    conv_image, conv_var : numpy.ndarray
        Image to be convolved and its variance, with a margin of ``half`` pixels (detector pixel
        ``p`` is at ``p + half``), finite everywhere.
    ref_image, ref_var : numpy.ndarray
        Reference image and variance on the detector grid.
    bad : numpy.ndarray
        bool map of pixels left out of the fit.
    x, y : numpy.ndarray
        int stamp centres on the detector. A stamp may run off the detector: its pixels beyond
        the edge get zero weight (their convolved values, which would need the image beyond
        the margin, are not used).
    stamp_half, half : int
        Half-sides of the stamps and of the kernel.
    basis : AlardLuptonBasis

    Returns
    -------
    tuple of numpy.ndarray
        ``(n, n_basis, side, side)`` convolved stamps, ``(n, side, side)`` reference stamps
        (0 where unusable) and weights ``1 / (var_ref + var_conv)`` (0 where unusable).
    """
    height, width = ref_image.shape
    offsets = np.arange(-stamp_half, stamp_half + 1)
    all_rows = y[:, None, None] + offsets[None, :, None]
    all_cols = x[:, None, None] + offsets[None, None, :]
    on_detector = (all_rows >= 0) & (all_rows < height) & (all_cols >= 0) & (all_cols < width)
    # off-detector pixels are read at the nearest edge pixel and then given no weight
    rows = np.clip(all_rows, 0, height - 1)
    cols = np.clip(all_cols, 0, width - 1)
    reference = ref_image[rows, cols].astype(float)
    variance = ref_var[rows, cols].astype(float) + conv_var[rows + half, cols + half]
    wide = np.arange(-stamp_half - half, stamp_half + half + 1)
    # a detector pixel's kernel footprint lies within the margin, so clipping only alters the
    # convolved values of off-detector pixels
    conv_rows = np.clip(y[:, None, None] + half + wide[None, :, None], 0, conv_image.shape[0] - 1)
    conv_cols = np.clip(x[:, None, None] + half + wide[None, None, :], 0, conv_image.shape[1] - 1)
    convolved = convolve_stamps(conv_image[conv_rows, conv_cols].astype(float), basis)
    usable = on_detector & ~bad[rows, cols] & np.isfinite(reference) & (variance > 0)
    weights = np.where(usable, 1.0 / np.where(usable, variance, 1.0), 0.0)
    reference = np.where(usable, reference, 0.0)
    return convolved, reference, weights

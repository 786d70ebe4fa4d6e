"""Vectorised rendering of point sources and galaxies into an image.

Stars are drawn with their exact local PSF (FWHM and ellipticity evaluated at each star from
the detector's :class:`~apflow.core.VariablePsf`): all stars of one stamp size are rendered at
once with numpy broadcasting on an oversampled sub-pixel grid, which is the pixel integral used by
:mod:`apflow.core.psf`. Every stamp is normalised to sum 1, so the counts put into the image equal
the true flux exactly (less what falls off the detector).

Galaxies are elliptical exponential profiles truncated at 4 half-light radii (renormalised), drawn
on a sub-pixel grid and convolved by FFT with the PSF kernel of their region of the detector (a
4 x 4 grid per detector by default: the PSF changes by well under 1% across a region).

Stamps are added with one ``numpy.bincount`` over flat pixel indices, which handles overlaps and
clips stamps at the detector edges.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import fftconvolve

from ..core import MoffatPsf, VariablePsf

# Half-light radius in units of the exponential scale length: exp(-b r) has half its light at r=1.
EXPONENTIAL_B = 1.678347
#: Galaxies are truncated at this many (elliptical) half-light radii.
GALAXY_TRUNCATION = 4.0
# Upper bound on elements of one broadcast batch (memory ~ 8 bytes x this, a few times over).
_BATCH_ELEMENTS = 3_000_000


def evaluate_poly2d(coeffs: tuple[float, ...], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised :class:`~apflow.core.VariablePsf` polynomial (coefficient order ``[u^i v^j]``)."""
    order = 0
    while (order + 1) * (order + 2) // 2 < len(coeffs):
        order += 1
    out = np.zeros(np.broadcast(u, v).shape)
    k = 0
    for i in range(order + 1):
        for j in range(order + 1 - i):
            out = out + coeffs[k] * u**i * v**j
            k += 1
    return out


def local_psf_parameters(psf: VariablePsf, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(fwhm, e1, e2)`` of a VariablePsf at many positions at once."""
    u = 2.0 * np.asarray(x, dtype=float) / max(psf.width - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, dtype=float) / max(psf.height - 1, 1) - 1.0
    return (
        evaluate_poly2d(psf.fwhm_coeffs, u, v),
        evaluate_poly2d(psf.e1_coeffs, u, v),
        evaluate_poly2d(psf.e2_coeffs, u, v),
    )


def _subpixel_coords(half: int, oversample: int) -> np.ndarray:
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    return ((np.arange(2 * half + 1) - half)[:, None] + sub[None, :]).ravel()


def _moffat_power(t: np.ndarray, beta: float) -> np.ndarray:
    # t**-beta is the hot spot; beta = 3.5 (the default) avoids the generic pow
    if beta == 3.5:
        return 1.0 / (t * t * t * np.sqrt(t))
    return t ** (-beta)


def moffat_stamps(
    dx: np.ndarray,
    dy: np.ndarray,
    fwhm: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    beta: float,
    half: int,
    oversample: int,
) -> np.ndarray:
    """Pixel-integrated, normalised elliptical Moffat stamps for many sources at once.

    Parameters
    ----------
    dx, dy : numpy.ndarray
        ``(N,)`` offsets of each centre from the stamp's central pixel, in [-0.5, 0.5].
    fwhm, e1, e2 : numpy.ndarray
        ``(N,)`` geometric-mean FWHM (pixels) and distortion ellipticity, as :class:`MoffatPsf`.
    beta : float
        Moffat index.
    half : int
        Stamp half-size; stamps are ``(2 half + 1)`` pixels square.
    oversample : int
        Sub-pixels per pixel side for the pixel integral.

    Returns
    -------
    numpy.ndarray
        ``(N, 2 half + 1, 2 half + 1)``, each stamp summing to 1.
    """
    coords = _subpixel_coords(half, oversample)
    u = coords[None, :] - np.asarray(dx, dtype=float)[:, None]
    v = coords[None, :] - np.asarray(dy, dtype=float)[:, None]
    e1 = np.asarray(e1, dtype=float)
    e2 = np.asarray(e2, dtype=float)
    norm = np.sqrt(1.0 - e1 * e1 - e2 * e2)
    alpha_sq = (np.asarray(fwhm, dtype=float) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2
    # inverse shape matrix of (e1, e2) divided by alpha^2, as MoffatPsf does
    a = ((1.0 - e1) / norm / alpha_sq)[:, None, None]
    b = (-e2 / norm / alpha_sq)[:, None, None]
    c = ((1.0 + e1) / norm / alpha_sq)[:, None, None]
    t = (
        1.0
        + a * (u * u)[:, None, :]
        + 2.0 * b * v[:, :, None] * u[:, None, :]
        + c * (v * v)[:, :, None]
    )
    profile = _moffat_power(t, beta)
    size = 2 * half + 1
    stamps = profile.reshape(len(dx), size, oversample, size, oversample).sum(axis=(2, 4))
    return stamps / stamps.sum(axis=(1, 2), keepdims=True)


def exponential_stamps(
    dx: np.ndarray, dy: np.ndarray, shape_matrix: np.ndarray, half: int, oversample: int
) -> np.ndarray:
    """Normalised elliptical exponential profiles (no PSF), truncated at 4 half-light radii.

    Parameters
    ----------
    shape_matrix : numpy.ndarray
        ``(N, 2, 2)`` symmetric ``M`` such that ``d^T M d = 1`` on the half-light ellipse, with
        ``d`` a pixel offset.
    """
    coords = _subpixel_coords(half, oversample)
    u = coords[None, :] - np.asarray(dx, dtype=float)[:, None]
    v = coords[None, :] - np.asarray(dy, dtype=float)[:, None]
    m00 = shape_matrix[:, 0, 0][:, None, None]
    m01 = shape_matrix[:, 0, 1][:, None, None]
    m11 = shape_matrix[:, 1, 1][:, None, None]
    r2 = (
        m00 * (u * u)[:, None, :]
        + 2.0 * m01 * v[:, :, None] * u[:, None, :]
        + m11 * (v * v)[:, :, None]
    )
    r = np.sqrt(r2)
    profile = np.where(r < GALAXY_TRUNCATION, np.exp(-EXPONENTIAL_B * r), 0.0)
    size = 2 * half + 1
    stamps = profile.reshape(len(dx), size, oversample, size, oversample).sum(axis=(2, 4))
    return stamps / stamps.sum(axis=(1, 2), keepdims=True)


def star_half_size(counts: np.ndarray, fwhm: np.ndarray, beta: float, floor: float) -> np.ndarray:
    """Stamp half-size (pixels) at which a star's wing drops below ``floor`` counts per pixel.

    Sizes are quantised to a few values (multiples of the minimum, 3 FWHM) so that stars can be
    batched; a star is never drawn with a stamp smaller than 3 FWHM (which holds 99.5% of a
    beta = 3.5 Moffat's flux).
    """
    alpha_sq = (fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2
    peak = np.maximum(counts, 0.0) * (beta - 1.0) / (math.pi * alpha_sq)
    ratio = np.maximum(peak / floor, 1.0)
    radius = np.sqrt(alpha_sq * (ratio ** (1.0 / beta) - 1.0))
    base = int(math.ceil(3.0 * float(np.max(fwhm, initial=1.0))))
    steps = np.array([1, 1.5, 2, 3, 4, 6, 8, 12, 16])
    tiers = np.ceil(base * steps).astype(int)
    index = np.searchsorted(tiers, radius)
    return tiers[np.minimum(index, len(tiers) - 1)]


def add_stamps(
    flat_image: np.ndarray,
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    stamps: np.ndarray,
    half: int,
) -> None:
    """Add ``flux * stamp`` centred on the pixels nearest (x, y) into a flat image, in place."""
    height, width = shape
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    offs = np.arange(-half, half + 1)
    cols = ix[:, None, None] + offs[None, None, :]
    rows = iy[:, None, None] + offs[None, :, None]
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    index = (rows * width + cols)[inside]
    weights = (flux[:, None, None] * stamps)[inside]
    # unbuffered in-place add: correct where stamps overlap, and its cost scales with the stamp
    # pixels rather than with the image size as a bincount's would
    np.add.at(flat_image, index, weights)


def render_stars(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    counts: np.ndarray,
    psf: VariablePsf | MoffatPsf,
    wing_floor: float = 0.5,
    precise_counts: float = 1.0e5,
) -> None:
    """Add point sources to ``image`` (float64, in place) with their local PSF.

    Parameters
    ----------
    image : numpy.ndarray
        float64 ``(height, width)``, modified in place.
    x, y : numpy.ndarray
        Source centres in pixel coordinates (may lie off the image).
    counts : numpy.ndarray
        Total counts of each source.
    psf : VariablePsf or MoffatPsf
        A Moffat PSF model (variable or constant).
    wing_floor : float
        Stamps extend until the PSF wing is below this many counts per pixel.
    precise_counts : float
        Sources brighter than this get the finer pixel integral of :mod:`apflow.core.psf`.
    """
    x, y, counts = (np.asarray(a, dtype=float) for a in (x, y, counts))
    if len(x) == 0:
        return
    if isinstance(psf, VariablePsf):
        fwhm, e1, e2 = local_psf_parameters(psf, x, y)
    else:
        fwhm = np.full_like(x, psf.fwhm)
        e1 = np.full_like(x, psf.e1)
        e2 = np.full_like(x, psf.e2)
    beta = psf.beta
    halves = star_half_size(counts, fwhm, beta, wing_floor)
    flat = image.reshape(-1)
    for half in np.unique(halves):
        half = int(half)
        sel = np.flatnonzero(halves == half)
        # Bright stars get apflow.core.psf's pixel integral (7x7 sub-pixels for narrow PSFs, 5x5
        # otherwise); faint ones 3x3, whose error (< 0.5% of the peak) is far below their noise.
        bright = counts[sel] > precise_counts
        for group, oversample in (
            (sel[bright], 7 if np.min(fwhm[sel]) < 4 else 5),
            (sel[~bright], 3),
        ):
            _render_star_group(
                flat, image.shape, group, x, y, counts, fwhm, e1, e2, beta, half, oversample
            )


def _render_star_group(
    flat: np.ndarray,
    shape: tuple[int, int],
    sel: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    counts: np.ndarray,
    fwhm: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    beta: float,
    half: int,
    oversample: int,
) -> None:
    per_source = ((2 * half + 1) * oversample) ** 2
    chunk = max(1, _BATCH_ELEMENTS // per_source)
    for start in range(0, len(sel), chunk):
        idx = sel[start : start + chunk]
        dx = x[idx] - np.rint(x[idx])
        dy = y[idx] - np.rint(y[idx])
        stamps = moffat_stamps(dx, dy, fwhm[idx], e1[idx], e2[idx], beta, half, oversample)
        add_stamps(flat, shape, x[idx], y[idx], counts[idx], stamps, half)


def galaxy_shape_matrices(
    half_light_arcsec: np.ndarray,
    axis_ratio: np.ndarray,
    position_angle_deg: np.ndarray,
    cd_arcsec: np.ndarray,
) -> np.ndarray:
    """Pixel-space shape matrices of sky ellipses (see :func:`exponential_stamps`).

    ``cd_arcsec`` is the local 2x2 Jacobian from pixel offsets to (East, North) arcsec.
    """
    re = np.asarray(half_light_arcsec, dtype=float)
    q = np.asarray(axis_ratio, dtype=float)
    pa = np.radians(np.asarray(position_angle_deg, dtype=float))
    major = re / np.sqrt(q)
    minor = re * np.sqrt(q)
    # unit vectors of the major and minor axes in (East, North); PA is North through East
    maj = np.stack([np.sin(pa), np.cos(pa)], axis=-1)
    mnr = np.stack([np.cos(pa), -np.sin(pa)], axis=-1)
    q_sky = (
        maj[:, :, None] * maj[:, None, :] / (major**2)[:, None, None]
        + mnr[:, :, None] * mnr[:, None, :] / (minor**2)[:, None, None]
    )
    return np.einsum("ki,nkl,lj->nij", cd_arcsec, q_sky, cd_arcsec)


def render_galaxies(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    counts: np.ndarray,
    shape_matrices: np.ndarray,
    psf: VariablePsf | MoffatPsf,
    n_regions: int = 4,
) -> None:
    """Add PSF-convolved exponential galaxies to ``image`` (float64, in place).

    Parameters
    ----------
    shape_matrices : numpy.ndarray
        ``(N, 2, 2)`` from :func:`galaxy_shape_matrices`.
    n_regions : int
        The detector is cut into ``n_regions x n_regions`` regions with one PSF kernel each.
    """
    x, y, counts = (np.asarray(a, dtype=float) for a in (x, y, counts))
    if len(x) == 0:
        return
    height, width = image.shape
    # semi-major axis of the half-light ellipse in pixels: 1/sqrt(smallest eigenvalue of M)
    semi_major = 1.0 / np.sqrt(np.linalg.eigvalsh(shape_matrices)[:, 0])
    region_x = np.clip((x / width * n_regions).astype(int), 0, n_regions - 1)
    region_y = np.clip((y / height * n_regions).astype(int), 0, n_regions - 1)
    flat = image.reshape(-1)
    for ry in range(n_regions):
        for rx in range(n_regions):
            in_region = np.flatnonzero((region_x == rx) & (region_y == ry))
            if len(in_region) == 0:
                continue
            cx, cy = (rx + 0.5) * width / n_regions, (ry + 0.5) * height / n_regions
            local = psf.local_psf(cx, cy) if isinstance(psf, VariablePsf) else psf
            k_half = int(math.ceil(3.0 * local.fwhm))
            kernel = local.compute_kernel_image(cx, cy, 2 * k_half + 1)
            g_half = np.ceil(GALAXY_TRUNCATION * semi_major[in_region]).astype(int)
            # quantise to powers of two-ish so galaxies batch together
            tiers = np.array([4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128])
            g_half = tiers[np.minimum(np.searchsorted(tiers, g_half), len(tiers) - 1)]
            for gh in np.unique(g_half):
                sel = in_region[g_half == gh]
                half = int(gh) + k_half
                oversample = 3 if gh <= 16 else 1
                chunk = max(1, _BATCH_ELEMENTS // ((2 * half + 1) * oversample) ** 2)
                for start in range(0, len(sel), chunk):
                    idx = sel[start : start + chunk]
                    dx = x[idx] - np.rint(x[idx])
                    dy = y[idx] - np.rint(y[idx])
                    stamps = exponential_stamps(dx, dy, shape_matrices[idx], half, oversample)
                    stamps = fftconvolve(stamps, kernel[None, :, :], mode="same", axes=(1, 2))
                    add_stamps(flat, image.shape, x[idx], y[idx], counts[idx], stamps, half)

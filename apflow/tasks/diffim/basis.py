"""Alard-Lupton kernel basis: Gaussians times polynomials, separable, with one flux-carrying term.

Alard & Lupton (1998): a PSF-matching kernel is a linear combination of
``exp(-(u^2 + v^2) / (2 sigma^2)) u^i v^j`` for a few ``sigma`` and ``i + j <= degree(sigma)``
(Rubin's ``ip_diffim`` defaults: three Gaussians at 0.5, 1 and 2 times the matching sigma, with
degrees 4, 2, 2). Each function is a product of a function of ``u`` and a function of ``v``, so
convolutions with it are two 1-D passes.

Following Rubin, the basis is re-parameterised so that only the first function (the narrowest
Gaussian, normalised to sum 1) carries flux and every other function sums to zero: the kernel sum
(the photometric scale between the images) is then the first coefficient alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AlardLuptonBasis:
    """A kernel basis on a ``(2 half + 1)`` square grid.

    Attributes
    ----------
    half : int
        Kernel half-width in pixels.
    factors : numpy.ndarray
        ``(n_factors, 2 half + 1)`` 1-D functions ``u^p exp(-u^2 / 2 sigma^2)`` (unit peak),
        indexed at offsets ``-half .. half``.
    terms : numpy.ndarray
        ``(n_basis, 2)`` int: the x factor and y factor of each raw basis function.
    transform : numpy.ndarray
        ``(n_basis, n_basis)``: basis function ``k`` is ``sum_l transform[k, l] raw_l`` with
        ``raw_l = outer(factors[terms[l, 1]], factors[terms[l, 0]])`` (rows are y).
    images : numpy.ndarray
        ``(n_basis, 2 half + 1, 2 half + 1)`` the basis functions; ``images[0]`` sums to 1 and
        the others to 0.
    """

    half: int
    factors: np.ndarray
    terms: np.ndarray
    transform: np.ndarray
    images: np.ndarray

    @property
    def size(self) -> int:
        """Number of basis functions."""
        return int(self.terms.shape[0])


def alard_lupton_basis(
    half: int, sigmas: Sequence[float], degrees: Sequence[int]
) -> AlardLuptonBasis:
    """Build the basis.

    Parameters
    ----------
    half : int
        Kernel half-width (pixels); the kernel is ``2 half + 1`` pixels square.
    sigmas : sequence of float
        Gaussian sigmas in pixels; the first carries the flux.
    degrees : sequence of int
        Maximum total polynomial degree for each sigma.

    Returns
    -------
    AlardLuptonBasis
    """
    if len(sigmas) != len(degrees) or not sigmas:
        raise ValueError(f"need one degree per sigma, got sigmas={sigmas}, degrees={degrees}")
    offsets = np.arange(-half, half + 1, dtype=float)
    factors = []
    terms = []
    for sigma, degree in zip(sigmas, degrees, strict=True):
        gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
        first = len(factors)
        for power in range(degree + 1):
            f = gauss * offsets**power
            factors.append(f / np.abs(f).max())
        for i in range(degree + 1):
            for j in range(degree + 1 - i):
                terms.append((first + i, first + j))
    factor_arr = np.array(factors)
    term_arr = np.array(terms, dtype=np.int64)
    raw = factor_arr[term_arr[:, 1]][:, :, None] * factor_arr[term_arr[:, 0]][:, None, :]
    n = raw.shape[0]
    sums = raw.sum(axis=(1, 2))
    norms = np.sqrt((raw**2).sum(axis=(1, 2)))
    transform = np.zeros((n, n))
    transform[0, 0] = 1.0 / sums[0]
    for k in range(1, n):
        transform[k, k] = 1.0 / norms[k]
        transform[k, 0] = -sums[k] / norms[k] / sums[0]
    images = np.einsum("kl,lij->kij", transform, raw)
    return AlardLuptonBasis(half, factor_arr, term_arr, transform, images)


def matching_sigmas(
    sigma_match: float, factors: Sequence[float], min_sigma: float
) -> tuple[float, ...]:
    """Basis sigmas: ``sigma_match`` times each factor, none below ``min_sigma`` pixels."""
    return tuple(max(min_sigma, sigma_match * f) for f in factors)


def convolve_stamps(stamps: np.ndarray, basis: AlardLuptonBasis) -> np.ndarray:
    """Convolve stamps with every basis function, keeping the fully covered part.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, h + 2 half, w + 2 half)`` stamps of the image to be convolved.
    basis : AlardLuptonBasis

    Returns
    -------
    numpy.ndarray
        ``(n, n_basis, h, w)``: ``out[s, k, y, x] = sum_d K_k(d) stamp[s, y + half - d_y,
        x + half - d_x]``, the same convolution as :func:`~apflow.tasks.diffim.convolve.\
convolve_with_solution` applies to whole images.
    """
    length = 2 * basis.half + 1
    # convolution flips the kernel: sum_t f(half - t) window[t]
    flipped = basis.factors[:, ::-1]
    windows_x = np.lib.stride_tricks.sliding_window_view(stamps, length, axis=2)
    rows = np.einsum("nywt,ft->fnyw", windows_x, flipped, optimize=True)
    n, hh, ww = stamps.shape
    out = np.empty((n, basis.size, hh - 2 * basis.half, ww - 2 * basis.half))
    for k, (fx, fy) in enumerate(basis.terms):
        windows_y = np.lib.stride_tricks.sliding_window_view(rows[fx], length, axis=1)
        out[:, k] = windows_y @ flipped[fy]
    return np.einsum("kl,nlyx->nkyx", basis.transform, out, optimize=True)

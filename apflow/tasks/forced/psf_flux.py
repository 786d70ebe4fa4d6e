"""PSF-flux sums of single sources: the pieces of Rubin's ``base_PsfFlux`` linear fit.

Rubin's forced PSF flux is an *unweighted* linear least-squares fit of the PSF image ``P`` at the
fixed position to the data ``D`` over the PSF stamp minus bad pixels:

``F = sum(P D) / sum(P^2)``,   ``sigma_F = sqrt(sum(P^2 V)) / sum(P^2)``,
``chi2 = sum((D - F P)^2 / V)``,   ``area = (sum P)^2 / sum(P^2)``.

An isolated source needs only the sums below; a blend group (:mod:`.blends`) solves the same
least-squares problem jointly, with the sums as its diagonal terms. Everything is vectorised over
a stack of stamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PsfSums:
    """Per-source sums over the good pixels of each PSF stamp (all arrays ``(n,)``).

    ``P`` is the PSF model, ``D`` the data, ``V`` the variance; sums run over good pixels, and
    the ``w_*`` sums only over good pixels with ``V > 0``, weighted by ``1 / V`` (for chi2).
    The background sums ``bg_*`` hold what a flat background term of a joint fit needs;
    for an isolated source they are plain sums (every pixel of the fit covered once).
    """

    pd: np.ndarray
    pp: np.ndarray
    ppv: np.ndarray
    p: np.ndarray
    pv: np.ndarray
    bg_n: np.ndarray
    bg_d: np.ndarray
    bg_v: np.ndarray
    w_dd: np.ndarray
    w_pd: np.ndarray
    w_pp: np.ndarray
    w_d: np.ndarray
    w_p: np.ndarray
    w_1: np.ndarray
    n_pixels: np.ndarray
    area: np.ndarray

    @classmethod
    def from_stamps(
        cls, psf: np.ndarray, data: np.ndarray, variance: np.ndarray, good: np.ndarray
    ) -> PsfSums:
        """Sums of ``(n, S, S)`` stamps; ``good`` (bool) selects the pixels of the fit.

        ``data`` and ``variance`` may hold anything (NaN included) where ``good`` is False.
        """
        area = psf.sum(axis=(1, 2)) ** 2 / np.maximum((psf * psf).sum(axis=(1, 2)), 1e-300)
        p = np.where(good, psf, 0.0)
        d = np.where(good, data, 0.0)
        v = np.where(good, variance, 0.0)
        inv_v = np.where(good & (v > 0), 1.0 / np.where(v > 0, v, 1.0), 0.0)
        pp = p * p
        axes = (1, 2)
        return cls(
            pd=(p * d).sum(axis=axes),
            pp=pp.sum(axis=axes),
            ppv=(pp * v).sum(axis=axes),
            p=p.sum(axis=axes),
            pv=(p * v).sum(axis=axes),
            bg_n=good.sum(axis=axes).astype(np.float64),
            bg_d=d.sum(axis=axes),
            bg_v=v.sum(axis=axes),
            w_dd=(d * d * inv_v).sum(axis=axes),
            w_pd=(p * d * inv_v).sum(axis=axes),
            w_pp=(pp * inv_v).sum(axis=axes),
            w_d=(d * inv_v).sum(axis=axes),
            w_p=(p * inv_v).sum(axis=axes),
            w_1=inv_v.sum(axis=axes),
            n_pixels=good.sum(axis=axes).astype(np.int64),
            area=area,
        )

    @classmethod
    def concatenate(cls, parts: list[PsfSums]) -> PsfSums:
        """Join the sums of consecutive chunks of sources."""
        names = cls.__dataclass_fields__
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})

    def subset(self, rows: np.ndarray) -> PsfSums:
        """The sums of the sources ``rows``."""
        return type(self)(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})

    @classmethod
    def empty(cls) -> PsfSums:
        """Sums of no source."""
        names = cls.__dataclass_fields__
        return cls(
            **{k: np.zeros(0, dtype=np.int64 if k == "n_pixels" else np.float64) for k in names}
        )


def isolated_psf_flux(
    sums: PsfSums, fit_background: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux, error and background of single-source fits (instrumental units).

    Without a background term this is Rubin's formula exactly. With one, the 2x2 unweighted
    normal equations of ``D = F P + b`` are solved and the error comes from the sandwich
    ``A^-1 C A^-1`` (``C`` the variance-weighted cross products), the same estimator as the
    joint blend fit. Sources without a usable fit get NaN.

    Returns
    -------
    flux, flux_err, background : numpy.ndarray
        ``(n,)``; ``background`` is 0 without a background term.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        if not fit_background:
            flux = sums.pd / sums.pp
            err = np.sqrt(sums.ppv) / sums.pp
            return flux, err, np.zeros_like(flux)
        det = sums.pp * sums.bg_n - sums.p**2
        flux = (sums.bg_n * sums.pd - sums.p * sums.bg_d) / det
        background = (sums.pp * sums.bg_d - sums.p * sums.pd) / det
        # First row of A^-1, then the (0, 0) element of A^-1 C A^-1.
        g0 = sums.bg_n / det
        g1 = -sums.p / det
        var = g0 * g0 * sums.ppv + 2 * g0 * g1 * sums.pv + g1 * g1 * sums.bg_v
        return flux, np.sqrt(var), background


def isolated_chi2(sums: PsfSums, flux: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``sum((D - F P - b)^2 / V)`` over the good pixels with ``V > 0``, from the sums alone."""
    f, b = flux, background
    return (
        sums.w_dd
        - 2 * f * sums.w_pd
        + f * f * sums.w_pp
        - 2 * b * sums.w_d
        + 2 * f * b * sums.w_p
        + b * b * sums.w_1
    )

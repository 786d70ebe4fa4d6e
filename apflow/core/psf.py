"""Point-spread-function models.

Pixel convention (as Rubin and astropy's 0-based pixel coordinates): the centre of pixel
``(i, j)`` -- column ``i``, row ``j`` of ``image[j, i]`` -- is at ``x = i, y = j``; a pixel
covers ``[i - 0.5, i + 0.5)``.

Every model renders a *pixel-integrated*, normalised image (sum 1 over the stamp) of the PSF
centred on any sub-pixel position, and round-trips through a JSON-serialisable dict so that it
can be stored with an exposure.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import erf

GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

_REGISTRY: dict[str, type[Psf]] = {}


def register_psf(cls: type[Psf]) -> type[Psf]:
    """Class decorator: make a PSF model restorable by :func:`psf_from_dict`."""
    _REGISTRY[cls.kind] = cls
    return cls


def psf_to_dict(psf: Psf) -> dict[str, Any]:
    """:meth:`Psf.to_dict` plus the module that defines the model's class.

    Storage writes this, so that :func:`psf_from_dict` can restore a model defined outside
    ``apflow.core`` (e.g. calibrate's pixel PSF) in a process that never imported its module.
    """
    data = psf.to_dict()
    data.setdefault("module", type(psf).__module__)
    return data


def psf_from_dict(data: dict[str, Any]) -> Psf:
    """Rebuild a PSF model from :func:`psf_to_dict` (or :meth:`Psf.to_dict`) output.

    A model type not registered yet is looked up by importing the module named in the data
    (installed code only: a data file cannot bring code of its own).

    Raises
    ------
    ValueError
        If the ``type`` is unknown (not registered, and its module cannot be imported or does
        not register it).
    """
    kind = data.get("type")
    module = data.get("module")
    if kind not in _REGISTRY and isinstance(module, str):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(
                f"PSF model type {kind!r}: cannot import its module {module!r} ({exc})"
            ) from None
    if kind not in _REGISTRY:
        raise ValueError(f"unknown PSF model type {kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind].from_dict({k: v for k, v in data.items() if k != "module"})


class Psf(ABC):
    """A PSF model that can render a normalised image at any (x, y) on its detector."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def fwhm_at(self, x: float, y: float) -> float:
        """Full width at half maximum in pixels at pixel position (x, y)."""

    @abstractmethod
    def compute_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """Render the PSF centred at (x, y).

        Parameters
        ----------
        x, y : float
            Position of the PSF centre in the detector's pixel coordinates.
        size : int, optional
            Side of the square stamp (made odd if even). Default: :meth:`default_size`.

        Returns
        -------
        numpy.ndarray
            ``(size, size)`` float64 array summing to 1. Its central pixel is the detector pixel
            ``(round(x), round(y))``, so the sub-pixel offset ``x - round(x)`` is rendered
            inside the stamp: stamp pixel ``[j, i]`` is detector pixel
            ``(round(x) - size//2 + i, round(y) - size//2 + j)``.
        """

    def compute_kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """Render the PSF model of position (x, y) centred exactly on the stamp's central pixel."""
        return self._render(x, y, 0.0, 0.0, size)

    def default_size(self, x: float = 0.0, y: float = 0.0) -> int:
        """Odd stamp size holding the PSF out to about 3.5 FWHM on each side."""
        half = int(math.ceil(3.5 * self.fwhm_at(x, y)))
        return 2 * max(half, 3) + 1

    def sigma_at(self, x: float, y: float) -> float:
        """Gaussian-equivalent sigma (FWHM / 2.3548) in pixels."""
        return self.fwhm_at(x, y) / GAUSSIAN_FWHM_PER_SIGMA

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, including ``type``."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Psf:
        """Inverse of :meth:`to_dict`."""

    def _render(self, x: float, y: float, dx: float, dy: float, size: int | None) -> np.ndarray:
        raise NotImplementedError

    def _stamp_offsets(self, x: float, y: float, size: int | None) -> tuple[int, float, float]:
        size = size or self.default_size(x, y)
        if size % 2 == 0:
            size += 1
        return size, x - round(x), y - round(y)


def _shape_matrix_inverse(e1: float, e2: float) -> np.ndarray:
    """Inverse of the unit-determinant shape matrix of distortion ellipticity (e1, e2)."""
    e_sq = e1 * e1 + e2 * e2
    if e_sq >= 1.0:
        raise ValueError(f"ellipticity |e| must be < 1, got e1={e1}, e2={e2}")
    norm = math.sqrt(1.0 - e_sq)
    # M = [[1+e1, e2], [e2, 1-e1]] / sqrt(1-e^2) has det 1; its inverse swaps the diagonal.
    return np.array([[1.0 - e1, -e2], [-e2, 1.0 + e1]]) / norm


def _quadrature_grid(size: int, dx: float, dy: float, order: int) -> tuple[np.ndarray, ...]:
    """Gauss-Legendre nodes and weights inside every pixel of a ``size`` x ``size`` stamp."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    half = size // 2
    coords = (np.arange(size) - half)[:, None] + 0.5 * nodes[None, :]
    u, v = np.meshgrid(coords.ravel() - dx, coords.ravel() - dy)
    w = np.tile(weights, size)
    return u, v, np.outer(w, w)


@dataclass(frozen=True)
class _EllipticalProfile(Psf):
    """Shared machinery of the elliptical analytic profiles (Gaussian, Moffat)."""

    fwhm: float
    e1: float = 0.0
    e2: float = 0.0

    def __post_init__(self) -> None:
        if not (self.fwhm > 0 and math.isfinite(self.fwhm)):
            raise ValueError(
                f"PSF FWHM must be a positive finite number of pixels, got {self.fwhm}"
            )
        _shape_matrix_inverse(self.e1, self.e2)

    def fwhm_at(self, x: float, y: float) -> float:
        return float(self.fwhm)

    def compute_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        size, dx, dy = self._stamp_offsets(x, y, size)
        return self._render(x, y, dx, dy, size)

    def _render(self, x: float, y: float, dx: float, dy: float, size: int | None) -> np.ndarray:
        size = size or self.default_size(x, y)
        if size % 2 == 0:
            size += 1
        # Integrate each pixel with Gauss-Legendre quadrature: for smooth profiles of FWHM >= 2 px
        # five nodes per axis keep the pixel integral within ~1e-6 of the peak, where a midpoint
        # oversampling of the same cost is off by ~1e-3.
        order = 5
        u, v, weights = _quadrature_grid(size, dx, dy, order)
        minv = _shape_matrix_inverse(self.e1, self.e2)
        r_sq = minv[0, 0] * u * u + 2 * minv[0, 1] * u * v + minv[1, 1] * v * v
        profile = self._profile(r_sq) * weights
        image = profile.reshape(size, order, size, order).sum(axis=(1, 3))
        return image / image.sum()

    @abstractmethod
    def _profile(self, r_sq: np.ndarray) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Psf:
        params = {k: v for k, v in data.items() if k != "type"}
        return cls(**params)


@register_psf
@dataclass(frozen=True)
class GaussianPsf(_EllipticalProfile):
    """Elliptical Gaussian PSF.

    Parameters
    ----------
    fwhm : float
        Geometric-mean FWHM in pixels.
    e1, e2 : float
        Distortion ellipticity components (0 for a round PSF).
    """

    kind: ClassVar[str] = "gaussian"

    def compute_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        size, dx, dy = self._stamp_offsets(x, y, size)
        if self.e1 == 0.0 and self.e2 == 0.0:
            return self._exact_round(dx, dy, size)
        return self._render(x, y, dx, dy, size)

    def _exact_round(self, dx: float, dy: float, size: int) -> np.ndarray:
        # A round Gaussian is separable, so its pixel integral is a product of erf differences.
        sigma = self.fwhm / GAUSSIAN_FWHM_PER_SIGMA
        edges = np.arange(size + 1) - size // 2 - 0.5
        scale = 1.0 / (math.sqrt(2.0) * sigma)
        px = np.diff(erf((edges - dx) * scale))
        py = np.diff(erf((edges - dy) * scale))
        image = np.outer(py, px)
        return image / image.sum()

    def _profile(self, r_sq: np.ndarray) -> np.ndarray:
        sigma = self.fwhm / GAUSSIAN_FWHM_PER_SIGMA
        return np.exp(-0.5 * r_sq / (sigma * sigma))


@register_psf
@dataclass(frozen=True)
class MoffatPsf(_EllipticalProfile):
    """Elliptical Moffat PSF ``(1 + r^2/alpha^2)^-beta``.

    Parameters
    ----------
    fwhm : float
        Geometric-mean FWHM in pixels.
    e1, e2 : float
        Distortion ellipticity components.
    beta : float
        Moffat index (atmospheric PSFs: about 2.5-4.7).
    """

    beta: float = 3.5
    kind: ClassVar[str] = "moffat"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 1.0:
            raise ValueError(f"Moffat beta must be > 1 for a finite flux, got {self.beta}")

    @property
    def alpha(self) -> float:
        """Core width ``alpha`` in pixels."""
        return self.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def _profile(self, r_sq: np.ndarray) -> np.ndarray:
        return (1.0 + r_sq / self.alpha**2) ** (-self.beta)

    def default_size(self, x: float = 0.0, y: float = 0.0) -> int:
        # Moffat wings are broad: 5 FWHM on each side keeps > 99% of the flux for beta >= 3.
        half = int(math.ceil(5.0 * self.fwhm))
        return 2 * max(half, 3) + 1


def _poly2d_terms(u: float, v: float, order: int) -> np.ndarray:
    return np.array([u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)])


def poly2d_n_terms(order: int) -> int:
    """Number of coefficients of a 2-D polynomial of total degree ``order``."""
    return (order + 1) * (order + 2) // 2


@register_psf
@dataclass(frozen=True)
class VariablePsf(Psf):
    """An analytic PSF whose FWHM and ellipticity vary smoothly across a detector.

    Each parameter is a 2-D polynomial in normalised coordinates ``u = 2 x / (width - 1) - 1``,
    ``v = 2 y / (height - 1) - 1`` (both in [-1, 1] over the detector); coefficients are ordered
    ``[1, v, v^2, ..., u, u v, ..., u^2, ...]`` (i = power of u, j = power of v).

    Parameters
    ----------
    profile : {"gaussian", "moffat"}
        Radial profile.
    width, height : int
        Detector size in pixels.
    fwhm_coeffs, e1_coeffs, e2_coeffs : tuple of float
        Polynomial coefficients; ``e1``/``e2`` default to a round PSF.
    beta : float
        Moffat index (ignored for Gaussian).
    """

    profile: str
    width: int
    height: int
    fwhm_coeffs: tuple[float, ...]
    e1_coeffs: tuple[float, ...] = (0.0,)
    e2_coeffs: tuple[float, ...] = (0.0,)
    beta: float = 3.5
    kind: ClassVar[str] = "variable"

    def __post_init__(self) -> None:
        if self.profile not in ("gaussian", "moffat"):
            raise ValueError(
                f"VariablePsf profile must be 'gaussian' or 'moffat', got {self.profile!r}"
            )
        for name in ("fwhm_coeffs", "e1_coeffs", "e2_coeffs"):
            coeffs = tuple(float(c) for c in getattr(self, name))
            _order_of(len(coeffs), name)  # validates the number of coefficients
            object.__setattr__(self, name, coeffs)

    def _eval(self, coeffs: tuple[float, ...], x: float, y: float) -> float:
        order = _order_of(len(coeffs), "coeffs")
        u = 2.0 * x / max(self.width - 1, 1) - 1.0
        v = 2.0 * y / max(self.height - 1, 1) - 1.0
        return float(np.dot(coeffs, _poly2d_terms(u, v, order)))

    def local_psf(self, x: float, y: float) -> GaussianPsf | MoffatPsf:
        """The fixed PSF at (x, y)."""
        fwhm = self._eval(self.fwhm_coeffs, x, y)
        e1 = self._eval(self.e1_coeffs, x, y)
        e2 = self._eval(self.e2_coeffs, x, y)
        if self.profile == "moffat":
            return MoffatPsf(fwhm=fwhm, e1=e1, e2=e2, beta=self.beta)
        return GaussianPsf(fwhm=fwhm, e1=e1, e2=e2)

    def fwhm_at(self, x: float, y: float) -> float:
        return self._eval(self.fwhm_coeffs, x, y)

    def default_size(self, x: float = 0.0, y: float = 0.0) -> int:
        return self.local_psf(x, y).default_size(x, y)

    def compute_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        return self.local_psf(x, y).compute_image(x, y, size)

    def compute_kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        return self.local_psf(x, y).compute_kernel_image(x, y, size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "profile": self.profile,
            "width": int(self.width),
            "height": int(self.height),
            "fwhm_coeffs": list(self.fwhm_coeffs),
            "e1_coeffs": list(self.e1_coeffs),
            "e2_coeffs": list(self.e2_coeffs),
            "beta": float(self.beta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariablePsf:
        return cls(
            profile=data["profile"],
            width=int(data["width"]),
            height=int(data["height"]),
            fwhm_coeffs=tuple(data["fwhm_coeffs"]),
            e1_coeffs=tuple(data.get("e1_coeffs", (0.0,))),
            e2_coeffs=tuple(data.get("e2_coeffs", (0.0,))),
            beta=float(data.get("beta", 3.5)),
        )


def _order_of(n_coeffs: int, name: str) -> int:
    order = 0
    while poly2d_n_terms(order) < n_coeffs:
        order += 1
    if poly2d_n_terms(order) != n_coeffs:
        raise ValueError(
            f"{name}: {n_coeffs} coefficients is not the size of a 2-D polynomial (1, 3, 6, 10, ...)"
        )
    return order

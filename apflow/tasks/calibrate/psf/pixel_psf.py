"""The pixel-basis PSF model: every pixel of the PSF image is a polynomial in (x, y).

:class:`PixelPsf` stores the centred, pixel-integrated PSF image as ``(n_terms, size, size)``
polynomial coefficients (PSFEx's model at native sampling). It renders the model at any
sub-pixel position by a Fourier shift -- exact for a band-limited image, which a
Nyquist-sampled PSF is -- and its :meth:`~PixelPsf.fwhm_at` undoes the pixel integration
before measuring the half-maximum area, so it reports the FWHM of the optical PSF like the
analytic core models. The model suits FWHM >~ 2.5 px (shift errors ~2e-4 of the peak at
3.5 px); sharper PSFs alias and would need an oversampled basis.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import scipy.fft

from ....core.psf import Psf, poly2d_n_terms, register_psf


def polynomial_terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    """2-D polynomial terms ``u^i v^j`` (``i + j <= order``), shape ``(n, n_terms)``.

    The order of the terms is that of :class:`~apflow.core.VariablePsf`:
    ``[1, v, v^2, ..., u, u v, ..., u^2, ...]`` (outer loop over the power of ``u``).
    """
    u = np.atleast_1d(np.asarray(u, np.float64))
    v = np.atleast_1d(np.asarray(v, np.float64))
    return np.stack([u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)], axis=-1)


def normalized_coordinates(
    x: np.ndarray, y: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates mapped to [-1, 1] over the CCD (as :class:`~apflow.core.VariablePsf`)."""
    u = 2.0 * np.asarray(x, np.float64) / max(width - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, np.float64) / max(height - 1, 1) - 1.0
    return u, v


def fourier_shift(stamps: np.ndarray, shift_x: np.ndarray, shift_y: np.ndarray) -> np.ndarray:
    """Shift a stack of stamps by sub-pixel amounts: ``out(i, j) = in(i - shift_x, j - shift_y)``.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, size, size)``.
    shift_x, shift_y : numpy.ndarray
        ``(n,)`` shifts in pixels (|shift| <= ~1 px; content moved beyond the stamp is lost).

    Returns
    -------
    numpy.ndarray
        ``(n, size, size)`` float64.

    Notes
    -----
    The stamps are zero-padded to an odd FFT length (no Nyquist bin, whose phase would be
    ambiguous for a real signal) with >= 4 px of margin so that the periodic wrap-around
    only touches the padding.
    """
    n, size, _ = stamps.shape
    length = _odd_fast_length(size + 4)
    spectrum = scipy.fft.rfft2(stamps, s=(length, length))
    # The phase ramp is separable: two small complex exponentials instead of one per element.
    fy = scipy.fft.fftfreq(length)[None, :, None]
    fx = scipy.fft.rfftfreq(length)[None, None, :]
    sx = np.asarray(shift_x, np.float64)[:, None, None]
    sy = np.asarray(shift_y, np.float64)[:, None, None]
    spectrum *= np.exp(-2j * np.pi * fy * sy)
    spectrum *= np.exp(-2j * np.pi * fx * sx)
    return scipy.fft.irfft2(spectrum, s=(length, length))[:, :size, :size]


def _odd_fast_length(n: int) -> int:
    """Smallest odd number >= n whose prime factors are 3, 5 and 7."""
    candidate = n + 1 - n % 2
    while True:
        rest = candidate
        for p in (3, 5, 7):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return candidate
        candidate += 2


@register_psf
class PixelPsf(Psf):
    """A pixel-basis PSF whose pixels are 2-D polynomials of the position on the CCD.

    Parameters
    ----------
    coeffs : array_like
        ``(n_terms, size, size)`` polynomial coefficients of each pixel of the centred,
        pixel-integrated PSF image; terms ordered as :func:`polynomial_terms`, in coordinates
        normalised to [-1, 1] over the CCD. ``size`` is odd; the PSF centre is the centre of
        the central pixel.
    width, height : int
        CCD size in pixels.
    order : int
        Polynomial degree (``n_terms = (order + 1)(order + 2) / 2``).
    """

    kind: ClassVar[str] = "pixel"

    def __init__(self, coeffs: Any, width: int, height: int, order: int) -> None:
        coeffs = np.asarray(coeffs, dtype=np.float64)
        if coeffs.ndim != 3 or coeffs.shape[1] != coeffs.shape[2] or coeffs.shape[1] % 2 == 0:
            raise ValueError(
                f"PixelPsf coeffs must be (n_terms, size, size), size odd; got {coeffs.shape}"
            )
        if coeffs.shape[0] != poly2d_n_terms(order):
            raise ValueError(
                f"order {order} needs {poly2d_n_terms(order)} terms, got {coeffs.shape[0]}"
            )
        self.coeffs = coeffs
        self.width = int(width)
        self.height = int(height)
        self.order = int(order)

    @property
    def size(self) -> int:
        """Side of the model stamp in pixels (odd)."""
        return int(self.coeffs.shape[1])

    def kernel_images(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred model images at positions (x, y): ``(n, size, size)``, each summing to 1."""
        u, v = normalized_coordinates(x, y, self.width, self.height)
        terms = polynomial_terms(u, v, self.order)
        images = np.tensordot(terms, self.coeffs, axes=(1, 0))
        return images / images.sum(axis=(1, 2), keepdims=True)

    def compute_image_stack(
        self, x: np.ndarray, y: np.ndarray, size: int | None = None
    ) -> np.ndarray:
        """Vectorised :meth:`compute_image` at many positions: ``(n, size, size)``.

        Each image is the model at (x, y) shifted to the sub-pixel offset ``x - round(x)``,
        ``y - round(y)`` (numpy's round-half-to-even, as Python's ``round``), cut or
        zero-padded to ``size`` and normalised to sum 1.
        """
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        size = size or self.size
        if size % 2 == 0:
            size += 1
        images = fourier_shift(self.kernel_images(x, y), x - np.round(x), y - np.round(y))
        images = _resize_centered(images, size)
        return images / images.sum(axis=(1, 2), keepdims=True)

    def compute_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        return self.compute_image_stack(np.array([x]), np.array([y]), size)[0]

    def compute_kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        size = size or self.size
        if size % 2 == 0:
            size += 1
        image = _resize_centered(self.kernel_images(np.array([x]), np.array([y])), size)[0]
        return image / image.sum()

    def default_size(self, x: float = 0.0, y: float = 0.0) -> int:
        return self.size

    def fwhm_at(self, x: float, y: float) -> float:
        """FWHM (px) of the optical PSF at (x, y): geometric mean of the half-maximum ellipse axes.

        The model image is Fourier-interpolated 16x finer after dividing out the pixel
        response (``sinc(fx) sinc(fy)``), so this is the FWHM before pixel integration -- the
        ``fwhm`` of the core analytic models -- and ``2 sqrt(area / pi)`` of the region above
        half the peak.
        """
        return half_maximum_fwhm(self.kernel_images(np.array([x]), np.array([y]))[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "width": self.width,
            "height": self.height,
            "order": self.order,
            "coeffs": self.coeffs.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelPsf:
        return cls(
            coeffs=data["coeffs"],
            width=int(data["width"]),
            height=int(data["height"]),
            order=int(data["order"]),
        )

    def __repr__(self) -> str:
        return f"PixelPsf(size={self.size}, order={self.order}, width={self.width}, height={self.height})"


def half_maximum_fwhm(image: np.ndarray, upsample: int = 16) -> float:
    """FWHM of the continuous PSF underlying a centred, pixel-integrated odd-sized image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(size, size)`` image, PSF centre on the central pixel.
    upsample : int
        Sub-pixel sampling of the interpolated profile.

    Returns
    -------
    float
        ``2 sqrt(A / pi)`` with ``A`` the area (px^2) above half the maximum.
    """
    size = image.shape[0]
    spectrum = np.fft.fft2(np.fft.ifftshift(image))
    freq = np.fft.fftfreq(size)
    spectrum /= np.outer(np.sinc(freq), np.sinc(freq))
    fine = size * upsample
    padded = np.zeros((fine, fine), complex)
    index = np.round(freq * size).astype(int) % fine  # integer frequencies into the big grid
    padded[np.ix_(index, index)] = spectrum
    profile = np.fft.ifft2(padded).real
    area = np.count_nonzero(profile > 0.5 * profile.max()) / upsample**2
    return float(2.0 * math.sqrt(area / math.pi))


def _resize_centered(images: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a stack of odd-sized centred stamps to ``size`` (odd)."""
    current = images.shape[1]
    if size == current:
        return images
    if size < current:
        lo = (current - size) // 2
        return images[:, lo : lo + size, lo : lo + size]
    out = np.zeros((images.shape[0], size, size))
    lo = (size - current) // 2
    out[:, lo : lo + current, lo : lo + current] = images
    return out

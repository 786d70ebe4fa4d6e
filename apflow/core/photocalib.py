"""Photometric calibration: counts -> nJy."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# AB magnitude of 1 nJy: m_AB = -2.5 log10(f / 3631 Jy) -> 31.4 for f = 1 nJy.
AB_MAG_OF_1_NJY = 2.5 * np.log10(3631e9)


def njy_to_ab_mag(flux_njy: np.ndarray | float) -> np.ndarray | float:
    """AB magnitude of a flux in nJy (NaN for non-positive fluxes)."""
    flux = np.asarray(flux_njy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, AB_MAG_OF_1_NJY - 2.5 * np.log10(flux), np.nan)
    return mag if mag.ndim else float(mag)


def ab_mag_to_njy(mag: np.ndarray | float) -> np.ndarray | float:
    """Flux in nJy of an AB magnitude."""
    flux = 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_MAG_OF_1_NJY))
    return flux if flux.ndim else float(flux)


@dataclass(frozen=True)
class PhotoCalib:
    """Flux calibration of an exposure.

    Parameters
    ----------
    calibration_mean : float
        nJy per count (instrumental flux unit). A zero point ``zp`` (AB mag of one count)
        corresponds to ``calibration_mean = 10**(-0.4 * (zp - 31.4))``.
    calibration_err : float
        1-sigma uncertainty of ``calibration_mean`` in nJy per count.
    """

    calibration_mean: float
    calibration_err: float = 0.0

    @classmethod
    def from_zero_point(cls, zero_point: float, zero_point_err: float = 0.0) -> PhotoCalib:
        """Build from an AB zero point (magnitude of a source giving one count)."""
        mean = float(ab_mag_to_njy(zero_point))
        # d(flux)/d(mag) = -0.4 ln(10) flux
        return cls(mean, abs(0.4 * np.log(10.0) * mean * zero_point_err))

    @property
    def zero_point(self) -> float:
        """AB magnitude of one count."""
        return float(AB_MAG_OF_1_NJY - 2.5 * np.log10(self.calibration_mean))

    @property
    def zero_point_err(self) -> float:
        """1-sigma uncertainty of :attr:`zero_point` in magnitudes."""
        return float(2.5 / np.log(10.0) * self.calibration_err / self.calibration_mean)

    def instflux_to_njy(
        self, instflux: np.ndarray | float, instflux_err: np.ndarray | float | None = None
    ) -> tuple[np.ndarray | float, np.ndarray | float | None]:
        """Convert instrumental flux (counts) and its error to nJy.

        The error adds the calibration uncertainty in quadrature, as Rubin's PhotoCalib does.
        """
        flux = np.asarray(instflux, dtype=float) * self.calibration_mean
        if instflux_err is None:
            return flux, None
        inst = np.asarray(instflux, dtype=float)
        err = np.hypot(
            np.asarray(instflux_err, dtype=float) * self.calibration_mean,
            inst * self.calibration_err,
        )
        return flux, err

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhotoCalib:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["calibration_mean"]), float(data.get("calibration_err", 0.0)))

"""Combine the one or two snaps of a visit into one exposure (Rubin's snap combine, step 1).

Two snaps are *summed* (not averaged), as Rubin does: image and variance add, masks are OR-ed
and the exposure time is the sum. Because the two snaps see the same sky, their difference is
noise plus anything that happened in only one of them; pixels whose difference is far beyond
the noise are cosmic-ray hits (or other transient artefacts) in one snap. They are flagged in
the ``CR`` plane and, by default, repaired from the other snap scaled by the exposure times.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ...core import Exposure, MaskPlanes, VisitInfo
from ...errors import ConfigError, TaskError
from ..base import Task, TaskConfig


@dataclasses.dataclass
class SnapCombineConfig(TaskConfig):
    """Configuration of :class:`SnapCombineTask`.

    Attributes
    ----------
    cr_threshold : float
        A pixel whose snap difference exceeds this many standard deviations of the difference
        is a cosmic-ray (CR) hit in the brighter snap. Default 5.0.
    cr_grow_threshold : float
        Neighbours (8-connected) of a CR pixel whose difference exceeds this many standard
        deviations with the same sign are flagged too, to catch the CR's fainter edges.
        Default 2.5.
    relative_tolerance : float
        Fractional snap-to-snap change of a pixel allowed as one standard deviation on top of
        the noise. Seeing and guiding change between snaps, so the cores of bright stars differ
        by a few per cent; without this term they would be flagged as CRs. Default 0.05.
    ignored_mask_planes : tuple of str
        Pixels with any of these planes set (in either snap) are never flagged as CRs
        (saturated pixels carry no information about the difference). Default
        ``("SAT", "BAD", "NO_DATA")``.
    repair_cosmic_rays : bool
        Replace a CR pixel of the combined image by the other snap's value scaled to the total
        exposure time (variance scaled accordingly). Default True.
    """

    cr_threshold: float = 5.0
    cr_grow_threshold: float = 2.5
    relative_tolerance: float = 0.05
    ignored_mask_planes: tuple[str, ...] = ("SAT", "BAD", "NO_DATA")
    repair_cosmic_rays: bool = True

    def validate(self) -> None:
        if not self.cr_threshold > 0:
            raise ConfigError(f"cr_threshold must be > 0, got {self.cr_threshold}")
        if not 0 < self.cr_grow_threshold <= self.cr_threshold:
            raise ConfigError("cr_grow_threshold must be in (0, cr_threshold]")
        if self.relative_tolerance < 0:
            raise ConfigError("relative_tolerance must be >= 0")
        MaskPlanes.bits(*self.ignored_mask_planes)


@dataclasses.dataclass
class SnapCombineResult:
    """Output of :class:`SnapCombineTask`.

    Attributes
    ----------
    exposure : Exposure
        The combined exposure (the input object itself for a single snap).
    n_snaps : int
        Number of snaps combined (1 or 2).
    n_cr_pixels : int
        Pixels flagged as CR hits between the snaps (0 for a single snap).
    """

    exposure: Exposure
    n_snaps: int
    n_cr_pixels: int

    def summary(self) -> dict[str, int]:
        """Small JSON numbers for the engine's report."""
        return {"n_snaps": self.n_snaps, "n_cr_pixels": self.n_cr_pixels}


class SnapCombineTask(Task):
    """Sum one or two snaps into one exposure, flagging and repairing CRs seen in one snap."""

    ConfigClass = SnapCombineConfig
    config: SnapCombineConfig

    def run(self, exposures: Exposure | Sequence[Exposure]) -> SnapCombineResult:
        """Combine the snaps of one visit and detector.

        Parameters
        ----------
        exposures : Exposure or sequence of Exposure
            One exposure, or the two snaps (same shape and detector). Pixel values in counts.

        Returns
        -------
        SnapCombineResult

        Raises
        ------
        TaskError
            For any number of snaps other than 1 or 2, or snaps of different shapes.
        """
        snaps = [exposures] if isinstance(exposures, Exposure) else list(exposures)
        if len(snaps) == 1:
            return SnapCombineResult(exposure=snaps[0], n_snaps=1, n_cr_pixels=0)
        if len(snaps) != 2:
            raise TaskError(f"snap combine: can only process 1 or 2 snaps, got {len(snaps)}")
        first, second = snaps
        if first.shape != second.shape:
            raise TaskError(f"snap combine: snap shapes differ: {first.shape} vs {second.shape}")
        if first.detector != second.detector:
            raise TaskError(
                f"snap combine: snaps are of different detectors ({first.detector}, {second.detector})"
            )
        exposure, n_cr = combine_two_snaps(first, second, self.config)
        return SnapCombineResult(exposure=exposure, n_snaps=2, n_cr_pixels=n_cr)


def combine_two_snaps(
    first: Exposure, second: Exposure, config: SnapCombineConfig
) -> tuple[Exposure, int]:
    """Sum two snaps, flag pixels that differ beyond the noise as CRs, and repair them.

    Parameters
    ----------
    first, second : Exposure
        The snaps, in counts, with variance planes (NaN variance disables CR flagging).
    config : SnapCombineConfig

    Returns
    -------
    exposure : Exposure
        Sum of the snaps; ``visit_info.exposure_time`` is the sum, ``mjd`` the exposure-time
        weighted mean of the midpoints. WCS, PSF and calibration come from ``first``.
    n_cr_pixels : int
        Number of pixels flagged ``CR``.
    """
    t1, t2 = _exposure_time(first), _exposure_time(second)
    # Fraction of the total signal expected in the first snap.
    share = t1 / (t1 + t2)
    a = first.image.astype(np.float64)
    b = second.image.astype(np.float64)
    va = first.variance.astype(np.float64)
    vb = second.variance.astype(np.float64)
    total = a + b
    difference = a - share * total  # = (1 - share) a - share b: zero mean without CRs
    diff_var = (1 - share) ** 2 * va + share**2 * vb
    diff_var += (config.relative_tolerance * share * (1 - share) * np.abs(total)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        significance = difference / np.sqrt(diff_var)
    significance[~np.isfinite(significance)] = 0.0
    ignored = ((first.mask | second.mask) & MaskPlanes.bits(*config.ignored_mask_planes)) != 0
    significance[ignored] = 0.0

    cr = np.abs(significance) > config.cr_threshold
    if cr.any():
        # Grow into same-sign neighbours above the lower threshold (one ring is enough for
        # CR tracks, whose wings fall off within a pixel or two).
        grown = ndimage.binary_dilation(cr, structure=np.ones((3, 3), bool))
        positive = ndimage.binary_dilation(cr & (significance > 0), structure=np.ones((3, 3), bool))
        same_sign = np.where(positive, significance, -significance)
        cr |= grown & (same_sign > config.cr_grow_threshold)

    image = total
    variance = va + vb
    if config.repair_cosmic_rays and cr.any():
        hit_first = cr & (significance > 0)
        hit_second = cr & (significance < 0)
        image = np.where(hit_first, b / (1 - share), image)
        variance = np.where(hit_first, vb / (1 - share) ** 2, variance)
        image = np.where(hit_second, a / share, image)
        variance = np.where(hit_second, va / share**2, variance)
    mask = first.mask | second.mask
    mask[cr] |= int(MaskPlanes.CR)

    combined = dataclasses.replace(
        first,
        image=image.astype(np.float32),
        mask=mask,
        variance=variance.astype(np.float32),
        visit_info=_combined_visit_info(first.visit_info, second.visit_info, t1, t2),
        metadata={**first.metadata, "n_snaps": 2, "snap_cr_pixels": int(cr.sum())},
    )
    return combined, int(cr.sum())


def _exposure_time(exposure: Exposure) -> float:
    """Exposure time in seconds; 1.0 when unknown (then the snaps count as equal)."""
    info = exposure.visit_info
    if info is None or not math.isfinite(info.exposure_time) or info.exposure_time <= 0:
        return 1.0
    return float(info.exposure_time)


def _combined_visit_info(
    first: VisitInfo | None, second: VisitInfo | None, t1: float, t2: float
) -> VisitInfo | None:
    if first is None:
        return second
    mjd = first.mjd
    if second is not None and math.isfinite(first.mjd) and math.isfinite(second.mjd):
        mjd = (t1 * first.mjd + t2 * second.mjd) / (t1 + t2)
    exposure_time = first.exposure_time
    if second is not None and math.isfinite(first.exposure_time):
        exposure_time = first.exposure_time + second.exposure_time
    return dataclasses.replace(first, mjd=mjd, exposure_time=exposure_time)

"""Small real tasks that exercise the engine: per-CCD statistics, a per-visit gather, a scatter.

``workflows/example.yaml`` chains them into a smoke workflow over any camera:

1. :class:`ImageStatsTask` per (visit, detector): sigma-clipped mean and standard deviation of the
   unmasked pixels of ``post_isr`` (:func:`apflow.tasks.stats.clipped_stats`).
2. :class:`VisitStatsTask` per visit (a gather): the visit's sky level, the pixel-weighted mean
   of its detectors' clipped means.
3. :class:`NormalizeTask` per (visit, detector) (a scatter of the visit level back to each CCD):
   the exposure divided by its visit's level, so CCDs of different visits share one scale.

They are pure numpy, do no I/O and know nothing of Dask, like every apflow task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import Exposure
from ..errors import ConfigError, TaskError
from .base import Task, TaskConfig
from .stats import clipped_stats

__all__ = [
    "ImageStatsConfig",
    "ImageStatsResult",
    "ImageStatsTask",
    "NormalizeConfig",
    "NormalizeResult",
    "NormalizeTask",
    "VisitStatsConfig",
    "VisitStatsResult",
    "VisitStatsTask",
]


@dataclass
class ImageStatsConfig(TaskConfig):
    """Configuration of :class:`ImageStatsTask`.

    Attributes
    ----------
    n_sigma : float
        Clipping threshold in standard deviations. Default 3.0.
    n_iter : int
        Clipping iterations. Default 3.
    bad_mask_planes : list of str
        Pixels with any of these mask planes are ignored. Default BAD, SAT, NO_DATA.
    min_good_fraction : float
        Fewer usable (finite, unmasked) pixels than this fraction of the image is an error: the
        CCD is unusable (e.g. read out as NaN). Default 0.1.
    repeat : int
        Recompute the statistics this many times. Only for benchmarks and tests that need
        CPU-heavy quanta of a chosen length; the result does not change. Default 1.
    """

    n_sigma: float = 3.0
    n_iter: int = 3
    bad_mask_planes: list[str] = field(default_factory=lambda: ["BAD", "SAT", "NO_DATA"])
    min_good_fraction: float = 0.1
    repeat: int = 1

    def validate(self) -> None:
        if self.n_sigma <= 0 or self.n_iter < 0 or self.repeat < 1:
            raise ConfigError("ImageStatsConfig: need n_sigma > 0, n_iter >= 0 and repeat >= 1")
        if not 0.0 <= self.min_good_fraction <= 1.0:
            raise ConfigError("ImageStatsConfig.min_good_fraction must be in [0, 1]")


@dataclass
class ImageStatsResult:
    """Statistics of one CCD, as a JSON-ready dict in ``stats``.

    ``stats`` holds ``mean`` and ``std`` (clipped as astropy's ``sigma_clipped_stats``: median
    centre, ddof=0; image units), ``median`` (of all usable pixels), ``n_pixels`` (kept after
    clipping) and ``n_good`` (usable pixels before clipping).
    """

    stats: dict[str, float | int]

    def summary(self) -> dict[str, float | int]:
        """Numbers for the run report."""
        return {"mean": self.stats["mean"], "std": self.stats["std"]}


class ImageStatsTask(Task):
    """Sigma-clipped statistics of an exposure's usable pixels."""

    ConfigClass = ImageStatsConfig
    config: ImageStatsConfig

    def run(self, exposure: Exposure) -> ImageStatsResult:
        """Measure the clipped mean and standard deviation.

        Parameters
        ----------
        exposure : Exposure
            Any exposure; masked and non-finite pixels are ignored.

        Raises
        ------
        TaskError
            If fewer than ``min_good_fraction`` of the pixels are usable.
        """
        cfg = self.config
        bad = exposure.mask_of(*cfg.bad_mask_planes) if cfg.bad_mask_planes else False
        good = np.isfinite(exposure.image) & ~bad
        n_good = int(good.sum())
        if n_good == 0 or n_good < cfg.min_good_fraction * exposure.image.size:
            raise TaskError(
                f"only {n_good} of {exposure.image.size} pixels are usable "
                f"(min_good_fraction={cfg.min_good_fraction})"
            )
        # the image's own precision: the clipping sums in float64 either way
        values = exposure.image[good]
        for _ in range(cfg.repeat):
            clipped = clipped_stats(values, cfg.n_sigma, cfg.n_iter)
        return ImageStatsResult(
            {
                "mean": float(clipped.mean),
                "std": float(clipped.std),
                "median": float(np.median(values.astype(np.float64))),
                "n_pixels": int(clipped.n_kept),
                "n_good": n_good,
            }
        )


@dataclass
class VisitStatsConfig(TaskConfig):
    """Configuration of :class:`VisitStatsTask` (nothing to configure yet)."""


@dataclass
class VisitStatsResult:
    """The visit's level: ``stats`` has ``level``, ``n_detectors`` and per-detector means."""

    stats: dict[str, Any]

    def summary(self) -> dict[str, float | int]:
        """Numbers for the run report."""
        return {"level": self.stats["level"], "n_detectors": self.stats["n_detectors"]}


class VisitStatsTask(Task):
    """Combine the detectors' statistics of one visit into the visit's sky level."""

    ConfigClass = VisitStatsConfig

    def run(
        self,
        detector_stats: list[dict[str, Any]],
        input_data_ids: dict[str, list[dict[str, Any]]] | None = None,
    ) -> VisitStatsResult:
        """Pixel-weighted mean of the detectors' clipped means.

        Parameters
        ----------
        detector_stats : list of dict
            :class:`ImageStatsTask` statistics of the visit's detectors.
        input_data_ids : dict, optional
            Data ids of the gathered inputs, to label the per-detector levels.

        Raises
        ------
        TaskError
            If no detector statistics are given or the level is not positive.
        """
        if not detector_stats:
            raise TaskError("no detector statistics to combine")
        means = np.array([s["mean"] for s in detector_stats], dtype=np.float64)
        weights = np.array([s["n_pixels"] for s in detector_stats], dtype=np.float64)
        level = float(np.average(means, weights=weights))
        if not np.isfinite(level) or level <= 0:
            raise TaskError(f"visit level {level} is not positive: cannot normalise by it")
        ids = (input_data_ids or {}).get("detector_stats") or [{} for _ in detector_stats]
        per_detector = {
            str(i.get("detector", n)): float(m)
            for n, (i, m) in enumerate(zip(ids, means, strict=True))
        }
        return VisitStatsResult(
            {"level": level, "n_detectors": len(detector_stats), "detector_means": per_detector}
        )


@dataclass
class NormalizeConfig(TaskConfig):
    """Configuration of :class:`NormalizeTask`.

    Attributes
    ----------
    reference_level : float
        Level the visit's level is scaled to (image units). Default 1.0.
    """

    reference_level: float = 1.0

    def validate(self) -> None:
        if not self.reference_level > 0:
            raise ConfigError("NormalizeConfig.reference_level must be positive")


@dataclass
class NormalizeResult:
    """The normalised exposure."""

    normalized: Exposure

    def summary(self) -> dict[str, float]:
        """Numbers for the run report."""
        return {"scale": float(self.normalized.metadata.get("normalization_level", np.nan))}


class NormalizeTask(Task):
    """Scale an exposure by ``reference_level / visit level`` (variance by its square)."""

    ConfigClass = NormalizeConfig
    config: NormalizeConfig

    def run(self, exposure: Exposure, visit_stats: dict[str, Any]) -> NormalizeResult:
        """Scale one CCD to the visit's common level.

        Parameters
        ----------
        exposure : Exposure
        visit_stats : dict
            :class:`VisitStatsTask` output for the exposure's visit.
        """
        level = float(visit_stats["level"])
        if not np.isfinite(level) or level <= 0:
            raise TaskError(f"visit level {level} is not positive")
        # float32 arithmetic throughout, so every scheduler gives bit-identical pixels
        scale = np.float32(self.config.reference_level / level)
        metadata = dict(exposure.metadata)
        metadata["normalization_level"] = level
        metadata["normalization_scale"] = float(scale)
        normalized = dataclasses.replace(
            exposure,
            image=exposure.image * scale,
            mask=exposure.mask.copy(),
            variance=exposure.variance * (scale * scale),
            metadata=metadata,
        )
        return NormalizeResult(normalized)

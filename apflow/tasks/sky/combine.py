"""Per-detector combination of binned residual skies into a sky frame (``averageBackgrounds``).

For each 32-px bin, the residual skies of all visits (fractions of the sky level) are combined
with a sigma-clipped mean across visits (3 sigma, 3 passes, as Rubin), which rejects bins spoiled
by an object in one visit; the survivors are averaged with weights good pixels x visit scale
(inverse Poisson variance of a residual in units of the sky), so bright, unmasked visits count
more (Rubin: unweighted). Bins that no visit measured are filled from their neighbours (a smooth
membrane, :func:`~apflow.tasks.sky.interpolate.fill_bad_bins`) rather than with Rubin's single
median value, which puts steps into the frame. The full-resolution frame is the local cubic
interpolation through the bin centres whose bin means equal the binned frame
(:func:`~apflow.tasks.sky.interpolate.upsample_bins`).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core import Detector, Exposure, MaskPlanes
from ...errors import ConfigError, TaskError, format_data_id
from ..base import Task, TaskConfig
from ..stats import clipped_stats
from .bundle import ArrayBundle, as_bundle, jsonable_floats
from .interpolate import fill_bad_bins, upsample_bins
from .measure import RESIDUAL_KIND

__all__ = [
    "SKY_FRAME_BINNED_KIND",
    "SkyCombineConfig",
    "SkyCombineResult",
    "SkyCombineTask",
    "combine_residual_skies",
    "plane_checksum",
]

SKY_FRAME_BINNED_KIND = "sky_frame_binned"

_log = logging.getLogger(__name__)

_UNITS = {
    "local": "fraction of the local sky level (the visit's focal-plane background)",
    "visit_scale": "fraction of the visit's sky level (its scale)",
}


@dataclass
class SkyCombineConfig(TaskConfig):
    """Configuration of :class:`SkyCombineTask`.

    Attributes
    ----------
    nsigma : float
        Clipping half-width across visits, standard deviations. Default 3.0.
    n_iter : int
        Clipping passes. Default 3.
    min_visits : int
        Fewer usable visits than this is allowed but logged as a warning and recorded: the
        frame is noisier and clipping cannot reject objects. Default 3.
    weighted : bool
        Average the clipping survivors with weights good pixels x visit scale (default True);
        False gives Rubin's plain clipped mean.
    """

    nsigma: float = 3.0
    n_iter: int = 3
    min_visits: int = 3
    weighted: bool = True

    def validate(self) -> None:
        if self.nsigma <= 0 or self.n_iter < 0 or self.min_visits < 1:
            raise ConfigError("SkyCombineConfig: need nsigma > 0, n_iter >= 0, min_visits >= 1")


@dataclass
class SkyCombineResult:
    """The sky frame of one detector.

    Attributes
    ----------
    sky_frame : Exposure
        ``image``: float32 full-resolution sky frame (fraction of the sky level); ``mask``:
        INTRP where the bin was filled from neighbours; ``variance``: the squared error of the
        mean across visits, interpolated like the image; ``metadata``: provenance (see
        :func:`combine_residual_skies`).
    sky_frame_binned : ArrayBundle
        Arrays ``sky`` (float32, filled), ``n_visits`` (int32 visits kept per bin), ``error``
        (float32, error of the mean) and ``filled`` (bool); attrs ``kind``, ``bin_size``,
        ``shape``, ``detector``, ``band``, ``physical_filter``, ``input_visits``. Small: what
        sky correction and the camera mosaic read.
    warnings : list of str
        Problems that did not stop the combination (missing visits, empty inputs).
    """

    sky_frame: Exposure
    sky_frame_binned: ArrayBundle
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Number of visits, filled bins and the frame's rms."""
        meta = self.sky_frame.metadata
        return {
            "n_visits": meta["n_inputs"],
            "filled_bins": meta["filled_bins"],
            "rms": float(np.std(self.sky_frame_binned["sky"])),
            "warnings": len(self.warnings),
        }


class SkyCombineTask(Task):
    """Combine one detector's binned residual skies over visits into its sky frame."""

    ConfigClass = SkyCombineConfig
    config: SkyCombineConfig

    def run(
        self,
        residual_skies: list[ArrayBundle],
        detector: Detector | None = None,
        data_id: dict[str, Any] | None = None,
    ) -> SkyCombineResult:
        """Clipped mean over visits, fill empty bins, interpolate to full resolution.

        Parameters
        ----------
        residual_skies : list of ArrayBundle
            Gathered :class:`SkyMeasurementTask` outputs of one detector, one per visit.
        detector : Detector, optional
            Context parameter; checked against the inputs and recorded.
        data_id : dict, optional
            Context parameter, used in error messages.

        Raises
        ------
        TaskError
            With no inputs, inputs of several physical filters or bands, several detectors,
            different bin geometry, a visit given twice, or no measured bin at all.
        """
        return combine_residual_skies(
            residual_skies,
            detector=detector,
            data_id=data_id,
            nsigma=self.config.nsigma,
            n_iter=self.config.n_iter,
            min_visits=self.config.min_visits,
            weighted=self.config.weighted,
            config=self.config.to_dict(),
        )


def combine_residual_skies(
    residual_skies: list[ArrayBundle],
    detector: Detector | None = None,
    data_id: dict[str, Any] | None = None,
    nsigma: float = 3.0,
    n_iter: int = 3,
    min_visits: int = 3,
    config: dict[str, Any] | None = None,
    weighted: bool = True,
) -> SkyCombineResult:
    """The sky frame of one detector from its binned residual skies.

    Parameters
    ----------
    residual_skies : list of ArrayBundle
        One per visit (order irrelevant).
    detector : Detector, optional
    data_id : dict, optional
        Quantum data id for messages; ``{"detector": id}`` when omitted.
    nsigma, n_iter, min_visits, weighted
        See :class:`SkyCombineConfig`.
    config : dict, optional
        Recorded in the metadata.

    Returns
    -------
    SkyCombineResult
        ``sky_frame.metadata`` holds ``obstype`` ("SKY"), ``units``, ``detector``,
        ``detector_name``, ``band``, ``physical_filter``, ``bin_size``, ``interpolation``,
        ``input_visits``, ``input_scales`` (visit -> scale), ``n_inputs``, ``visits_per_bin``
        (min/median/max), ``filled_bins``, ``mjd_start``/``mjd_end``/``mjd_mean``,
        ``calib_date``, ``checksums`` (sha256 of each plane), ``config``, ``created`` (UTC ISO
        time) and ``warnings``.
    """
    where = (
        f"sky_frame [{format_data_id(data_id or ({'detector': detector.id} if detector else {}))}]"
    )
    if not residual_skies:
        raise TaskError(f"{where}: no residual skies to combine (zero input visits)")
    bundles = [as_bundle(b, RESIDUAL_KIND, ("sky",)) for b in residual_skies]
    _check_consistent(bundles, detector, where)
    warnings: list[str] = []

    visits = [b.attrs.get("visit") for b in bundles]
    usable = []
    for bundle in bundles:
        if np.isfinite(bundle["sky"]).any():
            usable.append(bundle)
        else:
            warnings.append(f"visit {bundle.attrs.get('visit')} has no measured bin; skipped")
    if not usable:
        raise TaskError(f"{where}: none of the {len(bundles)} input visits has a measured bin")
    if len(usable) < min_visits:
        warnings.append(
            f"only {len(usable)} usable visit(s) (min_visits={min_visits}): the frame is noisy "
            "and objects cannot be clipped"
        )
    for message in warnings:
        _log.warning("%s: %s", where, message)

    first = usable[0].attrs
    bin_size = int(first["bin_size"])
    shape = (int(first["shape"][0]), int(first["shape"][1]))
    stack = np.stack([np.asarray(b["sky"], dtype=np.float64) for b in usable], axis=-1)
    stats = clipped_stats(stack, nsigma=nsigma, n_iter=n_iter)
    filled = stats.n_kept == 0
    mean = stats.mean
    if weighted:
        mean = _weighted_survivor_mean(stack, usable, stats)
    binned = fill_bad_bins(mean, filled)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(stats.n_kept >= 2, stats.std / np.sqrt(stats.n_kept), np.nan)
    if np.isfinite(error).any():
        error = fill_bad_bins(error, ~np.isfinite(error))

    image = upsample_bins(binned, shape, bin_size)
    variance = upsample_bins(error**2, shape, bin_size) if np.isfinite(error).all() else None
    pixel_filled = np.repeat(np.repeat(filled, bin_size, axis=0), bin_size, axis=1)
    mask = np.where(pixel_filled[: shape[0], : shape[1]], np.int32(MaskPlanes.INTRP), np.int32(0))
    if variance is not None:
        # the spline can dip below zero between bins of very different errors
        np.maximum(variance, 0.0, out=variance)

    used_visits = [b.attrs.get("visit") for b in usable]
    mjds = [b.attrs["mjd"] for b in usable if b.attrs.get("mjd") is not None]
    metadata: dict[str, Any] = {
        "obstype": "SKY",
        "units": _UNITS.get(first.get("normalization", "visit_scale"), ""),
        "detector": first.get("detector"),
        "detector_name": first.get("detector_name"),
        "band": first.get("band", ""),
        "physical_filter": first.get("physical_filter", ""),
        "normalization": first.get("normalization", "visit_scale"),
        "bin_size": bin_size,
        "interpolation": "mean-preserving local cubic (Catmull-Rom) between bin centres",
        "input_visits": used_visits,
        "input_scales": jsonable_floats(
            {b.attrs.get("visit"): float(b.attrs.get("scale", np.nan)) for b in usable}
        ),
        "n_inputs": len(usable),
        "n_given": len(visits),
        "visits_per_bin": {
            "min": int(stats.n_kept.min()),
            "median": float(np.median(stats.n_kept)),
            "max": int(stats.n_kept.max()),
        },
        "filled_bins": int(filled.sum()),
        "mjd_start": min(mjds) if mjds else None,
        "mjd_end": max(mjds) if mjds else None,
        "mjd_mean": float(np.mean(mjds)) if mjds else None,
        "calib_date": _calib_date(mjds),
        "config": dict(config or {}),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "warnings": list(warnings),
    }
    frame = Exposure(
        image=image,
        mask=mask,
        variance=variance,
        detector=first.get("detector"),
        metadata=metadata,
    )
    frame.metadata["checksums"] = {
        name: plane_checksum(getattr(frame, name)) for name in ("image", "mask", "variance")
    }
    binned_bundle = ArrayBundle(
        {
            "sky": binned.astype(np.float32),
            "n_visits": stats.n_kept.astype(np.int32),
            "error": np.asarray(error, dtype=np.float32),
            "filled": filled,
        },
        {
            "kind": SKY_FRAME_BINNED_KIND,
            "bin_size": bin_size,
            "shape": [shape[0], shape[1]],
            "detector": first.get("detector"),
            "detector_name": first.get("detector_name"),
            "band": metadata["band"],
            "physical_filter": metadata["physical_filter"],
            "normalization": metadata["normalization"],
            "input_visits": used_visits,
        },
    )
    return SkyCombineResult(frame, binned_bundle, warnings)


def _weighted_survivor_mean(
    stack: np.ndarray, bundles: list[ArrayBundle], stats: Any
) -> np.ndarray:
    """Mean of the clipping survivors weighted by inverse noise: good pixels x sky level.

    A residual in units of the sky level has variance ~ 1 / (n_pixels * sky) for Poisson
    noise, so brighter and less masked visits count more.
    """
    weights = np.stack(
        [
            np.asarray(b["counts"], dtype=np.float64) * float(b.attrs.get("scale", 1.0))
            for b in bundles
        ],
        axis=-1,
    )
    inside = (
        np.isfinite(stack) & (stack >= stats.lower[..., None]) & (stack <= stats.upper[..., None])
    )
    w = np.where(inside, weights, 0.0)
    total = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.where(inside, stack, 0.0) * w).sum(axis=-1) / total
    return np.where(total > 0, mean, np.nan)


def plane_checksum(plane: np.ndarray) -> str:
    """``"sha256:<hex>"`` of a plane's little-endian C-order bytes (with dtype and shape)."""
    array = np.ascontiguousarray(plane)
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _check_consistent(bundles: list[ArrayBundle], detector: Detector | None, where: str) -> None:
    """Raise TaskError unless all inputs share filter, band, detector and bin geometry."""
    for key, label in (
        ("physical_filter", "physical filters"),
        ("band", "bands"),
        ("normalization", "normalisations"),
    ):
        groups: dict[str, list[Any]] = defaultdict(list)
        for b in bundles:
            groups[str(b.attrs.get(key, ""))].append(b.attrs.get("visit"))
        if len(groups) > 1:
            listing = "; ".join(
                f"{name or '<none>'}: visits {sorted(v, key=str)}"
                for name, v in sorted(groups.items())
            )
            raise TaskError(
                f"{where}: inputs mix {label} ({listing}); a sky frame combines one filter "
                "measured one way"
            )
    detectors = {b.attrs.get("detector") for b in bundles}
    if detector is not None:
        detectors.add(int(detector.id))
    if len(detectors) > 1:
        raise TaskError(f"{where}: inputs from several detectors {sorted(detectors, key=str)}")
    geometry = {(b.attrs["bin_size"], tuple(b.attrs["shape"]), b["sky"].shape) for b in bundles}
    if len(geometry) > 1:
        raise TaskError(f"{where}: inputs differ in bin size or shape: {sorted(geometry)}")
    visits = [b.attrs.get("visit") for b in bundles if b.attrs.get("visit") is not None]
    if len(set(visits)) != len(visits):
        raise TaskError(f"{where}: a visit is given more than once: {sorted(visits)}")


def _calib_date(mjds: list[float]) -> str | None:
    """Calendar date (UTC) of the mean input MJD, as Rubin's calibDate."""
    if not mjds:
        return None
    from astropy.time import Time

    return Time(float(np.mean(mjds)), format="mjd", scale="tai").utc.datetime.date().isoformat()

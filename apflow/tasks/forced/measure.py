"""The stamp pass of forced photometry: everything measured on small cut-outs around sources.

Sources are processed in chunks (stacks of ``(chunk, S, S)`` stamps) so that memory stays bounded
for tens of thousands of sources; within a chunk every measurement is vectorised. The pass
returns the single-source PSF sums, the measured centroids, the pixel flags and the median
variance, and keeps the stamps of blended sources for the joint fit (:mod:`.blends`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core import Exposure, MaskPlanes
from .blends import GroupStamps
from .centroid import Centroid, gaussian_weighted_centroid
from .flags import median_variance, pixel_flags
from .psf_flux import PsfSums
from .stamps import PsfStampRenderer, extract_stamps, inside_image, stamp_offsets


@dataclass(frozen=True)
class StampSettings:
    """What the stamp pass needs from the task config (see ``ForcedPhotConfig``)."""

    half: int
    psf_bad_bits: int
    variance_exclude_bits: int
    footprint_radius_sigma: float
    variance_radius_sigma: float
    centroid_iterations: int
    centroid_max_shift: float
    psf_cell_size: int
    chunk_size: int


@dataclass(frozen=True)
class StampMeasurements:
    """Results of the stamp pass for ``n`` sources (arrays ``(n,)``)."""

    sums: PsfSums
    psf_edge: np.ndarray
    centroid: Centroid
    flags: dict[str, np.ndarray]
    variance_value: np.ndarray
    variance_empty: np.ndarray
    group_stamps: GroupStamps | None


def measure_stamps(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    sigma: np.ndarray,
    joint: np.ndarray,
    labels: np.ndarray,
    settings: StampSettings,
) -> StampMeasurements:
    """Run the stamp measurements on sources whose centres lie on the image.

    Parameters
    ----------
    exposure : Exposure
        The coadd (its ``psf`` must be set).
    x, y : numpy.ndarray
        ``(n,)`` reference positions (pixels).
    sigma : numpy.ndarray
        ``(n,)`` PSF Gaussian sigma at each source (pixels).
    joint : numpy.ndarray
        ``(n,)`` bool: source belongs to a blend group that will be fitted jointly.
    labels : numpy.ndarray
        ``(n,)`` blend-group labels.
    settings : StampSettings
        Sizes, mask bits and algorithm settings.

    Returns
    -------
    StampMeasurements
    """
    half = settings.half
    size = 2 * half + 1
    offsets = stamp_offsets(half).astype(np.float64)
    n = x.size
    n_joint = int(joint.sum())
    joint_slot = np.cumsum(joint) - 1
    keep = {
        "psf": np.zeros((n_joint, size, size)),
        "data": np.zeros((n_joint, size, size)),
        "variance": np.zeros((n_joint, size, size)),
        "good": np.zeros((n_joint, size, size), dtype=bool),
    }
    parts: list[PsfSums] = []
    psf_edge = np.zeros(n, dtype=bool)
    cent = {k: np.full(n, np.nan) for k in ("dx", "dy", "dx_err", "dy_err")}
    cent_flag = np.ones(n, dtype=bool)
    flags: dict[str, np.ndarray] = {}
    var_value = np.full(n, np.nan)
    var_empty = np.ones(n, dtype=bool)
    nodata_bit = MaskPlanes.bits("NO_DATA")
    render_psf = PsfStampRenderer(exposure.psf, half, x, y, settings.psf_cell_size)
    for start in range(0, n, settings.chunk_size):
        sl = slice(start, start + settings.chunk_size)
        xs, ys = x[sl], y[sl]
        xi = np.rint(xs).astype(np.int64)
        yi = np.rint(ys).astype(np.int64)
        data = extract_stamps(exposure.image, xi, yi, half, np.nan).astype(np.float64)
        var = extract_stamps(exposure.variance, xi, yi, half, np.nan).astype(np.float64)
        mask = extract_stamps(exposure.mask, xi, yi, half, 0)
        inside = inside_image(xi, yi, half, exposure.shape)
        finite = np.isfinite(data) & np.isfinite(var)
        usable = inside & finite & ((mask & nodata_bit) == 0)
        good = usable & ((mask & settings.psf_bad_bits) == 0)
        psf = render_psf(xs, ys)
        parts.append(PsfSums.from_stamps(psf, data, var, good))
        psf_edge[sl] = ~np.all(usable, axis=(1, 2))

        # Distance of every stamp pixel from the sub-pixel reference position.
        fx = (xs - xi)[:, None]
        fy = (ys - yi)[:, None]
        r2 = ((offsets - fy) ** 2)[:, :, None] + ((offsets - fx) ** 2)[:, None, :]
        sig2 = (sigma[sl] ** 2)[:, None, None]
        footprint = r2 <= settings.footprint_radius_sigma**2 * sig2
        for name, value in pixel_flags(mask, inside, finite, footprint).items():
            flags.setdefault(name, np.zeros(n, dtype=bool))[sl] = value
        centroid = gaussian_weighted_centroid(
            data,
            var,
            good,
            xs - xi,
            ys - yi,
            sigma[sl],
            settings.centroid_iterations,
            settings.centroid_max_shift,
        )
        cent["dx"][sl] = centroid.dx
        cent["dy"][sl] = centroid.dy
        cent["dx_err"][sl] = centroid.dx_err
        cent["dy_err"][sl] = centroid.dy_err
        cent_flag[sl] = centroid.flag
        var_ok = usable & ((mask & settings.variance_exclude_bits) == 0)
        in_var = r2 <= settings.variance_radius_sigma**2 * sig2
        var_value[sl], var_empty[sl] = median_variance(var, var_ok, in_var)

        chunk_joint = np.flatnonzero(joint[sl])
        if chunk_joint.size:
            slots = joint_slot[sl][chunk_joint]
            keep["psf"][slots] = np.where(good, psf, 0.0)[chunk_joint]
            keep["data"][slots] = np.where(good, data, 0.0)[chunk_joint]
            keep["variance"][slots] = np.where(good, var, 0.0)[chunk_joint]
            keep["good"][slots] = good[chunk_joint]

    group_stamps = None
    if n_joint:
        idx = np.flatnonzero(joint)
        group_stamps = GroupStamps(
            psf=keep["psf"],
            data=keep["data"],
            variance=keep["variance"],
            good=keep["good"],
            xi=np.rint(x[idx]).astype(np.int64),
            yi=np.rint(y[idx]).astype(np.int64),
            labels=labels[idx],
        )
    sums = PsfSums.concatenate(parts) if parts else PsfSums.empty()
    centroid = Centroid(cent["dx"], cent["dy"], cent["dx_err"], cent["dy_err"], cent_flag)
    return StampMeasurements(sums, psf_edge, centroid, flags, var_value, var_empty, group_stamps)

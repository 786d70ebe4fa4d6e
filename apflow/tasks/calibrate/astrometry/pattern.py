"""Coarse alignment of sources with reference objects: a vote over pairwise offsets.

The initial WCS may be off by tens of arcsec in pointing, by a fraction of a degree in rotation
and by up to a percent in scale (uncorrected optical distortion far from the optical axis), so a
nearest-neighbour match against it finds mostly wrong partners. Instead, for each trial rotation
and scale about the image centre, every (source, reference) pair votes for the offset that would
align it, in a 2-D histogram. True pairs agree on one offset and pile up in one cell; random pairs
spread over the whole search box. The trial grid is fine enough that, anywhere on the image, a
wrong trial moves a true pair by at most half a histogram bin, and votes are summed over 3x3 bins
so that a peak split across bin edges still counts in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter


@dataclass(frozen=True)
class PatternSolution:
    """A similarity transform taking predicted reference pixels onto the detected sources.

    ``source = center + scale * R(rotation) @ (reference - center) + offset``

    Attributes
    ----------
    rotation_deg : float
        Rotation, degrees counter-clockwise in pixel coordinates.
    scale : float
        Scale factor (1 = the initial WCS's scale is right).
    offset_pix : tuple of float
        Shift ``(dx, dy)`` in pixels.
    center : tuple of float
        Pixel position the rotation and scale are about.
    n_peak : int
        Number of pairs voting for the winning offset (within +-1.5 bins of the best trial).
    background : float
        Mean number of votes per 3x3-bin cell of the winning histogram: what chance alone gives.
    """

    rotation_deg: float
    scale: float
    offset_pix: tuple[float, float]
    center: tuple[float, float]
    n_peak: int
    background: float

    def apply(self, ref_xy: np.ndarray) -> np.ndarray:
        """Transform ``(n, 2)`` predicted reference pixel positions onto the source frame."""
        center = np.asarray(self.center)
        rotated = _rotate(np.asarray(ref_xy, dtype=float) - center, self.rotation_deg, self.scale)
        return rotated + center + np.asarray(self.offset_pix)


def find_pattern_transform(
    source_xy: np.ndarray,
    ref_xy: np.ndarray,
    center: tuple[float, float],
    max_offset_pix: float,
    max_rotation_deg: float,
    max_scale_error: float,
    bin_pix: float,
) -> PatternSolution:
    """Search rotation, scale and offset aligning references with sources.

    Parameters
    ----------
    source_xy : numpy.ndarray
        ``(n, 2)`` pixel positions of the (brightest) detected sources.
    ref_xy : numpy.ndarray
        ``(m, 2)`` pixel positions of reference objects predicted by the initial WCS.
    center : tuple of float
        Pixel position to rotate and scale about (the image centre).
    max_offset_pix : float
        Half-size of the square box of offsets searched, pixels.
    max_rotation_deg : float
        Rotations in ``[-max_rotation_deg, +max_rotation_deg]`` are searched.
    max_scale_error : float
        Scales in ``[1 - max_scale_error, 1 + max_scale_error]`` are searched.
    bin_pix : float
        Histogram bin size, pixels. Larger bins tolerate more distortion but collect more
        chance pairs.

    Returns
    -------
    PatternSolution
        The trial with the most votes, refined by a least-squares similarity transform fitted
        to the pairs that voted for it.
    """
    center_arr = np.asarray(center, dtype=float)
    rel_src = np.asarray(source_xy, dtype=float) - center_arr
    rel_ref = np.asarray(ref_xy, dtype=float) - center_arr
    radius = max(float(np.max(np.hypot(rel_src[:, 0], rel_src[:, 1]), initial=0.0)), bin_pix)
    # A rotation (radians) or scale error of `step` moves a point at `radius` by one bin; trials
    # spaced by `step` leave at most half a bin of misalignment.
    step = bin_pix / radius
    rotations = np.degrees(_symmetric_grid(np.radians(max_rotation_deg), step))
    scales = 1.0 + _symmetric_grid(max_scale_error, step)
    n_bins = max(int(np.ceil(2.0 * max_offset_pix / bin_pix)), 3)

    best: tuple[float, float, float, tuple[int, int], float] | None = None
    for rotation in rotations:
        for scale in scales:
            votes = _vote(
                rel_src, _rotate(rel_ref, rotation, scale), max_offset_pix, bin_pix, n_bins
            )
            peak = np.unravel_index(int(np.argmax(votes)), votes.shape)
            if best is None or votes[peak] > best[0]:
                best = (float(votes[peak]), rotation, scale, peak, float(votes.mean()))
    assert best is not None  # the grids always hold at least the zero trial
    _, rotation, scale, (iy, ix), background = best

    # Refine with a least-squares similarity on the pairs inside the winning 3x3-bin cell.
    rotated = _rotate(rel_ref, rotation, scale)
    peak_xy = (np.array([ix, iy]) + 0.5) * bin_pix - max_offset_pix
    i_src, i_ref = np.nonzero(
        np.all(np.abs(rel_src[:, None, :] - rotated[None, :, :] - peak_xy) <= 1.5 * bin_pix, axis=2)
    )
    rotation, scale, offset = _fit_similarity(rel_src[i_src], rel_ref[i_ref], bin_pix)
    return PatternSolution(
        rotation_deg=rotation,
        scale=scale,
        offset_pix=offset,
        center=(float(center_arr[0]), float(center_arr[1])),
        n_peak=len(i_src),
        background=background,
    )


def _fit_similarity(
    src: np.ndarray, ref: np.ndarray, tolerance: float
) -> tuple[float, float, tuple[float, float]]:
    """Rotation (deg), scale and offset of ``src = s R ref + t``; chance pairs are clipped.

    The pairs come from the winning histogram cell, so a few are chance coincidences: after a
    first fit, pairs off by more than ``tolerance`` pixels are dropped and the fit repeated.
    """
    keep = np.ones(len(src), dtype=bool)
    for _ in range(2):
        # Linear in (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty.
        n = int(keep.sum())
        design = np.zeros((2 * n, 4))
        design[:n, 0], design[:n, 1], design[:n, 2] = ref[keep, 0], -ref[keep, 1], 1.0
        design[n:, 0], design[n:, 1], design[n:, 3] = ref[keep, 1], ref[keep, 0], 1.0
        target = np.concatenate([src[keep, 0], src[keep, 1]])
        (a, b, tx, ty), *_ = np.linalg.lstsq(design, target, rcond=None)
        model = np.column_stack(
            [a * ref[:, 0] - b * ref[:, 1] + tx, b * ref[:, 0] + a * ref[:, 1] + ty]
        )
        close = np.hypot(*(src - model).T) <= tolerance
        if close.sum() < 3 or np.array_equal(close, keep):
            break
        keep = close
    return float(np.degrees(np.arctan2(b, a))), float(np.hypot(a, b)), (float(tx), float(ty))


def _vote(
    rel_src: np.ndarray, rel_ref: np.ndarray, max_offset: float, bin_pix: float, n_bins: int
) -> np.ndarray:
    """3x3-summed 2-D histogram ``[iy, ix]`` of all pairwise offsets source - reference."""
    dx = rel_src[:, 0, None] - rel_ref[None, :, 0]
    dy = rel_src[:, 1, None] - rel_ref[None, :, 1]
    ix = np.floor((dx + max_offset) / bin_pix).astype(np.int64)
    iy = np.floor((dy + max_offset) / bin_pix).astype(np.int64)
    ok = (ix >= 0) & (ix < n_bins) & (iy >= 0) & (iy < n_bins)
    counts = np.bincount(iy[ok] * n_bins + ix[ok], minlength=n_bins * n_bins)
    counts = counts.reshape(n_bins, n_bins).astype(float)
    return uniform_filter(counts, size=3, mode="constant") * 9.0


def _rotate(xy: np.ndarray, rotation_deg: float, scale: float) -> np.ndarray:
    angle = np.radians(rotation_deg)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.column_stack([c * xy[:, 0] - s * xy[:, 1], s * xy[:, 0] + c * xy[:, 1]])


def _symmetric_grid(half_range: float, step: float) -> np.ndarray:
    """Evenly spaced values in ``[-half_range, half_range]`` no more than ``step`` apart, with 0."""
    if half_range <= 0:
        return np.zeros(1)
    n_side = int(np.ceil(half_range / step))
    return np.linspace(-half_range, half_range, 2 * n_side + 1)

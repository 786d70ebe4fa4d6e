"""Kernel candidates: bright, compact, isolated, unmasked sources spread over the detector.

Candidates are detected on the warped template (deep, and free of the science's transients):
pixels above ``detection_threshold`` sigma are grouped into connected footprints, each with its
peak. A footprint is a candidate when

- its peak S/N reaches ``min_peak_snr``;
- it dominates its fit stamp (``stamp_half`` pixels each side of the peak): no other peak in the
  stamp exceeds ``isolation_fraction`` of its own. Fainter neighbours are harmless -- the fit
  models every pixel of the stamp from the template -- and demanding more isolation leaves
  crowded fields without candidates;
- it is compact: the stamp's flux / peak (an effective area) is at most ``max_area_ratio``
  times the template PSF's (galaxies and blends are wider);
- no pixel of the science or the template within ``clean_radius`` of its peak carries one of
  the bad mask planes or is non-finite (saturated cores, bad columns, missing data), and the
  detector edge is at least ``edge_margin`` away. Masked pixels farther out, and the part of
  the stamp beyond the detector, get no weight in the fit (:func:`~.kernel_fit.kernel_stamps`).
  Requiring the whole stamp grown by the kernel half-width to be clean and on the detector
  (Rubin's rule, ~30 px) left no candidate within 30 px of the edges -- calibration's 6 px
  EDGE border alone reaches into every such stamp -- nor near bad columns, so the kernel was
  held at the edge of the stamps' box over the outer 30-200 px of the simulator's 1k x 1k
  CCDs, where bright stars kept residual lobes of up to +-9 sigma per pixel.

The survivors are ranked by peak S/N within a ``grid`` x ``grid`` set of detector cells and the
``per_cell`` best of each cell are kept, so the spatial kernel model is constrained everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CandidateSettings:
    """Selection knobs (documented in :class:`~.task.SubtractImagesConfig`)."""

    detection_threshold: float
    min_peak_snr: float
    isolation_fraction: float
    max_area_ratio: float
    grid: int
    per_cell: int
    clean_radius: int | None = None
    """Half-side (px) of the box around a candidate's peak that must be free of masked pixels;
    None: the whole fit stamp grown by the kernel half-width."""
    edge_margin: int | None = None
    """Smallest distance (px) of a candidate's peak from the detector edge; None: the whole fit
    stamp grown by the kernel half-width must lie on the detector."""


@dataclass
class Candidates:
    """Selected kernel candidates.

    Attributes
    ----------
    x, y : numpy.ndarray
        int64 peak pixels (detector frame).
    peak_snr : numpy.ndarray
        Template peak S/N.
    n_detected : int
        Footprints above the detection threshold.
    footprints : numpy.ndarray
        bool map of all detected footprints (for the empty-sky statistics).
    """

    x: np.ndarray
    y: np.ndarray
    peak_snr: np.ndarray
    n_detected: int
    footprints: np.ndarray


def select_candidates(
    template: np.ndarray,
    template_variance: np.ndarray,
    template_bad: np.ndarray,
    science: np.ndarray,
    science_bad: np.ndarray,
    psf_area: float,
    stamp_half: int,
    kernel_half: int,
    settings: CandidateSettings,
) -> Candidates:
    """Find kernel candidates.

    Parameters
    ----------
    template, template_variance : numpy.ndarray
        Warped template image and per-pixel variance on the detector grid (NaN where missing).
    template_bad, science_bad : numpy.ndarray
        bool maps of unusable pixels (bad mask planes or non-finite) of each image.
    science : numpy.ndarray
        Science image (only its finiteness is checked here).
    psf_area : float
        ``1 / max(psf image)`` of the template PSF: the flux / peak ratio of a point source.
    stamp_half, kernel_half : int
        Half-widths of the fit stamp and of the kernel.
    settings : CandidateSettings

    Returns
    -------
    Candidates
    """
    height, width = template.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = template / np.sqrt(template_variance)
    snr = np.where(np.isfinite(snr) & ~template_bad, snr, 0.0).astype(np.float32)
    footprints = snr > settings.detection_threshold
    _, n_detected = ndimage.label(footprints)
    # peaks are local maxima (per-footprint reductions such as ndimage.maximum sort all pixels
    # and cost seconds on a 4k x 4k detector)
    peaks = _local_maxima(snr, footprints)
    peak_y, peak_x = np.nonzero(peaks & (snr >= settings.min_peak_snr))
    order = np.argsort(-snr[peak_y, peak_x], kind="stable")
    peak_y, peak_x = peak_y[order], peak_x[order]
    grow = stamp_half + kernel_half
    core = grow if settings.clean_radius is None else min(grow, max(1, settings.clean_radius))
    margin = grow if settings.edge_margin is None else min(grow, max(1, settings.edge_margin))
    keep_x, keep_y, keep_snr = [], [], []
    for yc, xc in zip(peak_y.tolist(), peak_x.tolist(), strict=True):
        if not (margin <= xc < width - margin and margin <= yc < height - margin):
            continue
        y0, y1 = max(yc - core, 0), min(yc + core + 1, height)
        x0, x1 = max(xc - core, 0), min(xc + core + 1, width)
        if (
            template_bad[y0:y1, x0:x1].any()
            or science_bad[y0:y1, x0:x1].any()
            or not np.isfinite(science[y0:y1, x0:x1]).all()
        ):
            continue
        stamp = (
            slice(max(yc - stamp_half, 0), yc + stamp_half + 1),
            slice(max(xc - stamp_half, 0), xc + stamp_half + 1),
        )
        peak = float(snr[yc, xc])
        others = snr[stamp][peaks[stamp]]
        # the candidate's own peak is the largest; any other above the limit is a neighbour
        if np.sum(others > settings.isolation_fraction * peak) > 1:
            continue
        peak_flux = float(template[yc, xc])
        if not peak_flux > 0 or float(template[stamp].sum()) / peak_flux > (
            settings.max_area_ratio * psf_area
        ):
            continue
        keep_x.append(xc)
        keep_y.append(yc)
        keep_snr.append(peak)
    x = np.array(keep_x, dtype=np.int64)
    y = np.array(keep_y, dtype=np.int64)
    peak_snr = np.array(keep_snr, dtype=float)
    chosen = _spread_over_cells(x, y, peak_snr, width, height, settings.grid, settings.per_cell)
    return Candidates(x[chosen], y[chosen], peak_snr[chosen], int(n_detected), footprints)


def _local_maxima(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """bool map: pixels of ``where`` not exceeded by any of their 8 neighbours.

    Only the (few) pixels of ``where`` are compared, which is far cheaper than a maximum filter
    over the whole detector. Pixels on the image border are never maxima.
    """
    height, width = values.shape
    out = np.zeros(values.shape, bool)
    inner = where.copy()
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    flat = np.flatnonzero(inner)
    if flat.size == 0:
        return out
    data = values.ravel()
    centre = data[flat]
    keep = np.ones(flat.size, bool)
    for offset in (-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1):
        keep &= centre >= data[flat + offset]
    out.ravel()[flat[keep]] = True
    return out


def _spread_over_cells(
    x: np.ndarray,
    y: np.ndarray,
    score: np.ndarray,
    width: int,
    height: int,
    grid: int,
    per_cell: int,
) -> np.ndarray:
    """Indices of the ``per_cell`` highest scores in each cell, brightest first overall."""
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    cell = (y * grid // height) * grid + (x * grid // width)
    order = np.lexsort((-score, cell))
    sorted_cells = cell[order]
    first = np.searchsorted(sorted_cells, sorted_cells, side="left")
    rank = np.arange(order.size) - first
    chosen = order[rank < per_cell]
    return chosen[np.argsort(-score[chosen], kind="stable")]

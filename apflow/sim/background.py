"""The sky background: visit level x focal-plane gradient x (1 + fixed per-detector pattern).

``B(x, y) = sky_level_visit * G_visit(fx, fy) * (1 + P_detector(x, y))``

- ``G_visit`` is a smooth (linear + quadratic) function of focal-plane position that changes every
  visit (moonlight, scattered light), 1 on the optical axis; see
  :meth:`~apflow.sim.visits.VisitParameters.sky_gradient`.
- ``P_detector`` is a FIXED small-scale pattern per detector, the same in every visit: what a sky
  frame must recover. It is made of fringe-like sinusoids (periods 150-300 px), soft blobs
  (sigma 60-120 px), rings (radius 100-250 px, Gaussian profile of sigma 30-60 px) and a roll-off
  towards every edge (exponential, 100 px scale). Its mean over the detector is exactly 0 and
  its rms is ``SimConfig.sky_pattern_rms``. It is dimensionless: a fraction of the local sky.

Why these scales. Rubin's sky frames are 32-px bins, upsampled smoothly when subtracted
(:func:`apflow.tasks.sky.upsample_bins`); they target sky structure that is smooth on that
scale, and finer structure (true fringes) is ISR fringe correction's job, which apflow does not
model. So the pattern holds only what such a frame can represent: the scales were chosen by
measuring ``P - upsample(bin32(P))`` over the pixels a CCD measures (the 4-px EDGE border
excluded), on 6 detectors of the mini camera, in units of the pattern's rms:

========================================================  =============  ==============
components (fringe period, blob sigma, ring width, edge)   residual rms   residual peak
========================================================  =============  ==============
60-250, 40-120, 12-30, 40 px (before; fringes dominate)    6.2%           45%
150-300, 60-120, 30-60, 100 px (chosen)                    1.3%           15%
200-400, 80-160, 40-80, 150 px                             0.7%           9%
========================================================  =============  ==============

With the 2% default that is 0.03% of the sky rms (peaks of 0.3%, at the CCD edges, where the
upsampling extrapolates): below the noise of a difference image, where the old 0.12% rms
(peaks 0.9%) made tens to hundreds of false DiaSources per CCD. Longer scales would be
represented still better, but more of the pattern would then be absorbed by the focal-plane
background model (superpixels of 256 px on ``mini``), leaving less for a sky frame to recover
(84% of the rms stays small-scale with the chosen scales, 92% before, 75% with the longest).

What the sky-frame workflow should recover: after subtracting a focal-plane background model
(superpixels of ``camera.focal_plane_bin_mm``) and dividing by the visit scale (median sky of the
focal-plane model), the residual of a (visit, detector) is
``B / scale - smooth(B) / scale ~ (G / median G) * (P - P_large)``, i.e. ``P`` minus the part of
``P`` on scales of the focal-plane superpixels and larger (which the focal-plane model absorbs),
times a factor within a few % of 1. Averaged over visits and binned to 32 px, the sky frame
should equal ``P`` binned to 32 px minus its large-scale part, in units of the sky level.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ..core import Detector
from .config import TAG_PATTERN
from .visits import VisitParameters

#: Length scales (pixels) of the pattern's components: all resolved by 32-px sky-frame bins
#: (see the module docstring for the measurement behind them).
FRINGE_PERIOD_RANGE = (150.0, 300.0)
BLOB_SIGMA_RANGE = (60.0, 120.0)
RING_RADIUS_RANGE = (100.0, 250.0)
RING_WIDTH_RANGE = (30.0, 60.0)
EDGE_ROLLOFF_PX = 100.0


def sky_pattern(
    detector: Detector, seed: int, rms: float = 0.02
) -> tuple[np.ndarray, dict[str, Any]]:
    """The fixed small-scale sky pattern ``P`` of a detector.

    Parameters
    ----------
    detector : Detector
    seed : int
        Master seed; the pattern depends only on ``(seed, detector.id)``.
    rms : float
        Rms of the returned pattern over the detector (0 gives a zero pattern).

    Returns
    -------
    pattern : numpy.ndarray
        float32 ``(height, width)``, mean 0, rms ``rms``.
    description : dict
        The components (for ``truth_sky_frame`` attributes).
    """
    pattern, description = _cached_pattern(detector.id, detector.width, detector.height, seed, rms)
    return pattern, dict(description)


@functools.lru_cache(maxsize=12)
def _cached_pattern(
    detector_id: int, width: int, height: int, seed: int, rms: float
) -> tuple[np.ndarray, dict[str, Any]]:
    # Cached because every visit of a detector needs the same pattern; the array is read-only
    # so that a caller cannot corrupt the cache.
    rng = np.random.default_rng([seed, TAG_PATTERN, detector_id])
    x = np.arange(width, dtype=float)
    y = np.arange(height, dtype=float)
    pattern = np.zeros((height, width))
    fringes = []
    for _ in range(3):
        period = rng.uniform(*FRINGE_PERIOD_RANGE)
        angle = rng.uniform(0.0, math.pi)
        phase = rng.uniform(0.0, 2 * math.pi)
        amp = rng.uniform(0.5, 1.0)
        kx = 2 * math.pi / period * math.cos(angle)
        ky = 2 * math.pi / period * math.sin(angle)
        # cos(kx x + ky y + phase) as two outer products: separable, so cheap on 4k x 4k
        pattern += amp * (
            np.outer(np.cos(ky * y + phase), np.cos(kx * x))
            - np.outer(np.sin(ky * y + phase), np.sin(kx * x))
        )
        fringes.append({"period_px": period, "angle_deg": math.degrees(angle), "amplitude": amp})
    blobs = []
    for _ in range(int(rng.integers(2, 5))):
        sigma = rng.uniform(*BLOB_SIGMA_RANGE)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        amp = rng.uniform(1.0, 2.5) * rng.choice([-1.0, 1.0])
        pattern += amp * np.outer(
            np.exp(-0.5 * ((y - cy) / sigma) ** 2), np.exp(-0.5 * ((x - cx) / sigma) ** 2)
        )
        blobs.append({"x": cx, "y": cy, "sigma_px": sigma, "amplitude": amp})
    rings = []
    for _ in range(int(rng.integers(1, 3))):
        radius = rng.uniform(*RING_RADIUS_RANGE)
        ring_width = rng.uniform(*RING_WIDTH_RANGE)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        amp = rng.uniform(0.8, 1.5) * rng.choice([-1.0, 1.0])
        # a ring is local: evaluate it only in its bounding box (5 widths past the radius)
        reach = radius + 5.0 * ring_width
        x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
        r = np.hypot(x[None, x0:x1] - cx, y[y0:y1, None] - cy)
        pattern[y0:y1, x0:x1] += amp * np.exp(-0.5 * ((r - radius) / ring_width) ** 2)
        rings.append(
            {"x": cx, "y": cy, "radius_px": radius, "width_px": ring_width, "amplitude": amp}
        )
    # vignetting-like roll-off towards every edge
    edge_amp = rng.uniform(1.0, 2.0)
    ex = np.exp(-x / EDGE_ROLLOFF_PX) + np.exp(-(width - 1 - x) / EDGE_ROLLOFF_PX)
    ey = np.exp(-y / EDGE_ROLLOFF_PX) + np.exp(-(height - 1 - y) / EDGE_ROLLOFF_PX)
    pattern -= edge_amp * (ex[None, :] + ey[:, None])

    pattern -= pattern.mean()
    current = pattern.std()
    pattern *= rms / current if current > 0 else 0.0
    out = pattern.astype(np.float32)
    out.setflags(write=False)
    description = {
        "rms": float(rms),
        "mean": 0.0,
        "units": "fraction of the local sky level",
        "fringes": fringes,
        "blobs": blobs,
        "rings": rings,
        "edge_rolloff": {"scale_px": EDGE_ROLLOFF_PX, "amplitude": edge_amp},
        "relative_amplitudes_scaled_by": float(rms / current) if current > 0 else 0.0,
    }
    return out, description


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks; a partial block at the upper edges is averaged too."""
    h, w = image.shape
    ny, nx = -(-h // factor), -(-w // factor)
    padded = np.full((ny * factor, nx * factor), np.nan)
    padded[:h, :w] = image
    return np.nanmean(padded.reshape(ny, factor, nx, factor), axis=(1, 3))


def background_image(
    visit: VisitParameters,
    detector: Detector,
    pattern: np.ndarray,
    exposure_fraction: float = 1.0,
) -> np.ndarray:
    """Expected sky counts per pixel, float64 ``(height, width)``.

    Parameters
    ----------
    exposure_fraction : float
        Fraction of the visit's exposure (``1 / n_snaps`` for a snap).
    """
    # G is quadratic in focal-plane position and the detector map is affine, so G is exactly a
    # quadratic in pixel (x, y): fit its 6 coefficients on a 3 x 3 grid, then evaluate it row by
    # row with broadcasting (a few passes over the image instead of a dozen)
    gx = np.array([0.0, (detector.width - 1) / 2.0, detector.width - 1.0])
    gy = np.array([0.0, (detector.height - 1) / 2.0, detector.height - 1.0])
    px, py = (a.ravel() for a in np.meshgrid(gx, gy))
    fx, fy = detector.pixel_to_focal_plane(px, py)
    terms = np.column_stack([np.ones_like(px), px, py, px * px, px * py, py * py])
    c, *_ = np.linalg.lstsq(terms, visit.sky_gradient(fx, fy), rcond=None)
    x = np.arange(detector.width, dtype=float)
    y = np.arange(detector.height, dtype=float)
    level = visit.sky_level * exposure_fraction
    row_const = level * (c[0] + c[2] * y + c[5] * y * y)
    row_slope = level * (c[1] + c[4] * y)
    quad = level * c[3] * x * x
    background = row_const[:, None] + row_slope[:, None] * x[None, :]
    background += quad[None, :]
    background *= 1.0 + pattern
    return background

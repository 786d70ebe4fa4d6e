"""Synthetic camera data with known sky truth for the sky-frame tests.

A small camera (3 x 3 CCDs of 512 x 512 px, 10-um pixels, 0.5 mm gaps, 2.56-mm = 256-px
focal-plane superpixels like ``mini``) observes ``n_visits`` visits. Every exposure is

``sky_level_visit * G_visit(fx, fy) * (1 + P_detector(x, y)) + stars + noise``

- ``G_visit``: a random linear + quadratic focal-plane gradient (a few % at the edge);
- ``P_detector``: a FIXED pattern per detector, 3% rms, built from sinusoids (periods
  60-250 px) and Gaussian blobs (sigma 20-120 px): the truth a sky frame must recover;
- Moffat stars (beta 3.5, FWHM 3-5.5 px) at new positions in every visit (dithering), some
  saturated (flagged SAT); one fixed bad column per detector (BAD, value 0); a 4-px EDGE border;
- Gaussian noise with the Poisson variance of the signal plus read noise (variance plane exact).

The whole sky-frame chain is run once per session (:func:`sky_pipeline`) and shared by the tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from apflow.core import Camera, Detector, Exposure, MaskPlanes, VisitInfo
from apflow.tasks.sky import (
    FocalPlaneBackgroundTask,
    FocalPlanePartialTask,
    MaskObjectsTask,
    SkyCombineTask,
    SkyMeasurementTask,
    absorbed_by_focal_plane_model,
)

PIXELS = 512
READ_NOISE = 5.0
SATURATION = 60_000.0
PATTERN_RMS = 0.03


def small_camera(n_pixels: int = PIXELS, yaw_deg: float = 0.0) -> Camera:
    """3 x 3 CCDs of ``n_pixels``^2 10-um pixels, 0.5 mm gaps, 2.56 mm superpixels."""
    pixel_size, gap = 0.010, 0.5
    pitch = n_pixels * pixel_size + gap
    detectors = tuple(
        Detector(
            id=row * 3 + col,
            name=f"T{row}{col}",
            width=n_pixels,
            height=n_pixels,
            pixel_size=pixel_size,
            center_mm=((col - 1) * pitch, (row - 1) * pitch),
            yaw_deg=yaw_deg,
        )
        for row in range(3)
        for col in range(3)
    )
    return Camera(name="skytest", detectors=detectors, plate_scale=20.0, focal_plane_bin_mm=2.56)


def sky_pattern(rng: np.random.Generator, height: int, width: int, rms: float) -> np.ndarray:
    """Fixed small-scale pattern: 3 sinusoids + 3 Gaussian blobs, mean 0, given rms."""
    x = np.arange(width, dtype=float)[None, :]
    y = np.arange(height, dtype=float)[:, None]
    pattern = np.zeros((height, width))
    for _ in range(3):
        period = rng.uniform(60.0, 250.0)
        angle = rng.uniform(0.0, math.pi)
        phase = rng.uniform(0.0, 2 * math.pi)
        k = 2 * math.pi / period
        pattern += rng.uniform(0.5, 1.0) * np.cos(
            k * (x * math.cos(angle) + y * math.sin(angle)) + phase
        )
    for _ in range(3):
        sigma = rng.uniform(20.0, 120.0)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        amp = rng.uniform(1.0, 2.5) * rng.choice([-1.0, 1.0])
        pattern += amp * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / sigma**2)
    pattern -= pattern.mean()
    return pattern * (rms / pattern.std())


@dataclass
class SkyData:
    """Exposures of a synthetic camera and the truth they were made from."""

    camera: Camera
    exposures: dict[tuple[int, int], Exposure]
    patterns: dict[int, np.ndarray]
    sky_levels: dict[int, float]
    visits: list[int] = field(default_factory=list)


def build_sky_data(
    camera: Camera,
    n_visits: int,
    seed: int,
    first_visit: int = 1,
    physical_filter: str = "r_sim",
    band: str = "r",
    pattern_rms: float = PATTERN_RMS,
    n_stars: int = 60,
    gradient_rms: float = 0.04,
    noise: bool = True,
    sky_range: tuple[float, float] = (1000.0, 4000.0),
) -> SkyData:
    """Simulate ``n_visits`` visits of every detector of ``camera``.

    The pattern depends only on the detector (seeded by its id), so data built with other seeds
    (e.g. science visits for sky correction) share it.
    """
    patterns = {
        d.id: sky_pattern(np.random.default_rng([1234, d.id]), d.height, d.width, pattern_rms)
        for d in camera.detectors
    }
    xmin, xmax, ymin, ymax = camera.focal_plane_bounds()
    radius = 0.5 * max(xmax - xmin, ymax - ymin)
    exposures: dict[tuple[int, int], Exposure] = {}
    sky_levels: dict[int, float] = {}
    visits = list(range(first_visit, first_visit + n_visits))
    for visit in visits:
        # one random stream per quantity, so data with and without stars or noise pair up
        rng = np.random.default_rng([seed, 0, visit])
        sky = rng.uniform(*sky_range)
        sky_levels[visit] = sky
        gx, gy = rng.normal(0.0, gradient_rms, 2)
        quad = rng.uniform(-0.75, 0.75) * gradient_rms
        psf_fwhm = rng.uniform(3.0, 5.5)
        info = VisitInfo(
            visit=visit,
            band=band,
            physical_filter=physical_filter,
            mjd=60400.1 + 0.001 * visit,
            exposure_time=30.0,
        )
        for det in camera.detectors:
            x = np.arange(det.width, dtype=float)[None, :]
            y = np.arange(det.height, dtype=float)[:, None]
            fx, fy = det.pixel_to_focal_plane(x, y)
            gradient = 1.0 + (gx * fx + gy * fy) / radius + quad * (fx**2 + fy**2) / radius**2
            signal = sky * gradient * (1.0 + patterns[det.id])
            star_rng = np.random.default_rng([seed, 1, visit, det.id])
            signal = signal + _stars(star_rng, det.height, det.width, n_stars, psf_fwhm)
            variance = signal + READ_NOISE**2
            noise_rng = np.random.default_rng([seed, 2, visit, det.id])
            deviates = noise_rng.standard_normal(signal.shape)
            image = signal + deviates * np.sqrt(variance) * noise
            mask = np.zeros(signal.shape, dtype=np.int32)
            saturated = image >= SATURATION
            image[saturated] = SATURATION
            mask[saturated] |= MaskPlanes.SAT
            bad_column = 4 + (33 + 41 * det.id) % (det.width - 8)
            image[:, bad_column] = 0.0
            mask[:, bad_column] |= MaskPlanes.BAD
            edge = np.ones(signal.shape, dtype=bool)
            edge[4:-4, 4:-4] = False
            mask[edge] |= MaskPlanes.EDGE
            exposures[(visit, det.id)] = Exposure(
                image=image, mask=mask, variance=variance, visit_info=info, detector=det.id
            )
    return SkyData(camera, exposures, patterns, sky_levels, visits)


def _stars(rng: np.random.Generator, height: int, width: int, n: int, fwhm: float) -> np.ndarray:
    """Moffat (beta 3.5) stars at random positions, counts N(>F) ~ F^-0.75 from 500 counts."""
    image = np.zeros((height, width))
    beta = 3.5
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    half = 40
    offsets = np.arange(-half, half + 1, dtype=float)
    fluxes = np.minimum(500.0 * rng.uniform(0.0, 1.0, n) ** (-1.0 / 0.75), 3.0e6)
    for cx, cy, flux in zip(
        rng.uniform(0, width, n), rng.uniform(0, height, n), fluxes, strict=True
    ):
        ix, iy = int(cx), int(cy)
        r2 = (offsets[None, :] + ix - cx) ** 2 + (offsets[:, None] + iy - cy) ** 2
        stamp = flux * (beta - 1.0) / (math.pi * alpha**2) * (1.0 + r2 / alpha**2) ** (-beta)
        y0, x0 = iy - half, ix - half
        ys = slice(max(y0, 0), min(y0 + 2 * half + 1, height))
        xs = slice(max(x0, 0), min(x0 + 2 * half + 1, width))
        image[ys, xs] += stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return image


@dataclass
class SkyPipelineRun:
    """Outputs of every stage of the sky-frame chain on :class:`SkyData`."""

    data: SkyData
    masked: dict[tuple[int, int], Exposure]
    partials: dict[tuple[int, int], object]
    models: dict[int, object]
    residuals: dict[tuple[int, int], object]
    frames: dict[int, object]
    seconds: dict[str, float]


def run_sky_pipeline(data: SkyData) -> SkyPipelineRun:
    """Mask -> partial -> per-visit model -> residual -> per-detector combine, in memory."""
    camera = data.camera
    seconds = {"mask": 0.0, "partial": 0.0, "model": 0.0, "measure": 0.0, "combine": 0.0}
    masked, partials, models, residuals, frames = {}, {}, {}, {}, {}
    mask_task, partial_task = MaskObjectsTask(), FocalPlanePartialTask()
    model_task, measure_task, combine_task = (
        FocalPlaneBackgroundTask(),
        SkyMeasurementTask(),
        SkyCombineTask(),
    )
    for (visit, det_id), exposure in data.exposures.items():
        t0 = time.perf_counter()
        masked[visit, det_id] = mask_task.run(exposure=exposure).exposure
        t1 = time.perf_counter()
        partials[visit, det_id] = partial_task.run(
            exposure=masked[visit, det_id], detector=camera[det_id], camera=camera
        ).focal_plane_partial
        seconds["mask"] += t1 - t0
        seconds["partial"] += time.perf_counter() - t1
    for visit in data.visits:
        t0 = time.perf_counter()
        visit_partials = [partials[visit, d] for d in camera.detector_ids]
        models[visit] = model_task.run(partials=visit_partials).focal_plane_background
        seconds["model"] += time.perf_counter() - t0
        for det_id in camera.detector_ids:
            t0 = time.perf_counter()
            residuals[visit, det_id] = measure_task.run(
                exposure=masked[visit, det_id],
                focal_plane_background=models[visit],
                detector=camera[det_id],
            ).residual_sky
            seconds["measure"] += time.perf_counter() - t0
    for det_id in camera.detector_ids:
        t0 = time.perf_counter()
        frames[det_id] = combine_task.run(
            residual_skies=[residuals[v, det_id] for v in data.visits], detector=camera[det_id]
        )
        seconds["combine"] += time.perf_counter() - t0
    return SkyPipelineRun(data, masked, partials, models, residuals, frames, seconds)


# ``M[X]``: what the focal-plane model makes of noise-free images (the chain's own operator).
superpixel_part = absorbed_by_focal_plane_model


def bin_means(image: np.ndarray, bin_size: int = 32, border: int = 4) -> np.ndarray:
    """Means of ``bin_size`` bins over the pixels a CCD measures (the EDGE border excluded)."""
    values = np.array(image, dtype=np.float64)
    edge = np.ones(values.shape, dtype=bool)
    edge[border:-border, border:-border] = False
    values[edge] = np.nan
    ny, nx = values.shape[0] // bin_size, values.shape[1] // bin_size
    return np.nanmean(values.reshape(ny, bin_size, nx, bin_size), axis=(1, 3))


@pytest.fixture(scope="session")
def sky_camera() -> Camera:
    """The 3 x 3 x 512^2 test camera."""
    return small_camera()


@pytest.fixture(scope="session")
def sky_data(sky_camera: Camera) -> SkyData:
    """12 visits of the test camera in one filter."""
    return build_sky_data(sky_camera, n_visits=12, seed=7)


@pytest.fixture(scope="session")
def sky_pipeline(sky_data: SkyData) -> SkyPipelineRun:
    """The whole sky-frame chain run once on :func:`sky_data`."""
    return run_sky_pipeline(sky_data)


@pytest.fixture(scope="session")
def sky_tools() -> SimpleNamespace:
    """The builders and truth helpers of this conftest, for test modules (which cannot import it)."""
    return SimpleNamespace(
        build_sky_data=build_sky_data,
        run_sky_pipeline=run_sky_pipeline,
        small_camera=small_camera,
        superpixel_part=superpixel_part,
        bin_means=bin_means,
        pattern_rms=PATTERN_RMS,
    )

"""Synthetic CCD images with known stars, sky and PSF for the calibrate tests.

The scene follows what ISR hands to calibrate: counts with gain 1, Poisson noise on sky + stars
plus Gaussian read noise, a variance plane (the expected variance, so that error estimates can
be checked exactly), saturated stars clipped at the full well with bleed trails along their
columns (``SAT``), and a dead column (``BAD``, pixel values 0). The PSF is the core
:class:`~apflow.core.VariablePsf` Moffat whose FWHM and ellipticity vary by a few per cent
across the CCD; stars are rendered with its ``compute_image`` so every truth number comes from
the core model.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas as pd
import pytest
import sep
from scipy.spatial import cKDTree

from apflow.core import Exposure, MaskPlanes, VariablePsf, VisitInfo
from apflow.tasks.calibrate import (
    ApertureCorrectionResult,
    ApertureCorrectionTask,
    BackgroundResult,
    DetectionResult,
    DetectSourcesTask,
    MeasurementConfig,
    MeasurementResult,
    MeasureStarsTask,
    PsfModelResult,
    PsfModelTask,
    SubtractBackgroundTask,
)

SKY_LEVEL = 1000.0  # counts per pixel at the CCD centre
READ_NOISE = 5.0  # counts (gain 1)
SATURATION = 120_000.0  # counts
APERTURE_RADIUS = 12.0  # px, the default calibration aperture


def truth_psf(width: int, height: int) -> VariablePsf:
    """Moffat beta 3.5, FWHM 3.5 px at the centre varying by about +-4% over the CCD."""
    return VariablePsf(
        profile="moffat",
        width=width,
        height=height,
        # [1, v, v^2, u, u v, u^2] in coordinates normalised to [-1, 1]
        fwhm_coeffs=(3.5, 0.06, 0.03, 0.10, 0.02, -0.03),
        e1_coeffs=(0.02, 0.01, 0.015),
        e2_coeffs=(-0.01, 0.01, 0.0),
        beta=3.5,
    )


def sky_model(width: int, height: int) -> np.ndarray:
    """Gentle sky gradient: +-4% across the CCD with a little curvature, float64 counts."""
    v, u = np.meshgrid(
        np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij", sparse=True
    )
    return SKY_LEVEL * (1.0 + 0.03 * u + 0.02 * v + 0.01 * u * v + 0.01 * u * u)


@dataclasses.dataclass
class StarField:
    """A simulated exposure and its truth."""

    exposure: Exposure
    truth: pd.DataFrame  # x, y, flux, fwhm, ee12, saturated, isolated
    psf: VariablePsf
    sky: np.ndarray  # true sky, float64 (height, width)
    model: np.ndarray  # noiseless sky + stars before saturation
    bad_column: int


def make_truth(
    width: int,
    height: int,
    n_stars: int,
    rng: np.random.Generator,
    n_saturated: int = 4,
    flux_range: tuple[float, float] = (1500.0, 1.0e6),
) -> pd.DataFrame:
    """Star positions (uniform) and fluxes (dN/dF ~ F^-1.5 plus a few saturated stars)."""
    lo, hi = flux_range
    # Inverse CDF of a power law with slope -1.5 between lo and hi.
    p = rng.uniform(size=n_stars)
    flux = (lo**-0.5 - p * (lo**-0.5 - hi**-0.5)) ** -2
    flux = np.concatenate([flux, 10 ** rng.uniform(6.8, 7.3, n_saturated)])
    n = len(flux)
    return pd.DataFrame(
        {
            "x": rng.uniform(4, width - 5, n),
            "y": rng.uniform(4, height - 5, n),
            "flux": flux,
        }
    )


def render_stars(
    truth: pd.DataFrame, psf: VariablePsf, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noiseless star image, and per-star PSF FWHM and 12-px encircled energy."""
    image = np.zeros((height, width))
    fwhm = np.empty(len(truth))
    ee12 = np.empty(len(truth))
    for k, (x, y, flux) in enumerate(truth[["x", "y", "flux"]].itertuples(index=False)):
        # Big stamps for bright stars so that their truncated wings stay below the noise.
        size = 41 if flux < 1e5 else (61 if flux < 2e6 else 121)
        stamp = psf.compute_image(x, y, size)
        half = size // 2
        cx, cy = round(x), round(y)
        x0, y0 = cx - half, cy - half
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1, sy1 = size - max(0, x0 + size - width), size - max(0, y0 + size - height)
        image[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += flux * stamp[sy0:sy1, sx0:sx1]
        fwhm[k] = psf.fwhm_at(x, y)
        # Exact-overlap aperture sum of the normalised stamp (which sums to 1: the true flux).
        ee12[k] = sep.sum_circle(
            stamp, [half + x - cx], [half + y - cy], APERTURE_RADIUS, subpix=0
        )[0][0]
    return image, fwhm, ee12


def observe(
    model: np.ndarray, rng: np.random.Generator, bad_column: int, scale: float = 1.0
) -> Exposure:
    """Noisy exposure of ``scale * model``: Poisson + read noise, saturation with bleed, bad column."""
    expected = scale * model
    image = rng.poisson(expected).astype(np.float64) + rng.normal(0.0, READ_NOISE, model.shape)
    variance = expected + READ_NOISE**2
    mask = np.zeros(model.shape, np.int32)
    _saturate_with_bleed(image, mask)
    image[:, bad_column] = 0.0  # a dead column, flagged by ISR
    mask[:, bad_column] |= int(MaskPlanes.BAD)
    return Exposure(
        image=image.astype(np.float32),
        mask=mask,
        variance=variance.astype(np.float32),
        visit_info=VisitInfo(visit=1, band="r", exposure_time=30.0 * scale, mjd=60000.0),
        detector=0,
    )


def _saturate_with_bleed(image: np.ndarray, mask: np.ndarray) -> None:
    """Clip at SATURATION; the excess charge of a column spreads up and down that column."""
    over = image > SATURATION
    for col in np.nonzero(over.any(axis=0))[0]:
        rows = np.nonzero(over[:, col])[0]
        excess = float((image[rows, col] - SATURATION).sum())
        extra = int(math.ceil(excess / SATURATION / 2))
        lo = max(rows.min() - extra, 0)
        hi = min(rows.max() + extra + 1, image.shape[0])
        image[lo:hi, col] = SATURATION
        mask[lo:hi, col] |= int(MaskPlanes.SAT)


def simulate_star_field(
    width: int = 2048, height: int = 2048, n_stars: int = 1500, seed: int = 7
) -> StarField:
    """A full simulated CCD (see module docstring)."""
    rng = np.random.default_rng(seed)
    psf = truth_psf(width, height)
    truth = make_truth(width, height, n_stars, rng)
    stars, fwhm, ee12 = render_stars(truth, psf, width, height)
    sky = sky_model(width, height)
    model = sky + stars
    bad_column = int(0.37 * width)
    exposure = observe(model, rng, bad_column)
    truth["fwhm"] = fwhm
    truth["ee12"] = ee12
    truth["saturated"] = truth["flux"] > 2e6
    truth["isolated"] = isolated(truth, radius=20.0)
    return StarField(exposure, truth, psf, sky, model, bad_column)


def isolated(truth: pd.DataFrame, radius: float, min_ratio: float = 1e-3) -> np.ndarray:
    """True for stars with no neighbour within ``radius`` px brighter than ``min_ratio`` x its flux.

    Saturated stars count as neighbours out to 4x the radius (their wings and bleed trails).
    """
    xy = truth[["x", "y"]].to_numpy()
    flux = truth["flux"].to_numpy()
    tree = cKDTree(xy)
    result = np.ones(len(truth), bool)
    for i, j in tree.query_pairs(radius):
        result[i] &= flux[j] < min_ratio * flux[i]
        result[j] &= flux[i] < min_ratio * flux[j]
    bright = np.nonzero(flux > 2e6)[0]
    for b in bright:
        near = np.hypot(*(xy - xy[b]).T) < 4 * radius
        near[b] = False
        result[near] = False
    return result


def expected_snr(field: StarField) -> np.ndarray:
    """PSF-fit S/N of each true star: ``F / sqrt(n_eff (sky + RN^2) + F)``, n_eff = 1 / sum P^2."""
    psf = field.psf.compute_image(field.psf.width / 2, field.psf.height / 2, 41)
    n_eff = 1.0 / np.sum(psf**2)
    flux = field.truth["flux"].to_numpy()
    sky = field.sky[field.truth["y"].astype(int), field.truth["x"].astype(int)]
    return flux / np.sqrt(n_eff * (sky + READ_NOISE**2) + flux)


def clear_of_brighter(
    truth: pd.DataFrame, radius: float, saturated_radius: float = 40.0
) -> np.ndarray:
    """True for stars with no brighter star within ``radius`` px and no saturated star nearby.

    Fainter neighbours are allowed: the star stays the local maximum. A brighter one closer than
    ~3 FWHM leaves no separate peak for a detector without a deblender.
    """
    xy = truth[["x", "y"]].to_numpy()
    flux = truth["flux"].to_numpy()
    tree = cKDTree(xy)
    result = np.ones(len(truth), bool)
    for i, j in tree.query_pairs(radius):
        result[i] &= flux[j] < flux[i]
        result[j] &= flux[i] < flux[j]
    for b in np.nonzero(truth["saturated"].to_numpy())[0]:
        near = np.hypot(*(xy - xy[b]).T) < saturated_radius
        near[b] = False
        result[near] = False
    return result


def match_to_truth(
    x: np.ndarray, y: np.ndarray, truth: pd.DataFrame, radius: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest true star for each (x, y) (-1 beyond ``radius``) and its distance."""
    distance, index = cKDTree(truth[["x", "y"]].to_numpy()).query(
        np.column_stack([x, y]), distance_upper_bound=radius
    )
    index = np.where(np.isfinite(distance), index, -1)
    return index, distance


@pytest.fixture(scope="session")
def star_field() -> StarField:
    """2048 x 2048 CCD with ~1500 stars (see :func:`simulate_star_field`)."""
    return simulate_star_field()


@dataclasses.dataclass
class Characterisation:
    """Every intermediate result of the image-characterisation chain."""

    background: BackgroundResult
    detection: DetectionResult
    final_background: BackgroundResult
    measurement: MeasurementResult
    psf: PsfModelResult
    psf_measurement: MeasurementResult
    apcorr: ApertureCorrectionResult
    timings: dict[str, float]


def characterise(exposure: Exposure, psf_fwhm: float | None = None) -> Characterisation:
    """Run steps 2-5 in the order CalibrateImageTask chains them, timing each.

    background -> detection -> background again with the detections masked -> measurement
    (moments, aperture) -> PSF model -> measurement with the PSF -> aperture correction.
    """
    timings: dict[str, float] = {}

    def timed(name, func, *args, **kwargs):
        # CPU time of this process: wall-clock time on a shared machine measures the neighbours.
        start = time.process_time()
        result = func(*args, **kwargs)
        timings[name] = time.process_time() - start
        return result

    background = timed("background", SubtractBackgroundTask().run, exposure)
    detection = timed("detection", DetectSourcesTask().run, background.exposure, psf_fwhm=psf_fwhm)
    final_background = timed(
        "background2",
        SubtractBackgroundTask().run,
        detection.exposure,
        previous_background=background.background,
    )
    measurement = timed(
        "measurement", MeasureStarsTask().run, final_background.exposure, detection.sources
    )
    psf = timed("psf", PsfModelTask().run, final_background.exposure, measurement.stars)
    psf_only = MeasurementConfig(measure_moments=False, measure_aperture=False)
    psf_measurement = timed(
        "psf_measurement", MeasureStarsTask(psf_only).run, psf.exposure, psf.stars
    )
    apcorr = timed("apcorr", ApertureCorrectionTask().run, psf.exposure, psf_measurement.stars)
    timings["total"] = sum(timings.values())
    return Characterisation(
        background, detection, final_background, measurement, psf, psf_measurement, apcorr, timings
    )


@pytest.fixture(scope="session")
def characterised(star_field: StarField) -> Characterisation:
    """The chain run on :func:`star_field` (with the detection kernel of the default FWHM)."""
    return characterise(star_field.exposure)

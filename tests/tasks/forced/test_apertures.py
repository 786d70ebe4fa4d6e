"""Exact circular apertures: equal to photutils' exact apertures, flags, backends."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.errors import ConfigError
from apflow.tasks.forced import DEFAULT_RADII, circular_aperture_sums, numba_available

BACKENDS = [
    "numpy",
    pytest.param(
        "numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed")
    ),
]


@pytest.fixture(scope="module")
def planes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    shape = (230, 260)
    image = rng.normal(5.0, 10.0, shape).astype(np.float32)
    variance = rng.uniform(50.0, 150.0, shape).astype(np.float32)
    return image, variance


def _positions(shape: tuple[int, int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    height, width = shape
    x = rng.uniform(-0.5, width - 0.5, n)
    y = rng.uniform(-0.5, height - 0.5, n)
    # Special cases: pixel centres, pixel edges, image corners, a centre on the first edge.
    x[:6] = [0.0, 10.5, width - 0.51, -0.5, 100.0, 57.25]
    y[:6] = [0.0, 20.5, height - 0.51, 5.0, 100.0, 80.5]
    return x, y


def _photutils(image, variance, x, y, radii):
    """photutils' exact circular apertures (the reference implementation) with errors."""
    photutils_aperture = pytest.importorskip("photutils.aperture")
    apertures = [photutils_aperture.CircularAperture(np.column_stack([x, y]), r) for r in radii]
    table = photutils_aperture.aperture_photometry(
        image.astype(np.float64),
        apertures,
        error=np.sqrt(variance.astype(np.float64)),
        method="exact",
    )
    flux = np.column_stack([np.asarray(table[f"aperture_sum_{k}"]) for k in range(len(radii))])
    err = np.column_stack([np.asarray(table[f"aperture_sum_err_{k}"]) for k in range(len(radii))])
    return flux, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_fluxes_and_errors_equal_photutils_exact_for_all_ten_radii(planes, backend):
    image, variance = planes
    x, y = _positions(image.shape, 120, seed=1)
    ours = circular_aperture_sums(
        image, variance, x, y, DEFAULT_RADII, backend=backend, tile_size=64
    )
    flux, err = _photutils(image, variance, x, y, DEFAULT_RADII)
    np.testing.assert_allclose(ours.flux, flux, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(ours.variance), err, rtol=1e-6)
    # Far below the requirement in practice: round-off only.
    assert np.max(np.abs(ours.flux - flux) / np.abs(flux)) < 1e-8


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_image_gives_the_circle_area(backend):
    image = np.ones((200, 200), dtype=np.float32)
    x = np.array([100.0, 99.5, 100.3, 101.77])
    y = np.array([100.0, 99.5, 99.1, 100.5])
    sums = circular_aperture_sums(image, image, x, y, DEFAULT_RADII[:8], backend=backend)
    area = np.pi * np.asarray(DEFAULT_RADII[:8]) ** 2
    np.testing.assert_allclose(sums.flux, np.broadcast_to(area, sums.flux.shape), rtol=1e-12)
    assert not sums.truncated.any()


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_and_numpy_backends_agree(planes):
    image, variance = planes
    x, y = _positions(image.shape, 60, seed=7)
    a = circular_aperture_sums(image, variance, x, y, backend="numba", tile_size=100)
    b = circular_aperture_sums(image, variance, x, y, backend="numpy", tile_size=37)
    np.testing.assert_allclose(a.flux, b.flux, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-10)
    np.testing.assert_array_equal(a.truncated, b.truncated)


def test_aperture_running_off_the_image_is_truncated_and_sums_the_pixels_inside(planes):
    image, variance = planes
    x = np.array([2.0, 130.0])
    y = np.array([120.0, 115.0])
    sums = circular_aperture_sums(image, variance, x, y, (3.0, 9.0))
    assert sums.truncated.tolist() == [[True, True], [False, False]]
    flux, _ = _photutils(image, variance, x, y, (3.0, 9.0))
    np.testing.assert_allclose(sums.flux, flux, rtol=1e-9)


def test_missing_pixels_count_as_zero_and_truncate_only_apertures_that_overlap_them(planes):
    image, variance = planes
    image = image.copy()
    image[100, 150] = np.nan
    nodata = np.zeros(image.shape, dtype=bool)
    nodata[50, 60] = True
    # distance 4.2 from the NaN pixel: r = 3 misses its square (nearest point 3.7), 4.5 hits it.
    x = np.array([150.0, 60.0, 200.0])
    y = np.array([104.2, 50.0, 200.0])
    sums = circular_aperture_sums(image, variance, x, y, (3.0, 4.5), missing=nodata)
    assert sums.truncated.tolist() == [[False, True], [True, True], [False, False]]
    assert np.all(np.isfinite(sums.flux))
    clean = np.where(np.isnan(image) | nodata, 0.0, image)
    flux, _ = _photutils(clean, variance, x, y, (3.0, 4.5))
    np.testing.assert_allclose(sums.flux, flux, rtol=1e-9)


def test_centres_off_the_image_or_not_finite_give_nan_and_truncated(planes):
    image, variance = planes
    x = np.array([-3.0, np.nan, 10.0])
    y = np.array([10.0, 10.0, image.shape[0] + 0.2])
    sums = circular_aperture_sums(image, variance, x, y, (3.0,))
    assert np.all(np.isnan(sums.flux))
    assert sums.truncated.all()


@pytest.mark.parametrize(
    "kwargs",
    [{"radii": (3.0, -1.0)}, {"radii": ()}, {"backend": "fortran"}, {"tile_size": 4}],
)
def test_invalid_arguments_raise_config_error(planes, kwargs):
    image, variance = planes
    with pytest.raises(ConfigError):
        circular_aperture_sums(image, variance, np.array([5.0]), np.array([5.0]), **kwargs)

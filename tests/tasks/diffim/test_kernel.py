"""Alard-Lupton basis, stamp convolution, spatially varying convolution and mask growth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import convolve2d

from apflow.tasks.diffim import alard_lupton_basis
from apflow.tasks.diffim.basis import convolve_stamps
from apflow.tasks.diffim.convolve import convolve_with_solution, grow_mask
from apflow.tasks.diffim.kernel_fit import (
    KernelSolution,
    spatial_order_for,
    stamp_normal_equations,
    stamp_scales,
)


@pytest.fixture(scope="module")
def basis():
    return alard_lupton_basis(7, (1.0, 2.0, 4.0), (4, 2, 2))


def test_basis_has_one_flux_carrying_function(basis):
    sums = basis.images.sum(axis=(1, 2))
    assert basis.size == 15 + 6 + 6
    assert sums[0] == pytest.approx(1.0)
    np.testing.assert_allclose(sums[1:], 0.0, atol=1e-12)


def test_stamp_convolution_is_the_image_convolution(basis):
    rng = np.random.default_rng(0)
    stamps = rng.standard_normal((2, 31, 31))
    out = convolve_stamps(stamps, basis)
    assert out.shape == (2, basis.size, 17, 17)
    for k in (0, 3, 17, 26):
        expected = convolve2d(stamps[1], basis.images[k], mode="valid")
        np.testing.assert_allclose(out[1, k], expected, atol=1e-12)


def _random_solution(basis, width: int, height: int) -> KernelSolution:
    rng = np.random.default_rng(1)
    # a smooth kernel: broad core plus small, spatially varying shape terms
    coefficients = 0.02 * rng.standard_normal((basis.size, 6))
    coefficients[:, 1:] *= 0.25
    coefficients[0] = (1.0, 0.02, -0.01, 0.03, 0.01, -0.02)
    return KernelSolution(
        basis=basis,
        coefficients=coefficients,
        background=np.array([3.0, 1.0, -2.0]),
        spatial_order=2,
        background_order=1,
        width=width,
        height=height,
    )


def test_spatially_varying_convolution_matches_direct_sums(basis):
    width, height, half = 300, 260, basis.half
    solution = _random_solution(basis, width, height)
    rng = np.random.default_rng(2)
    image = rng.standard_normal((height + 2 * half, width + 2 * half))
    # variance planes are smooth on the kernel's scale (sky plus broad sources)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    variance = 1.5 + 0.5 * np.sin(xx / 40.0) * np.cos(yy / 55.0)
    out, out_var = convolve_with_solution(image, variance, solution, block=128)
    for x, y in ((0, 0), (150, 130), (299, 17), (128, 128), (200, 259)):
        kernel = solution.kernel_image(x, y)
        # output [y, x] is centred on the margin-extended pixel [y + half, x + half]
        patch = image[y : y + 2 * half + 1, x : x + 2 * half + 1]
        direct = float(np.sum(kernel[::-1, ::-1] * patch)) + float(solution.background_at(x, y))
        assert out[y, x] == pytest.approx(direct, rel=1e-4, abs=1e-4)
        var_patch = variance[y : y + 2 * half + 1, x : x + 2 * half + 1]
        direct_var = float(np.sum(kernel[::-1, ::-1] ** 2 * var_patch))
        # the variance uses the centre kernel's shape with the local sum of squares
        assert out_var[y, x] == pytest.approx(direct_var, rel=0.003)


def test_grow_mask_is_or_over_box():
    rng = np.random.default_rng(3)
    mask = np.where(rng.random((40, 50)) < 0.01, 1 << rng.integers(0, 5, (40, 50)), 0)
    mask = mask.astype(np.int32)
    grown = grow_mask(mask, 3)
    padded = np.pad(mask, 3)
    expected = np.zeros_like(mask)
    for dy in range(7):
        for dx in range(7):
            expected |= padded[dy : dy + 40, dx : dx + 50]
    np.testing.assert_array_equal(grown, expected)


@pytest.mark.parametrize(
    "n_stamps, max_order, expected",
    [(5, 2, 0), (29, 2, 0), (30, 2, 1), (59, 2, 1), (60, 2, 2), (1000, 2, 2), (1000, 1, 1)],
)
def test_spatial_order_follows_the_number_of_stamps(n_stamps, max_order, expected):
    # 10 stamps per polynomial term: 3 terms for a linear, 6 for a quadratic variation
    assert spatial_order_for(n_stamps, max_order, 10.0) == expected


def test_stamp_scales_measure_each_stamps_flux_ratio_with_its_photon_noise(basis):
    # reference stamps = s_i x (kernel * image) + noise: the one-parameter fit returns s_i
    # with the error expected from the weights
    width, height = 300, 260
    solution = _random_solution(basis, width, height)
    rng = np.random.default_rng(4)
    n, side, half = 200, 15, basis.half
    offsets = np.arange(side + 2 * half) - (side + 2 * half) // 2
    star = 5e3 * np.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / 2.0**2)
    images = np.broadcast_to(star, (n, *star.shape)).copy()
    x = rng.uniform(0, width - 1, n)
    y = rng.uniform(0, height - 1, n)
    convolved = convolve_stamps(images, basis)
    kernels = solution.spatial_terms(x, y) @ solution.coefficients.T
    model = np.einsum("nk,nkyx->nyx", kernels, convolved)
    truth = rng.uniform(0.5, 1.5, n)
    sigma = 20.0
    reference = truth[:, None, None] * model + rng.normal(0.0, sigma, model.shape)
    weights = np.full(model.shape, sigma**-2)
    normal, rhs = stamp_normal_equations(convolved, reference, weights)
    scale, error = stamp_scales(solution, normal, rhs, x, y)
    pulls = (scale - truth) / error
    assert abs(pulls.mean()) < 0.25 and 0.85 < pulls.std() < 1.15
    np.testing.assert_allclose(error, sigma / np.sqrt((model**2).sum(axis=(1, 2))), rtol=1e-9)

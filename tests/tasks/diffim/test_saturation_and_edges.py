"""Saturated stars and detector regions without kernel stars in the difference image.

- SAT pixels of the science image (the unconvolved one) are grown by the kernel half-width in
  the difference's mask, like the convolved template's, so a saturated star's residual lies on
  SAT pixels and DetectAndMeasure's ``saturatedCenterAll`` rule drops it.
- Beyond the box of the kernel stamps, the spatial kernel is held at its value on the box's
  edge instead of extrapolated (``KernelSolution.valid_box``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apflow.core import MaskPlanes, VisitInfo
from apflow.tasks.dia import DetectAndMeasureTask
from apflow.tasks.diffim import SubtractImagesConfig, SubtractImagesTask, alard_lupton_basis
from apflow.tasks.diffim.convolve import convolve_with_solution
from apflow.tasks.diffim.kernel_fit import KernelSolution
from tests.tasks.diffim.diffim_data import make_scene

SAT = int(MaskPlanes.SAT)
DATA_ID = {"visit": 7, "detector": 4}


@pytest.fixture(scope="module")
def saturated():
    """A 512 px scene whose brightest inner star is saturated in the science image."""
    scene = make_scene(size=512, n_stars=140, seed=5)
    calexp = scene.calexp
    inside = (scene.star_x > 80) & (scene.star_x < 430) & (scene.star_y > 80) & (scene.star_y < 430)
    k = np.flatnonzero(inside)[np.argmax(scene.star_flux[inside])]
    cx, cy = int(round(scene.star_x[k])), int(round(scene.star_y[k]))
    image = np.array(calexp.image, np.float32)
    mask = np.array(calexp.mask, np.int32)
    # the full well cuts the core: its pixels hold the saturation level and are SAT
    level = np.float32(0.3 * image[cy, cx])
    core = image >= level
    core[: cy - 6, :] = core[cy + 7 :, :] = False
    core[:, : cx - 6] = core[:, cx + 7 :] = False
    image[core] = level
    mask[core] |= SAT
    # a midpoint MJD for DiaSource measurement
    info = VisitInfo(visit=7, band="r", mjd=60500.2, exposure_time=30.0)
    calexp = dataclasses.replace(calexp, image=image, mask=mask, visit_info=info)
    return scene, calexp, (cx, cy), core


@pytest.fixture(scope="module")
def subtracted(saturated):
    scene, calexp, _, _ = saturated
    return _subtract(calexp, scene.templates)


def _subtract(calexp, templates, **cfg):
    return SubtractImagesTask(SubtractImagesConfig(**cfg)).run(calexp, templates, data_id=DATA_ID)


def test_science_saturation_is_grown_by_the_kernel(saturated, subtracted):
    _, _, (cx, cy), core = saturated
    result = subtracted
    half = result.kernel.basis.half
    sat = (result.diff_image.mask & SAT) != 0
    ys, xs = np.nonzero(core)
    # every pixel within the kernel's reach of a saturated pixel is SAT; a little beyond is not
    assert sat[cy, xs.max() + half] and sat[cy, xs.min() - half]
    assert sat[ys.max() + half, cx] and sat[ys.min() - half, cx]
    assert not sat[cy, xs.max() + half + 2] and not sat[ys.max() + half + 2, cx]
    # the residual of the clipped core is large there: what detection would otherwise find
    z = result.diff_image.image / np.sqrt(result.diff_image.variance)
    assert np.nanmin(z[core]) < -20


def test_saturated_star_leaves_no_dia_source(saturated, subtracted):
    scene, calexp, (cx, cy), _ = saturated
    result = subtracted
    dia = DetectAndMeasureTask().run(result.diff_image, calexp, result.template_warped, DATA_ID)
    df = dia.dia_source
    near = np.hypot(df["x"] - cx, df["y"] - cy) < result.kernel.basis.half
    assert not near.any()
    assert dia.n_rejected_bad_center["SAT"] >= 1
    # the transients of the scene are still found
    for x, y in zip(scene.transient_x, scene.transient_y, strict=True):
        assert np.min(np.hypot(df["x"] - x, df["y"] - y)) < 1.5


def test_kernel_box_covers_the_used_stamps(saturated, subtracted):
    scene, calexp, _, _ = saturated
    x0, x1, y0, y1 = subtracted.kernel.valid_box
    assert 0 <= x0 < x1 < calexp.width and 0 <= y0 < y1 < calexp.height
    off = _subtract(calexp, scene.templates, clamp_spatial_kernel=False)
    assert off.kernel.valid_box is None


def test_kernel_is_held_constant_beyond_its_stamps():
    basis = alard_lupton_basis(5, (1.0, 2.0), (2, 1))
    width, height, half = 240, 200, basis.half
    rng = np.random.default_rng(3)
    coefficients = 0.02 * rng.standard_normal((basis.size, 3))
    coefficients[0] = (1.0, 0.0, 0.0)
    coefficients[1:, 1:] = 0.2 * rng.standard_normal((basis.size - 1, 2))  # strong gradients
    box = (60.0, 150.0, 40.0, 120.0)
    clamped = KernelSolution(basis, coefficients, np.zeros(1), 1, 0, width, height, box)
    free = dataclasses.replace(clamped, valid_box=None)
    image = rng.standard_normal((height + 2 * half, width + 2 * half))
    variance = np.ones_like(image)
    out, _ = convolve_with_solution(image, variance, clamped, block=64)
    for (x, y), edge in (((230, 190), (150, 120)), ((5, 100), (60, 100)), ((100, 80), (100, 80))):
        kernel = clamped.kernel_image(x, y)
        np.testing.assert_allclose(kernel, free.kernel_image(*edge), atol=1e-12)
        patch = image[y : y + 2 * half + 1, x : x + 2 * half + 1]
        assert out[y, x] == pytest.approx(float(np.sum(kernel[::-1, ::-1] * patch)), abs=1e-4)
    # without the box the far corner's kernel is the extrapolated one, visibly different
    assert np.abs(free.kernel_image(230, 190) - free.kernel_image(150, 120)).max() > 1e-3

"""Focal-plane partials, their merge, the per-visit model and its evaluation on a CCD."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from apflow.core import Exposure, MaskPlanes
from apflow.errors import TaskError
from apflow.io import ArrayBundle
from apflow.tasks.sky import (
    FocalPlaneBackgroundTask,
    FocalPlaneGrid,
    FocalPlanePartialConfig,
    FocalPlanePartialTask,
    evaluate_focal_plane_background,
    focal_plane_model,
    merge_partials,
)


def _tree_merge(partials: list[ArrayBundle]) -> ArrayBundle:
    while len(partials) > 1:
        pairs = [partials[i : i + 2] for i in range(0, len(partials), 2)]
        partials = [merge_partials(*p) if len(p) == 2 else p[0] for p in pairs]
    return partials[0]


def test_merge_partials_is_associative_and_commutative(sky_pipeline) -> None:
    visit = sky_pipeline.data.visits[0]
    partials = [sky_pipeline.partials[visit, d] for d in sky_pipeline.data.camera.detector_ids]
    serial = functools.reduce(merge_partials, partials)
    tree = _tree_merge(list(reversed(partials)))
    assert np.array_equal(serial["counts"], tree["counts"])
    assert np.allclose(serial["values"], tree["values"], rtol=1e-13, atol=0)
    assert serial.attrs["detectors"] == tree.attrs["detectors"] == list(range(9))


def test_merge_refuses_a_detector_twice_other_visits_and_other_grids(sky_pipeline) -> None:
    camera = sky_pipeline.data.camera
    v1, v2 = sky_pipeline.data.visits[:2]
    a, b = sky_pipeline.partials[v1, 0], sky_pipeline.partials[v1, 1]
    with pytest.raises(TaskError, match="both contain detector"):
        merge_partials(a, a)
    with pytest.raises(TaskError, match="visits"):
        merge_partials(a, sky_pipeline.partials[v2, 1])
    coarse = FocalPlanePartialTask(FocalPlanePartialConfig(bin_size_mm=5.12)).run(
        exposure=sky_pipeline.masked[v1, 1], detector=camera[1], camera=camera
    )
    with pytest.raises(TaskError, match="different grids"):
        merge_partials(a, coarse.focal_plane_partial)
    assert merge_partials(a, b).attrs["detectors"] == [0, 1]


@pytest.mark.parametrize("yaw_deg", [0.0, 30.0])
def test_partial_counts_every_good_pixel_once(sky_tools, yaw_deg: float) -> None:
    camera = sky_tools.small_camera(n_pixels=200, yaw_deg=yaw_deg)
    detector = camera[4]
    rng = np.random.default_rng(3)
    mask = np.where(rng.random(detector.shape) < 0.1, np.int32(MaskPlanes.BAD), np.int32(0))
    exposure = Exposure(image=np.full(detector.shape, 7.0), mask=mask)
    partial = FocalPlanePartialTask().run(exposure=exposure, detector=detector, camera=camera)
    bundle = partial.focal_plane_partial
    used = bundle["counts"] > 0
    assert bundle["counts"].sum() == (mask == 0).sum()
    assert np.allclose(bundle["values"][used] / bundle["counts"][used], 7.0)
    assert used.sum() >= 4  # the CCD straddles several 2.56-mm superpixels


def test_model_reproduces_a_linear_gradient_across_the_camera(sky_tools) -> None:
    camera = sky_tools.small_camera(n_pixels=256)
    task = FocalPlanePartialTask()
    partials = []
    for det in camera.detectors:
        y, x = np.mgrid[0 : det.height, 0 : det.width]
        fx, fy = det.pixel_to_focal_plane(x, y)
        exposure = Exposure(image=1000.0 + 20.0 * fx - 10.0 * fy)
        partials.append(
            task.run(exposure=exposure, detector=det, camera=camera).focal_plane_partial
        )
    result = FocalPlaneBackgroundTask().run(partials=partials)
    for det in camera.detectors:
        y, x = np.mgrid[0 : det.height, 0 : det.width]
        fx, fy = det.pixel_to_focal_plane(x, y)
        model = evaluate_focal_plane_background(result.focal_plane_background, det)
        # superpixels cut by gaps and the camera edge are corrected to their centres: 0.1% max
        assert np.abs(model - (1000.0 + 20.0 * fx - 10.0 * fy)).max() < 1.0
        assert np.median(np.abs(model - (1000.0 + 20.0 * fx - 10.0 * fy))) < 0.25


def test_scale_is_the_count_weighted_median_of_good_superpixels(sky_tools) -> None:
    camera = sky_tools.small_camera()
    grid = FocalPlaneGrid.from_camera(camera)
    full = (grid.bin_size_mm / 0.01) ** 2
    means = np.full(grid.shape, 100.0)
    counts = np.zeros(grid.shape, dtype=np.int64)
    means[2, 2:5] = [10.0, 20.0, 30.0]
    counts[2, 2:5] = [0.2 * full, full, 0.5 * full]
    counts[3, 3] = 0.05 * full  # below min_frac: ignored, then filled
    attrs = {
        "kind": "focal_plane_partial",
        **grid.to_attrs(),
        "pixel_size_mm": 0.01,
        "detectors": [0],
    }
    model, scale = focal_plane_model(
        ArrayBundle({"values": means * counts, "counts": counts}, attrs)
    )
    assert scale == 20.0
    assert not model["good"][3, 3] and np.isfinite(model["model"]).all()
    _, plain = focal_plane_model(
        ArrayBundle({"values": means * counts, "counts": counts}, attrs), scale_statistic="median"
    )
    assert plain != scale  # Rubin's plain median over the filled grid is another number


def test_no_partials_or_no_good_superpixel_is_an_error(sky_tools) -> None:
    with pytest.raises(TaskError, match="no focal-plane partials"):
        FocalPlaneBackgroundTask().run(partials=[])
    camera = sky_tools.small_camera(n_pixels=64)
    detector = camera[0]
    empty = Exposure(image=np.ones(detector.shape), mask=np.full(detector.shape, MaskPlanes.BAD))
    partial = FocalPlanePartialTask().run(exposure=empty, detector=detector, camera=camera)
    with pytest.raises(TaskError, match="no focal-plane superpixel"):
        FocalPlaneBackgroundTask().run(partials=[partial.focal_plane_partial])

"""The stored object mask (``sky_object_mask``) stands in for the old masked exposure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apflow.core import MaskPlanes
from apflow.errors import TaskError
from apflow.io import Repository
from apflow.tasks.sky import (
    OBJECT_MASK_KIND,
    FocalPlanePartialTask,
    MaskObjectsTask,
    SkyFrameSamplesTask,
    SkyMeasurementTask,
    apply_object_mask,
    detect_objects,
)

VISIT, DETECTOR = 2, 4


@pytest.fixture(scope="module")
def stored(sky_pipeline, tmp_path_factory):
    """One CCD written both ways: post_isr + sky_object_mask (new) and sky_masked (old: the
    whole exposure with DETECTED set, built here from :func:`detect_objects` directly)."""
    data = sky_pipeline.data
    repo = Repository.create(str(tmp_path_factory.mktemp("object-mask") / "repo"), data.camera)
    repo.register_dataset_type("sky_object_mask", ["visit", "detector"], "arrays")
    repo.register_dataset_type("sky_masked", ["visit", "detector"], "exposure")
    ids = {"visit": VISIT, "detector": DETECTOR}
    repo.put(data.exposures[VISIT, DETECTOR], "post_isr", **ids)
    post_isr = repo.get("post_isr", **ids)

    result = MaskObjectsTask().run(exposure=post_isr)
    repo.put(result.object_mask, "sky_object_mask", **ids)

    ignore = post_isr.mask_of("BAD", "SAT", "NO_DATA", "EDGE")
    detected, noise = detect_objects(post_isr.image, ignore, variance=post_isr.variance)
    bit = np.int32(MaskPlanes.DETECTED)
    old_mask = (post_isr.mask & ~bit) | np.where(detected, bit, np.int32(0))
    record = {"detected_fraction": float(detected.mean()), "noise": noise}
    old = dataclasses.replace(
        post_isr, mask=old_mask, metadata={**post_isr.metadata, "mask_objects": record}
    )
    repo.put(old, "sky_masked", **ids)
    return repo, ids


def test_stages_on_post_isr_plus_object_mask_equal_those_on_the_masked_exposure(
    stored, sky_pipeline
):
    repo, ids = stored
    camera = sky_pipeline.data.camera
    detector = camera[DETECTOR]
    post_isr = repo.get("post_isr", **ids)
    object_mask = repo.get("sky_object_mask", **ids)
    masked = repo.get("sky_masked", **ids)
    model = sky_pipeline.models[VISIT]
    frame = sky_pipeline.frames[DETECTOR].sky_frame_binned

    assert np.array_equal(apply_object_mask(post_isr, object_mask).mask, masked.mask)
    pairs = {
        "focal_plane_partial": [
            FocalPlanePartialTask()
            .run(exposure=exposure, detector=detector, camera=camera, **extra)
            .focal_plane_partial
            for exposure, extra in ((post_isr, {"object_mask": object_mask}), (masked, {}))
        ],
        "residual_sky": [
            SkyMeasurementTask()
            .run(exposure=exposure, focal_plane_background=model, detector=detector, **extra)
            .residual_sky
            for exposure, extra in ((post_isr, {"object_mask": object_mask}), (masked, {}))
        ],
        "sky_frame_samples": [
            SkyFrameSamplesTask()
            .run(
                exposure=exposure,
                focal_plane_background=model,
                detector=detector,
                sky_frame=frame,
                **extra,
            )
            .residual_sky
            for exposure, extra in ((post_isr, {"object_mask": object_mask}), (masked, {}))
        ],
    }
    for name, (new, old) in pairs.items():
        assert new.attrs == old.attrs, name
        assert list(new) == list(old), name
        for key in new:
            assert new[key].dtype == old[key].dtype, (name, key)
            assert new[key].tobytes() == old[key].tobytes(), (name, key)  # bit-identical
    # the mask matters: without it the stars enter the superpixel statistics
    unmasked = FocalPlanePartialTask().run(exposure=post_isr, detector=detector, camera=camera)
    assert (
        unmasked.focal_plane_partial["counts"].sum()
        > pairs["focal_plane_partial"][0]["counts"].sum()
    )


def test_the_object_mask_records_the_detections_and_the_masking(stored):
    repo, ids = stored
    object_mask = repo.get("sky_object_mask", **ids)
    masked = repo.get("sky_masked", **ids)
    assert object_mask.attrs["kind"] == OBJECT_MASK_KIND
    assert object_mask.attrs["detector"] == DETECTOR and object_mask.attrs["visit"] == VISIT
    assert object_mask["detected"].dtype == bool
    assert np.array_equal(object_mask["detected"], masked.mask_of("DETECTED"))
    assert object_mask.attrs["mask_objects"] == masked.metadata["mask_objects"]
    assert 0.0 < object_mask.attrs["mask_objects"]["detected_fraction"] < 0.2


def test_an_object_mask_of_another_ccd_is_an_error(stored, sky_pipeline):
    repo, ids = stored
    object_mask = repo.get("sky_object_mask", **ids)
    other_detector = sky_pipeline.data.exposures[VISIT, DETECTOR + 1]
    with pytest.raises(TaskError, match="object mask of detector 4"):
        apply_object_mask(other_detector, object_mask)
    other_visit = sky_pipeline.data.exposures[VISIT + 1, DETECTOR]
    with pytest.raises(TaskError, match="object mask of visit 2"):
        apply_object_mask(other_visit, object_mask)
    with pytest.raises(TaskError, match="expected a sky_object_mask bundle"):
        apply_object_mask(other_visit, sky_pipeline.models[VISIT])

"""Sky correction of new science visits with the sky frames built from the sky-frame visits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apflow.core import VisitInfo
from apflow.errors import TaskError
from apflow.tasks.sky import (
    MaskObjectsTask,
    SkyCorrectionTask,
    SkyFrameSamplesTask,
    SkyFrameScaleTask,
    SkyMeasurementTask,
    SubtractSkyFrameTask,
    fit_sky_frame_scale,
)


@pytest.fixture(scope="module")
def science_visit(sky_pipeline, sky_tools):
    """Visit 101: same camera and patterns, new sky level, gradient, stars and noise."""
    data = sky_tools.build_sky_data(sky_pipeline.data.camera, n_visits=1, seed=99, first_visit=101)
    return [data.exposures[101, d] for d in data.camera.detector_ids]


@pytest.fixture(scope="module")
def corrected(sky_pipeline, science_visit):
    frames = [sky_pipeline.frames[d].sky_frame for d in sky_pipeline.data.camera.detector_ids]
    return SkyCorrectionTask().run(
        exposures=science_visit, sky_frames=frames, camera=sky_pipeline.data.camera
    )


def _rms(bundles) -> float:
    values = np.concatenate([b["sky"][np.isfinite(b["sky"])] for b in bundles])
    return float(np.sqrt(np.mean((values - values.mean()) ** 2)))


def test_sky_correction_lowers_the_small_scale_background_five_fold(
    sky_pipeline, corrected
) -> None:
    camera = sky_pipeline.data.camera
    measure = SkyMeasurementTask()
    after = [
        measure.run(
            exposure=e,
            focal_plane_background=corrected.focal_plane_background,
            detector=camera[e.detector],
        ).residual_sky
        for e in corrected.exposures
    ]
    before_rms, after_rms = _rms(corrected.residual_skies), _rms(after)
    assert before_rms > 0.02  # the 3% pattern, minus what the focal-plane model absorbs
    assert after_rms < before_rms / 5.0, (before_rms, after_rms)
    # the frame describes this visit: its scale is ~1
    assert corrected.sky_scale["scale"] == pytest.approx(1.0, abs=0.03)
    assert corrected.sky_scale["detectors"] == camera.detector_ids


def test_fit_recovers_a_known_scale_despite_outliers() -> None:
    rng = np.random.default_rng(5)
    frames = [rng.normal(0.0, 0.02, (16, 16)) for _ in range(4)]
    residuals = [1.7 * f + rng.normal(0.0, 0.001, f.shape) for f in frames]
    residuals[0][3, 3] += 1.0
    residuals[2][:, 5] = np.nan
    fit = fit_sky_frame_scale(residuals, frames)
    assert fit.scale == pytest.approx(1.7, rel=0.01)
    assert fit.n_total == 4 * 256 - 16 and fit.n_used < fit.n_total


def test_a_sky_frame_of_another_filter_is_refused(sky_pipeline, science_visit, corrected) -> None:
    exposure = science_visit[0]
    other = dataclasses.replace(
        exposure, visit_info=VisitInfo(visit=101, band="g", physical_filter="g_sim")
    )
    with pytest.raises(TaskError, match="physical filter 'r_sim' for an exposure in 'g_sim'"):
        SubtractSkyFrameTask().run(
            exposure=other,
            sky_frame=sky_pipeline.frames[0].sky_frame,
            sky_scale=corrected.sky_scale,
            focal_plane_background=corrected.focal_plane_background,
            detector=sky_pipeline.data.camera[0],
        )


def test_the_binned_frame_gives_the_same_correction_as_the_full_one(
    sky_pipeline, corrected
) -> None:
    camera = sky_pipeline.data.camera
    exposure = corrected.exposures[4]
    common = {
        "sky_scale": corrected.sky_scale,
        "focal_plane_background": corrected.focal_plane_background,
        "detector": camera[4],
    }
    full = SubtractSkyFrameTask().run(
        exposure=exposure, sky_frame=sky_pipeline.frames[4].sky_frame, **common
    )
    binned = SubtractSkyFrameTask().run(
        exposure=exposure, sky_frame=sky_pipeline.frames[4].sky_frame_binned, **common
    )
    assert np.allclose(full.exposure.image, binned.exposure.image, atol=1e-2)


def test_stagewise_correction_with_frame_samples_equals_the_in_memory_chain(
    sky_pipeline, science_visit, corrected
) -> None:
    # the sky_correct workflow's path: per-CCD samples, one per-visit fit from them alone
    camera = sky_pipeline.data.camera
    masked = [MaskObjectsTask().run(exposure=e).exposure for e in science_visit]
    samples = [
        SkyFrameSamplesTask()
        .run(
            exposure=e,
            focal_plane_background=corrected.focal_plane_background,
            sky_frame=sky_pipeline.frames[e.detector].sky_frame_binned,
            detector=camera[e.detector],
        )
        .residual_sky
        for e in masked
    ]
    for sample, residual in zip(samples, corrected.residual_skies, strict=True):
        assert np.array_equal(sample["sky"], residual["sky"], equal_nan=True)
        frame = sky_pipeline.frames[sample.attrs["detector"]].sky_frame_binned["sky"]
        assert np.array_equal(sample["frame"], frame)
    scale = SkyFrameScaleTask().run(residual_skies=samples).sky_scale
    # the in-memory chain bins the full-resolution frames: equal to float32 rounding
    assert scale["scale"] == pytest.approx(corrected.sky_scale["scale"], rel=1e-6)
    for key in ("n_bins", "n_total", "visit", "detectors"):
        assert scale[key] == corrected.sky_scale[key], key


def test_samples_of_another_detector_s_frame_are_refused(
    sky_pipeline, science_visit, corrected
) -> None:
    camera = sky_pipeline.data.camera
    with pytest.raises(TaskError, match="detector 4: given the sky frame of detector 3"):
        SkyFrameSamplesTask().run(
            exposure=science_visit[4],
            focal_plane_background=corrected.focal_plane_background,
            sky_frame=sky_pipeline.frames[3].sky_frame_binned,
            detector=camera[4],
        )


def test_scale_fit_without_frames_needs_frame_samples(corrected) -> None:
    with pytest.raises(TaskError, match="detector 0: residual sky without sky-frame samples"):
        SkyFrameScaleTask().run(residual_skies=corrected.residual_skies)


# ------------------------------------------------------------------------------------------
# detectors without a sky frame (nightly on a repository where sky_frame never ran)


@pytest.fixture(scope="module")
def masked_science_visit(science_visit):
    return [MaskObjectsTask().run(exposure=e).exposure for e in science_visit]


def _samples(sky_pipeline, masked, corrected, with_frame) -> list:
    camera = sky_pipeline.data.camera
    task = SkyFrameSamplesTask()
    return [
        task.run(
            exposure=e,
            focal_plane_background=corrected.focal_plane_background,
            detector=camera[e.detector],
            sky_frame=sky_pipeline.frames[e.detector].sky_frame_binned
            if with_frame(e.detector)
            else None,
        ).residual_sky
        for e in masked
    ]


def test_samples_without_a_sky_frame_are_flagged_and_carry_no_frame(
    sky_pipeline, masked_science_visit, corrected
) -> None:
    samples = _samples(sky_pipeline, masked_science_visit, corrected, lambda d: d != 2)
    assert [s.attrs["has_sky_frame"] for s in samples] == [d != 2 for d in range(9)]
    assert "frame" not in samples[2].arrays and "frame" in samples[3].arrays
    # the residual itself is still measured: the same as the in-memory chain's
    assert np.array_equal(samples[2]["sky"], corrected.residual_skies[2]["sky"], equal_nan=True)


def test_the_scale_fit_leaves_out_detectors_without_a_sky_frame(
    sky_pipeline, masked_science_visit, corrected
) -> None:
    samples = _samples(sky_pipeline, masked_science_visit, corrected, lambda d: d not in (2, 7))
    result = SkyFrameScaleTask().run(residual_skies=samples)
    scale = result.sky_scale
    assert scale["detectors"] == [0, 1, 3, 4, 5, 6, 8]
    assert scale["without_sky_frame"] == [2, 7]
    expected = fit_sky_frame_scale(
        [s["sky"] for s in samples if s.attrs["has_sky_frame"]],
        [s["frame"] for s in samples if s.attrs["has_sky_frame"]],
    )
    assert scale["scale"] == pytest.approx(expected.scale, rel=1e-12)
    assert scale["scale"] == pytest.approx(1.0, abs=0.03)
    assert "warning" not in result.summary()


def test_a_visit_without_any_sky_frame_gets_no_scale_and_a_warning(
    sky_pipeline, masked_science_visit, corrected
) -> None:
    samples = _samples(sky_pipeline, masked_science_visit, corrected, lambda d: False)
    result = SkyFrameScaleTask().run(residual_skies=samples)
    assert result.sky_scale["scale"] is None and result.sky_scale["detectors"] == []
    assert result.sky_scale["without_sky_frame"] == list(range(9))
    summary = result.summary()
    assert summary["scale"] is None and summary["n_bins"] == 0
    assert summary["warning"] == "visit 101: no CCD has a sky frame; no sky correction"


@pytest.mark.parametrize("missing", ["frame", "scale"])
def test_without_a_frame_or_a_scale_the_exposure_passes_unchanged(
    sky_pipeline, science_visit, corrected, missing
) -> None:
    exposure = science_visit[4]
    frame = None if missing == "frame" else sky_pipeline.frames[4].sky_frame_binned
    sky_scale = corrected.sky_scale if missing == "frame" else {"scale": None, "visit": 101}
    result = SubtractSkyFrameTask().run(
        exposure=exposure,
        sky_scale=sky_scale,
        focal_plane_background=corrected.focal_plane_background,
        detector=sky_pipeline.data.camera[4],
        sky_frame=frame,
    )
    out = result.exposure
    assert np.array_equal(out.image, exposure.image)
    assert np.array_equal(out.mask, exposure.mask)
    record = out.metadata["sky_correction"]
    assert record["applied"] is False
    reason = {"frame": "detector 4: no sky frame", "scale": "visit 101: no sky-frame scale"}
    assert record["reason"].startswith(reason[missing])
    assert result.summary() == {"scale": None, "warning": record["reason"]}


def test_an_applied_correction_is_recorded_as_applied(sky_pipeline, corrected) -> None:
    record = corrected.exposures[0].metadata["sky_correction"]
    assert record == {
        "applied": True,
        "scale": corrected.sky_scale["scale"],
        "physical_filter": "r_sim",
    }


def test_masking_for_sky_correction_refuses_a_frame_of_another_detector_or_filter(
    sky_pipeline, science_visit
) -> None:
    exposure = science_visit[4]
    with pytest.raises(TaskError, match="detector 4: given the sky frame of detector 0"):
        MaskObjectsTask().run(exposure=exposure, sky_frame=sky_pipeline.frames[0].sky_frame_binned)
    other = dataclasses.replace(
        exposure, visit_info=VisitInfo(visit=101, band="g", physical_filter="g_sim")
    )
    with pytest.raises(TaskError, match="physical filter 'r_sim' for an exposure in 'g_sim'"):
        MaskObjectsTask().run(exposure=other, sky_frame=sky_pipeline.frames[4].sky_frame_binned)
    # the right frame: masked as without one
    with_frame = MaskObjectsTask().run(
        exposure=exposure, sky_frame=sky_pipeline.frames[4].sky_frame_binned
    )
    without = MaskObjectsTask().run(exposure=exposure)
    assert np.array_equal(with_frame.exposure.mask, without.exposure.mask)

"""The camera mosaic of the sky frames and its PNG."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.errors import TaskError
from apflow.tasks.sky import SkyCameraConfig, SkyCameraTask


def test_mosaic_places_each_detector_in_the_focal_plane(sky_pipeline) -> None:
    camera = sky_pipeline.data.camera
    frames = [sky_pipeline.frames[d].sky_frame for d in camera.detector_ids]
    result = SkyCameraTask().run(sky_frames=frames, camera=camera)
    mosaic = result.sky_camera.image
    meta = result.sky_camera.metadata
    assert meta["pixel_mm"] == pytest.approx(0.32) and meta["detectors"] == camera.detector_ids
    # 3 x 16 bins of 0.32 mm plus two 0.5-mm gaps
    assert mosaic.shape == (52, 52)
    assert np.isnan(mosaic[:, 16]).all()  # the gap between the first and second column
    assert result.sky_camera.mask_of("NO_DATA")[:, 16].all()
    assert np.isfinite(mosaic).sum() == 9 * 16 * 16  # every bin of every detector, once
    # the mosaic pixel at a detector's first bin is that bin's mean
    assert mosaic[0, 0] == pytest.approx(
        sky_pipeline.frames[0].sky_frame.image[:32, :32].mean(), abs=1e-6
    )
    assert result.sky_camera_png[:8] == b"\x89PNG\r\n\x1a\n"
    assert meta["physical_filter"] == "r_sim"


def test_mosaic_accepts_binned_frames_and_missing_detectors(sky_pipeline) -> None:
    camera = sky_pipeline.data.camera
    frames = [sky_pipeline.frames[d].sky_frame_binned for d in (0, 4, 8)]
    result = SkyCameraTask(SkyCameraConfig(binning=64, make_png=False)).run(
        sky_frames=frames, camera=camera
    )
    assert result.sky_camera_png is None
    assert result.sky_camera.metadata["detectors"] == [0, 4, 8]
    assert np.isnan(result.sky_camera.image).mean() > 0.6  # six detectors are missing


def test_no_frames_is_an_error(sky_pipeline) -> None:
    with pytest.raises(TaskError, match="no sky frames"):
        SkyCameraTask().run(sky_frames=[], camera=sky_pipeline.data.camera)

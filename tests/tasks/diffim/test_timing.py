"""One 4k x 4k synthetic CCD end to end (slow; measures, asserts no absolute time)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from apflow.tasks.diffim import SubtractImagesTask
from tests.tasks.diffim.diffim_data import make_scene


@pytest.mark.slow
def test_lsstcam_size_detector_end_to_end():
    scene = make_scene(size=4096, n_stars=5000, seed=3, wing_floor=2.0)
    task = SubtractImagesTask()
    warm = make_scene(size=256, n_stars=40, seed=3, n_transients=1)
    try:
        task.run(warm.calexp, warm.templates)  # numba compilation, not part of the timing
    except Exception:  # noqa: BLE001 - a tiny scene may lack stamps; only the compile matters
        pass
    cpu, wall = time.process_time(), time.perf_counter()
    result = task.run(scene.calexp, scene.templates, data_id={"visit": 7, "detector": 4})
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    meta = result.diff_image.metadata
    print(f"4k x 4k subtraction: {cpu:.1f} s CPU, {wall:.1f} s wall; {result.summary()}")
    assert meta["diffim_n_stamps_used"] >= 100
    assert meta["diffim_sky_std"] == pytest.approx(1.0, abs=0.05)
    assert np.isfinite(result.diff_image.image).mean() > 0.95

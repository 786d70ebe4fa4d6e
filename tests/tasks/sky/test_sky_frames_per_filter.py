"""A night of two filters: one sky frame per (detector, physical filter), each visit corrected
with its own filter's frame.

One simulation (mini camera, detector 4, 4 visits, seed 5, the default 2% sky pattern); visits 3
and 4 are relabelled ``g`` / ``g_sim`` (their visit info rewritten), so the repository holds two
visits per filter. ``sky_frame`` (Dask's synchronous scheduler) must build both filters' frames,
each from its own visits only; ``sky_correct`` on a local cluster (scheduler and two worker
processes on 127.0.0.1) must subtract from every visit the frame of that visit's filter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apflow import run
from apflow.io import Repository
from apflow.sim import simulate

DETECTOR = 4
FILTER_OF = {1: "r_sim", 2: "r_sim", 3: "g_sim", 4: "g_sim"}


@pytest.fixture(scope="module")
def two_filter_night(tmp_path_factory) -> Repository:
    url = str(tmp_path_factory.mktemp("two-filters") / "repo")
    simulate(url, camera="mini", n_visits=4, seed=5, detectors=[DETECTOR], coadds=False)
    repo = Repository(url)
    for visit in (3, 4):
        exposure = repo.get("post_isr", visit=visit, detector=DETECTOR)
        info = dataclasses.replace(exposure.visit_info, band="g", physical_filter="g_sim")
        relabelled = dataclasses.replace(exposure, visit_info=info)
        repo.put(relabelled, "post_isr", overwrite=True, visit=visit, detector=DETECTOR)
    frames = run("sky_frame", url, scheduler="synchronous", progress=False)
    assert frames.ok, frames.as_table()
    corrected = run("sky_correct", url, workers=2, progress=False)
    assert corrected.ok, corrected.as_table()
    return repo


def test_each_filter_gets_its_own_sky_frame_from_its_own_visits(two_filter_night):
    repo = two_filter_night
    assert repo.data_ids("sky_frame") == [
        {"detector": DETECTOR, "physical_filter": "g_sim"},
        {"detector": DETECTOR, "physical_filter": "r_sim"},
    ]
    for physical_filter in ("g_sim", "r_sim"):
        binned = repo.get("sky_frame_binned", detector=DETECTOR, physical_filter=physical_filter)
        assert binned.attrs["physical_filter"] == physical_filter
        visits = [v for v, f in FILTER_OF.items() if f == physical_filter]
        assert sorted(binned.attrs["input_visits"]) == visits
        frame = repo.get("sky_frame", detector=DETECTOR, physical_filter=physical_filter)
        assert np.isfinite(frame.image).all()
        assert repo.exists("sky_camera_png", physical_filter=physical_filter)


def test_each_visit_is_corrected_with_the_frame_of_its_filter(two_filter_night):
    repo = two_filter_night
    for visit, physical_filter in FILTER_OF.items():
        record = repo.get("post_isr_skycorr", visit=visit, detector=DETECTOR).metadata
        assert record["sky_correction"]["applied"] is True
        assert record["sky_correction"]["physical_filter"] == physical_filter
        # the visit's frame describes it: its fitted scale is close to 1
        assert repo.get("sky_scale", visit=visit)["scale"] == pytest.approx(1.0, abs=0.15)

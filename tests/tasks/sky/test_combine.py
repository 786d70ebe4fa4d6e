"""Combining one detector's residual skies: failures, missing visits, empty bins, provenance."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from apflow.errors import TaskError
from apflow.io import ArrayBundle
from apflow.tasks.sky import SkyCombineTask
from apflow.tasks.sky.combine import plane_checksum


def _residuals(sky_pipeline, detector: int = 4) -> list[ArrayBundle]:
    return [sky_pipeline.residuals[v, detector] for v in sky_pipeline.data.visits]


def _edited(bundle: ArrayBundle, sky: np.ndarray | None = None, **attrs) -> ArrayBundle:
    arrays = dict(bundle.arrays)
    if sky is not None:
        arrays["sky"] = sky
    return ArrayBundle(arrays, {**bundle.attrs, **attrs})


def test_inputs_of_several_filters_are_a_clear_error(sky_pipeline) -> None:
    residuals = _residuals(sky_pipeline)
    residuals[3] = _edited(residuals[3], physical_filter="g_sim", band="g")
    camera = sky_pipeline.data.camera
    with pytest.raises(TaskError, match=r"detector=4.*mix physical filters.*g_sim: visits \[4\]"):
        SkyCombineTask().run(residual_skies=residuals, detector=camera[4])


def test_zero_inputs_are_a_clear_error(sky_pipeline) -> None:
    with pytest.raises(TaskError, match=r"sky_frame \[detector=4\]: no residual skies"):
        SkyCombineTask().run(residual_skies=[], data_id={"detector": 4})


def test_missing_and_empty_visits_degrade_gracefully(sky_pipeline, caplog) -> None:
    residuals = _residuals(sky_pipeline)[:3]
    residuals[1] = _edited(residuals[1], sky=np.full_like(residuals[1]["sky"], np.nan))
    with caplog.at_level(logging.WARNING):
        result = SkyCombineTask().run(residual_skies=residuals)
    meta = result.sky_frame.metadata
    assert meta["n_inputs"] == 2 and meta["n_given"] == 3
    assert meta["input_visits"] == [1, 3]
    assert len(result.warnings) == 2 and meta["warnings"] == result.warnings
    assert "visit 2 has no measured bin" in caplog.text and "only 2 usable visit" in caplog.text
    assert np.isfinite(result.sky_frame.image).all()
    assert result.sky_frame_binned["n_visits"].max() == 2


def test_bins_no_visit_measured_are_filled_and_flagged(sky_pipeline) -> None:
    residuals = []
    for bundle in _residuals(sky_pipeline):
        sky = bundle["sky"].copy()
        sky[5:7, 8] = np.nan  # e.g. a bad region masked in every visit
        residuals.append(_edited(bundle, sky=sky))
    reference = SkyCombineTask().run(residual_skies=_residuals(sky_pipeline))
    result = SkyCombineTask().run(residual_skies=residuals)
    binned = result.sky_frame_binned
    assert binned["filled"][5:7, 8].all() and binned["filled"].sum() == 2
    assert np.isfinite(binned["sky"]).all()
    assert result.sky_frame.metadata["filled_bins"] == 2
    assert result.sky_frame.mask_of("INTRP")[5 * 32 : 7 * 32, 8 * 32 : 9 * 32].all()
    assert result.sky_frame.mask[0, 0] == 0
    # filled from the neighbours: close to what the visits say there (the pattern is smooth)
    truth = reference.sky_frame_binned["sky"][5:7, 8]
    assert np.abs(binned["sky"][5:7, 8] - truth).max() < 0.5 * np.std(
        reference.sky_frame_binned["sky"]
    )


def test_checksums_describe_the_planes(sky_pipeline) -> None:
    frame = sky_pipeline.frames[2].sky_frame
    for plane in ("image", "mask", "variance"):
        assert frame.metadata["checksums"][plane] == plane_checksum(getattr(frame, plane))
    assert np.isfinite(frame.variance).all() and (frame.variance >= 0).all()


def test_one_outlier_visit_is_clipped(sky_pipeline) -> None:
    residuals = _residuals(sky_pipeline)
    clean = SkyCombineTask().run(residual_skies=residuals).sky_frame_binned
    spoiled = residuals[0]["sky"].copy()
    spoiled[3, 3] += 0.05  # e.g. a bright galaxy's light in one visit
    residuals[0] = _edited(residuals[0], sky=spoiled)
    combined = SkyCombineTask().run(residual_skies=residuals).sky_frame_binned
    assert combined["n_visits"][3, 3] == clean["n_visits"][3, 3] - 1
    assert abs(combined["sky"][3, 3] - clean["sky"][3, 3]) < 1e-3

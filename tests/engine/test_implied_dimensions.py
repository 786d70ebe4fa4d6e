"""A visit implies its band and physical filter (``apflow.engine.implied``).

Four visits, two in ``r_sim`` and two in ``g_sim`` (plus a fifth in ``i_sim`` in one test), on
detectors 0 and 1. A per-(detector, physical_filter) stage gathers per-(visit, detector)
statistics of its filter's visits only (as ``combine_sky`` builds one sky frame per filter), and
a per-(visit, detector) stage reads the per-(detector, physical_filter) product of its visit's
filter one to one (as sky correction picks the frame of the visit's filter).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from apflow import run
from apflow.core import Exposure, VisitInfo
from apflow.engine import plan
from apflow.errors import WorkflowError
from apflow.io import Repository
from apflow.tasks.base import Task

FILTERS = {1: ("r", "r_sim"), 2: ("r", "r_sim"), 3: ("g", "g_sim"), 4: ("g", "g_sim")}


@dataclass
class _Json:
    value: dict[str, Any]


class FilterStackTask(Task):
    """Lists the visits (and their filters) it was given: a stand-in for a per-filter combine."""

    def run(self, stats: list[dict[str, Any]], data_id: dict[str, Any]) -> _Json:
        return _Json(
            {
                "physical_filter": data_id["physical_filter"],
                "visits": sorted(s["visit"] for s in stats),
                "filters": sorted({s["physical_filter"] for s in stats}),
            }
        )


class VisitStatTask(Task):
    """The exposure's visit, filter and mean."""

    def run(self, exposure: Exposure) -> _Json:
        info = exposure.visit_info
        return _Json(
            {
                "visit": info.visit,
                "physical_filter": info.physical_filter,
                "mean": float(np.mean(exposure.image)),
            }
        )


class PickTask(Task):
    """Which per-filter product a CCD received (None: none of its filter)."""

    def run(self, exposure: Exposure, stack: dict[str, Any] | None = None) -> _Json:
        return _Json(
            {
                "exposure_filter": exposure.visit_info.physical_filter,
                "stack_filter": None if stack is None else stack["physical_filter"],
                "stack_visits": None if stack is None else stack["visits"],
            }
        )


def _workflow(tmp_path: Path) -> Path:
    path = tmp_path / "per_filter.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: per_filter
            dataset_types:
              visit_stat: {dimensions: [visit, detector], storage: json}
              filter_stack: {dimensions: [detector, physical_filter], storage: json}
              pick: {dimensions: [visit, detector], storage: json}
            stages:
              visit_stat:
                task: tests.engine.test_implied_dimensions:VisitStatTask
                dimensions: [visit, detector]
                inputs: {exposure: post_isr}
                outputs: {value: visit_stat}
              filter_stack:
                task: tests.engine.test_implied_dimensions:FilterStackTask
                dimensions: [detector, physical_filter]
                inputs: {stats: visit_stat}
                outputs: {value: filter_stack}
              pick:
                task: tests.engine.test_implied_dimensions:PickTask
                dimensions: [visit, detector]
                inputs:
                  exposure: post_isr
                  stack: filter_stack
                outputs: {value: pick}
            """
        )
    )
    return path


def _repo(tmp_path: Path, filters: dict[int, tuple[str, str]] = FILTERS) -> Repository:
    repo = Repository.create(str(tmp_path / "repo"), camera="mini")
    rng = np.random.default_rng(5)
    for visit, (band, physical_filter) in filters.items():
        for detector in (0, 1):
            shape = (32, 32)
            repo.put(
                Exposure(
                    image=rng.normal(100.0, 1.0, shape).astype(np.float32),
                    mask=np.zeros(shape, dtype=np.int32),
                    variance=np.ones(shape, dtype=np.float32),
                    visit_info=VisitInfo(visit=visit, band=band, physical_filter=physical_filter),
                    detector=detector,
                ),
                "post_isr",
                visit=visit,
                detector=detector,
            )
    return repo


def test_a_per_filter_stage_gathers_only_the_visits_of_its_filter(tmp_path):
    repo = _repo(tmp_path)
    graph = plan(_workflow(tmp_path), repo)
    stacks = {q.key: q for q in graph.by_stage()["filter_stack"]}
    assert sorted(stacks) == [
        f"filter_stack-detector={d}-physical_filter={f}" for d in (0, 1) for f in ("g_sim", "r_sim")
    ]
    gathered = stacks["filter_stack-detector=1-physical_filter=g_sim"].inputs[0]
    assert gathered.gathered
    assert [dict(i) for i in gathered.ids] == [
        {"detector": 1, "visit": 3},
        {"detector": 1, "visit": 4},
    ]


def test_a_visit_reads_the_per_filter_product_of_its_own_filter(tmp_path):
    repo = _repo(tmp_path)
    summary = run(_workflow(tmp_path), repo, scheduler="synchronous", progress=False)
    assert summary.ok, summary.as_table()
    for visit, (_, physical_filter) in FILTERS.items():
        for detector in (0, 1):
            stack = repo.get("filter_stack", detector=detector, physical_filter=physical_filter)
            assert stack["filters"] == [physical_filter]
            picked = repo.get("pick", visit=visit, detector=detector)
            assert picked["exposure_filter"] == picked["stack_filter"] == physical_filter
            assert picked["stack_visits"] == [
                v for v, f in FILTERS.items() if f[1] == physical_filter
            ]


def test_a_visit_of_a_filter_without_the_product_gets_none_or_no_quantum(tmp_path):
    repo = _repo(tmp_path)
    assert run(_workflow(tmp_path), repo, scheduler="synchronous", progress=False).ok
    for detector in (0, 1):  # visit 5, in a filter without a filter_stack
        repo.put(
            Exposure(
                image=np.ones((32, 32), dtype=np.float32),
                mask=np.zeros((32, 32), dtype=np.int32),
                variance=np.ones((32, 32), dtype=np.float32),
                visit_info=VisitInfo(visit=5, band="i", physical_filter="i_sim"),
                detector=detector,
            ),
            "post_isr",
            visit=5,
            detector=detector,
        )
    required = plan(_pick_only(tmp_path, "filter_stack"), repo)
    assert sorted(q.key for q in required.by_stage()["pick"]) == sorted(
        f"pick-visit={v}-detector={d}" for v in FILTERS for d in (0, 1)
    )
    # --where selects on the implied filter
    only_g = plan(_pick_only(tmp_path, "filter_stack"), repo, where="physical_filter = 'g_sim'")
    assert sorted(q.key for q in only_g.by_stage()["pick"]) == sorted(
        f"pick-visit={v}-detector={d}" for v in (3, 4) for d in (0, 1)
    )
    # ... in every stage with a visit, not only where the filter is an input's dimension
    whole = plan(_workflow(tmp_path), repo, where="physical_filter = 'g_sim'", redo=True)
    assert sorted(q.key for q in whole.by_stage()["visit_stat"]) == sorted(
        f"visit_stat-visit={v}-detector={d}" for v in (3, 4) for d in (0, 1)
    )
    assert sorted(q.key for q in whole.by_stage()["filter_stack"]) == [
        "filter_stack-detector=0-physical_filter=g_sim",
        "filter_stack-detector=1-physical_filter=g_sim",
    ]
    optional = _pick_only(tmp_path, "{dataset: filter_stack, optional: true}")
    summary = run(optional, repo, where="visit = 5", scheduler="synchronous", progress=False)
    assert summary.ok, summary.as_table()
    picked = repo.get("pick", visit=5, detector=1)
    assert picked == {"exposure_filter": "i_sim", "stack_filter": None, "stack_visits": None}


def _pick_only(tmp_path: Path, stack_input: str) -> Path:
    path = tmp_path / "pick_only.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: pick_only
            dataset_types:
              filter_stack: {{dimensions: [detector, physical_filter], storage: json}}
              pick: {{dimensions: [visit, detector], storage: json}}
            stages:
              pick:
                task: tests.engine.test_implied_dimensions:PickTask
                dimensions: [visit, detector]
                inputs:
                  exposure: post_isr
                  stack: {stack_input}
                outputs: {{value: pick}}
            """
        )
    )
    return path


def test_an_unknown_filter_is_an_error_naming_the_visit(tmp_path):
    repo = _repo(tmp_path, {1: ("r", "r_sim"), 2: ("", "")})
    with pytest.raises(WorkflowError, match="physical_filter of visit 2 is unknown"):
        plan(_workflow(tmp_path), repo)

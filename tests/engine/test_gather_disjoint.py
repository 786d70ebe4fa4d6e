"""Inputs that share no dimension with the stage are gathered whole (template patches per CCD)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import apflow
from apflow.engine import plan
from apflow.tasks.base import Task


@dataclass
class _Counts:
    counts: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {}


class CountInputsTask(Task):
    """Records which data ids of each input it received."""

    def run(
        self, exposures: list[Any], levels: list[Any], input_data_ids: dict[str, Any]
    ) -> _Counts:
        return _Counts(
            {
                "exposures": len(exposures),
                "levels": sorted(d["visit"] for d in input_data_ids["levels"]),
            }
        )


WORKFLOW = """
    name: disjoint
    dataset_types:
      image_stats: {dimensions: [visit, detector], storage: json}
      visit_stats: {dimensions: [visit], storage: json}
      counts: {dimensions: [detector], storage: json}
    stages:
      image_stats:
        task: apflow.tasks.examples:ImageStatsTask
        dimensions: [visit, detector]
        inputs: {exposure: post_isr}
        outputs: {stats: image_stats}
      visit_stats:
        task: apflow.tasks.examples:VisitStatsTask
        dimensions: [visit]
        inputs: {detector_stats: image_stats}
        outputs: {stats: visit_stats}
      counts:
        task: tests.engine.test_gather_disjoint:CountInputsTask
        dimensions: [detector]
        inputs:
          exposures: post_isr        # more dimensions: every visit of this detector
          levels: visit_stats        # no shared dimension: every visit's level
        outputs: {counts: counts}
"""


def test_disjoint_input_reaches_every_quantum_whole(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1, 2, 3))
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(WORKFLOW))
    graph = plan(path, repo, where="detector < 2")
    counts = graph.quanta["counts-detector=1"]
    # post_isr exists already; the three per-visit gathers must finish first
    assert counts.upstream == {f"visit_stats-visit={v}" for v in (1, 2, 3)}
    assert [dict(i) for i in counts.inputs[1].ids] == [{"visit": v} for v in (1, 2, 3)]
    summary = apflow.run(path, repo, where="detector < 2", scheduler="synchronous", progress=False)
    assert summary.ok
    assert repo.get("counts", detector=1) == {"exposures": 3, "levels": [1, 2, 3]}

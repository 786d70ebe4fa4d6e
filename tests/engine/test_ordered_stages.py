"""``ordered_by``: a stage runs one value of a dimension at a time (alert production's time order)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import pytest

import apflow
from apflow.engine import plan
from apflow.errors import WorkflowError
from apflow.tasks.base import Task


@dataclass
class _RepoUrlResult:
    seen: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {}


class RepoUrlTask(Task):
    """Returns the repository URL the engine injected."""

    def run(self, exposure: Any, repo_url: str | None = None) -> _RepoUrlResult:
        return _RepoUrlResult({"repo_url": repo_url})


def _write(tmp_path, text: str):
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    return path


ORDERED = """
    name: ordered
    dataset_types:
      image_stats: {dimensions: [visit, detector], storage: json}
    stages:
      image_stats:
        task: apflow.tasks.examples:ImageStatsTask
        dimensions: [visit, detector]
        ordered_by: visit
        inputs: {exposure: post_isr}
        outputs: {stats: image_stats}
        config: {repeat: 3}
"""


def test_ordered_stage_runs_visits_one_after_another_and_failures_do_not_block(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1, 2, 3, 4), nan_data_ids=((2, 5),))
    summary = apflow.run(
        _write(tmp_path, ORDERED), repo, scheduler="threads", workers=4, progress=False
    )
    # the all-NaN CCD of visit 2 fails; visits 3 and 4 still run (a barrier, not a dependency)
    assert summary.count("failed") == 1 and summary.count("done") == 35
    assert summary.count("blocked") == 0
    by_visit: dict[int, list[dict]] = {}
    for result in summary.results:
        by_visit.setdefault(result["data_id"]["visit"], []).append(result)
    for visit in (2, 3, 4):
        earlier_end = max(r["end"] for r in by_visit[visit - 1])
        later_start = min(r["start"] for r in by_visit[visit])
        assert later_start >= earlier_end, f"visit {visit} started before visit {visit - 1} ended"


def test_unordered_stage_overlaps_visits(tmp_path, helpers):
    # the control: without ordered_by the same run does interleave visits on 4 threads, so the
    # test above would fail if the barrier did nothing
    repo = helpers.make_repo(tmp_path / "repo", visits=(1, 2, 3, 4))
    text = ORDERED.replace("        ordered_by: visit\n", "")
    summary = apflow.run(
        _write(tmp_path, text), repo, scheduler="threads", workers=4, progress=False
    )
    ends = {v: max(r["end"] for r in summary.results if r["data_id"]["visit"] == v) for v in (1, 2)}
    starts = {
        v: min(r["start"] for r in summary.results if r["data_id"]["visit"] == v) for v in (2, 3)
    }
    assert starts[2] < ends[1] or starts[3] < ends[2]


def test_resume_of_an_ordered_stage_runs_only_missing_quanta(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1, 2, 3))
    path = _write(tmp_path, ORDERED)
    apflow.run(path, repo, where="visit = 2", scheduler="threads", workers=2, progress=False)
    summary = apflow.run(path, repo, scheduler="threads", workers=2, progress=False)
    assert summary.count("skipped") == 9 and summary.count("done") == 18


def test_ordered_by_must_be_a_stage_dimension(tmp_path):
    text = ORDERED.replace("ordered_by: visit", "ordered_by: tract")
    with pytest.raises(WorkflowError, match="ordered_by 'tract' must be one of"):
        apflow.engine.load_workflow(_write(tmp_path, text))


def test_repo_url_is_injected(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    path = _write(
        tmp_path,
        """
        name: url
        dataset_types:
          seen: {dimensions: [visit, detector], storage: json}
        stages:
          seen:
            task: tests.engine.test_ordered_stages:RepoUrlTask
            dimensions: [visit, detector]
            inputs: {exposure: post_isr}
            outputs: {seen: seen}
        """,
    )
    graph = plan(path, repo, where="detector = 0")
    assert len(graph) == 1
    summary = apflow.run(path, repo, where="detector = 0", scheduler="synchronous", progress=False)
    assert summary.ok
    assert repo.get("seen", visit=1, detector=0)["repo_url"] == repo.url

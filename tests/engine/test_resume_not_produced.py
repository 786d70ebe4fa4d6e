"""Resume skips quanta that finished without producing some (or all) of their outputs.

A task may legitimately return ``None`` for an output (calibrate's match catalogs, a detector
with nothing to report). Nothing is written for it, so before the "not produced" record such a
quantum looked unfinished and was rerun on every resume.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import apflow
from apflow.engine import plan
from apflow.tasks.base import Task


@dataclass
class _Maybe:
    stats: dict[str, Any] | None
    note: dict[str, Any] | None


class SometimesNothingTask(Task):
    """Stats on even detectors only; the note never; nothing at all on detector 3."""

    def run(self, exposure: Any, data_id: dict[str, Any]) -> _Maybe:
        even = data_id["detector"] % 2 == 0
        return _Maybe({"mean": float(exposure.image.mean())} if even else None, None)


@dataclass
class _Count:
    count: dict[str, Any]


class CountTask(Task):
    """How many stats of the visit arrived."""

    def run(self, stats: list[Any]) -> _Count:
        return _Count({"n": len(stats)})


@dataclass
class _Echo:
    echo: dict[str, Any]


class EchoTask(Task):
    """Needs one detector's stats (a required single input)."""

    def run(self, stats: dict[str, Any]) -> _Echo:
        return _Echo(dict(stats))


WORKFLOW = """
    name: sometimes
    dataset_types:
      maybe_stats: {dimensions: [visit, detector], storage: json}
      maybe_note: {dimensions: [visit, detector], storage: json}
      stats_count: {dimensions: [visit], storage: json}
      echo: {dimensions: [visit, detector], storage: json}
    stages:
      maybe:
        task: tests.engine.test_resume_not_produced:SometimesNothingTask
        dimensions: [visit, detector]
        inputs: {exposure: post_isr}
        outputs: {stats: maybe_stats, note: maybe_note}
      count:
        task: tests.engine.test_resume_not_produced:CountTask
        dimensions: [visit]
        inputs: {stats: maybe_stats}
        outputs: {count: stats_count}
"""

ECHO_STAGE = """
      echo:
        task: tests.engine.test_resume_not_produced:EchoTask
        dimensions: [visit, detector]
        inputs: {stats: maybe_stats}
        outputs: {echo: echo}
"""


def _workflow(tmp_path: Any, with_echo: bool = False) -> Any:
    path = tmp_path / "sometimes.yaml"
    path.write_text(textwrap.dedent(WORKFLOW + (ECHO_STAGE if with_echo else "")))
    return path


def _run(path: Any, repo: Any, where: str = "detector < 4") -> Any:
    return apflow.run(path, repo, where=where, scheduler="synchronous", progress=False)


def test_a_resume_skips_quanta_that_produced_nothing(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1, 2))
    path = _workflow(tmp_path)
    first = _run(path, repo)
    assert first.ok and first.count("done") == 2 * 4 + 2
    assert [d["detector"] for d in repo.data_ids("maybe_stats", visit=1)] == [0, 2]
    assert repo.get("stats_count", visit=1) == {"n": 2}
    # nothing at all for odd detectors, no note anywhere: all recorded as not produced
    assert len(repo.not_produced_ids("maybe_note")) == 8
    assert [d["detector"] for d in repo.not_produced_ids("maybe_stats", visit=2)] == [1, 3]
    assert not repo.exists("maybe_note", visit=1, detector=0)
    again = _run(path, repo)
    assert again.ok and again.count("done") == 0 and again.count("skipped") == 10


def test_removing_the_output_reruns_its_quantum(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    path = _workflow(tmp_path)
    assert _run(path, repo).ok
    repo.remove("maybe_note", visit=1, detector=3)  # only a "not produced" record
    repo.remove("maybe_stats", visit=1, detector=2)  # a dataset
    assert not repo.not_produced_ids("maybe_note", visit=1, detector=3)
    graph = plan(path, repo, where="detector < 4")
    # (the visit's count exists, so it is kept: resume looks at outputs, not at freshness)
    assert sorted(q.key for q in graph.quanta.values() if not q.skip) == [
        "maybe-visit=1-detector=2",
        "maybe-visit=1-detector=3",
    ]


def test_readers_of_a_not_produced_dataset_go_without_it_on_resume(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    path = _workflow(tmp_path, with_echo=True)
    first = _run(path, repo)
    # the echo of an odd detector has no stats: blocked in the run that decided it
    assert first.count("blocked") == 2 and first.count("done") == 4 + 1 + 2
    graph = plan(path, repo, where="detector < 4")
    assert all(q.skip for q in graph.quanta.values())
    # not planned again (it has nothing to read), rather than run to fail on a missing input
    assert sorted(k for k in graph.quanta if k.startswith("echo")) == [
        "echo-visit=1-detector=0",
        "echo-visit=1-detector=2",
    ]
    again = _run(path, repo)
    assert again.ok and again.count("done") == 0

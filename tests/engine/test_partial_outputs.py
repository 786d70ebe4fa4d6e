"""A task failure that carries partial outputs: they are written, the quantum still fails."""

from __future__ import annotations

import pickle
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

import apflow
from apflow.errors import TaskError
from apflow.tasks.base import Task


@dataclass
class _Partial:
    first: dict[str, Any] | None
    second: dict[str, Any] | None
    third: dict[str, Any] | None


class FailingWithPartialTask(Task):
    """Fails on detector 1 with the first two outputs computed (like calibrate's astrometry)."""

    def run(self, exposure: Any, data_id: dict[str, Any]) -> _Partial:
        result = _Partial({"n": 1}, {"n": 2}, {"n": 3})
        if data_id["detector"] == 1:
            error = TaskError("astrometry failed on purpose")
            error.partial_outputs = _Partial({"n": 1}, {"pixels": np.zeros(4).tolist()}, None)
            raise error
        if data_id["detector"] == 2:
            error = TaskError("everything computed, still a failure")
            error.partial_outputs = result
            raise error
        return result


WORKFLOW = """
    name: partial
    dataset_types:
      out_a: {dimensions: [visit, detector], storage: json}
      out_b: {dimensions: [visit, detector], storage: json}
      out_c: {dimensions: [visit, detector], storage: json}
    stages:
      partial:
        task: tests.engine.test_partial_outputs:FailingWithPartialTask
        dimensions: [visit, detector]
        inputs: {exposure: post_isr}
        outputs: {first: out_a, second: out_b, third: out_c}
"""


def test_partial_outputs_are_written_and_the_quantum_fails(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(WORKFLOW))
    where = "detector < 3"
    summary = apflow.run(path, repo, where=where, scheduler="synchronous", progress=False)
    assert summary.count("failed") == 2 and summary.count("done") == 1
    failure = next(f for f in summary.failures if f.data_id["detector"] == 1)
    assert "astrometry failed on purpose" in failure.error
    assert repo.get("out_a", visit=1, detector=1) == {"n": 1}
    assert repo.exists("out_b", visit=1, detector=1)
    assert not repo.exists("out_c", visit=1, detector=1)
    assert repo.provenance("out_a", visit=1, detector=1)["partial"] is True
    # a complete partial result still leaves one output out, so a rerun retries the quantum
    assert repo.exists("out_b", visit=1, detector=2) and not repo.exists(
        "out_c", visit=1, detector=2
    )
    again = apflow.run(path, repo, where=where, scheduler="synchronous", progress=False)
    assert again.count("skipped") == 1 and again.count("failed") == 2


def test_the_exception_leaves_the_worker_without_its_pixels(tmp_path, helpers):
    from apflow.engine import plan
    from apflow.engine.quantum import run_quantum
    from apflow.engine.runner import _spec_factory
    from apflow.engine.summary import RunSummary

    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(WORKFLOW))
    graph = plan(path, repo, where="detector = 1")
    (quantum,) = graph.quanta.values()
    spec = _spec_factory(graph, RunSummary("test-run", "partial", repo.url), repo, None)(
        quantum, {}
    )
    try:
        run_quantum(spec)
    except TaskError as exc:
        assert not hasattr(exc, "partial_outputs")
        assert len(pickle.dumps(exc)) < 2000
    else:  # pragma: no cover - the task always fails on detector 1
        raise AssertionError("the task should have failed")

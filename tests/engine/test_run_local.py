"""Graph expansion, resume, failure isolation, provenance and the CLI, on the in-process scheduler."""

from __future__ import annotations

import io
import textwrap

import pytest
from click.testing import CliRunner

import apflow
from apflow.engine import plan
from apflow.engine.cli import run_command
from apflow.engine.workflow import workflows_dir
from apflow.errors import WorkflowError


@pytest.fixture
def repo(tmp_path, helpers):
    return helpers.make_repo(tmp_path / "repo")


def test_graph_expands_gather_and_scatter_over_existing_data_ids(repo):
    graph = plan("example", repo)
    by_stage = graph.by_stage()
    assert [len(by_stage[s]) for s in ("image_stats", "visit_stats", "normalize")] == [27, 3, 27]
    gather = graph.quanta["visit_stats-visit=2"]
    (ref,) = gather.inputs
    assert ref.gathered and [dict(i) for i in ref.ids] == [
        {"detector": d, "visit": 2} for d in range(9)
    ]
    assert gather.upstream == {f"image_stats-visit=2-detector={d}" for d in range(9)}
    scatter = graph.quanta["normalize-visit=2-detector=4"]
    assert scatter.upstream == {"visit_stats-visit=2"}
    assert not any(q.skip for q in graph.quanta.values())


def test_where_limits_the_graph(repo):
    graph = plan("example", repo, where="visit in (1, 3) and detector < 2")
    assert sorted(graph.quanta) == sorted(
        [f"image_stats-visit={v}-detector={d}" for v in (1, 3) for d in (0, 1)]
        + ["visit_stats-visit=1", "visit_stats-visit=3"]
        + [f"normalize-visit={v}-detector={d}" for v in (1, 3) for d in (0, 1)]
    )
    assert len(graph.quanta["visit_stats-visit=1"].inputs[0].ids) == 2


def test_where_with_an_unknown_key_fails_before_running(repo):
    with pytest.raises(apflow.engine.WhereError, match="unknown data-id key.*tract"):
        plan("example", repo, where="tract = 1")


def test_run_writes_every_output_with_provenance(repo):
    summary = apflow.run("example", repo, scheduler="synchronous", progress=False)
    assert summary.ok and summary.count("done") == 57
    assert repo.get("visit_stats", visit=1)["n_detectors"] == 9
    normalized = repo.get("normalized", visit=1, detector=0)
    assert abs(float(normalized.image.mean()) - 1.0) < 0.05
    provenance = repo.provenance("visit_stats", visit=1)
    assert provenance["run_id"] == summary.run_id
    assert provenance["workflow"] == "example" and provenance["stage"] == "visit_stats"
    assert provenance["task"] == "apflow.tasks.examples:VisitStatsTask"
    assert provenance["inputs"]["detector_stats"] == [{"detector": d, "visit": 1} for d in range(9)]
    assert set(provenance["versions"]) >= {"apflow", "numpy", "dask", "zarr", "astropy"}
    assert provenance["start"] <= provenance["end"] and provenance["host"]
    config = repo.provenance("image_stats", visit=1, detector=0)["config"]
    assert config["n_sigma"] == 3.0
    # each stage's time splits into reading inputs, the task and writing outputs
    for stage in summary.stages.values():
        parts = (stage.read_seconds, stage.compute_seconds, stage.write_seconds)
        assert all(p > 0 for p in parts)
        assert sum(parts) == pytest.approx(stage.task_seconds, rel=1e-6)
    assert set(summary.to_dict()["stages"]["normalize"]) >= {"read_seconds", "write_seconds"}


def test_config_override_reaches_the_task_and_provenance(repo):
    apflow.run(
        "example",
        repo,
        scheduler="synchronous",
        progress=False,
        config=["normalize.reference_level=100"],
        where="visit = 1",
    )
    assert repo.provenance("normalized", visit=1, detector=3)["config"]["reference_level"] == 100.0
    assert abs(float(repo.get("normalized", visit=1, detector=3).image.mean()) - 100.0) < 5


def test_second_run_skips_everything_and_redo_recomputes(repo):
    apflow.run("example", repo, scheduler="synchronous", progress=False)
    again = apflow.run("example", repo, scheduler="synchronous", progress=False)
    assert again.ok and again.count("skipped") == 57 and again.count("done") == 0
    redo = apflow.run("example", repo, scheduler="threads", workers=2, redo=True, progress=False)
    assert redo.count("done") == 57


def test_resume_runs_only_quanta_with_missing_outputs(repo):
    apflow.run("example", repo, scheduler="synchronous", progress=False)
    repo.remove("normalized", visit=2, detector=5)
    repo.remove("visit_stats", visit=3)
    summary = apflow.run("example", repo, scheduler="synchronous", progress=False)
    assert summary.stages["image_stats"].skipped == 27
    assert summary.stages["visit_stats"].done == 1
    # visit 3's CCDs are not redone: their normalized outputs exist
    assert summary.stages["normalize"].done == 1
    assert summary.count("done") == 2


def test_failure_blocks_only_its_dependants(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", nan_data_ids=((2, 4),))
    summary = apflow.run("example", repo, scheduler="synchronous", progress=False)
    assert not summary.ok
    (failure,) = summary.failures
    assert (failure.stage, failure.data_id) == ("image_stats", {"detector": 4, "visit": 2})
    assert failure.error.startswith("TaskError: only 0 of 16384 pixels are usable")
    assert "examples.py" in failure.traceback
    blocked = {(b.stage, b.data_id["visit"]) for b in summary.blocked}
    assert blocked == {("visit_stats", 2), ("normalize", 2)}
    assert len(summary.blocked) == 10
    assert (
        "lost 1 of 9 image_stats"
        in next(b for b in summary.blocked if b.stage == "visit_stats").error
    )
    assert summary.stages["normalize"].done == 18
    assert "FAILED  image_stats [detector=4, visit=2]: TaskError" in summary.as_table()


def test_allow_partial_gather_runs_on_the_inputs_that_exist(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", nan_data_ids=((2, 4),))
    text = (workflows_dir() / "example.yaml").read_text()
    text = text.replace(
        "detector_stats: {dataset: image_stats}",
        "detector_stats: {dataset: image_stats, allow_partial: true}",
    )
    path = tmp_path / "partial.yaml"
    path.write_text(text)
    summary = apflow.run(path, repo, scheduler="synchronous", progress=False)
    assert len(summary.failures) == 1 and not summary.blocked
    assert repo.get("visit_stats", visit=2)["n_detectors"] == 8
    assert repo.provenance("visit_stats", visit=2)["inputs"]["detector_stats"] == [
        {"detector": d, "visit": 2} for d in range(9) if d != 4
    ]
    assert summary.stages["normalize"].done == 27


def test_min_inputs_blocks_a_gather_with_too_few_inputs(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", nan_data_ids=((2, 4), (2, 5)))
    text = (workflows_dir() / "example.yaml").read_text()
    text = text.replace(
        "detector_stats: {dataset: image_stats}",
        "detector_stats: {dataset: image_stats, min_inputs: 8}",
    )
    path = tmp_path / "min8.yaml"
    path.write_text(text)
    summary = apflow.run(path, repo, scheduler="synchronous", progress=False)
    visit_blocked = [b for b in summary.blocked if b.stage == "visit_stats"]
    assert [b.data_id for b in visit_blocked] == [{"visit": 2}]
    assert "fewer than min_inputs=8" in visit_blocked[0].error


def test_gathers_over_visits_and_over_everything(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1, 2))
    path = tmp_path / "combine.yaml"
    path.write_text(
        textwrap.dedent("""
        name: combine
        dataset_types:
          image_stats: {dimensions: [visit, detector], storage: json}
          detector_stats: {dimensions: [detector], storage: json}
          survey_stats: {dimensions: [], storage: json}
        stages:
          image_stats:
            task: apflow.tasks.examples:ImageStatsTask
            dimensions: [visit, detector]
            inputs: {exposure: post_isr}
            outputs: {stats: image_stats}
          per_detector:
            task: apflow.tasks.examples:VisitStatsTask
            dimensions: [detector]
            inputs: {detector_stats: image_stats}
            outputs: {stats: detector_stats}
          survey:
            task: apflow.tasks.examples:VisitStatsTask
            dimensions: []
            inputs: {detector_stats: image_stats}
            outputs: {stats: survey_stats}
        """)
    )
    summary = apflow.run(path, repo, scheduler="synchronous", progress=False)
    assert summary.ok
    assert [summary.stages[s].done for s in ("image_stats", "per_detector", "survey")] == [18, 9, 1]
    assert repo.get("detector_stats", detector=3)["n_detectors"] == 2
    assert repo.get("survey_stats")["n_detectors"] == 18


def test_declared_dataset_type_must_match_the_repository(repo):
    repo.register_dataset_type("visit_stats", ["visit"], "dataframe")
    with pytest.raises(WorkflowError, match="declares dataset type 'visit_stats'"):
        plan("example", repo)


def test_retries_rerun_a_quantum_that_raised(tmp_path, helpers, monkeypatch):
    module = tmp_path / "flaky_tasks.py"
    module.write_text(
        textwrap.dedent("""
        from apflow.tasks.examples import ImageStatsTask

        class FlakyStatsTask(ImageStatsTask):
            attempts = {}

            def run(self, exposure):
                key = exposure.detector, exposure.visit_info.visit
                self.attempts[key] = self.attempts.get(key, 0) + 1
                if self.attempts[key] == 1:
                    raise OSError("transient: storage timed out")
                return super().run(exposure)
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    text = (workflows_dir() / "example.yaml").read_text()
    path = tmp_path / "flaky.yaml"
    path.write_text(
        text.replace("examples:ImageStatsTask", "examples:ImageStatsTask").replace(
            "task: apflow.tasks.examples:ImageStatsTask", "task: flaky_tasks:FlakyStatsTask"
        )
    )
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,))
    failed = apflow.run(path, repo, scheduler="synchronous", progress=False)
    assert len(failed.failures) == 9 and failed.failures[0].error.startswith("OSError: transient")
    repo2 = helpers.make_repo(tmp_path / "repo2", visits=(1,))
    retried = apflow.run(path, repo2, scheduler="synchronous", retries=1, progress=False)
    assert retried.ok and retried.count("done") == 19


def test_progress_prints_one_line_per_stage_when_not_a_terminal(repo):
    stream = io.StringIO()
    apflow.run("example", repo, scheduler="synchronous", stream=stream)
    lines = stream.getvalue().splitlines()
    assert (
        lines[0].startswith("apflow run ") and "57 quanta (57 to run, 0 already done)" in lines[0]
    )
    assert [line.split(":")[0] for line in lines[1:]] == [
        "[apflow] image_stats",
        "[apflow] visit_stats",
        "[apflow] normalize",
    ]
    assert "\r" not in stream.getvalue()


def test_report_needs_a_distributed_cluster(repo, tmp_path):
    with pytest.raises(WorkflowError, match="report= needs a distributed cluster"):
        apflow.run("example", repo, scheduler="synchronous", report=tmp_path / "r.html")


def test_cli_prints_the_summary_and_exits_zero(repo):
    result = CliRunner().invoke(
        run_command, ["example", repo.url, "--scheduler", "synchronous", "--where", "visit = 1"]
    )
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "image_stats" in result.output


def test_cli_exits_one_when_a_quantum_fails(tmp_path, helpers):
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,), nan_data_ids=((1, 0),))
    result = CliRunner().invoke(run_command, ["example", repo.url, "--scheduler", "synchronous"])
    assert result.exit_code == 1
    assert "FAILED  image_stats [detector=0, visit=1]" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "{repo}"], "unknown workflow 'nope'"),
        (["example", "{repo}", "--where", "visit =="], "invalid --where expression"),
        (["example", "{repo}", "--config", "image_stats.sigma=1"], "no field 'sigma'"),
        (["example", "{tmp}/missing"], "not an apflow repository"),
        (["example", "{repo}", "--scheduler", "x", "--cluster", "y.yaml"], "only one of"),
        (["example", "{repo}", "--cluster", "{tmp}/none.yaml"], "does not exist"),
    ],
)
def test_cli_reports_errors_on_one_line(repo, tmp_path, args, message):
    args = [a.format(repo=repo.url, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(run_command, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_submission_is_bounded_and_dependants_follow_their_inputs(repo):
    from apflow.engine.execute import LocalBackend, execute
    from apflow.engine.runner import _spec_factory
    from apflow.engine.summary import RunSummary

    class RecordingBackend(LocalBackend):
        def __init__(self) -> None:
            super().__init__("threads", workers=2)
            self.in_flight, self.most, self.order = 0, 0, []

        def submit(self, spec, priority):
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.order.append(spec.key)
            return super().submit(spec, priority)

        def next_done(self):
            self.in_flight -= 1
            return super().next_done()

    graph = plan("example", repo)
    summary = RunSummary("test", "example", repo.url)
    backend = RecordingBackend()
    try:
        execute(graph, backend, _spec_factory(graph, summary, repo, None), summary, max_in_flight=3)
    finally:
        backend.close()
    assert summary.ok and summary.count("done") == 57
    assert backend.most == 3
    # visit 1 is gathered and scattered while later visits' CCDs are still being measured
    first_gather = backend.order.index("visit_stats-visit=1")
    last_stats = max(i for i, k in enumerate(backend.order) if k.startswith("image_stats"))
    assert first_gather < last_stats
    assert backend.order.index("normalize-visit=1-detector=0") < last_stats

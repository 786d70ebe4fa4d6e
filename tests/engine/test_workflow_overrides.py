"""``overrides:``: a workflow changes the inputs or config of a stage it includes."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pytest

from apflow import run
from apflow.engine import load_workflow
from apflow.errors import WorkflowError
from apflow.io import Repository


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def including_example(directory: Path, overrides: str, extra: str = "") -> Path:
    """A workflow that includes ``example`` and overrides some of its stages."""
    body = textwrap.indent(textwrap.dedent(overrides).strip(), "  ")
    return write(
        directory,
        "child",
        f"name: child\ninclude: [example]\n{textwrap.dedent(extra)}overrides:\n{body}\n",
    )


def inputs_of(workflow, stage: str) -> dict[str, tuple[str, bool]]:
    return {i.name: (i.dataset_type, i.optional) for i in workflow.stage(stage).inputs}


def test_nightly_calibrates_the_sky_corrected_exposures():
    nightly = load_workflow("nightly")
    assert inputs_of(nightly, "calibrate") == {
        "exposures": ("post_isr_skycorr", False),
        "ref_cat": ("ref_cat", False),
    }
    assert nightly.dependencies()["calibrate"] == {"subtract_sky_frame"}
    # the included file itself is untouched: calibrate alone still reads post_isr
    calibrate = load_workflow("calibrate")
    assert inputs_of(calibrate, "calibrate") == {
        "exposures": ("post_isr", False),
        "ref_cat": ("ref_cat", False),
        "sky_frame": ("sky_frame", True),
    }


def test_an_input_is_replaced_and_config_fields_merge(tmp_path):
    path = including_example(
        tmp_path,
        """
        normalize:
          inputs: {exposure: post_isr_skycorr}
          config: {reference_level: 2.0}
        image_stats:
          config: {n_sigma: 2.5}
        """,
    )
    child = load_workflow(path)
    assert inputs_of(child, "normalize") == {
        "exposure": ("post_isr_skycorr", False),
        "visit_stats": ("visit_stats", False),
    }
    assert child.stage("normalize").config.reference_level == 2.0
    stats = child.stage("image_stats").config
    # n_iter comes from example.yaml, n_sigma from the override
    assert (stats.n_sigma, stats.n_iter) == (2.5, 3)
    assert child.name == "child" and [s.name for s in child.stages] == [
        "image_stats",
        "visit_stats",
        "normalize",
    ]


def test_an_input_set_to_null_is_dropped(tmp_path):
    path = write(
        tmp_path,
        "cal",
        """
        name: cal
        include: [calibrate]
        overrides:
          calibrate:
            inputs: {sky_frame: null}
        """,
    )
    assert set(inputs_of(load_workflow(path), "calibrate")) == {"exposures", "ref_cat"}


def test_a_workflow_including_nightly_keeps_its_overrides_and_can_add_its_own(tmp_path):
    path = write(
        tmp_path,
        "outer",
        """
        name: outer
        include: [nightly]
        overrides:
          calibrate:
            config: {background: {bin_size: 64}}
        """,
    )
    outer = load_workflow(path)
    assert inputs_of(outer, "calibrate")["exposures"] == ("post_isr_skycorr", False)
    config = outer.stage("calibrate").config
    # a nested (subtask) config merges field by field
    assert config.background.bin_size == 64
    assert (
        config.background.n_sigma
        == load_workflow("calibrate").stage("calibrate").config.background.n_sigma
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("nope: {config: {n_sigma: 2}}", r"stage 'nope': no included workflow has that stage; "
         r"included stages: image_stats, visit_stats, normalize"),
        ("normalize: {inputs: {template: post_isr}}", r"the stage has no input 'template' \(its "
         r"inputs: exposure, visit_stats\); overrides replace or drop inputs"),
        ("normalize: {dimensions: [visit]}", r"cannot override dimensions \(only config, inputs\)"),
        ("normalize: {inputs: [exposure]}", r"'inputs' must map input names to a spec or null"),
        ("normalize: {config: 2.0}", r"'config' must map field names to values"),
        ("normalize: {}", r"expected a mapping with config and/or inputs"),
        ("image_stats: {config: {n_sigmaa: 2}}", r"stage 'image_stats'.*n_sigmaa"),
        # the result is validated like any stage: NormalizeTask.run needs visit_stats
        ("normalize: {inputs: {visit_stats: null}}", r"NormalizeTask.run\(\) needs visit_stats"),
    ],
)  # fmt: skip
def test_bad_overrides_are_refused_with_the_stage_and_input_named(tmp_path, overrides, message):
    with pytest.raises(WorkflowError, match=message):
        load_workflow(including_example(tmp_path, overrides))


def test_overrides_need_an_included_stage(tmp_path):
    own = including_example(
        tmp_path,
        "extra_stats: {config: {n_sigma: 2.0}}",
        extra="""\
        dataset_types:
          extra: {dimensions: [visit, detector], storage: json}
        stages:
          extra_stats:
            task: apflow.tasks.examples:ImageStatsTask
            dimensions: [visit, detector]
            inputs: {exposure: post_isr}
            outputs: {stats: extra}
        """,
    )
    with pytest.raises(WorkflowError, match="stage 'extra_stats': the stage is defined in this"):
        load_workflow(own)
    alone = write(
        tmp_path,
        "alone",
        """
        name: alone
        overrides: {normalize: {config: {reference_level: 2.0}}}
        stages:
          image_stats:
            task: apflow.tasks.examples:ImageStatsTask
            dimensions: [visit, detector]
            inputs: {exposure: post_isr}
            outputs: {stats: image_stats}
        """,
    )
    with pytest.raises(WorkflowError, match="'overrides:' changes stages of included workflows"):
        load_workflow(alone)
    malformed = write(tmp_path, "bad", "name: bad\ninclude: [example]\noverrides: [normalize]\n")
    with pytest.raises(WorkflowError, match="'overrides:' must map stage names to changes"):
        load_workflow(malformed)


def test_a_run_reads_the_overridden_input_with_the_overridden_config(tmp_path, helpers):
    """Through the engine: normalize reads post_isr_skycorr (here 3 x post_isr) at level 2."""
    repo = helpers.make_repo(tmp_path / "repo", visits=(1,), shape=(32, 32))
    for data_id in repo.data_ids("post_isr"):
        exposure = repo.get("post_isr", **data_id)
        tripled = dataclasses.replace(exposure, image=exposure.image * np.float32(3.0))
        repo.put(tripled, "post_isr_skycorr", **data_id)
    path = including_example(
        tmp_path,
        """
        normalize:
          inputs: {exposure: post_isr_skycorr}
          config: {reference_level: 2.0}
        """,
    )
    summary = run(str(path), repo.url, scheduler="synchronous", progress=False)
    assert summary.ok, summary.as_table()
    repo = Repository(repo.url)
    level = repo.get("visit_stats", visit=1)["level"]  # of post_isr: image_stats is not overridden
    for data_id in repo.data_ids("post_isr"):
        raw = repo.get("post_isr", **data_id).image
        normalized = repo.get("normalized", **data_id).image
        np.testing.assert_allclose(normalized, raw * 3.0 * 2.0 / level, rtol=1e-5)

"""Loading and validating workflow files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apflow.engine import load_workflow
from apflow.engine.workflow import workflows_dir
from apflow.errors import ConfigError, WorkflowError
from apflow.tasks.examples import ImageStatsTask

STATS = "apflow.tasks.examples:ImageStatsTask"
VISIT = "apflow.tasks.examples:VisitStatsTask"
NORMALIZE = "apflow.tasks.examples:NormalizeTask"


def write(tmp_path, text: str):
    path = tmp_path / "workflow.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def stages_yaml(body: str, dataset_types: str = "") -> str:
    declared = (
        dataset_types
        or """
        image_stats: {dimensions: [visit, detector], storage: json}
        visit_stats: {dimensions: [visit], storage: json}
    """
    )
    return (
        "name: test\ndataset_types:\n"
        + textwrap.indent(textwrap.dedent(declared).strip(), "  ")
        + "\nstages:\n"
        + textwrap.indent(textwrap.dedent(body).strip(), "  ")
        + "\n"
    )


def test_example_workflow_loads_by_name_in_dependency_order():
    workflow = load_workflow("example")
    assert [s.name for s in workflow.stages] == ["image_stats", "visit_stats", "normalize"]
    assert workflow.stage("image_stats").task_class is ImageStatsTask
    assert workflow.stage("visit_stats").context == {"input_data_ids"}
    assert workflow.dependencies()["normalize"] == {"visit_stats"}
    assert workflow.input_dataset_types() == ["post_isr"]
    assert (workflows_dir() / "example.yaml").is_file()


def test_workflow_loads_from_a_path(tmp_path):
    path = write(tmp_path, (workflows_dir() / "example.yaml").read_text())
    assert load_workflow(path).source == str(path)


def test_unknown_workflow_name_lists_the_known_ones():
    with pytest.raises(WorkflowError, match="unknown workflow 'nope'; known workflows: .*example"):
        load_workflow("nope")


def test_unknown_task_is_reported_with_the_stage(tmp_path):
    path = write(
        tmp_path,
        stages_yaml("""
        s:
          task: apflow.tasks.examples:NoSuchTask
          dimensions: [visit, detector]
          inputs: {exposure: post_isr}
          outputs: {stats: image_stats}
        """),
    )
    with pytest.raises(WorkflowError, match="stage 's'.*NoSuchTask.*not an apflow Task"):
        load_workflow(path)


def test_unimportable_task_module_is_reported(tmp_path):
    path = write(
        tmp_path,
        stages_yaml("""
        s:
          task: apflow.no_such_module:Task
          dimensions: [visit, detector]
          inputs: {exposure: post_isr}
          outputs: {stats: image_stats}
        """),
    )
    with pytest.raises(WorkflowError, match="cannot import task module 'apflow.no_such_module'"):
        load_workflow(path)


def test_unknown_dataset_type_is_reported(tmp_path):
    path = write(
        tmp_path,
        stages_yaml(f"""
        s:
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{exposure: post_isr_typo}}
          outputs: {{stats: image_stats}}
        """),
    )
    with pytest.raises(
        WorkflowError, match="input 'exposure': unknown dataset type 'post_isr_typo'"
    ):
        load_workflow(path)


def test_cycle_is_reported_with_its_stages(tmp_path):
    path = write(
        tmp_path,
        stages_yaml(
            f"""
            a:
              task: {VISIT}
              dimensions: [visit]
              inputs: {{detector_stats: image_stats}}
              outputs: {{stats: visit_stats}}
            b:
              task: {NORMALIZE}
              dimensions: [visit, detector]
              inputs: {{exposure: post_isr, visit_stats: visit_stats}}
              outputs: {{normalized: image_stats}}
            """
        ),
    )
    with pytest.raises(WorkflowError, match="stages form a cycle: a -> b -> a"):
        load_workflow(path)


def test_output_dimensions_must_equal_stage_dimensions(tmp_path):
    path = write(
        tmp_path,
        stages_yaml(f"""
        s:
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{exposure: post_isr}}
          outputs: {{stats: visit_stats}}
        """),
    )
    with pytest.raises(
        WorkflowError, match=r"output 'stats' \(visit_stats\) has dimensions \['visit'\]"
    ):
        load_workflow(path)


def test_unknown_config_field_is_reported(tmp_path):
    path = write(
        tmp_path,
        stages_yaml(f"""
        s:
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{exposure: post_isr}}
          outputs: {{stats: image_stats}}
          config: {{n_sigmas: 3}}
        """),
    )
    with pytest.raises(WorkflowError, match="stage 's'.*no field 'n_sigmas'; fields: .*n_sigma"):
        load_workflow(path)


def test_input_the_task_does_not_take_is_reported(tmp_path):
    path = write(
        tmp_path,
        stages_yaml(f"""
        s:
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{image: post_isr}}
          outputs: {{stats: image_stats}}
        """),
    )
    with pytest.raises(WorkflowError, match=r"ImageStatsTask.run\(\) has no parameter\(s\) image"):
        load_workflow(path)


def test_two_stages_writing_one_dataset_type_is_reported(tmp_path):
    stage = f"""
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{exposure: post_isr}}
          outputs: {{stats: image_stats}}"""
    path = write(tmp_path, stages_yaml(f"a:{stage}\nb:{stage}"))
    with pytest.raises(
        WorkflowError, match="'image_stats' is written by both stage 'a' and stage 'b'"
    ):
        load_workflow(path)


def test_min_inputs_on_a_non_gathered_input_is_reported(tmp_path):
    path = write(
        tmp_path,
        stages_yaml(f"""
        s:
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{exposure: {{dataset: post_isr, allow_partial: true}}}}
          outputs: {{stats: image_stats}}
        """),
    )
    with pytest.raises(WorkflowError, match="sets min_inputs/allow_partial but is not gathered"):
        load_workflow(path)


def test_config_overrides_are_converted_and_validated():
    workflow = load_workflow("example").with_config(
        ["image_stats.n_sigma=2.5", "image_stats.bad_mask_planes=BAD,SAT"]
    )
    config = workflow.stage("image_stats").config
    assert config.n_sigma == 2.5 and config.bad_mask_planes == ["BAD", "SAT"]
    assert (
        load_workflow("example")
        .with_config({"image_stats.n_iter": 5})
        .stage("image_stats")
        .config.n_iter
        == 5
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("image_stats.n_sigma", "must look like 'stage.field=value'"),
        ("calibrate.n_sigma=1", "has no stage 'calibrate'"),
        ("image_stats.sigma=1", "no field 'sigma'"),
        ("image_stats.n_iter=three", "cannot convert 'three' to int"),
        ("image_stats.n_sigma=-1", "n_sigma > 0"),
        ("n_sigma=1", "must look like 'stage.field'"),
    ],
)
def test_bad_config_override_is_reported(override, message):
    with pytest.raises(ConfigError, match=message):
        load_workflow("example").with_config([override])


def test_the_package_carries_the_workflows_for_a_wheel_install():
    # apflow/workflows links to the top-level folder and is package data: a non-editable install
    # (where the top-level folder does not exist) still finds every workflow
    import apflow

    packaged = Path(apflow.__file__).resolve().parent / "workflows"
    top_level = Path(apflow.__file__).resolve().parent.parent / "workflows"
    assert sorted(p.name for p in packaged.glob("*.yaml")) == sorted(
        p.name for p in top_level.glob("*.yaml")
    )


def test_include_merges_stages_and_rejects_redefinitions(tmp_path):
    nightly = load_workflow("nightly")
    names = [s.name for s in nightly.stages]
    # sky correction, then calibrate on its output, then alert production, each included once
    assert names[0] == "mask_objects" and names.index("subtract_sky_frame") < names.index(
        "calibrate"
    ) < names.index("diffim")
    assert len(names) == len(set(names))
    assert nightly.stage("calibrate").input("exposures").dataset_type == "post_isr_skycorr"
    assert nightly.stage("associate").ordered_by == "visit"
    assert "dia_association" in nightly.dataset_types
    base = tmp_path / "base.yaml"
    base.write_text(
        textwrap.dedent(
            stages_yaml(f"""
        a:
          task: {STATS}
          dimensions: [visit, detector]
          inputs: {{exposure: post_isr}}
          outputs: {{stats: image_stats}}
        """)
        )
    )
    again = tmp_path / "again.yaml"
    again.write_text(
        textwrap.dedent(f"""
        name: again
        include: [base.yaml]
        stages:
          a:
            task: {STATS}
            dimensions: [visit, detector]
            inputs: {{exposure: post_isr}}
            outputs: {{stats: image_stats}}
        """)
    )
    with pytest.raises(WorkflowError, match="stage 'a' is defined twice"):
        load_workflow(again)
    loop = tmp_path / "loop.yaml"
    loop.write_text("name: loop\ninclude: [loop.yaml]\nstages: {}\n")
    with pytest.raises(WorkflowError, match="include each other"):
        load_workflow(loop)

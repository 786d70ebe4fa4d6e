"""``apflow upgrade``: a repository made by an older apflow gets the current dataset types."""

from __future__ import annotations

import json

from click.testing import CliRunner

from apflow.cli import main
from apflow.io import Repository


def test_upgrade_redefines_outdated_types_and_run_says_to(tmp_path, make_exposure):
    """A repository made before sky frames were per filter: ``apflow run`` names the fix,
    ``apflow upgrade`` says what it would delete, then does it; other datasets stay."""
    runner = CliRunner()
    url = str(tmp_path / "old")
    repo = Repository.create(url, camera="mini")
    repo.put(make_exposure(), "post_isr", visit=1, detector=4)
    # what an older apflow registered: a workflow's type and a built-in one by detector alone
    config_path = tmp_path / "old" / "apflow.json"
    config = json.loads(config_path.read_text())
    for name in ("sky_frame_binned", "sky_frame"):
        storage = "arrays" if name == "sky_frame_binned" else "exposure"
        config["dataset_types"][name] = {"dimensions": ["detector"], "storage": storage}
    config_path.write_text(json.dumps(config))
    (tmp_path / "old" / "sky_frame" / "detector=4").mkdir(parents=True)
    old = Repository(url)
    old.put(make_exposure(), "sky_frame", detector=4)  # old layout, old keys

    result = runner.invoke(main, ["run", "sky_frame", url, "--scheduler", "synchronous"])
    assert result.exit_code != 0 and "apflow upgrade" in result.output

    dry = runner.invoke(main, ["upgrade", url])
    assert dry.exit_code == 0, dry.output
    assert "sky_frame: [detector] -> [detector, physical_filter]; would delete 1" in dry.output
    assert "sky_frame_binned: [detector] -> [detector, physical_filter]" in dry.output
    assert Repository(url).exists("sky_frame", detector=4)

    done = runner.invoke(main, ["upgrade", url, "--yes"])
    assert done.exit_code == 0 and "deleted 1 datasets" in done.output, done.output
    fresh = Repository(url)
    assert fresh.dataset_type("sky_frame").dimensions == ("detector", "physical_filter")
    assert fresh.data_ids("sky_frame") == [] and fresh.exists("post_isr", visit=1, detector=4)
    assert "up to date" in runner.invoke(main, ["upgrade", url]).output

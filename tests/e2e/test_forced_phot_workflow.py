"""`apflow run forced_phot` end to end on a simulated repository, checked against truth."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.spatial import cKDTree

from apflow import run
from apflow.cli import main
from apflow.io import Repository
from apflow.sim import simulate


@pytest.fixture(scope="module")
def coadd_repo(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("forced") / "repo")
    simulate(url, camera="mini", n_visits=1, seed=7, detectors=[4])
    return url


def test_forced_phot_runs_and_matches_truth(coadd_repo):
    summary = run(
        "forced_phot", coadd_repo, where="patch = 0", scheduler="synchronous", progress=False
    )
    assert summary.ok, summary.as_table()
    repo = Repository(coadd_repo)
    assert [d["band"] for d in repo.data_ids("forced_src")] == ["g", "r"]
    truth = repo.get("truth_coadd", tract=0, patch=0, band="r")
    ref = repo.get("coadd_ref", tract=0, patch=0)
    forced = repo.get("forced_src", tract=0, patch=0, band="r")
    # one row per reference source, none dropped
    assert sorted(forced["id"]) == sorted(ref["id"])

    table = forced.merge(truth[["id", "flux", "is_star", "expected_snr"]], on="id")
    nearest, _ = cKDTree(truth[["x", "y"]].to_numpy()).query(table[["x", "y"]].to_numpy(), k=2)
    isolated = table[(nearest[:, 1] > 20) & table.is_star & ~table.psfFlux_flag]
    bright = isolated[isolated.expected_snr > 100]
    ratio = bright.psfFlux / bright.flux - 1
    assert len(bright) > 30
    # Stated tolerance: isolated bright stars unbiased to 0.5% with < 1% scatter.
    assert abs(np.median(ratio)) < 0.005
    assert np.std(ratio) < 0.01
    faint = isolated[(isolated.expected_snr > 10) & (isolated.expected_snr < 100)]
    pulls = (faint.psfFlux - faint.flux) / faint.psfFluxErr
    # Galaxy wings under some "isolated" stars widen the pulls a little beyond pure noise.
    assert 0.8 < np.std(pulls) < 1.25


def test_rerun_skips_everything(coadd_repo):
    result = CliRunner().invoke(
        main,
        [
            "run",
            "forced_phot",
            coadd_repo,
            "--where",
            "patch = 0",
            "--scheduler",
            "synchronous",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = run(
        "forced_phot", coadd_repo, where="patch = 0", scheduler="synchronous", progress=False
    )
    assert summary.count("skipped") == 2 and summary.count("done") == 0


def test_forced_phot_on_a_scheduler_and_workers(coadd_repo, tmp_path):
    from distributed import Client

    from tests.engine.conftest import start_cluster

    cluster = start_cluster(tmp_path / "dask", n_workers=2)
    try:
        with Client(cluster.address) as client:
            summary = run(
                "forced_phot", coadd_repo, where="patch = 1", client=client, progress=False
            )
    finally:
        cluster.stop()
    assert summary.ok and summary.count("done") == 2, summary.as_table()
    repo = Repository(coadd_repo)
    forced = repo.get("forced_src", tract=0, patch=1, band="g")
    assert len(forced) == len(repo.get("coadd_ref", tract=0, patch=1))
    assert repo.provenance("forced_src", tract=0, patch=1, band="g")

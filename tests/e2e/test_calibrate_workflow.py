"""`apflow.run("calibrate", repo)` on the simulator's default data, on a Dask scheduler + workers.

Default simulation (no star-rich options, the 2% fixed sky pattern, no sky frames): one visit,
two CCDs that had too few stars for a pixel PSF model. The quanta run in worker processes
(real scheduler and workers on 127.0.0.1); a config override of a per-band summary dict is
given the way the command line gives it.
"""

from __future__ import annotations

import numpy as np
import pytest

from apflow import run
from apflow.io import Repository
from apflow.sim import simulate

OUTPUTS = ("calexp", "calexp_background", "stars", "psf_stars", "astrom_matches", "photom_matches")
DETECTORS = [2, 5]


@pytest.fixture(scope="module")
def default_repo(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("calibrate_e2e") / "repo")
    simulate(url, camera="mini", n_visits=1, seed=0, detectors=DETECTORS, coadds=False)
    return url


@pytest.mark.slow
def test_calibrate_on_a_scheduler_and_workers(default_repo, tmp_path):
    from distributed import Client

    from tests.engine.conftest import start_cluster

    config = ["calibrate.summary.fiducial_zero_point.r=26.6"]
    cluster = start_cluster(tmp_path / "dask", n_workers=2)
    try:
        with Client(cluster.address) as client:
            summary = run("calibrate", default_repo, client=client, config=config, progress=False)
    finally:
        cluster.stop()
    assert summary.ok and summary.count("done") == len(DETECTORS), summary.as_table()
    repo = Repository(default_repo)
    for name in OUTPUTS:
        assert len(repo.data_ids(name)) == len(DETECTORS), name
    truth = repo.get("truth_exposures").set_index("detector")
    for result in summary.results:
        detector = result["data_id"]["detector"]
        assert result["summary"]["failure"] is None
        calexp = repo.get("calexp", visit=1, detector=detector)
        assert calexp.metadata["BUNIT"] == "nJy" and calexp.photo_calib.calibration_mean == 1.0
        stats = calexp.metadata["summary_stats"]
        # 1.5% reference errors and ~30 calibrators: a zero point good to its quoted error
        dzp = stats["zero_point"] - truth.loc[detector, "zero_point"]
        assert abs(dzp) < 4 * stats["zero_point_err"]
        stars = repo.get("stars", visit=1, detector=detector)
        assert np.isfinite(stars[["ra", "dec", "psf_flux_njy"]].to_numpy()).all()
        recorded = repo.provenance("calexp", visit=1, detector=detector)
        assert "26.6" in str(recorded)  # the override reached the task config

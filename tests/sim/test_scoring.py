"""score_dia_sources counts real and false DiaSources against ``truth_dia``, per CCD and visit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.errors import DatasetNotFoundError
from apflow.io import Repository
from apflow.sim.scoring import DIA_SCORE_COLUMNS, nearest_truth_arcsec, score_dia_sources

ARCSEC = 1.0 / 3600.0


def _repo(tmp_path) -> Repository:
    repo = Repository.create(str(tmp_path / "repo"))
    repo.register_dataset_type("truth_dia", [], "dataframe")
    repo.register_dataset_type("dia_source", ["visit", "detector"], "dataframe")
    return repo


def test_counts_sources_within_the_radius_of_their_own_visits_truth(tmp_path):
    repo = _repo(tmp_path)
    truth = pd.DataFrame({"visit": [1, 1, 2], "ra": [10.0, 10.01, 10.02], "dec": [0.0, 0.0, 0.0]})
    repo.put(truth, "truth_dia")
    # visit 1, detector 3: one 0.5" from a truth object (real), one 1.5" away (false), and one
    # on visit 2's object (false in visit 1: truth is matched per visit)
    repo.put(
        pd.DataFrame({"ra": [10.0 + 0.5 * ARCSEC, 10.01 + 1.5 * ARCSEC, 10.02], "dec": [0.0] * 3}),
        "dia_source",
        visit=1,
        detector=3,
    )
    repo.put(pd.DataFrame({"ra": [10.02], "dec": [0.0]}), "dia_source", visit=2, detector=3)
    repo.put(pd.DataFrame({"ra": [], "dec": []}), "dia_source", visit=2, detector=4)

    table = score_dia_sources(repo)
    assert list(table.columns) == list(DIA_SCORE_COLUMNS)
    assert table.values.tolist() == [[1, 3, 3, 1, 2], [2, 3, 1, 1, 0], [2, 4, 0, 0, 0]]
    assert score_dia_sources(repo, visits=[2])["visit"].tolist() == [2, 2]
    # a wider radius takes in the 1.5" source
    assert score_dia_sources(repo, radius_arcsec=2.0)["n_false"].tolist() == [1, 0, 0]


def test_nearest_truth_without_truth_is_infinite():
    sources = pd.DataFrame({"ra": [1.0], "dec": [2.0]})
    assert np.isinf(nearest_truth_arcsec(sources, sources.iloc[:0])).all()
    assert nearest_truth_arcsec(sources.iloc[:0], sources).shape == (0,)


def test_a_repository_without_truth_says_so(tmp_path):
    repo = _repo(tmp_path)
    repo.put(pd.DataFrame({"ra": [1.0], "dec": [2.0]}), "dia_source", visit=1, detector=0)
    with pytest.raises(DatasetNotFoundError, match="truth_dia"):
        score_dia_sources(repo)

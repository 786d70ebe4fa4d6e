"""Outputs of a run scored against the simulator's truth.

The simulator writes what it put in the images (``truth_dia``: every variable, transient and
mover per visit); these functions say how much of a run's output is real. They only read a
repository, so the demo, the tests and the benchmarks count the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord

#: Columns of :func:`score_dia_sources`.
DIA_SCORE_COLUMNS: tuple[str, ...] = ("visit", "detector", "n_dia_sources", "n_real", "n_false")


def nearest_truth_arcsec(sources: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Angular distance (arcsec) from each source to the nearest truth object.

    Parameters
    ----------
    sources, truth : pandas.DataFrame
        Catalogs with ``ra`` and ``dec`` columns in degrees.

    Returns
    -------
    numpy.ndarray
        One distance per source; ``inf`` for every source when ``truth`` is empty.
    """
    if len(sources) == 0:
        return np.zeros(0)
    if len(truth) == 0:
        return np.full(len(sources), np.inf)
    src = SkyCoord(sources["ra"].to_numpy() * u.deg, sources["dec"].to_numpy() * u.deg)
    tru = SkyCoord(truth["ra"].to_numpy() * u.deg, truth["dec"].to_numpy() * u.deg)
    _, sep, _ = src.match_to_catalog_sky(tru)
    return sep.to_value(u.arcsec)


def score_dia_sources(
    repo: Any, visits: Iterable[int] | None = None, radius_arcsec: float = 1.0
) -> pd.DataFrame:
    """Real and false DiaSources of every (visit, detector) of a simulated repository.

    A DiaSource is real when a ``truth_dia`` object of its visit (variable, transient, known
    or unknown mover) lies within ``radius_arcsec``, false otherwise: a subtraction artefact
    or a noise peak. Several DiaSources may claim one truth object (a split detection counts
    as real twice); use a one-to-one match where that matters.

    Parameters
    ----------
    repo : apflow.io.Repository
        A repository written by :func:`apflow.sim.simulate` with ``dia_source`` outputs.
    visits : iterable of int, optional
        Only these visits (default: every visit with DiaSources).
    radius_arcsec : float
        Match radius (default 1").

    Returns
    -------
    pandas.DataFrame
        :data:`DIA_SCORE_COLUMNS`, one row per (visit, detector) with a ``dia_source``
        dataset (an empty catalog gives a row of zeros), sorted by visit and detector.

    Raises
    ------
    apflow.errors.DatasetNotFoundError
        When the repository has no ``truth_dia`` (it was not made by the simulator).
    """
    truth = repo.get("truth_dia")
    wanted = None if visits is None else {int(v) for v in visits}
    rows = []
    for data_id in repo.data_ids("dia_source"):
        visit, detector = int(data_id["visit"]), int(data_id["detector"])
        if wanted is not None and visit not in wanted:
            continue
        sources = repo.get("dia_source", **data_id)
        dist = nearest_truth_arcsec(sources, truth[truth["visit"] == visit])
        n_false = int(np.count_nonzero(dist > radius_arcsec))
        rows.append((visit, detector, len(sources), len(sources) - n_false, n_false))
    table = pd.DataFrame(rows, columns=list(DIA_SCORE_COLUMNS))
    return table.sort_values(["visit", "detector"], ignore_index=True)

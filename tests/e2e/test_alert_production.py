"""Alert production end to end on the simulator: ``nightly`` through Dask, checked against truth.

One small repository (module fixture): the mini camera's detector 4, ``N_VISITS`` visits one
day apart, more variables and transients than the simulator's default (so the flux statistics
mean something), run through ``apflow.run("sky_frame", ...)`` and ``apflow.run("nightly", ...)``
(sky correction, calibrate, diffim, detect, sso, associate into the repository's SQLite APDB,
alerts) on a real Dask cluster: a scheduler and
two worker processes on 127.0.0.1, both writing the APDB. The science targets of issues 7 and 8 and the tolerances asserted:

- **completeness** >= 95% for variables and transients whose true difference-image S/N is
  >= 10 (``truth_dia.diff_flux`` over the PSF-flux error measured on the difference image at
  the true position) and that lie at least 10 px inside the CCD (detection's matched filter
  does not reach the outermost 7 px); matched = a DiaSource within 1";
- **false DiaSources** (farther than 1" from every ``truth_dia`` object of the visit) fewer
  than 5 per CCD in every visit;
- **transient PSF fluxes**: median ``psfFlux / diff_flux`` within 3% of 1 and the standard
  deviation of the pulls ``(psfFlux - diff_flux) / psfFluxErr`` within 15% of 1 at S/N >= 10;
  at S/N >= 50 the median within 1% and the pull std again within 15% of 1. Blends are left
  out of these statistics (and only of these): a truth object with another simulated source
  -- star, galaxy (their ``r_flux``), variable, transient or mover (their ``|diff_flux|``) --
  brighter than 10% of its ``|diff_flux|`` within 2 PSF FWHM in that visit. Nothing deblends
  DiaSources, so such a PSF flux measures the pair (a transient 2.1 px from another of a
  third of its flux came out at 1.26 times its own flux, a pull of +15). The plain pull std is
  asserted, no robust estimate;
- **association**: every variable and transient detected in several visits has exactly one
  DiaObject, and no DiaObject holds the sources of two simulated objects;
- **solar-system association**: >= 99% of the detected known movers carry their own
  ``ssObjectId`` (APDB DiaSource and SSSource), none a wrong one, and no DiaSource of an
  unknown mover or of a fixed object carries one;
- **rerunning** a visit's alert production (``redo=True, where="visit = N"``, a visit in the
  middle of the sequence) leaves every APDB table unchanged (``timeProcessedMjdTai`` aside);
- **alerts**: every alert validates against the latest ``lsst-alert-packet`` schema, there is
  exactly one per DiaSource, and rerunning the alert stage gives the same alerts, field for
  field (cutouts included; ``timeProcessedMjdTai`` aside, which the history records carry from
  the APDB rows that the visit rerun rewrote).

Ten visits, as the issue asks, with the simulator's default 2% sky pattern: ``sky_frame`` runs
on the module's ten visits first (one detector's visits make a sky frame; the focal-plane model
then comes from that CCD alone), and ``nightly`` subtracts it before calibration. The module
takes 50-110 s on a two-core machine (45-95 s of it the fixture), depending on the load.
Measured (seed 3): 65 of 65 variables and 94 of 95 transients at S/N >= 10 found; 0-3 false
DiaSources per visit (9 in all, at bright stars near the CCD edge and noise peaks);
transients (57 unblended at S/N >= 10) median flux ratio 1.005 and pull std 0.88, at S/N >= 50
(37) 1.003 and 0.93. The high-S/N pulls carry calibrate's PSF-model and zero-point errors
(~0.5% each in flux, checked against the true PSF and truth fluxes) and the simulator's
truncated star stamps (normalised to the full flux inside 3 FWHM: PSF fluxes of point sources
come out ~0.3% high).

What keeps the false DiaSources down (issue 7): saturated pixels of both images are grown by the
PSF-matching kernel in the difference's SAT plane and sources centred on them are dropped
(Rubin's ``badSourceFlags``); a footprint gives one source per prominent peak, not one per noise
bump on a bright star's residual; every kernel candidate, the brightest first, is fitted, and
candidates need only a clean core and an edge margin, so the kernel's stamps reach the CCD
edges; calibrate's final background masks bright galaxies' wings (footprints grown with their
size), which it over-subtracted into negative halos. All nine CCDs of the default camera:
``test_false_dia_sources.py`` (slow).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from fastavro.validation import validate

import apflow
from apflow.apdb import Apdb
from apflow.engine.workflow import load_workflow
from apflow.io import Repository
from apflow.io.alerts import load_alert_schema, read_alerts
from apflow.sim import nearest_truth_arcsec, simulate
from apflow.tasks.dia.forced import psf_flux_at
from apflow.tasks.sso import match_ephemerides

N_VISITS = 10
DETECTOR = 4
MATCH_RADIUS_ARCSEC = 1.0
#: A truth object with another simulated source brighter than this fraction of its difference
#: flux within this many PSF FWHMs is a blend: left out of the flux statistics.
BLEND_FLUX_FRACTION = 0.1
BLEND_RADIUS_FWHM = 2.0
#: Objects closer to the CCD edge than this (px) are left out of the completeness.
EDGE_MARGIN = 10.0
SIM_OPTIONS = {
    "variable_density": 10_000.0,
    "variable_amplitude_range": (0.5, 1.5),
    "transient_density": 4000.0,
    "visit_cadence_s": 86_400.0,
}


@dataclasses.dataclass
class Run:
    url: str
    repo: Repository
    truth: pd.DataFrame  # truth_dia of the detector + snr_true and the matched DiaSource
    sources: pd.DataFrame  # every dia_source + the truth row it matches and its nearest truth
    apdb: Apdb


def _match(sources: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-first one-to-one matches (source index, truth index) within 1 arcsec."""
    si, ti, _ = match_ephemerides(
        sources["ra"].to_numpy(), sources["dec"].to_numpy(),
        truth["ra"].to_numpy(), truth["dec"].to_numpy(), MATCH_RADIUS_ARCSEC,
    )  # fmt: skip
    return np.asarray(si, dtype=np.int64), np.asarray(ti, dtype=np.int64)


def _blended(
    truth: pd.DataFrame, visit_truth: pd.DataFrame, static: pd.DataFrame, radius_arcsec: float
) -> np.ndarray:
    """Truth objects with another simulated source within ``radius_arcsec`` brighter than 10%.

    Neighbours are the static sources (stars and galaxies, their ``r_flux``) and the other
    variables, transients and movers of the visit (their ``|diff_flux|``, the light they put
    in the difference image); "brighter" compares with the object's ``|diff_flux|``.
    """
    obj = SkyCoord(truth["ra"].to_numpy(), truth["dec"].to_numpy(), unit="deg")
    out = np.zeros(len(truth), bool)
    limit = BLEND_FLUX_FRACTION * np.abs(truth["diff_flux"].to_numpy())
    for others, flux, ids in (
        (static, static["r_flux"].to_numpy(), None),
        (visit_truth, np.abs(visit_truth["diff_flux"].to_numpy()), visit_truth["id"].to_numpy()),
    ):
        near = SkyCoord(others["ra"].to_numpy(), others["dec"].to_numpy(), unit="deg")
        i, j, _, _ = near.search_around_sky(obj, radius_arcsec * u.arcsec)
        if ids is not None:  # an object is not its own neighbour
            other = ids[j] != truth["id"].to_numpy()[i]
            i, j = i[other], j[other]
        out[i[flux[j] > limit[i]]] = True
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from tests.engine.conftest import start_cluster

    base = tmp_path_factory.mktemp("alert_production")
    url = str(base / "repo")
    # a real scheduler and two worker processes: the APDB's SQLite file is written by both
    cluster = start_cluster(base / "dask", n_workers=2)
    try:
        simulate_and_run(url, scheduler=cluster.address)
    finally:
        cluster.stop()
    return collect(url)


def simulate_and_run(url: str, scheduler: str = "threads") -> None:
    """Simulate the repository, build its sky frame and run ``nightly`` on it through Dask."""
    simulate(
        url, camera="mini", n_visits=N_VISITS, seed=3, detectors=[DETECTOR], coadds=False,
        **SIM_OPTIONS,
    )  # fmt: skip
    workers = {"workers": 2} if scheduler == "threads" else {}
    # the sky frame from this CCD's visits (its focal-plane model then comes from this CCD
    # alone), which nightly's sky correction subtracts before calibration
    for workflow in ("sky_frame", "nightly"):
        summary = apflow.run(workflow, url, scheduler=scheduler, progress=False, **workers)
        assert summary.ok, [(f.stage, f.data_id, f.error[:300]) for f in summary.failures]


def collect(url: str) -> Run:
    """DiaSources and truth of every visit, matched."""
    repo = Repository(url)
    truth_all = repo.get("truth_dia")
    static = repo.get("truth_sources")
    exposures = repo.get("truth_exposures")
    seeing = exposures[exposures.detector == DETECTOR].set_index("visit")["psf_fwhm_center"]
    truths, frames = [], []
    for visit in range(1, N_VISITS + 1):
        sources = repo.get("dia_source", visit=visit, detector=DETECTOR).reset_index(drop=True)
        diff = repo.get("diff_image", visit=visit, detector=DETECTOR)
        visit_truth = truth_all[truth_all.visit == visit]
        truth = visit_truth[visit_truth.detector == DETECTOR].reset_index(drop=True)
        at_truth = psf_flux_at(diff, truth["x"].to_numpy(), truth["y"].to_numpy())
        truth["snr_true"] = truth["diff_flux"] / at_truth.flux_err
        radius = BLEND_RADIUS_FWHM * float(seeing[visit])
        truth["blended"] = _blended(truth, visit_truth, static, radius)
        si, ti = _match(sources, truth)
        truth["diaSourceId"] = -1
        truth.loc[ti, "diaSourceId"] = sources["diaSourceId"].to_numpy()[si]
        for column in ("psfFlux", "psfFluxErr"):
            truth[column] = np.nan
            truth.loc[ti, column] = sources[column].to_numpy()[si]
        sources["truth_id"] = -1
        sources.loc[si, "truth_id"] = truth["id"].to_numpy()[ti]
        sources["truth_kind"] = ""
        sources.loc[si, "truth_kind"] = truth["kind"].to_numpy()[ti]
        sources["truth_ssObjectId"] = 0
        sources.loc[si, "truth_ssObjectId"] = truth["ssObjectId"].to_numpy()[ti]
        # a mover just off the CCD still explains a source on its edge: every object counts
        sources["nearest_truth_arcsec"] = nearest_truth_arcsec(sources, visit_truth)
        truths.append(truth)
        frames.append(sources)
    return Run(
        url=url,
        repo=repo,
        truth=pd.concat(truths, ignore_index=True),
        sources=pd.concat(frames, ignore_index=True),
        apdb=Apdb.for_repository(url),
    )


def test_completeness_of_variables_and_transients(run):
    t = run.truth
    # the matched filter cannot cover the CCD's outermost pixels (its half-width, 7 px)
    inside = t.x.between(EDGE_MARGIN, 1023 - EDGE_MARGIN) & t.y.between(
        EDGE_MARGIN, 1023 - EDGE_MARGIN
    )
    for kind in ("variable", "transient"):
        bright = t[(t.kind == kind) & (t.snr_true.abs() >= 10) & inside]
        assert len(bright) >= 20, f"too few {kind}s at S/N >= 10 to judge: {len(bright)}"
        found = float((bright.diaSourceId >= 0).mean())
        assert found >= 0.95, f"{kind}: completeness {found:.3f} of {len(bright)}"


def test_few_false_dia_sources_per_ccd(run):
    false = run.sources[run.sources.nearest_truth_arcsec > MATCH_RADIUS_ARCSEC]
    per_visit = false.groupby("visit").size().reindex(range(1, N_VISITS + 1), fill_value=0)
    assert per_visit.max() < 5, per_visit.to_dict()


def _transient_flux_statistics(run: Run, min_snr: float) -> tuple[int, float, float]:
    """Number, median ``psfFlux / diff_flux`` and pull std of unblended detected transients."""
    t = run.truth
    bright = t[
        (t.kind == "transient") & (t.snr_true >= min_snr) & (t.diaSourceId >= 0) & ~t.blended
    ]
    ratio = bright.psfFlux / bright.diff_flux
    pull = (bright.psfFlux - bright.diff_flux) / bright.psfFluxErr
    return len(bright), float(np.median(ratio)), float(np.std(pull))


def test_transient_psf_fluxes_match_truth_with_honest_errors(run):
    n, ratio, pull_std = _transient_flux_statistics(run, 10.0)
    assert n >= 20, n
    assert abs(ratio - 1.0) < 0.03, ratio
    assert 0.85 < pull_std < 1.15, pull_std


def test_bright_transient_fluxes_are_unbiased_with_honest_errors(run):
    n, ratio, pull_std = _transient_flux_statistics(run, 50.0)
    assert n >= 10, n
    assert abs(ratio - 1.0) < 0.01, ratio
    assert 0.85 < pull_std < 1.15, pull_std


def test_one_dia_object_per_simulated_object(run):
    stored = run.apdb.dump("DiaSource")[["diaSourceId", "diaObjectId"]]
    fixed = run.sources[run.sources.truth_kind.isin(["variable", "transient"])]
    joined = fixed[["diaSourceId", "truth_id"]].merge(
        stored, on="diaSourceId", how="left", validate="one_to_one"
    )
    assert joined.diaObjectId.notna().all()
    repeated = joined.groupby("truth_id").filter(lambda g: len(g) >= 2)
    assert repeated.truth_id.nunique() >= 10  # objects seen in several visits
    objects_per_truth = repeated.groupby("truth_id").diaObjectId.nunique()
    assert (objects_per_truth == 1).all(), objects_per_truth[objects_per_truth > 1].to_dict()
    truths_per_object = joined.groupby("diaObjectId").truth_id.nunique()
    assert (truths_per_object == 1).all()


def test_known_movers_are_associated_and_unknown_ones_are_not(run):
    stored = run.apdb.dump("DiaSource")[["diaSourceId", "diaObjectId", "ssObjectId"]]
    joined = run.sources[["diaSourceId", "truth_kind", "truth_ssObjectId"]].merge(
        stored, on="diaSourceId", how="left", validate="one_to_one"
    )
    ss = joined.ssObjectId.fillna(0).astype(np.int64)
    known = joined.truth_kind == "known_mover"
    assert known.sum() >= 10
    right = ss[known] == joined.truth_ssObjectId[known]
    assert right.mean() >= 0.99, f"{int(right.sum())} of {int(known.sum())}"
    assert not ((ss[known] != 0) & ~right).any()  # none wrongly associated
    # unknown movers, fixed objects and unmatched sources: no solar-system object
    assert (ss[~known] == 0).all(), joined[~known & (ss != 0)][["diaSourceId", "truth_kind"]]
    # an associated DiaSource creates no DiaObject
    assert joined.diaObjectId[known & right].fillna(0).eq(0).all()
    sssource = run.apdb.dump("SSSource")
    assert set(sssource.diaSourceId) == set(joined.diaSourceId[ss != 0])


def _apdb_tables(apdb: Apdb) -> dict[str, pd.DataFrame]:
    tables = {}
    for table in ("DiaObject", "DiaSource", "DiaForcedSource", "SSSource"):
        frame = apdb.dump(table)
        tables[table] = frame.drop(columns=["timeProcessedMjdTai"], errors="ignore")
    return tables


def _alerts(run: Run, visit: int) -> list[dict[str, Any]]:
    return read_alerts(run.repo.uri("alerts", visit=visit, detector=DETECTOR))


def test_every_alert_is_valid_and_one_per_dia_source(run):
    schema = load_alert_schema()
    for visit in range(1, N_VISITS + 1):
        alerts = _alerts(run, visit)
        for alert in alerts:
            assert validate(alert, schema.definition, raise_errors=False)
        ids = [a["diaSource"]["diaSourceId"] for a in alerts]
        expected = run.sources[run.sources.visit == visit].diaSourceId
        assert len(ids) == len(set(ids)) and set(ids) == set(expected)


def test_rerunning_a_visit_leaves_the_apdb_unchanged(run):
    before = _apdb_tables(run.apdb)
    visit = N_VISITS // 2
    # alert production is what writes the APDB (calibrate, which only feeds it, is not rerun)
    summary = apflow.run(
        "alert_production", run.url, where=f"visit = {visit}", redo=True, scheduler="threads",
        workers=2, progress=False,
    )  # fmt: skip
    assert summary.ok and summary.count("done") == 5
    after = _apdb_tables(run.apdb)
    for table, frame in before.items():
        pd.testing.assert_frame_equal(after[table], frame, obj=table)


def test_rerunning_the_alert_stage_gives_the_same_alerts(run):
    visit = N_VISITS
    before = _alerts(run, visit)
    workflow = load_workflow("alert_production")
    alerts_only = dataclasses.replace(workflow, stages=(workflow.stage("alerts"),))
    summary = apflow.run(
        alerts_only, run.url, where=f"visit = {visit}", redo=True, scheduler="threads",
        workers=2, progress=False,
    )  # fmt: skip
    assert summary.ok and summary.count("done") == 1
    after = _alerts(run, visit)
    assert len(after) == len(before) > 0
    # every field, cutouts included; the history's processing times changed with the rerun
    # of a visit above (the APDB rows were rewritten), nothing else may
    for a, b in zip(after, before, strict=True):
        assert _same(a, b), a["diaSource"]["diaSourceId"]


def _same(a: Any, b: Any) -> bool:
    """Equality of decoded Avro records, NaN equal to NaN, processing times ignored."""
    if isinstance(a, dict):
        keys = a.keys() - {"timeProcessedMjdTai"}
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in keys)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b

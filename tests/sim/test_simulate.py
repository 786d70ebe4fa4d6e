"""simulate() writes a complete repository whose contents match the in-memory renderer."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from apflow.core import Exposure
from apflow.errors import ConfigError
from apflow.io import Repository
from apflow.sim import SkyModel, make_tract, render_exposure, simulate, wcs_from_header
from apflow.sim.dynamic import DIA_TRUTH_COLUMNS, dia_truth
from apflow.sim.movers import EPHEMERIS_COLUMNS, ephemeris, field_radius_deg
from apflow.sim.template import render_template, template_mjd


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("sim") / "repo")
    return url, simulate(url, camera="mini", n_visits=2, seed=11)


def test_simulate_writes_every_dataset(written):
    url, summary = written
    repo = Repository(url)
    assert len(repo.data_ids("post_isr")) == 2 * 9
    assert len(repo.data_ids("truth_wcs")) == 2 * 9
    assert len(repo.data_ids("truth_sky_frame")) == 9
    n_patches = summary["tract"]["nx"] * summary["tract"]["ny"]
    assert len(repo.data_ids("coadd_ref")) == n_patches
    assert len(repo.data_ids("deep_coadd")) == 2 * n_patches
    assert len(repo.data_ids("truth_coadd")) == 2 * n_patches
    for name in ("ref_cat", "truth_sources", "truth_visits", "truth_exposures", "truth_summary"):
        assert repo.exists(name)
    assert summary["written"]["post_isr"] == 18


def test_written_exposure_equals_in_memory_render(written):
    url, _ = written
    stored = Repository(url).get("post_isr", visit=2, detector=5)
    sky = SkyModel.generate("mini", seed=11)
    sim = render_exposure(sky, sky.visits(2)[1], 5)
    assert isinstance(stored, Exposure)
    assert np.array_equal(stored.image, sim.exposure.image)
    assert np.array_equal(stored.mask, sim.exposure.mask)
    assert stored.visit_info == sim.exposure.visit_info
    assert stored.photo_calib is None and stored.psf == sim.exposure.psf


def test_truth_tables_describe_the_visits(written):
    url, summary = written
    repo = Repository(url)
    visits = repo.get("truth_visits")
    assert list(visits["visit"]) == [1, 2]
    assert {"zero_point", "sky_level", "seeing_fwhm", "bg_x", "boresight_ra"} <= set(visits.columns)
    exposures = repo.get("truth_exposures")
    assert len(exposures) == 18 and {"psf_fwhm_center", "sky_mean"} <= set(exposures.columns)
    header = repo.get("truth_wcs", visit=1, detector=0)
    assert header["CTYPE1"] == "RA---TAN-SIP"
    assert wcs_from_header(header).has_distortion
    assert len(repo.get("truth_sources")) == summary["n_sources"]


def test_truth_sky_frame_holds_the_pattern(written):
    url, _ = written
    bundle = Repository(url).get("truth_sky_frame", detector=3)
    pattern, _ = SkyModel.generate("mini", seed=11).sky_pattern(3)
    assert np.array_equal(bundle["pattern"], pattern)
    assert bundle["pattern_binned32"].shape == (32, 32)
    assert bundle.attrs["rms"] == pytest.approx(0.02)


def test_coadd_ref_matches_truth_coadd(written):
    url, _ = written
    repo = Repository(url)
    ref = repo.get("coadd_ref", tract=0, patch=0)
    truth = repo.get("truth_coadd", tract=0, patch=0, band="r")
    assert set(ref["id"]) == set(truth.loc[truth["in_coadd_ref"], "id"])
    coadd = repo.get("deep_coadd", tract=0, patch=0, band="g")
    assert coadd.photo_calib.calibration_mean == 1.0


def test_snaps_are_written_as_post_isr_snap():
    url = f"memory://sim-{uuid.uuid4().hex}"
    simulate(url, n_visits=1, n_snaps=2, coadds=False, detectors=[4], seed=2)
    repo = Repository(url)
    assert [d["snap"] for d in repo.data_ids("post_isr_snap")] == [0, 1]
    assert not repo.data_ids("post_isr")
    snap = repo.get("post_isr_snap", visit=1, detector=4, snap=1)
    assert snap.visit_info.exposure_time == pytest.approx(15.0)


def test_unknown_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no_such_option"):
        simulate(str(tmp_path / "r"), n_visits=1, no_such_option=3)


@pytest.mark.slow
def test_mini_simulate_of_ten_visits_takes_under_a_minute(tmp_path):
    summary = simulate(str(tmp_path / "repo"), n_visits=10, seed=0)
    assert summary["written"]["post_isr"] == 90
    assert summary["elapsed_s"] < 60.0


def test_alert_production_inputs_are_written(written):
    url, summary = written
    repo = Repository(url)
    n_patches = summary["tract"]["nx"] * summary["tract"]["ny"]
    assert [d["band"] for d in repo.data_ids("template")] == ["r"] * n_patches
    assert [d["visit"] for d in repo.data_ids("ss_ephemeris")] == [1, 2]
    eph = repo.get("ss_ephemeris", visit=1)
    assert list(eph.columns) == list(EPHEMERIS_COLUMNS) and len(eph) > 20
    truth = repo.get("truth_dia")
    assert list(truth.columns) == list(DIA_TRUTH_COLUMNS)
    counts = summary["dia"]
    assert counts["rows"] == len(truth) and counts["ss_ephemeris_rows"] >= len(eph)
    for kind in ("variable", "transient", "known_mover", "unknown_mover"):
        assert counts[f"n_{kind}s_on_ccd"] > 0
    known = truth[truth["kind"] == "known_mover"]
    assert (known["ssObjectId"] > 0).all() and set(known["ssObjectId"]) >= set(eph["ssObjectId"])


def test_template_is_sharper_than_every_visit(written):
    url, _ = written
    repo = Repository(url)
    template = repo.get("template", tract=0, patch=0, band="r")
    fwhm_arcsec = template.psf.fwhm * 0.2
    assert fwhm_arcsec < repo.get("truth_exposures")["psf_fwhm_min"].min()
    coadd = repo.get("deep_coadd", tract=0, patch=0, band="r")
    assert template.shape == coadd.shape and template.photo_calib == coadd.photo_calib


def test_stored_alert_inputs_equal_the_in_memory_simulation(written):
    url, _ = written
    repo = Repository(url)
    sky = SkyModel.generate("mini", seed=11)
    visits = sky.visits(2)
    tract = make_tract(sky.camera, visits, sky.config)
    template = render_template(tract, 2, "r", sky.catalog, sky.transients, sky.config, 11)
    assert np.array_equal(repo.get("template", tract=0, patch=2, band="r").image, template.image)
    visit = visits[1]
    radius = field_radius_deg(sky.camera)
    eph = ephemeris(sky.movers, visit.mjd, visit.boresight_ra, visit.boresight_dec, radius)
    stored = repo.get("ss_ephemeris", visit=2)
    assert np.array_equal(stored["ssObjectId"], eph["ssObjectId"])
    assert np.array_equal(stored["ephRa"], eph["ephRa"])
    assert list(stored["designation"]) == list(eph["designation"])
    truth = dia_truth(sky, visits, list(range(9)), template_mjd(sky.config))
    stored = repo.get("truth_dia")
    assert np.array_equal(stored["id"], truth["id"])
    assert np.array_equal(stored["diff_flux"], truth["diff_flux"])
    assert np.array_equal(stored["x"], truth["x"], equal_nan=True)

"""DiaSource detection and measurement (:class:`apflow.tasks.dia.DetectAndMeasureTask`).

Every test builds its difference, science and template images from known point sources rendered
with the core PSF models and Gaussian noise of the variance plane's variance.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from apflow.apdb.ids import unpack_source_ids
from apflow.apdb.schema import column_names, conform, empty_frame
from apflow.core import Exposure, GaussianPsf, MaskPlanes, MoffatPsf, VariablePsf
from apflow.errors import TaskError
from apflow.tasks.dia import DetectAndMeasureConfig, DetectAndMeasureTask
from apflow.tasks.dia.measure import bbox_sizes
from tests.tasks.dia.dia_data import (
    DETECTOR,
    MJD,
    PIXEL_SCALE,
    VISIT,
    isolated_positions,
    make_exposure,
)

SIGMA = 10.0  # nJy per pixel
PSF = GaussianPsf(fwhm=4.0)
# Error of a PSF flux on a flat noise: sigma * sqrt(4 pi s^2) for a Gaussian of sigma s (px),
# with the pixel integration adding 1/12 px^2 to s^2.
FLUX_ERR = SIGMA * math.sqrt(4 * math.pi * ((4.0 / 2.3548) ** 2 + 1 / 12))


def _run(diff: Exposure, calexp: Exposure | None = None, template: Exposure | None = None, **cfg):
    calexp = calexp if calexp is not None else diff
    template = template if template is not None else diff
    task = DetectAndMeasureTask(DetectAndMeasureConfig(**cfg))
    return task.run(diff, calexp, template, data_id={"visit": VISIT, "detector": DETECTOR})


def _match(frame: pd.DataFrame, x: np.ndarray, y: np.ndarray, radius: float = 2.0) -> np.ndarray:
    """Row of ``frame`` nearest each truth position within ``radius`` px, -1 when none."""
    if frame.empty:
        return np.full(x.size, -1)
    tree = cKDTree(np.column_stack([frame["x"], frame["y"]]))
    dist, idx = tree.query(np.column_stack([x, y]), distance_upper_bound=radius)
    return np.where(np.isfinite(dist), idx, -1)


@pytest.fixture(scope="module")
def field():
    """1024 x 1024 difference image with ~560 isolated sources of both signs, S/N 7-150."""
    shape = (1024, 1024)
    x, y = isolated_positions(shape, 42.0, 24.0, seed=11)
    rng = np.random.default_rng(12)
    snr = np.exp(rng.uniform(np.log(7.0), np.log(150.0), x.size))
    sign = rng.choice([-1.0, 1.0], x.size)
    flux = sign * snr * FLUX_ERR
    diff = make_exposure(PSF, x, y, flux, shape, SIGMA, seed=13)
    result = _run(diff)
    return {"x": x, "y": y, "flux": flux, "snr": snr, "diff": diff, "result": result}


def test_completeness_above_snr_10(field):
    rows = _match(field["result"].dia_source, field["x"], field["y"])
    bright = field["snr"] >= 10
    assert bright.sum() > 400
    assert np.mean(rows[bright] >= 0) >= 0.95


def test_psf_flux_unbiased_with_calibrated_errors(field):
    df = field["result"].dia_source
    rows = _match(df, field["x"], field["y"])
    ok = (rows >= 0) & (field["snr"] >= 10)
    flux = df["psfFlux"].to_numpy(float)[rows[ok]]
    err = df["psfFluxErr"].to_numpy(float)[rows[ok]]
    truth = field["flux"][ok]
    ratio = flux / truth
    assert abs(np.median(ratio) - 1) < 0.03
    # Sources at S/N >= 60 have errors < 1.7%: each is within 3% of the truth at ~1.8 sigma.
    bright = field["snr"][ok] >= 60
    assert np.mean(np.abs(ratio[bright] - 1) < 0.03) > 0.9
    pull = (flux - truth) / err
    assert abs(np.mean(pull)) < 0.2
    assert 0.87 < np.std(pull) < 1.15
    np.testing.assert_allclose(np.median(err), FLUX_ERR, rtol=0.02)


def test_negative_sources_are_flagged_negative(field):
    df = field["result"].dia_source
    rows = _match(df, field["x"], field["y"])
    found = rows >= 0
    negative = field["flux"] < 0
    is_neg = df["isNegative"].to_numpy(bool)[rows[found]]
    np.testing.assert_array_equal(is_neg, negative[found])
    assert (negative & found).sum() > 200
    psf_flux = df["psfFlux"].to_numpy(float)[rows[found & negative]]
    assert np.all(psf_flux < 0)
    assert np.all(df["apFlux"].to_numpy(float)[rows[found & negative & (field["snr"] > 30)]] < 0)


def test_centroids_and_sky_coordinates(field):
    df = field["result"].dia_source
    rows = _match(df, field["x"], field["y"])
    ok = (rows >= 0) & (field["snr"] >= 10)
    dx = df["x"].to_numpy(float)[rows[ok]] - field["x"][ok]
    dx_err = df["xErr"].to_numpy(float)[rows[ok]]
    assert abs(np.mean(dx / dx_err)) < 0.2
    assert 0.8 < np.std(dx / dx_err) < 1.25
    # ra/dec are the WCS of the centroid; raErr is an on-sky angle of ~xErr * 0.2 arcsec.
    ra, dec = field["diff"].wcs.all_pix2world(df["x"], df["y"], 0)
    # x and y are float32 in the schema: 1e-8 deg (36 micro-arcsec) is their rounding.
    np.testing.assert_allclose(df["ra"], ra, rtol=0, atol=1e-8)
    np.testing.assert_allclose(df["dec"], dec, rtol=0, atol=1e-8)
    np.testing.assert_allclose(df["raErr"] * 3600, df["xErr"] * PIXEL_SCALE, rtol=1e-3)
    np.testing.assert_allclose(df["decErr"] * 3600, df["yErr"] * PIXEL_SCALE, rtol=1e-3)


def test_moments_in_arcsec_squared_match_the_psf(field):
    df = field["result"].dia_source
    bright = df[np.abs(df["snr"]) > 60]
    # Pixel-integrated Gaussian: (sigma^2 + 1/12) px^2, times (0.2 arcsec)^2.
    expected = ((4.0 / 2.3548) ** 2 + 1 / 12) * PIXEL_SCALE**2
    np.testing.assert_allclose(bright["ixxPSF"], expected, rtol=0.01)
    assert np.median(bright["ixx"]) == pytest.approx(expected, rel=0.05)
    assert np.median(bright["iyy"]) == pytest.approx(expected, rel=0.05)


def test_psf_moments_follow_a_variable_psf():
    shape = (256, 256)
    psf = VariablePsf(profile="gaussian", width=256, height=256, fwhm_coeffs=(4.0, 0.0, 0.5))
    x, y = isolated_positions(shape, 50.0, 25.0, seed=81)
    diff = make_exposure(psf, x, y, np.full(x.size, 5000.0), shape, SIGMA, seed=82)
    df = _run(diff).dia_source
    assert len(df) == x.size
    fwhm = psf.fwhm_coeffs[0] + psf.fwhm_coeffs[2] * (2 * df["x"] / 255 - 1)
    expected = ((fwhm / 2.3548) ** 2 + 1 / 12) * PIXEL_SCALE**2
    np.testing.assert_allclose(df["ixxPSF"], expected, rtol=0.02)
    np.testing.assert_allclose(df["iyyPSF"], expected, rtol=0.02)


def test_summary_counts(field):
    result = field["result"]
    summary = result.summary()
    df = result.dia_source
    assert summary["n_dia_sources"] == len(df)
    kinds = ("n_positive", "n_negative", "n_dipoles", "n_unresolved_pairs")
    assert sum(summary[k] for k in kinds) == len(df)
    assert summary["n_positive"] == int((df["psfFlux"] > 0).sum())
    assert summary["n_negative"] == int(df["isNegative"].sum())
    assert summary["n_dipoles"] == 0


def test_frame_has_the_full_apdb_schema(field):
    df = field["result"].dia_source
    expected = empty_frame("DiaSource")
    assert list(df.columns) == column_names("DiaSource")
    assert len(df.columns) == 103
    assert (df.dtypes == expected.dtypes).all()
    pd.testing.assert_frame_equal(conform(df, "DiaSource"), df)
    assert (df["visit"] == VISIT).all() and (df["detector"] == DETECTOR).all()
    assert (df["midpointMjdTai"] == MJD).all() and (df["band"] == "r").all()
    assert df["diaObjectId"].isna().all() and df["ssObjectId"].isna().all()
    assert df["extendedness"].isna().all() and df["reliability"].isna().all()
    assert (df["trailNdata"] == 0).all() and (df["dipoleNdata"] == 0).all()
    assert (df["psfNdata"] > 0).all()
    np.testing.assert_allclose(df["snr"], df["psfFlux"] / df["psfFluxErr"], rtol=1e-6)


def test_ids_are_deterministic_and_in_raster_order(field):
    df = field["result"].dia_source
    again = _run(field["diff"]).dia_source
    np.testing.assert_array_equal(df["diaSourceId"], again["diaSourceId"])
    pd.testing.assert_frame_equal(
        df.drop(columns="timeProcessedMjdTai"), again.drop(columns="timeProcessedMjdTai")
    )
    visit, detector, index = unpack_source_ids(df["diaSourceId"].to_numpy())
    assert (visit == VISIT).all() and (detector == DETECTOR).all()
    np.testing.assert_array_equal(index, np.arange(len(df)))
    order = np.lexsort((df["x"].to_numpy(), df["y"].to_numpy()))
    np.testing.assert_array_equal(order, np.arange(len(df)))


def test_pure_noise_gives_few_false_detections():
    # Expected peaks above u = 5 of a field smoothed by a Gaussian of sigma s (Euler
    # characteristic of a Gaussian random field): area / (2 s^2) / (2 pi)^1.5 u exp(-u^2 / 2)
    # = 0.2 per sign per 1024 x 1024 for s = 1.7 px, so ~0.9 over both signs of two images.
    shape = (1024, 1024)
    none = np.zeros(0)
    total = 0
    for seed in (21, 22):
        diff = make_exposure(PSF, none, none, none, shape, SIGMA, seed=seed)
        total += len(_run(diff).dia_source)
    assert total < 5


def test_no_detections_give_an_empty_frame_with_the_schema():
    none = np.zeros(0)
    diff = make_exposure(PSF, none, none, none, (128, 128), SIGMA, seed=3)
    result = _run(diff)
    df = result.dia_source
    assert len(df) == 0
    pd.testing.assert_frame_equal(df, empty_frame("DiaSource"))
    assert result.summary()["n_dia_sources"] == 0


@pytest.mark.parametrize("psf", [GaussianPsf(fwhm=4.0), MoffatPsf(fwhm=4.0, beta=3.0)])
def test_dipole_is_one_source_with_its_fit(psf):
    # Lobes 2.5 px apart (0.6 FWHM), the negative lobe to the lower left of the positive.
    xp, yp, xn, yn = 100.6, 101.9, 98.6, 100.4
    flux = 4000.0
    diff = make_exposure(
        psf,
        np.array([xp, xn]),
        np.array([yp, yn]),
        np.array([flux, -flux]),
        (200, 200),
        SIGMA,
        seed=31,
    )
    df = _run(diff).dia_source
    near = df[np.hypot(df["x"] - 0.5 * (xp + xn), df["y"] - 0.5 * (yp + yn)) < 6]
    assert len(near) == 1 and len(df) == 1
    row = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in near.iloc[0].items()}
    assert row["isDipole"] and row["dipoleFitAttempted"] and not row["isNegative"]
    assert row["x"] == pytest.approx(0.5 * (xp + xn), abs=0.2)
    assert row["y"] == pytest.approx(0.5 * (yp + yn), abs=0.2)
    assert row["dipoleMeanFlux"] == pytest.approx(flux, abs=4 * row["dipoleMeanFluxErr"])
    assert row["dipoleFluxDiff"] == pytest.approx(0.0, abs=4 * row["dipoleFluxDiffErr"])
    assert row["dipoleLength"] == pytest.approx(2.5 * PIXEL_SCALE, abs=0.05)
    # East is -x and North +y: the bearing of (+2.0, +1.5) px is -53.1 deg = 306.9 deg.
    bearing = math.degrees(math.atan2(-(xp - xn), yp - yn)) % 360
    assert row["dipoleAngle"] % 360 == pytest.approx(bearing, abs=5)
    assert row["dipoleNdata"] > 100
    assert row["dipoleChi2"] / row["dipoleNdata"] == pytest.approx(1.0, abs=0.15)
    assert np.isnan(row["ixx"]) and row["shape_flag"]


@pytest.mark.parametrize("seed", [1, 2])
def test_unresolved_dipole_is_one_source_but_not_called_a_dipole(seed):
    # Lobes 0.5 px apart (1/8 FWHM): both signs are detected, but only flux x separation is
    # measurable, so each lobe's flux is insignificant on its own.
    x, y = np.array([100.55, 100.05]), np.array([100.2, 100.2])
    diff = make_exposure(PSF, x, y, np.array([5000.0, -5000.0]), (200, 200), SIGMA, seed=seed)
    result = _run(diff)
    df = result.dia_source
    assert len(df) == 1
    row = df.iloc[0]
    assert row["dipoleFitAttempted"] and not row["isDipole"] and not row["isNegative"]
    assert abs(row["x"] - 100.3) < 0.5 and abs(row["y"] - 100.2) < 0.5
    summary = result.summary()
    assert summary["n_dipole_fits_attempted"] == summary["n_unresolved_pairs"] == 1


def test_dipole_pairing_prefers_the_nearest_opposite_peak():
    # A brighter unrelated negative source 12 px away shares the dipole's merged footprint.
    x = np.array([100.3, 102.3, 113.0])
    y = np.array([100.2, 101.0, 106.0])
    flux = np.array([3000.0, -3000.0, -6000.0])
    diff = make_exposure(PSF, x, y, flux, (200, 200), SIGMA, seed=32)
    df = _run(diff).dia_source
    assert len(df) == 2
    dipole = df[df["isDipole"]]
    assert len(dipole) == 1
    assert dipole["x"].iloc[0] == pytest.approx(101.3, abs=0.3)
    single = df[~df["isDipole"]].iloc[0]
    assert single["isNegative"] and single["psfFlux"] == pytest.approx(-6000, rel=0.05)


def test_science_and_template_fluxes_at_the_diasource():
    x = np.array([60.2, 140.7])
    y = np.array([70.4, 130.1])
    sci_flux = np.array([5000.0, 1500.0])
    tmpl_flux = np.array([2000.0, 4500.0])
    shape = (200, 200)
    template_psf = GaussianPsf(fwhm=3.0)  # the template's own, sharper PSF must be used
    calexp = make_exposure(PSF, x, y, sci_flux, shape, SIGMA, seed=41)
    template = make_exposure(template_psf, x, y, tmpl_flux, shape, SIGMA / 2, seed=42)
    diff = make_exposure(PSF, x, y, sci_flux - tmpl_flux, shape, SIGMA, seed=43)
    df = _run(diff, calexp, template).dia_source
    rows = _match(df, x, y)
    assert (rows >= 0).all()
    got = df.iloc[rows]
    np.testing.assert_allclose(got["scienceFlux"], sci_flux, atol=4 * FLUX_ERR)
    np.testing.assert_allclose(got["templateFlux"], tmpl_flux, atol=4 * FLUX_ERR / 2)
    np.testing.assert_allclose(got["psfFlux"], sci_flux - tmpl_flux, atol=4 * FLUX_ERR)
    np.testing.assert_array_equal(got["isNegative"], [False, True])
    assert not got["forced_PsfFlux_flag"].any()
    assert (got["templateFluxErr"] < got["scienceFluxErr"]).all()


def test_nodata_region_rejects_or_flags():
    shape = (200, 200)
    # One source centred inside a NO_DATA strip (x >= 120), one 5 px outside it.
    x = np.array([121.0, 115.0, 50.0])
    y = np.array([60.0, 140.0, 100.0])
    diff = make_exposure(PSF, x, y, np.full(3, 8000.0), shape, SIGMA, seed=51)
    diff.mask[:, 120:] |= MaskPlanes.NO_DATA
    diff.image[:, 160:] = np.nan  # unmasked non-finite pixels count as no data too
    result = _run(diff)
    df = result.dia_source
    xi = np.rint(df["x"].to_numpy()).astype(int)
    yi = np.rint(df["y"].to_numpy()).astype(int)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            assert not (diff.mask[yi + dy, xi + dx] & MaskPlanes.NO_DATA).any()
    rows = _match(df, x, y)
    assert rows[0] == -1
    edge_source = df.iloc[rows[1]]
    assert edge_source["pixelFlags_nodata"] and not edge_source["pixelFlags_nodataCenter"]
    assert not df.iloc[rows[2]]["pixelFlags_nodata"]


def test_saturated_and_bad_pixels_set_their_flags():
    x, y = np.array([60.0, 140.0]), np.array([60.0, 140.0])
    diff = make_exposure(PSF, x, y, np.full(2, 8000.0), (200, 200), SIGMA, seed=61)
    diff.mask[60, 60] |= MaskPlanes.SAT
    diff.mask[143, 130:150] |= MaskPlanes.BAD
    df = _run(diff).dia_source
    rows = _match(df, x, y)
    first, second = df.iloc[rows[0]], df.iloc[rows[1]]
    assert first["pixelFlags_saturated"] and first["pixelFlags_saturatedCenter"]
    assert not first["pixelFlags_bad"]
    assert second["pixelFlags_bad"] and not second["pixelFlags_saturated"]


def test_bbox_size_follows_rubin():
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [10.0, 20.0, 30.0, 40.0]])
    # Farthest edge 5.2 px away: ceil(10.4) = 11; a far-off centroid is capped at 2 x 11.
    np.testing.assert_array_equal(
        bbox_sizes(boxes, np.array([15.2, 0.0]), np.array([35.0, 0.0])), [11, 22]
    )


def test_bbox_size_covers_the_footprint(field):
    df = field["result"].dia_source
    bright = df[np.abs(df["snr"]) > 50]
    # A 5-sigma footprint of a S/N 50 Gaussian source grown by 2.4 sigma is > 12 px across.
    assert (bright["bboxSize"] >= 12).all()
    assert (bright["bboxSize"] <= 60).all()


@pytest.mark.parametrize("what", ["psf", "wcs", "shape", "template_psf"])
def test_unusable_input_is_a_task_error_naming_the_data_id(what):
    none = np.zeros(0)
    diff = make_exposure(PSF, none, none, none, (64, 64), SIGMA)
    calexp = make_exposure(PSF, none, none, none, (64, 64), SIGMA)
    template = make_exposure(PSF, none, none, none, (64, 64), SIGMA)
    if what == "psf":
        diff.psf = None
    elif what == "wcs":
        diff.wcs = None
    elif what == "shape":
        calexp = make_exposure(PSF, none, none, none, (64, 80), SIGMA)
    else:
        template.psf = None
    task = DetectAndMeasureTask()
    with pytest.raises(TaskError, match=f"detector={DETECTOR}, visit={VISIT}"):
        task.run(diff, calexp, template, data_id={"visit": VISIT, "detector": DETECTOR})


@pytest.mark.slow
def test_timing_4k_diff_with_1000_sources():
    shape = (4096, 4096)
    x, y = isolated_positions(shape, 128.0, 40.0, seed=71)
    flux = np.random.default_rng(72).choice([-1.0, 1.0], x.size) * 3000.0
    diff = make_exposure(PSF, x, y, flux, shape, SIGMA, seed=73)
    start = time.perf_counter()
    result = _run(diff)
    elapsed = time.perf_counter() - start
    print(f"4k x 4k, {x.size} injected, {len(result.dia_source)} found: {elapsed:.2f} s")
    assert len(result.dia_source) >= 0.95 * x.size
    assert elapsed < 30


@pytest.mark.parametrize("refit", [True, False])
def test_bad_column_through_the_core_does_not_shift_the_centroid(refit):
    # sources 1.2 px beside a BAD column whose pixels hold garbage (as a calexp's bad column
    # does in a difference): a PSF fit over the good pixels centres them, and so do the
    # adaptive moments, which fill masked pixels with their Gaussian model (calibrate's
    # measurement; they used to count them as zeros and moved 0.5-0.7 px away)
    x = np.array([60.3, 140.3, 60.3, 140.3])
    y = np.array([60.4, 60.4, 140.4, 140.4])
    flux = np.array([1.0, -1.0, 1.0, -1.0]) * 40 * FLUX_ERR
    diff = make_exposure(PSF, x, y, flux, (200, 200), SIGMA, seed=71)
    for column in (61, 141):
        diff.mask[:, column] |= MaskPlanes.BAD
        diff.image[:, column] = -30 * SIGMA
    df = _run(diff, refit_masked_centroids=refit).dia_source
    rows = _match(df, x, y)
    assert np.all(rows >= 0)
    found = df.iloc[rows]
    across = found.x.to_numpy() - x  # the column runs along y
    ratio = found.psfFlux.to_numpy() / flux
    assert np.all(np.abs(across) < 3 * found.xErr.to_numpy()), (refit, across)
    assert np.all(np.abs(ratio - 1) < 3 / 40), (refit, ratio)  # each within 3 sigma
    assert abs(ratio.mean() - 1) < 0.03

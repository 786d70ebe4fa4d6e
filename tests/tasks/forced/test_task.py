"""ForcedPhotTask end to end: output table, units, flags, centroid, background, config."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.core import GaussianPsf, MaskPlanes, PhotoCalib
from apflow.errors import ConfigError, TaskError
from apflow.tasks.forced import DEFAULT_RADII, ForcedPhotConfig, ForcedPhotTask, aperture_column
from tests.tasks.forced.forced_data import make_coadd, make_ref, star_grid

PSF = GaussianPsf(fwhm=3.0)
SHAPE = (160, 180)


def _run(exposure, x, y, config=None, **kwargs):
    ref = make_ref(exposure.wcs, x, y)
    return ForcedPhotTask(config).run(deep_coadd=exposure, coadd_ref=ref, **kwargs)


def test_one_row_per_reference_keyed_by_id_in_reference_order():
    x, y = np.array([50.3, 120.6, 90.1]), np.array([40.2, 100.9, 70.5])
    exposure = make_coadd(PSF, x, y, np.array([1e3, 2e3, 3e3]), shape=SHAPE, sigma=1.0)
    ref = make_ref(exposure.wcs, x, y, ids=np.array([30, 10, 20]))
    data_id = {"tract": 9, "patch": 4, "band": "i"}
    result = ForcedPhotTask().run(deep_coadd=exposure, coadd_ref=ref, data_id=data_id)
    df = result.forced_src
    assert df["id"].tolist() == [30, 10, 20]
    assert df["id"].dtype == np.int64
    assert (df["band"] == "i").all() and (df["tract"] == 9).all() and (df["patch"] == 4).all()
    np.testing.assert_allclose(df["coord_ra"], ref["ra"])
    np.testing.assert_allclose(df[["x", "y"]].to_numpy(), np.column_stack([x, y]), atol=1e-6)
    for r in DEFAULT_RADII:
        assert f"{aperture_column(r)}Flux" in df.columns
    assert {"psfFlux", "psfFluxErr", "localBackground_instFlux", "centroid_x"} <= set(df.columns)
    assert result.summary() == {"n_sources": 3, "n_on_image": 3, "n_blended": 0, "n_psf_flux_ok": 3}


def test_aperture_column_names():
    names = [aperture_column(r) for r in DEFAULT_RADII]
    assert names[:3] == ["ap03", "ap04p5", "ap06"] and names[-1] == "ap70"
    assert aperture_column(2.25) == "ap02p25"


def test_fluxes_are_scaled_to_njy_by_the_photo_calib():
    x, y = np.array([60.4, 110.2]), np.array([70.3, 90.8])
    flux = np.array([1500.0, 800.0])
    plain = _run(make_coadd(PSF, x, y, flux, shape=SHAPE, seed=2), x, y).forced_src
    calib = PhotoCalib(2.5, 0.0)
    scaled = _run(make_coadd(PSF, x, y, flux, shape=SHAPE, seed=2, photo_calib=calib), x, y)
    scaled = scaled.forced_src
    for column in ("psfFlux", "psfFluxErr", "ap06Flux", "ap06FluxErr", "localBackground_instFlux"):
        np.testing.assert_allclose(scaled[column], 2.5 * plain[column], rtol=1e-9)
    np.testing.assert_allclose(scaled["variance_value"], 2.5**2 * plain["variance_value"])
    # The calibration error adds in quadrature to the flux error.
    with_err = PhotoCalib(1.0, 0.01)
    noisy = _run(make_coadd(PSF, x, y, flux, shape=SHAPE, seed=2, photo_calib=with_err), x, y)
    expected = np.hypot(plain["psfFluxErr"], 0.01 * plain["psfFlux"])
    np.testing.assert_allclose(noisy.forced_src["psfFluxErr"], expected, rtol=1e-9)


def test_sources_at_the_edge_are_flagged_and_measured():
    x, y = np.array([1.2, 90.0]), np.array([80.0, 80.0])
    exposure = make_coadd(PSF, x, y, np.array([2000.0, 2000.0]), shape=SHAPE, sigma=1.0)
    df = _run(exposure, x, y).forced_src
    edge, inner = df.iloc[0], df.iloc[1]
    assert edge["psfFlux_flag_edge"] and edge["psfFlux_flag"] and edge["pixelFlags_edge"]
    assert edge["ap03Flux_flag_apertureTruncated"] and not edge["pixelFlags_offimage"]
    # Half the PSF is off the image but the fit of the rest is still unbiased.
    assert abs(edge["psfFlux"] / 2000.0 - 1) < 0.02
    assert not inner["psfFlux_flag"] and not inner["pixelFlags_edge"]
    assert not inner["ap17Flux_flag"] and not inner["ap70Flux_flag_apertureTruncated"]


def test_mask_planes_set_anywhere_and_center_flags():
    x, y = np.array([40.0, 100.0, 140.0]), np.array([50.0, 60.0, 110.0])
    exposure = make_coadd(PSF, x, y, np.full(3, 1000.0), shape=SHAPE, sigma=1.0)
    exposure.mask[50, 40] |= MaskPlanes.SAT  # centre of source 0
    exposure.mask[62, 101] |= MaskPlanes.CR  # 2.2 px from source 1: in footprint, not centre
    exposure.mask[110, 152] |= MaskPlanes.BAD  # 12 px from source 2: outside the footprint
    exposure.image[108, 140] = np.nan  # missing pixel in source 2's footprint
    df = _run(exposure, x, y).forced_src
    assert df["pixelFlags_saturated"].tolist() == [True, False, False]
    assert df["pixelFlags_saturatedCenter"].tolist() == [True, False, False]
    assert df["pixelFlags_cr"].tolist() == [False, True, False]
    assert df["pixelFlags_crCenter"].tolist() == [False, False, False]
    assert not df["pixelFlags_bad"].any()
    assert df["pixelFlags_nodata"].tolist() == [False, False, True]
    # The saturated core is left out of the PSF fit; the wings still give the flux.
    assert abs(df["psfFlux"].iloc[0] / 1000.0 - 1) < 0.02
    assert df["psfFlux_npixels"].iloc[0] == df["psfFlux_npixels"].iloc[1] - 1


def test_measured_centroid_finds_a_shifted_source_with_a_consistent_error():
    x_true, y_true = star_grid(SHAPE, spacing=20.0, margin=12.0, seed=5)
    exposure = make_coadd(PSF, x_true, y_true, np.full(x_true.size, 3000.0), shape=SHAPE, sigma=5.0)
    # References 0.6 px off in x and 0.3 px in y: the centroid must move back to the truth.
    df = _run(exposure, x_true + 0.6, y_true - 0.3).forced_src
    ok = ~df["centroid_flag"]
    assert ok.all()
    pull_x = (df["centroid_x"] - x_true)[ok] / df["centroid_xErr"][ok]
    pull_y = (df["centroid_y"] - y_true)[ok] / df["centroid_yErr"][ok]
    assert np.abs(df["centroid_x"] - x_true)[ok].max() < 0.1
    assert 0.6 < np.std(np.r_[pull_x, pull_y]) < 1.5


def test_local_background_is_the_clipped_mean_of_the_annulus():
    x, y = np.array([90.0]), np.array([80.0])
    exposure = make_coadd(PSF, x, y, np.array([5000.0]), shape=SHAPE, sigma=4.0, background=30.0)
    # A bright neighbour in the annulus must be clipped, not averaged in.
    exposure.image[80, 105] += 5000.0
    df = _run(exposure, x, y).forced_src
    npix = df["localBackground_nPixels"].iloc[0]
    assert npix > 500
    assert abs(df["localBackground_instFlux"].iloc[0] - 30.0) < 4 * 4.0 / np.sqrt(npix)
    assert abs(df["localBackground_instFluxErr"].iloc[0] / 4.0 - 1) < 0.1


def test_input_count_from_metadata_or_argument_else_flagged():
    x, y = np.array([60.0]), np.array([70.0])
    exposure = make_coadd(PSF, x, y, np.array([1000.0]), shape=SHAPE, sigma=1.0)
    df = _run(exposure, x, y).forced_src
    assert df["inputCount_flag"].iloc[0] and df["inputCount"].iloc[0] == 0
    exposure.metadata["input_count"] = 12
    assert _run(exposure, x, y).forced_src["inputCount"].iloc[0] == 12
    counts = np.zeros(SHAPE, dtype=np.int32)
    df = _run(exposure, x, y, input_count=counts).forced_src
    assert df["inputCount_flag_noInputs"].iloc[0] and not df["inputCount_flag"].iloc[0]
    with pytest.raises(TaskError, match="input_count"):
        _run(exposure, x, y, input_count=np.zeros((3, 3)))


def test_coadd_without_psf_still_gives_aperture_fluxes():
    x, y = np.array([60.0]), np.array([70.0])
    exposure = make_coadd(PSF, x, y, np.array([1000.0]), shape=SHAPE, sigma=1.0)
    exposure.psf = None
    df = _run(exposure, x, y).forced_src
    assert df["invalidPsfFlag"].all() and df["psfFlux_flag"].all()
    assert df["localBackground_flag_noPsf"].all()
    assert abs(df["ap17Flux"].iloc[0] - 1000.0) < 3 * df["ap17FluxErr"].iloc[0]


def test_variance_value_is_the_median_variance_near_the_source():
    x, y = np.array([60.0]), np.array([70.0])
    exposure = make_coadd(PSF, x, y, np.array([1000.0]), shape=SHAPE, sigma=3.0)
    df = _run(exposure, x, y).forced_src
    np.testing.assert_allclose(df["variance_value"], 9.0, rtol=1e-6)
    exposure.mask[:, :] |= MaskPlanes.DETECTED
    df = _run(exposure, x, y).forced_src
    assert df["variance_flag_emptyFootprint"].all() and df["variance_value"].isna().all()


def test_config_validates_and_converts_command_line_strings():
    cfg = ForcedPhotConfig().updated(aperture_radii="3, 5.5", fit_background="true")
    assert cfg.aperture_radii == (3.0, 5.5) and cfg.fit_background is True
    with pytest.raises(ConfigError, match="mask plane"):
        ForcedPhotConfig(psf_bad_mask_planes=("BAD", "NOPE")).validate()
    with pytest.raises(ConfigError):
        ForcedPhotConfig(aperture_radii=(3.0, 0.0)).validate()
    with pytest.raises(ConfigError):
        ForcedPhotConfig(local_background_inner=20.0).validate()
    with pytest.raises(ConfigError):
        ForcedPhotTask(ForcedPhotConfig(aperture_backend="gpu"))


def test_numpy_backend_gives_the_same_table():
    x, y = np.array([60.4, 110.2]), np.array([70.3, 90.8])
    exposure = make_coadd(PSF, x, y, np.array([1500.0, 800.0]), shape=SHAPE, seed=2)
    auto = _run(exposure, x, y).forced_src
    numpy_only = _run(exposure, x, y, ForcedPhotConfig(aperture_backend="numpy")).forced_src
    np.testing.assert_allclose(auto["ap25Flux"], numpy_only["ap25Flux"], rtol=1e-10)

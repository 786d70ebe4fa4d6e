"""Cutouts: size, calibration, padding, local WCS and FITS bytes readable by astropy CCDData."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty

from apflow.core import MaskPlanes
from apflow.tasks.alerts.cutouts import cutout_sizes, make_cutouts
from apflow.tasks.alerts.fits_bytes import format_card


def _cutouts(scene, kind="difference", size=40, **kwargs):
    src = scene.inputs["dia_sources"]
    exposure = scene.inputs["diff_image" if kind == "difference" else "calexp"]
    return make_cutouts(
        exposure,
        src["ra"].to_numpy(),
        src["dec"].to_numpy(),
        src["x"].to_numpy(),
        src["y"].to_numpy(),
        np.full(len(src), size),
        kind=kind,
        dia_source_ids=src["diaSourceId"].to_numpy(),
        **kwargs,
    )


def _read(data: bytes) -> CCDData:
    return CCDData.read(io.BytesIO(data), format="fits")


def test_size_is_bbox_clamped_to_30_102():
    sizes = cutout_sizes(np.array([5, 30, 50.2, 102, 500, np.nan]), 30, 102)
    assert sizes.tolist() == [30, 30, 51, 102, 102, 30]


def test_fits_bytes_verify_and_have_the_four_hdus(scene):
    cut = _cutouts(scene)[0]
    with fits.open(io.BytesIO(cut.to_fits())) as hdus:
        hdus.verify("exception")
        assert [h.name for h in hdus] == ["PRIMARY", "UNCERT", "MASK", "PSFIMAGE"]
        assert hdus[0].header["BUNIT"] == "nJy"
        assert hdus["MASK"].data.dtype.kind == "i"
        assert hdus["MASK"].header["MPLANE7"] == "NO_DATA"
    assert len(cut.to_fits()) % 2880 == 0


def test_ccddata_reads_image_variance_mask_psf_in_njy(scene):
    cut = _cutouts(scene)[0]
    ccd = _read(cut.to_fits())
    assert ccd.unit == "nJy"
    assert isinstance(ccd.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(ccd.data, cut.image)
    # noise variance 20^2 counts^2 at 0.25 nJy/count
    np.testing.assert_allclose(ccd.uncertainty.array, 400 * 0.25**2, rtol=1e-6)
    assert ccd.mask is not None and ccd.mask.shape == (40, 40)
    assert ccd.psf.shape[0] % 2 == 1
    assert ccd.psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert ccd.meta["VISIT"] == 4242 and ccd.meta["DETECTOR"] == 4
    assert ccd.meta["ROTPA"] == pytest.approx(37.0)
    assert (ccd.meta["CUTMINX"], ccd.meta["CUTMINY"]) == cut.origin


def test_calibrated_flux_matches_injected_truth(scene):
    # 40x40 nJy cutout: 5 nJy noise per pixel -> 200 nJy on the sum; the 3.5 px PSF fits.
    cuts = _cutouts(scene)
    for k, cut in enumerate(cuts[:24]):
        assert np.nansum(cut.image) == pytest.approx(scene.flux_njy[k], abs=5 * 200)


def test_mask_bits_are_written_and_read_back(scene):
    exposure = scene.inputs["diff_image"].copy()
    src = scene.inputs["dia_sources"].iloc[:1]
    ix, iy = round(float(src["x"].iloc[0])), round(float(src["y"].iloc[0]))
    exposure.mask[iy, ix] = MaskPlanes.SAT | MaskPlanes.DETECTED
    exposure.mask[iy + 3, ix - 2] = MaskPlanes.CR
    (cut,) = make_cutouts(
        exposure,
        src["ra"].to_numpy(),
        src["dec"].to_numpy(),
        src["x"].to_numpy(),
        src["y"].to_numpy(),
        np.array([30]),
        kind="difference",
    )
    data = cut.to_fits()
    with fits.open(io.BytesIO(data)) as hdus:
        bits = hdus["MASK"].data
    x0, y0 = cut.origin
    assert bits[iy - y0, ix - x0] == MaskPlanes.SAT | MaskPlanes.DETECTED
    assert bits[iy + 3 - y0, ix - 2 - x0] == MaskPlanes.CR
    assert (bits != 0).sum() == 2
    ccd = _read(data)
    np.testing.assert_array_equal(ccd.mask, bits != 0)


def test_local_wcs_centre_within_10_mas_and_tracks_the_parent(scene):
    wcs = scene.extra["wcs"]
    src = scene.inputs["dia_sources"]
    for k, cut in enumerate(_cutouts(scene, size=102)[:24]):
        local = _read(cut.to_fits()).wcs
        truth = SkyCoord(src["ra"].iloc[k], src["dec"].iloc[k], unit="deg")
        centre = local.pixel_to_world(cut.crpix[0] - 1, cut.crpix[1] - 1)
        assert centre.separation(truth).to_value("mas") < 10
        # the source pixel itself (from x, y) and the corners agree with the full TAN-SIP WCS
        x0, y0 = cut.origin
        for dx, dy in [(src["x"].iloc[k] - x0, src["y"].iloc[k] - y0), (0, 0), (101, 101)]:
            parent = wcs.pixel_to_world(x0 + dx, y0 + dy)
            assert local.pixel_to_world(dx, dy).separation(parent).to_value("mas") < 10


def test_partial_cutout_is_padded_with_nan_and_no_data(scene):
    cuts = _cutouts(scene, size=30)
    edge = cuts[24]  # x in [0, 5): the left part of the box is off the image
    assert edge.partial
    x0, y0 = edge.origin
    assert x0 < 0
    off = slice(0, -x0)
    assert np.isnan(edge.image[:, off]).all() and np.isnan(edge.variance[:, off]).all()
    assert (edge.mask[:, off] == MaskPlanes.NO_DATA).all()
    on = edge.image[:, -x0:]
    parent = scene.inputs["diff_image"].image[y0 : y0 + 30, 0 : 30 + x0] * 0.25
    np.testing.assert_allclose(on, parent, rtol=1e-6)
    ccd = _read(edge.to_fits())
    assert ccd.meta["PARTIAL"] is True
    assert ccd.mask[:, off].all()
    assert not any(c.partial for c in cuts[:24])


def test_source_off_the_image_has_no_cutout_and_a_warning(scene, caplog):
    exposure = scene.inputs["diff_image"]
    ra, dec = scene.extra["wcs"].all_pix2world([-20.0], [50.0], 0)
    with caplog.at_level(logging.WARNING):
        out = make_cutouts(
            exposure,
            ra,
            dec,
            np.array([-20.0]),
            np.array([50.0]),
            np.array([30]),
            kind="difference",
            dia_source_ids=np.array([99]),
        )
    assert out == [None]
    assert "no difference cutout for diaSourceId 99" in caplog.text


def test_direct_writer_reads_back_like_ccddata_write(scene):
    cut = _cutouts(scene, size=33)[1]
    ours, theirs = _read(cut.to_fits()), _read(cut.to_fits_astropy())
    np.testing.assert_array_equal(ours.data, theirs.data)
    np.testing.assert_array_equal(ours.uncertainty.array, theirs.uncertainty.array)
    np.testing.assert_array_equal(ours.mask, theirs.mask)
    np.testing.assert_array_equal(ours.psf, theirs.psf)
    # astropy cuts floats to 16 significant digits in its cards; ours keep every bit
    np.testing.assert_allclose(ours.wcs.wcs.cd, theirs.wcs.wcs.cd, rtol=1e-13)
    np.testing.assert_array_equal(ours.wcs.wcs.cd, cut.cd)
    np.testing.assert_array_equal(ours.wcs.wcs.crval, theirs.wcs.wcs.crval)
    np.testing.assert_array_equal(ours.wcs.wcs.crpix, theirs.wcs.wcs.crpix)
    for key in ("ROTPA", "VISIT", "DETECTOR", "CUTMINX", "CUTMINY", "DIASRCID", "PARTIAL"):
        assert ours.meta[key] == theirs.meta[key]


def test_float_cards_round_trip_exactly():
    for value in (351.57054697812345, -5.555555555555556e-05, 1e-300, 0.1, -0.0, 12.0):
        card = format_card("CRVAL1", value, "a comment")
        assert len(card) == 80
        assert fits.Card.fromstring(card).value == value
    assert fits.Card.fromstring(format_card("NAME", "it's")).value == "it's"
    with pytest.raises(ValueError, match="nan"):
        format_card("X", float("nan"))


@pytest.mark.slow
def test_direct_writer_is_over_10x_faster_than_ccddata_write(scene):
    import time

    cuts = [c for c in _cutouts(scene, size=60) if c is not None][:20]
    for c in cuts[:2]:  # warm both paths
        c.to_fits(), c.to_fits_astropy()
    start = time.process_time()
    for c in cuts:
        c.to_fits()
    ours = time.process_time() - start
    start = time.process_time()
    for c in cuts:
        c.to_fits_astropy()
    theirs = time.process_time() - start
    assert theirs / ours > 10

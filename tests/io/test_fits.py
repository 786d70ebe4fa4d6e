import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from apflow.core import MaskPlanes
from apflow.errors import IngestError
from apflow.io.fits import ingest_fits, read_exposure_fits, write_exposure_fits


def rubin_like_file(path, make_exposure, visit=11, detector=4, **primary_cards):
    """Multi-extension FITS as Rubin writes it: IMAGE/MASK/VARIANCE, MP_* bit indices."""
    exposure = make_exposure()
    wcs_header = exposure.wcs.to_header(relax=True)
    primary = fits.PrimaryHDU()
    cards = {
        "VISIT": visit,
        "DETECTOR": detector,
        "FILTBAND": "r",
        "FILTER": "r_57",
        "MJD-OBS": 60400.0,
        "TIMESYS": "UTC",
        "EXPTIME": 30.0,
        "AIRMASS": 1.2,
        **primary_cards,
    }
    for key, value in cards.items():
        if value is not None:
            primary.header[key] = value
    image = fits.ImageHDU(exposure.image, header=wcs_header, name="IMAGE")
    # the file's own mask bit layout differs from apflow's: SAT is bit 1 here, CR bit 3, EDGE 4
    mask_header = wcs_header.copy()
    mask_header["MP_SAT"] = 5
    mask_header["MP_EDGE"] = 0
    mask_header["HIERARCH MP_STREAK"] = 9  # not an apflow plane
    file_mask = np.zeros(exposure.shape, dtype=np.int32)
    file_mask[:, 0] = 1 << 0  # EDGE
    file_mask[2, 2] = (1 << 5) | (1 << 9)  # SAT + STREAK
    mask = fits.ImageHDU(file_mask, header=mask_header, name="MASK")
    variance = fits.ImageHDU(exposure.variance, header=wcs_header, name="VARIANCE")
    fits.HDUList([primary, image, mask, variance]).writeto(path)
    return exposure


def test_read_multi_extension_file(tmp_path, make_exposure, sky_offset):
    path = tmp_path / "calexp.fits"
    original = rubin_like_file(path, make_exposure)
    exposure, fields = read_exposure_fits(path)
    assert fields["visit"] == 11 and fields["detector"] == 4
    assert fields["band"] == "r" and fields["physical_filter"] == "r_57"
    # MJD-OBS is the start (UTC): midpoint in TAI is 15 s + 37 s later
    expected = Time(60400.0 + 15 / 86400, format="mjd", scale="utc").tai.mjd
    assert exposure.visit_info.mjd == pytest.approx(expected, abs=1e-9)
    assert exposure.visit_info.airmass == 1.2 and exposure.visit_info.exposure_time == 30.0
    assert exposure.image.dtype == np.float32
    assert exposure.image.tobytes() == original.image.tobytes()
    assert exposure.variance.tobytes() == original.variance.tobytes()
    assert exposure.mask[5, 0] == MaskPlanes.EDGE
    assert exposure.mask[2, 2] == MaskPlanes.SAT  # STREAK dropped, bits remapped
    assert exposure.wcs.sip is not None
    assert sky_offset(original.wcs, exposure.wcs, original.width, original.height) < 1e-9


def test_ingest_multi_extension_file(tmp_path, repo, make_exposure):
    path = tmp_path / "calexp.fits"
    rubin_like_file(path, make_exposure)
    assert ingest_fits(repo, check_shape=False, paths=[path]) == [{"visit": 11, "detector": 4}]
    stored = repo.get("post_isr", visit=11, detector=4)
    assert stored.detector == 4 and stored.visit_info.band == "r"
    assert repo.provenance("post_isr", visit=11, detector=4)["ingested_from"] == str(path)


def test_ingest_single_hdu_file(tmp_path, repo):
    image = np.arange(64 * 48, dtype=np.int16).reshape(48, 64)
    header = fits.Header()
    header["EXPID"] = 3
    header["CCDNUM"] = 2
    header["FILTER"] = "g"
    header["MJD-AVG"] = 60401.5
    header["TIMESYS"] = "TAI"
    header["EXPTIME"] = 15.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.crpix = [32.0, 24.0]
    wcs.wcs.cd = np.diag([-0.2, 0.2]) / 3600
    header.update(wcs.to_header())
    path = tmp_path / "raw.fits"
    fits.PrimaryHDU(image, header=header).writeto(path)
    assert ingest_fits(repo, check_shape=False, paths=[path]) == [{"visit": 3, "detector": 2}]
    stored = repo.get("post_isr", visit=3, detector=2)
    assert stored.image.dtype == np.float32 and np.array_equal(stored.image, image)
    assert np.isnan(stored.variance).all() and not stored.mask.any()
    assert stored.visit_info.mjd == 60401.5 and stored.visit_info.band == "g"
    assert stored.wcs.wcs.crval.tolist() == [10.0, -5.0]
    assert stored.metadata["fits_header"]["CCDNUM"] == 2


def test_missing_keyword_names_file_and_keyword(tmp_path, make_exposure):
    path = tmp_path / "novisit.fits"
    rubin_like_file(path, make_exposure, visit=None)
    with pytest.raises(IngestError, match=r"novisit\.fits.*missing header keyword VISIT"):
        read_exposure_fits(path)


def test_header_map_overrides_keywords(tmp_path, make_exposure):
    path = tmp_path / "mapped.fits"
    rubin_like_file(path, make_exposure, visit=None, OBSID=77)
    exposure, fields = read_exposure_fits(path, header_map={"visit": "OBSID"})
    assert fields["visit"] == 77 and exposure.visit_info.visit == 77
    with pytest.raises(IngestError, match="missing header keyword NOPE"):
        read_exposure_fits(path, header_map={"visit": ["NOPE"]})


def test_one_bad_file_stores_nothing_of_it(tmp_path, repo, make_exposure):
    good = tmp_path / "good.fits"
    rubin_like_file(good, make_exposure, visit=1)
    bad = tmp_path / "bad.fits"
    rubin_like_file(bad, make_exposure, visit=2, EXPTIME=None, EXPOSURE=None)
    with pytest.raises(IngestError, match=r"bad\.fits.*EXPTIME"):
        ingest_fits(repo, check_shape=False, paths=[good, bad])
    assert repo.data_ids("post_isr") == []  # headers are checked before anything is written


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_truncated_file_is_an_ingest_error(tmp_path, repo, make_exposure):
    path = tmp_path / "cut.fits"
    rubin_like_file(path, make_exposure)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(IngestError, match=r"cut\.fits"):
        ingest_fits(repo, check_shape=False, paths=[path])
    assert repo.data_ids("post_isr") == []


def test_export_round_trip(tmp_path, repo, make_exposure, exposures_identical, sky_offset):
    exposure = make_exposure()
    path = tmp_path / "export.fits"
    write_exposure_fits(exposure, path)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        for name in ("IMAGE", "MASK", "VARIANCE"):
            wcs = WCS(hdul[name].header)
            assert sky_offset(exposure.wcs, wcs, exposure.width, exposure.height) <= 1e-10
    back, fields = read_exposure_fits(path)
    exposures_identical(exposure, back)
    assert fields["detector"] == 4
    with pytest.raises(FileExistsError):
        write_exposure_fits(exposure, path)
    ingest_fits(repo, check_shape=False, paths=[path])
    exposures_identical(exposure, repo.get("post_isr", visit=7, detector=4))


def test_image_of_the_wrong_size_for_its_detector_is_refused(tmp_path, repo, make_exposure):
    path = tmp_path / "cutout.fits"
    rubin_like_file(path, make_exposure)
    with pytest.raises(
        IngestError, match=r"cutout\.fits: image is \d+ x \d+ pixels but detector 4"
    ):
        ingest_fits(repo, [path])
    assert repo.data_ids("post_isr") == []

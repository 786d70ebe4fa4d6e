import numpy as np
import pytest
from astropy.wcs import WCS

from apflow.core import Exposure, MaskPlanes, PhotoCalib, VisitInfo, normalize_data_id
from apflow.errors import InvalidDataIdError


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [50.0, 40.0]
    wcs.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600
    return wcs


def test_one_line_wrap_defaults_planes():
    exp = Exposure(image=np.ones((4, 5), dtype=np.float64))
    assert exp.image.dtype == np.float32
    assert exp.mask.dtype == np.int32 and not exp.mask.any()
    assert np.isnan(exp.variance).all()
    assert exp.shape == (4, 5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="mask has shape"):
        Exposure(image=np.zeros((4, 5)), mask=np.zeros((5, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="integer"):
        Exposure(image=np.zeros((4, 5)), mask=np.zeros((4, 5)))


def test_mask_planes():
    mask = np.array([[0, MaskPlanes.SAT | MaskPlanes.CR]], dtype=np.int32)
    exp = Exposure(image=np.zeros((1, 2)), mask=mask)
    assert exp.mask_of("SAT").tolist() == [[False, True]]
    with pytest.raises(KeyError, match="valid planes"):
        exp.mask_of("NOPE")


def test_subimage_shifts_wcs():
    exp = Exposure(image=np.arange(100 * 80, dtype=float).reshape(80, 100), wcs=_wcs())
    sub = exp.subimage(10, 20, 30, 40)
    assert sub.image[0, 0] == exp.image[20, 10]
    a = exp.wcs.pixel_to_world(15.0, 25.0)
    b = sub.wcs.pixel_to_world(5.0, 5.0)
    assert a.separation(b).arcsec < 1e-9
    with pytest.raises(ValueError, match="not inside"):
        exp.subimage(90, 0, 20, 10)


def test_photo_calib_zero_point_round_trip():
    pc = PhotoCalib.from_zero_point(31.4, 0.01)
    assert pc.calibration_mean == pytest.approx(1.0, rel=1e-3)
    assert pc.zero_point == pytest.approx(31.4)
    assert pc.zero_point_err == pytest.approx(0.01)
    flux, err = pc.instflux_to_njy(np.array([100.0]), np.array([10.0]))
    assert err[0] > 10.0 * pc.calibration_mean


def test_visit_info_round_trip():
    vi = VisitInfo(visit=3, band="r", mjd=60000.5, exposure_time=30.0)
    assert VisitInfo.from_dict(vi.to_dict() | {"extra": 1}) == vi
    assert vi.time.tai.mjd == pytest.approx(60000.5)


@pytest.mark.parametrize(
    "bad",
    [
        {"visit": "../x"},
        {"visit": "a/b"},
        {"visit": 1.5},
        {"visit": True},
        {"../k": 1},
        {"visit": ".."},
    ],
)
def test_bad_data_ids_are_refused(bad):
    with pytest.raises(InvalidDataIdError):
        normalize_data_id(bad)


def test_data_id_normalises_numpy_ints():
    assert normalize_data_id({"visit": np.int64(3), "band": "r"}) == {"band": "r", "visit": 3}

import numpy as np
import pytest

from apflow.core import Camera, get_camera


def test_mini_camera_layout():
    cam = get_camera("mini")
    assert len(cam) == 9
    assert {d.shape for d in cam} == {(1024, 1024)}
    assert cam.pixel_scale == pytest.approx(0.2)
    fx, fy = cam[4].pixel_to_focal_plane(*cam[4].center_pixel)
    assert (float(fx), float(fy)) == pytest.approx((0.0, 0.0))


def test_lsstcam_has_189_detectors_of_both_vendors():
    cam = get_camera("lsstcam")
    assert len(cam) == 189
    sizes = {(d.physical_type, d.width, d.height) for d in cam}
    assert sizes == {("e2v", 4096, 4004), ("ITL", 4072, 4000)}
    counts = {t: sum(d.physical_type == t for d in cam) for t in ("e2v", "ITL")}
    assert counts == {"e2v": 13 * 9, "ITL": 8 * 9}
    assert cam.pixel_scale == pytest.approx(0.2, rel=1e-3)
    # detectors must not overlap: centres at least one CCD width apart
    centres = np.array([d.center_mm for d in cam])
    dist = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 40.96


def test_pixel_focal_plane_round_trip_with_yaw():
    from dataclasses import replace

    det = replace(get_camera("mini")[0], yaw_deg=0.7)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1023, 100), rng.uniform(0, 1023, 100)
    fx, fy = det.pixel_to_focal_plane(x, y)
    x2, y2 = det.focal_plane_to_pixel(fx, fy)
    np.testing.assert_allclose(x2, x, atol=1e-9)
    np.testing.assert_allclose(y2, y, atol=1e-9)


def test_camera_serialises():
    cam = get_camera("lsstcam")
    again = Camera.from_dict(cam.to_dict())
    assert again.to_dict() == cam.to_dict()


def test_unknown_camera_and_detector():
    with pytest.raises(ValueError, match="unknown camera 'hsc'"):
        get_camera("hsc")
    with pytest.raises(KeyError, match="no detector 99"):
        get_camera("mini")[99]

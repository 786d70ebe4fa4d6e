"""The reference catalog: clear errors for bad tables, flags for bad rows, WCS transforms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apflow.core import GaussianPsf
from apflow.errors import TaskError
from apflow.tasks.forced import ForcedPhotTask
from apflow.tasks.forced.reference import transform_reference
from tests.tasks.forced.forced_data import PIXEL_SCALE, make_coadd, make_ref, make_wcs

SHAPE = (120, 140)


@pytest.fixture(scope="module")
def coadd():
    psf = GaussianPsf(fwhm=3.0)
    x, y = np.array([30.2, 70.8]), np.array([40.4, 80.1])
    return make_coadd(psf, x, y, np.array([1000.0, 2000.0]), shape=SHAPE, sigma=1.0)


def _run(coadd, ref, **kwargs):
    return ForcedPhotTask().run(deep_coadd=coadd, coadd_ref=ref, **kwargs).forced_src


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (pd.DataFrame({"id": [1], "ra": [150.0]}), "dec"),
        (pd.DataFrame({"ra": [150.0], "dec": [2.0]}), "id"),
        (pd.DataFrame({"id": [1, 2, 1], "ra": [150.0] * 3, "dec": [2.0] * 3}), "duplicate"),
        (pd.DataFrame({"id": [1.5], "ra": [150.0], "dec": [2.0]}), "integer"),
        (pd.DataFrame({"id": [1], "ra": ["x"], "dec": [2.0]}), "numeric"),
        (
            pd.DataFrame({"id": [1], "ra": [150.0], "dec": [2.0], "shape_xx": [1.0]}),
            "shape_yy",
        ),
        ({"id": [1], "ra": [150.0], "dec": [2.0]}, "DataFrame"),
    ],
    ids=["no-dec", "no-id", "duplicate-ids", "float-ids", "text-ra", "partial-shape", "dict"],
)
def test_structurally_bad_reference_raises_task_error_naming_the_problem(coadd, ref, message):
    with pytest.raises(TaskError, match=message) as info:
        _run(coadd, ref, data_id={"tract": 0, "patch": 5, "band": "r"})
    assert "patch=5" in str(info.value)


def test_rows_with_bad_coordinates_are_flagged_and_kept(coadd):
    ref = make_ref(coadd.wcs, np.array([30.2, 70.8]), np.array([40.4, 80.1]))
    bad = pd.DataFrame({"id": [7, 8, 9], "ra": [np.nan, 150.0, np.inf], "dec": [2.0, 95.0, 2.0]})
    df = _run(coadd, pd.concat([ref, bad], ignore_index=True))
    assert df["id"].tolist() == [*ref["id"], 7, 8, 9]
    assert df["coord_flag"].tolist() == [False, False, True, True, True]
    assert df["pixelFlags_offimage"].tolist() == [False, False, True, True, True]
    assert df["psfFlux_flag"].iloc[2:].all() and df["psfFlux"].iloc[2:].isna().all()
    assert df["ap03Flux_flag"].iloc[2:].all()
    np.testing.assert_allclose(df["psfFlux"].iloc[:2], [1000.0, 2000.0], rtol=0.02)


def test_off_image_references_are_flagged_not_dropped(coadd):
    x = np.array([-20.0, 30.2, 500.0])
    y = np.array([40.0, 40.4, 60.0])
    ref = make_ref(coadd.wcs, x, y)
    # A source on the far side of the sky cannot be projected at all.
    ref.loc[len(ref)] = [99, 330.0, -2.0]
    df = _run(coadd, ref)
    assert len(df) == 4
    assert df["pixelFlags_offimage"].tolist() == [True, False, True, True]
    assert not df["coord_flag"].any()
    off = df["pixelFlags_offimage"]
    for column in ("psfFlux_flag", "ap03Flux_flag", "centroid_flag", "localBackground_flag"):
        assert df.loc[off, column].all(), column
    assert df.loc[off, "psfFlux"].isna().all()
    np.testing.assert_allclose(df.loc[0, ["x", "y"]].astype(float), [-20.0, 40.0], atol=1e-6)


def test_positions_go_through_a_tan_sip_wcs():
    wcs = make_wcs((200, 200), rotation_deg=30.0, sip=True)
    x, y = np.array([3.3, 150.7, 199.2]), np.array([10.1, 60.9, 190.4])
    ref = make_ref(wcs, x, y)
    pos = transform_reference(ref, wcs)
    np.testing.assert_allclose(pos.x, x, atol=1e-6)
    np.testing.assert_allclose(pos.y, y, atol=1e-6)


def test_sky_shapes_become_pixel_moments_through_the_local_jacobian():
    wcs = make_wcs((200, 200), rotation_deg=30.0)
    ref = make_ref(wcs, np.array([100.0, 20.0]), np.array([100.0, 150.0]))
    # A round source of 0.4 arcsec^2 per axis, and one elongated East-West.
    ref["shape_xx"] = [0.4, 0.9]
    ref["shape_yy"] = [0.4, 0.1]
    ref["shape_xy"] = [0.0, 0.0]
    pos = transform_reference(ref, wcs)
    scale2 = PIXEL_SCALE**2
    np.testing.assert_allclose(pos.shape[0], [0.4 / scale2, 0.4 / scale2, 0.0], atol=1e-6)
    # East is -x rotated by 30 deg: the East-West axis of the second source turns by 30 deg
    # (plus the ~2e-4 deg convergence of the meridians 20 arcsec from the tangent point).
    xx, yy, xy = pos.shape[1]
    angle = 0.5 * np.degrees(np.arctan2(2 * xy, xx - yy))
    assert abs(abs(angle) - 30.0) < 1e-3
    np.testing.assert_allclose(xx + yy, (0.9 + 0.1) / scale2, rtol=1e-6)
    np.testing.assert_allclose(xx * yy - xy**2, 0.9 * 0.1 / scale2**2, rtol=1e-6)


def test_empty_reference_gives_an_empty_table_with_all_columns(coadd):
    ref = pd.DataFrame({"id": pd.Series([], dtype="int64"), "ra": [], "dec": []})
    df = _run(coadd, ref)
    full = _run(coadd, make_ref(coadd.wcs, np.array([30.0]), np.array([40.0])))
    assert df.empty
    assert list(df.columns) == list(full.columns)

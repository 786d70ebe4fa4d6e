"""Deep coadds, their reference catalog and truth."""

from __future__ import annotations

import numpy as np
import pytest

from apflow.sim import coadd_reference, coadd_truth, make_tract, render_coadd
from apflow.sim.wcs import pixel_to_sky


@pytest.fixture(scope="module")
def tract(sky, visits):
    return make_tract(sky.camera, visits, sky.config)


def test_patches_tile_the_union_of_the_visits(sky, visits, tract):
    assert tract.n_patches >= 4
    wcs = tract.wcs()
    height, width = tract.shape
    for visit in visits:
        for det in sky.camera:
            corners = det.corners_focal_plane()
            x, y = det.focal_plane_to_pixel(corners[:, 0], corners[:, 1])
            ra, dec = pixel_to_sky(
                sky.camera, det, x, y, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle
            )
            tx, ty = wcs.world_to_pixel_values(ra, dec)
            assert np.all((tx > 0) & (tx < width - 1) & (ty > 0) & (ty < height - 1))


def test_patch_wcs_matches_tract_pixel_mapping(sky, tract):
    truth = coadd_truth(tract, 3, "r", sky.catalog, sky.config)
    x, y = tract.patch_wcs(3).world_to_pixel_values(truth["ra"], truth["dec"])
    assert np.allclose(x, truth["x"], atol=1e-6) and np.allclose(y, truth["y"], atol=1e-6)


def test_noiseless_coadd_fluxes_match_truth(sky, tract):
    coadd = render_coadd(tract, 0, "g", sky.catalog, sky.config, seed=3, noise=False)
    truth = coadd_truth(tract, 0, "g", sky.catalog, sky.config)
    assert coadd.photo_calib.calibration_mean == 1.0 and coadd.metadata["band"] == "g"
    image = coadd.image.astype(float)
    # isolated bright stars well inside the patch: aperture flux = truth flux (nJy)
    stars = truth[truth["is_star"] & (truth["mag"] < 21.5)]
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    checked = 0
    for row in stars.itertuples():
        if not (40 < row.x < image.shape[1] - 40 and 40 < row.y < image.shape[0] - 40):
            continue
        d2 = (truth["x"] - row.x) ** 2 + (truth["y"] - row.y) ** 2
        if np.sum(d2 < 40.0**2) > 1:
            continue
        aperture = (xx - row.x) ** 2 + (yy - row.y) ** 2 < 25.0**2
        assert image[aperture].sum() == pytest.approx(row.flux, rel=0.01)
        checked += 1
    assert checked >= 3


def test_coadd_noise_matches_variance(sky, tract):
    noisy = render_coadd(tract, 1, "r", sky.catalog, sky.config, seed=3)
    clean = render_coadd(tract, 1, "r", sky.catalog, sky.config, seed=3, noise=False)
    pull = (noisy.image - clean.image) / np.sqrt(noisy.variance)
    assert abs(pull.std() - 1.0) < 0.03


def test_coadd_ref_is_the_detectable_subset_of_the_truth(sky, tract):
    ref = coadd_reference(tract, 2, sky.catalog, sky.config)
    truth = coadd_truth(tract, 2, "r", sky.catalog, sky.config)
    assert list(ref.columns) == ["id", "ra", "dec", "is_star"]
    assert set(ref["id"]) == set(truth.loc[truth["in_coadd_ref"], "id"])
    assert len(ref) > 100


def test_every_source_belongs_to_exactly_one_patch(sky, tract):
    ids = np.concatenate(
        [coadd_truth(tract, p, "r", sky.catalog, sky.config)["id"] for p in range(tract.n_patches)]
    )
    assert len(ids) == len(set(ids))

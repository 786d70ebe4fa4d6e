"""Moving objects: designations, self-consistent geometry, ephemeris errors, cadences."""

from __future__ import annotations

import re

import numpy as np
import pytest

from apflow.sim import SkyModel, render_exposure
from apflow.sim.dynamic import dia_truth
from apflow.sim.movers import (
    EPHEMERIS_COLUMNS,
    KM_S_PER_AU_DAY,
    earth_state,
    ephemeris,
    field_radius_deg,
    mover_state,
    pack_designation,
    predicted_position,
    provisional_designation,
    unpack_designation,
)

PACKED_PROVISIONAL = re.compile(r"^[A-Z]\d\d[A-HJ-Y][0-9A-Za-z]\d[A-HJ-Z]$")


@pytest.fixture(scope="module")
def movers(sky):
    return sky.movers.at(sky.config.mjd_start)


@pytest.fixture(scope="module")
def first_ephemeris(sky, visits):
    visit = visits[0]
    radius = field_radius_deg(sky.camera)
    return ephemeris(sky.movers, visit.mjd, visit.boresight_ra, visit.boresight_dec, radius)


def test_designation_packs_big_endian_first_character_high():
    packed = pack_designation("K26A12B")
    assert packed == int.from_bytes(b"K26A12B\0", "big")
    assert packed >> 56 == ord("K") and unpack_designation(packed) == "K26A12B"
    assert unpack_designation(pack_designation("2026AB12")) == "2026AB12"
    assert np.int64(packed) == packed  # fits a signed int64


@pytest.mark.parametrize("bad", ["K26A12", "K26A12B99", "K26A12é"])
def test_designation_of_wrong_length_or_not_ascii_raises(bad):
    with pytest.raises(ValueError):
        pack_designation(bad)


def test_provisional_designations_are_unique_and_mpc_packed():
    names = [provisional_designation(2026, s) for s in range(0, 400_000, 7)]
    assert len(set(names)) == len(names)
    assert all(PACKED_PROVISIONAL.match(n) for n in names)
    assert provisional_designation(2026, 0) == "K26A00A"
    assert provisional_designation(2026, 25 * 12 + 1) == "K26A12B"


def test_known_movers_carry_designation_and_packed_id(movers):
    known = movers[movers["known"]]
    unknown = movers[~movers["known"]]
    assert len(known) > 20 and len(unknown) > 0
    pairs = zip(known["designation"], known["ssObjectId"], strict=True)
    assert all(pack_designation(d) == i for d, i in pairs)
    assert (unknown["ssObjectId"] == 0).all() and (unknown["designation"] == "").all()
    assert movers["id"].is_unique


def test_observer_is_the_earth_at_one_au(sky):
    position, velocity = earth_state(sky.config.mjd_start)
    assert 0.98 < np.linalg.norm(position) < 1.02
    assert 29.0 < np.linalg.norm(velocity) * KM_S_PER_AU_DAY < 30.8


def test_geometry_columns_follow_from_the_vectors(first_ephemeris):
    eph = first_ephemeris
    helio = eph[["helio_x", "helio_y", "helio_z"]].to_numpy()
    topo = eph[["topo_x", "topo_y", "topo_z"]].to_numpy()
    helio_v = eph[["helio_vx", "helio_vy", "helio_vz"]].to_numpy()
    topo_v = eph[["topo_vx", "topo_vy", "topo_vz"]].to_numpy()
    earth = helio - topo
    assert np.allclose(np.linalg.norm(earth, axis=1), np.linalg.norm(earth[0]), atol=1e-12)
    assert np.allclose(eph["helioRange"], np.linalg.norm(helio, axis=1), rtol=1e-12)
    assert np.allclose(eph["topoRange"], np.linalg.norm(topo, axis=1), rtol=1e-12)
    assert np.allclose(eph["topoRangeRate"], np.sum(topo * topo_v, axis=1) / eph["topoRange"])
    assert np.allclose(eph["helioRangeRate"], np.sum(helio * helio_v, axis=1) / eph["helioRange"])

    def angle(u, v):
        cos = np.sum(u * v, axis=1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    assert np.allclose(eph["phaseAngle"], angle(-helio, -topo), atol=1e-6)
    assert np.allclose(eph["elongation"], angle(-earth, topo), atol=1e-6)
    # the predicted direction is the topocentric vector's, within the prediction error
    ra = np.degrees(np.arctan2(topo[:, 1], topo[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(topo[:, 2] / eph["topoRange"].to_numpy()))
    offset = np.hypot((eph["ephRa"] - ra) * np.cos(np.radians(dec)), eph["ephDec"] - dec) * 3600
    assert np.all(offset < 6 * eph["positionErrArcsec"])
    assert list(eph.columns) == list(EPHEMERIS_COLUMNS)
    assert eph["ssObjectId"].dtype == np.int64


def test_rates_and_velocities_match_finite_differences(sky, movers):
    t, dt = sky.config.mjd_start + 0.3, 1e-3  # days
    now, before, after = (mover_state(movers, t + s) for s in (0.0, -dt, dt))
    dec = np.radians(now.dec)
    dra = (after.ra - before.ra + 180.0) % 360.0 - 180.0
    rate_ra = dra * np.cos(dec) / (2 * dt)
    rate_dec = (after.dec - before.dec) / (2 * dt)
    assert np.allclose(now.rate_ra, rate_ra, rtol=1e-4, atol=1e-7)
    assert np.allclose(now.rate_dec, rate_dec, rtol=1e-4, atol=1e-7)
    velocity = (after.helio - before.helio) / (2 * dt) * KM_S_PER_AU_DAY
    assert np.allclose(now.helio_velocity, velocity, rtol=1e-6, atol=1e-6)
    velocity = (after.topo - before.topo) / (2 * dt) * KM_S_PER_AU_DAY
    assert np.allclose(now.topo_velocity, velocity, rtol=1e-5, atol=1e-5)


def test_rates_and_magnitudes_are_in_the_asked_ranges(sky, movers):
    state = mover_state(movers, sky.config.mjd_start)
    rate = np.hypot(state.rate_ra, state.rate_dec)
    assert np.all((rate > 0.03) & (rate < 1.5)), (rate.min(), rate.max())
    assert 0.05 < np.median(rate) < 1.0
    lo, hi = sky.config.mover_vmag_range
    assert np.all((state.vmag > lo - 1e-9) & (state.vmag < hi + 1e-9))  # at the anchor time


def test_ephemeris_positions_are_within_their_stated_error(sky, first_ephemeris, visits):
    movers = sky.movers.at(visits[0].mjd)
    known = movers[movers["known"]].set_index("ssObjectId").loc[first_ephemeris["ssObjectId"]]
    state = mover_state(known.reset_index(), visits[0].mjd)
    cos_dec = np.cos(np.radians(state.dec))
    d_east = ((first_ephemeris["ephRa"] - state.ra + 180) % 360 - 180) * cos_dec * 3600
    d_north = (first_ephemeris["ephDec"] - state.dec) * 3600
    pull = np.concatenate([d_east, d_north]) / np.tile(first_ephemeris["positionErrArcsec"], 2)
    radial = np.hypot(d_east, d_north)
    assert len(first_ephemeris) > 30
    assert np.all(np.abs(pull) < 5)
    assert 0.6 < np.mean(pull**2) < 1.5  # the stated sigma is the actual one
    assert 0.1 < np.median(radial) < 0.5  # arcsec: a good but imperfect ephemeris
    ra, dec = predicted_position(known.reset_index(), state)
    assert np.allclose(ra, first_ephemeris["ephRa"]) and np.allclose(dec, first_ephemeris["ephDec"])


def test_several_movers_cross_each_ccd_at_the_default_cadence(sky, visits):
    truth = dia_truth(sky, visits, list(range(9)), None)
    on = truth[truth["kind"].str.endswith("mover") & (truth["detector"] >= 0)]
    per_ccd = on[on["visit"] == visits[0].visit].groupby("detector")["id"].nunique()
    assert len(per_ccd) == 9 and per_ccd.mean() >= 3  # Poisson: one CCD may have only one
    # the same movers in both visits (39 s apart), a little further along their tracks
    movers = truth[truth["kind"].str.endswith("mover")]
    first = movers[movers["visit"] == visits[0].visit].set_index("id")
    second = movers[movers["visit"] == visits[1].visit].set_index("id")
    common = first.index.intersection(second.index)
    same = sky.movers.at(visits[0].mjd)["id"].equals(sky.movers.at(visits[1].mjd)["id"])
    assert same and len(common) > 0.8 * len(first)  # the rest are dithered out of the field
    dt = (visits[1].mjd - visits[0].mjd) * 86400.0  # seconds
    a, b = first.loc[common], second.loc[common]
    moved = np.hypot((b["ra"] - a["ra"]) * np.cos(np.radians(a["dec"])), b["dec"] - a["dec"])
    assert np.all((moved > 0) & (moved < 1.5 * dt / 86400.0))  # under 1.5 deg/day


def test_each_visit_of_a_daily_cadence_has_its_own_movers():
    sky = SkyModel.generate("mini", seed=5, visit_cadence_s=86_400.0)
    visits = sky.visits(3)
    truth = dia_truth(sky, visits, list(range(9)), None)
    on = truth[(truth["kind"] == "known_mover") & (truth["detector"] >= 0)]
    ids = [set(on.loc[on["visit"] == v.visit, "id"]) for v in visits]
    assert all(len(s) >= 15 for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    radius = field_radius_deg(sky.camera)
    for visit, visible in zip(visits, ids, strict=True):
        eph = ephemeris(sky.movers, visit.mjd, visit.boresight_ra, visit.boresight_dec, radius)
        listed = set(sky.movers.at(visit.mjd).set_index("ssObjectId").loc[eph["ssObjectId"], "id"])
        assert visible <= listed


def test_rendered_mover_has_its_flux_at_its_position(sky, visits):
    visit = visits[0]
    with_movers = render_exposure(sky, visit, 4, noise=False, saturate=False, defects=False)
    static = render_exposure(
        sky, visit, 4, noise=False, saturate=False, defects=False, dynamic=False
    )
    light = with_movers.model.astype(np.float64) - static.model
    drawn = with_movers.dia_sources
    movers = drawn[drawn["kind"].str.endswith("mover") & drawn["on_detector"]]
    assert len(movers) >= 2
    yy, xx = np.mgrid[: light.shape[0], : light.shape[1]]
    for row in movers.itertuples():
        if min(row.x, row.y, 1023 - row.x, 1023 - row.y) < 20:
            continue
        near = (xx - row.x) ** 2 + (yy - row.y) ** 2 < 18**2
        others = drawn[(np.hypot(drawn["x"] - row.x, drawn["y"] - row.y) < 40)]
        if len(others) > 1:
            continue
        assert light[near].sum() == pytest.approx(row.counts, rel=0.01)
        # the centroid is the midpoint position (a trail is symmetric about it)
        cx = (light[near] * xx[near]).sum() / light[near].sum()
        cy = (light[near] * yy[near]).sum() / light[near].sum()
        assert abs(cx - row.x) < 0.05 and abs(cy - row.y) < 0.05


def test_same_seed_gives_the_same_dynamic_sky_and_another_seed_does_not(sky, visits):
    again = SkyModel.generate("mini", seed=3)
    mjd = visits[0].mjd
    assert again.transients.equals(sky.transients)
    assert again.movers.at(mjd).equals(sky.movers.at(mjd))
    assert again.dynamic_at(mjd, "r", 30.0).equals(sky.dynamic_at(mjd, "r", 30.0))
    other = SkyModel.generate("mini", seed=4)
    assert not np.array_equal(other.movers.at(mjd)["p_x"][:5], sky.movers.at(mjd)["p_x"][:5])
    assert not np.array_equal(other.transients["ra"][:5], sky.transients["ra"][:5])

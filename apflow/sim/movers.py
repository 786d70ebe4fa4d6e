"""Moving objects (asteroids) with consistent geometry, their ephemerides and designations.

Geometry. Every vector is in the ICRS equatorial frame, positions in au and velocities in km/s.
The observer is the geocentre, whose heliocentric position and velocity come from ERFA's
``epv00`` (the topocentric offset of an observatory, < 3e-5 au, is ignored). Each asteroid moves on
a circular heliocentric orbit, so its position and velocity are exact closed forms of time:
``r(t) = a (cos(n dt) p + sin(n dt) q)``, ``n = sqrt(GM_sun / a^3)``. Its apparent (ra, dec) is the
direction of the topocentric vector ``r - r_earth`` (no light-time correction); the rates, ranges,
range rates, phase angle, elongation and V magnitude (H-G system, G = 0.15) are all computed from
these vectors.

Population. Time is cut into slices of ``mover_epoch_days`` (a night by default) from
``mjd_start``. The movers of slice ``k`` are placed uniformly over the field (the catalog cap) at
the slice's start, where the visits of a night begin, with a topocentric distance set by their orbit
radius (15% near-Earth-like, a = 1.3-1.8 au; the rest main-belt, a = 2.1-3.3 au), and are
simulated only during their slice: a simulation convenience that keeps the field populated for
any cadence. A run of closely spaced visits (the default, 39 s apart) sees the same movers in every
visit, moving 0.05-1 deg/day, and a run with one visit per day sees a fresh set in each visit.
Slices are drawn from their own random streams, so a visit's movers do not depend on how many
visits are simulated.

Known movers carry an MPC-style packed provisional designation (unique labels numbered from
``mjd_start``'s year, 50,000 per time slice; not discovery dates) and an ``ssObjectId`` packed from
it (:func:`pack_designation`); their ephemeris (``ss_ephemeris``) predicts positions with a
per-object error of ``mover_position_error_arcsec`` (1 sigma per coordinate). Unknown movers are
rendered but never listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import erfa
import numpy as np
import pandas as pd
from astropy.time import Time

from ..core import Camera, ab_mag_to_njy
from ..errors import ConfigError
from .catalog import catalog_radius_deg, uniform_in_cap
from .config import TAG_MOVERS, SimConfig
from .wcs import unit_vectors

#: Astronomical unit in km.
AU_KM = 149_597_870.7
#: Heliocentric gravitational constant in au^3 / day^2 (Gauss's constant squared).
GM_SUN = 2.959_122_082_855_911e-4
#: km/s per au/day.
KM_S_PER_AU_DAY = AU_KM / 86_400.0
#: ids of movers start here (above the catalog, variables and transients).
MOVER_ID_BASE = 3_000_000_000
#: Band magnitude minus V of a typical S-type asteroid.
MOVER_COLOURS: dict[str, float] = {"g": 0.35, "r": -0.2, "i": -0.33}
#: Columns of ``ss_ephemeris`` (the SSO-association code reads exactly these).
EPHEMERIS_COLUMNS: tuple[str, ...] = (
    "ssObjectId",
    "designation",
    "midpointMjdTai",
    "ephRa",
    "ephDec",
    "positionErrArcsec",
    "ephVmag",
    "ephRateRa",
    "ephRateDec",
    "topoRange",
    "helioRange",
    "topoRangeRate",
    "helioRangeRate",
    "phaseAngle",
    "elongation",
    "helio_x",
    "helio_y",
    "helio_z",
    "helio_vx",
    "helio_vy",
    "helio_vz",
    "topo_x",
    "topo_y",
    "topo_z",
    "topo_vx",
    "topo_vy",
    "topo_vz",
)

_IDS_PER_SLICE = 1_000_000  # id block of a time slice
_DESIGNATIONS_PER_SLICE = 50_000  # designation serials of a time slice
_TAI_TO_TT_DAYS = 32.184 / 86_400.0
_OBLIQUITY = math.radians(23.439_279)
_HALF_MONTHS = "ABCDEFGHJKLMNOPQRSTUVWXY"
_ORDER_LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_H_G = 0.15


def pack_designation(designation: str) -> int:
    """``ssObjectId`` of a (packed, 7-8 character) MPC designation.

    The ASCII bytes are packed big-endian into a 64-bit integer, first character in the high byte
    (a 7-character designation leaves the low byte 0). ASCII keeps the high bit clear, so the
    result is a positive int64.

    Raises
    ------
    ValueError
        If the designation is not 7 or 8 ASCII characters.
    """
    if not 7 <= len(designation) <= 8:
        raise ValueError(f"designation {designation!r} must have 7 or 8 characters")
    if not designation.isascii():
        raise ValueError(f"designation {designation!r} is not ASCII")
    return int.from_bytes(designation.encode("ascii").ljust(8, b"\0"), "big")


def unpack_designation(packed: int) -> str:
    """Inverse of :func:`pack_designation`.

    Raises
    ------
    ValueError
        If ``packed`` is not a packed 7-8 character ASCII designation.
    """
    if not 0 < int(packed) < 2**63:
        raise ValueError(f"{packed} is not a packed designation")
    text = int(packed).to_bytes(8, "big").rstrip(b"\0")
    if len(text) < 7 or b"\0" in text or not text.isascii():
        raise ValueError(f"{packed} is not a packed designation")
    return text.decode("ascii")


def provisional_designation(year: int, serial: int) -> str:
    """Packed MPC provisional designation (7 characters, e.g. ``K26A12B``) of a serial number.

    ``serial`` counts designations from the first half-month of ``year``: 25 order letters per
    cycle, 620 cycles per half-month, 24 half-months per year, continuing into later years.
    """
    per_half_month = 25 * 620
    year += serial // (24 * per_half_month)
    serial %= 24 * per_half_month
    half_month, rest = divmod(serial, per_half_month)
    cycle, order = divmod(rest, 25)
    century = year // 100
    if not 10 <= century < 36:
        raise ValueError(f"year {year} cannot be packed")
    return (
        f"{_BASE62[century]}{year % 100:02d}{_HALF_MONTHS[half_month]}"
        f"{_BASE62[cycle // 10]}{cycle % 10}{_ORDER_LETTERS[order]}"
    )


def earth_state(mjd: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heliocentric position (au) and velocity (au/day) of the geocentre, ICRS axes.

    ``mjd`` is TAI; shape ``(..., 3)`` out.
    """
    mjd_tt = np.asarray(mjd, dtype=float) + _TAI_TO_TT_DAYS  # TDB - TT < 2 ms: ignored
    heliocentric, _ = erfa.epv00(2_400_000.5, mjd_tt)
    return heliocentric["p"], heliocentric["v"]


@dataclass
class MoverState:
    """Geometry of movers at given times (one entry per mover); see the module docstring.

    Attributes
    ----------
    helio, topo : numpy.ndarray
        ``(N, 3)`` heliocentric and topocentric positions, au.
    helio_velocity, topo_velocity : numpy.ndarray
        ``(N, 3)`` velocities, km/s.
    earth : numpy.ndarray
        ``(N, 3)`` heliocentric position of the observer, au.
    ra, dec : numpy.ndarray
        True apparent direction of the topocentric vector, degrees.
    rate_ra, rate_dec : numpy.ndarray
        ``cos(dec) d(ra)/dt`` and ``d(dec)/dt``, deg/day.
    helio_range, topo_range : numpy.ndarray
        au.
    helio_range_rate, topo_range_rate : numpy.ndarray
        km/s (positive receding).
    phase_angle, elongation : numpy.ndarray
        Sun-object-observer and Sun-observer-object angles, degrees.
    vmag : numpy.ndarray
        V magnitude (H-G, G = 0.15).
    """

    helio: np.ndarray
    topo: np.ndarray
    helio_velocity: np.ndarray
    topo_velocity: np.ndarray
    earth: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    rate_ra: np.ndarray
    rate_dec: np.ndarray
    helio_range: np.ndarray
    topo_range: np.ndarray
    helio_range_rate: np.ndarray
    topo_range_rate: np.ndarray
    phase_angle: np.ndarray
    elongation: np.ndarray
    vmag: np.ndarray

    def flux(self, band: str) -> np.ndarray:
        """True flux (nJy) in ``band`` (V plus a fixed S-type colour)."""
        return np.asarray(ab_mag_to_njy(self.vmag + MOVER_COLOURS[band]), dtype=float)


def mover_state(table: pd.DataFrame, mjd: float | np.ndarray) -> MoverState:
    """Evaluate the orbits of a mover table at ``mjd`` (TAI; scalar or one time per row)."""
    n = len(table)
    t = np.broadcast_to(np.asarray(mjd, dtype=float), (n,))
    a = table["a"].to_numpy()
    p = table[["p_x", "p_y", "p_z"]].to_numpy()
    q = table[["q_x", "q_y", "q_z"]].to_numpy()
    mean_motion = np.sqrt(GM_SUN / a**3)  # rad/day
    angle = mean_motion * (t - table["t_anchor"].to_numpy())
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    helio = a[:, None] * (c * p + s * q)
    helio_v = (a * mean_motion)[:, None] * (-s * p + c * q)  # au/day
    if np.ndim(mjd) == 0:
        e_pos, e_vel = earth_state(float(mjd))
        e_pos, e_vel = np.broadcast_to(e_pos, (n, 3)), np.broadcast_to(e_vel, (n, 3))
    else:
        e_pos, e_vel = earth_state(t)
    topo = helio - e_pos
    topo_v = helio_v - e_vel
    helio_range = np.linalg.norm(helio, axis=1)
    topo_range = np.linalg.norm(topo, axis=1)
    ra = np.arctan2(topo[:, 1], topo[:, 0])
    dec = np.arcsin(topo[:, 2] / topo_range)
    # unit vectors of increasing ra and dec on the sky at the object's position
    e_ra = np.column_stack([-np.sin(ra), np.cos(ra), np.zeros(n)])
    e_dec = np.column_stack([-np.sin(dec) * np.cos(ra), -np.sin(dec) * np.sin(ra), np.cos(dec)])
    to_deg_day = np.degrees(1.0) / topo_range
    rate_ra = np.sum(topo_v * e_ra, axis=1) * to_deg_day
    rate_dec = np.sum(topo_v * e_dec, axis=1) * to_deg_day
    phase = _angle_between(helio, topo)  # between the object->Sun and object->observer lines
    elongation = _angle_between(-e_pos, topo)
    vmag = table["H"].to_numpy() + 5.0 * np.log10(helio_range * topo_range)
    vmag -= 2.5 * np.log10(_hg_phase_function(np.radians(phase), _H_G))
    return MoverState(
        helio=helio,
        topo=topo,
        helio_velocity=helio_v * KM_S_PER_AU_DAY,
        topo_velocity=topo_v * KM_S_PER_AU_DAY,
        earth=np.asarray(e_pos),
        ra=np.degrees(ra) % 360.0,
        dec=np.degrees(dec),
        rate_ra=rate_ra,
        rate_dec=rate_dec,
        helio_range=helio_range,
        topo_range=topo_range,
        helio_range_rate=np.sum(helio * helio_v, axis=1) / helio_range * KM_S_PER_AU_DAY,
        topo_range_rate=np.sum(topo * topo_v, axis=1) / topo_range * KM_S_PER_AU_DAY,
        phase_angle=phase,
        elongation=elongation,
        vmag=vmag,
    )


@dataclass(eq=False)
class MoverPopulation:
    """The movers of a simulation, drawn one time slice at a time and cached.

    Build with :meth:`for_camera`; :meth:`at` gives the movers that exist at a time,
    :meth:`epoch` those of one time slice.
    """

    config: SimConfig
    seed: int
    radius_deg: float
    base_year: int
    _cache: dict[int, pd.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def for_camera(cls, camera: Camera, config: SimConfig, seed: int) -> MoverPopulation:
        """Movers over the dithered footprint of ``camera`` (the catalog cap)."""
        year = Time(config.mjd_start, format="mjd", scale="tai").datetime.year
        return cls(config, int(seed), catalog_radius_deg(camera, config), int(year))

    def epoch_of(self, mjd: float) -> int:
        """Index of the time slice holding ``mjd`` (slice ``k`` starts at ``mjd_start + k L``)."""
        return math.floor((mjd - self.config.mjd_start) / self.config.mover_epoch_days)

    def epoch(self, k: int) -> pd.DataFrame:
        """Movers of slice ``k`` (see :func:`draw_movers`)."""
        if k not in self._cache:
            self._cache[k] = draw_movers(self.config, self.seed, k, self.radius_deg, self.base_year)
        return self._cache[k]

    def at(self, mjd: float) -> pd.DataFrame:
        """The movers that exist at ``mjd``: those of its time slice."""
        return self.epoch(self.epoch_of(mjd))


def draw_movers(
    config: SimConfig, seed: int, epoch: int, radius_deg: float, base_year: int
) -> pd.DataFrame:
    """The movers of time slice ``epoch``, placed in the field at the slice's start.

    Returns
    -------
    pandas.DataFrame
        ``id`` (int64), ``known`` (bool), ``designation`` ("" when unknown), ``ssObjectId``
        (int64, 0 when unknown), ``epoch``, ``t_anchor`` (MJD TAI), orbit radius ``a`` (au), unit
        vectors ``p_*`` (position at the anchor) and ``q_*`` (direction of motion), ``H``,
        ``position_error`` (arcsec, 1 sigma per coordinate), ``error_east``/``error_north``
        (arcsec, the ephemeris' actual error), ``vmag_error`` (mag, the ephemeris' error).

    Raises
    ------
    ConfigError
        For more than 50,000 known or 1,000,000 movers in one slice.
    """
    # zig-zag map of the slice index to a non-negative stream key and id block
    key = 2 * epoch if epoch >= 0 else -2 * epoch - 1
    rng = np.random.default_rng([seed, TAG_MOVERS, key])
    area = 2.0 * math.pi * (1.0 - math.cos(math.radians(radius_deg))) * (180.0 / math.pi) ** 2
    n_known = int(rng.poisson(config.known_mover_density * area))
    n = n_known + int(rng.poisson(config.unknown_mover_density * area))
    if n_known > _DESIGNATIONS_PER_SLICE or n > _IDS_PER_SLICE:
        raise ConfigError(
            f"movers: {n_known} known and {n} in all in one time slice (at most "
            f"{_DESIGNATIONS_PER_SLICE} and {_IDS_PER_SLICE}): lower the mover densities"
        )
    t_anchor = config.mjd_start + epoch * config.mover_epoch_days
    ra, dec = uniform_in_cap(rng, n, config.field_ra, config.field_dec, radius_deg)
    direction = unit_vectors(ra, dec)
    near_earth = rng.random(n) < 0.15
    a = np.where(near_earth, rng.uniform(1.3, 1.8, n), rng.uniform(2.1, 3.3, n))
    earth, _ = earth_state(t_anchor)
    # topocentric distance putting the object on its orbit: |earth + d u| = a
    along = direction @ earth
    distance = -along + np.sqrt(along**2 - earth @ earth + a**2)
    helio = earth + distance[:, None] * direction
    p = helio / a[:, None]
    # orbit pole: the ecliptic pole tilted by the inclination towards a random node
    incl = np.abs(rng.normal(0.0, 1.0, n)) * np.where(near_earth, 0.25, 0.12)
    node = rng.uniform(0.0, 2.0 * math.pi, n)
    pole = np.array([0.0, -math.sin(_OBLIQUITY), math.cos(_OBLIQUITY)])
    e1 = np.array([1.0, 0.0, 0.0])
    e2 = np.cross(pole, e1)
    normal = (
        np.cos(incl)[:, None] * pole
        + (np.sin(incl) * np.cos(node))[:, None] * e1
        + (np.sin(incl) * np.sin(node))[:, None] * e2
    )
    normal -= np.sum(normal * p, axis=1)[:, None] * p
    normal /= np.linalg.norm(normal, axis=1)[:, None]
    q = np.cross(normal, p)  # prograde motion about the pole
    vmag = rng.uniform(*config.mover_vmag_range, n)
    phase = _angle_between(helio, helio - earth)
    h_mag = (
        vmag
        - 5.0 * np.log10(a * distance)
        + 2.5 * np.log10(_hg_phase_function(np.radians(phase), _H_G))
    )
    sigma = rng.uniform(*config.mover_position_error_arcsec, n)
    error_east = rng.normal(0.0, 1.0, n) * sigma
    error_north = rng.normal(0.0, 1.0, n) * sigma
    vmag_error = rng.normal(0.0, 0.2, n)
    known = np.arange(n) < n_known
    serial = key * _DESIGNATIONS_PER_SLICE
    designation = [provisional_designation(base_year, serial + i) for i in range(n_known)]
    designation += [""] * (n - n_known)
    return pd.DataFrame(
        {
            "id": MOVER_ID_BASE + key * _IDS_PER_SLICE + np.arange(n, dtype=np.int64),
            "known": known,
            "designation": designation,
            "ssObjectId": np.array(
                [pack_designation(d) if d else 0 for d in designation], dtype=np.int64
            ),
            "epoch": np.full(n, epoch, dtype=np.int64),
            "t_anchor": np.full(n, t_anchor),
            "a": a,
            "p_x": p[:, 0],
            "p_y": p[:, 1],
            "p_z": p[:, 2],
            "q_x": q[:, 0],
            "q_y": q[:, 1],
            "q_z": q[:, 2],
            "H": h_mag,
            "position_error": sigma,
            "error_east": error_east,
            "error_north": error_north,
            "vmag_error": vmag_error,
        }
    )


def field_radius_deg(camera: Camera, margin_arcmin: float = 1.0) -> float:
    """Radius (deg) about the boresight enclosing every detector, plus a margin."""
    xmin, xmax, ymin, ymax = camera.focal_plane_bounds()
    r_mm = max(math.hypot(x, y) for x in (xmin, xmax) for y in (ymin, ymax))
    r_mm *= 1.0 + camera.distortion_k * r_mm**2
    return r_mm * camera.plate_scale / 3600.0 + margin_arcmin / 60.0


def in_field(
    ra: np.ndarray, dec: np.ndarray, boresight_ra: float, boresight_dec: float, radius_deg: float
) -> np.ndarray:
    """Whether each (ra, dec) is within ``radius_deg`` of the boresight."""
    centre = unit_vectors(np.array([boresight_ra]), np.array([boresight_dec]))[0]
    return unit_vectors(ra, dec) @ centre > math.cos(math.radians(radius_deg))


def ephemeris(
    population: MoverPopulation,
    mjd: float,
    boresight_ra: float,
    boresight_dec: float,
    radius_deg: float,
) -> pd.DataFrame:
    """``ss_ephemeris`` rows of the known movers predicted within ``radius_deg`` of a boresight.

    Returns
    -------
    pandas.DataFrame
        :data:`EPHEMERIS_COLUMNS`, one row per known mover, sorted by ``ssObjectId``. ``ephRa``/
        ``ephDec`` are the predictions (truth plus the object's prediction error); the geometry
        columns are the true vectors at ``mjd``.
    """
    table = population.at(mjd)
    table = table[table["known"].to_numpy()]
    state = mover_state(table, mjd)
    eph_ra, eph_dec = predicted_position(table, state)
    keep = in_field(eph_ra, eph_dec, boresight_ra, boresight_dec, radius_deg)
    columns = {
        "ssObjectId": table["ssObjectId"].to_numpy(),
        "designation": table["designation"].to_numpy().astype(str),
        "midpointMjdTai": np.full(len(table), float(mjd)),
        "ephRa": eph_ra,
        "ephDec": eph_dec,
        "positionErrArcsec": table["position_error"].to_numpy(),
        "ephVmag": state.vmag + table["vmag_error"].to_numpy(),
        "ephRateRa": state.rate_ra,
        "ephRateDec": state.rate_dec,
        "topoRange": state.topo_range,
        "helioRange": state.helio_range,
        "topoRangeRate": state.topo_range_rate,
        "helioRangeRate": state.helio_range_rate,
        "phaseAngle": state.phase_angle,
        "elongation": state.elongation,
    }
    for name, vectors in (
        ("helio", state.helio),
        ("helio_v", state.helio_velocity),
        ("topo", state.topo),
        ("topo_v", state.topo_velocity),
    ):
        for axis, values in zip("xyz", vectors.T, strict=True):
            columns[f"{name}{axis}" if name.endswith("_v") else f"{name}_{axis}"] = values
    out = pd.DataFrame(columns)[list(EPHEMERIS_COLUMNS)][keep]
    return out.sort_values("ssObjectId").reset_index(drop=True)


def predicted_position(table: pd.DataFrame, state: MoverState) -> tuple[np.ndarray, np.ndarray]:
    """Ephemeris (ra, dec) in degrees: the truth offset by each object's prediction error."""
    dec = state.dec + table["error_north"].to_numpy() / 3600.0
    ra = state.ra + table["error_east"].to_numpy() / 3600.0 / np.cos(np.radians(state.dec))
    return ra % 360.0, dec


def _angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle (deg) between rows of two (N, 3) arrays (arctan2 form: accurate at all angles)."""
    u, v = np.broadcast_arrays(u, v)
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    return np.degrees(np.arctan2(cross, np.sum(u * v, axis=-1)))


def _hg_phase_function(alpha: np.ndarray, g: float) -> np.ndarray:
    """``(1 - G) Phi1 + G Phi2`` of the IAU H-G system (Bowell et al. 1989), alpha in radians."""
    tan_half = np.tan(alpha / 2.0)
    phi1 = np.exp(-3.33 * tan_half**0.63)
    phi2 = np.exp(-1.87 * tan_half**1.22)
    return (1.0 - g) * phi1 + g * phi2

"""Variable stars and supernova-like transients: fixed positions, fluxes that change with time.

Both are point sources that are *not* in ``ref_cat`` (calibration never sees them) nor in
``truth_sources``; their truth is ``truth_dia``. One table (:func:`make_transient_catalog`)
holds both kinds, with every light-curve parameter, and :func:`light_curve_flux` evaluates it.

Variables (``kind == "variable"``) have a zero-mean light curve in *flux* about their mean flux
``F0``, so the mean over a cycle (what a deep template holds) is exactly ``F0``:

- ``sinusoid``: ``F = F0 (1 + a sin(2 pi phase))``;
- ``rrlyrae``: a saw-tooth, rising in the first 15% of the cycle and declining over the rest
  (periods 0.3-0.9 days),

with ``a = (10**(0.4 A) - 1) / (10**(0.4 A) + 1)`` for a peak-to-peak amplitude of ``A`` mag.

Transients (``kind == "transient"``) are off before their explosion time ``t0`` and then follow
``F = F_peak f(s) / f(s_peak)`` with ``f(s) = (1 - exp(-s / tau_rise)) exp(-s / tau_fall)``,
``s = t - t0`` in days: a rise over days and an exponential decline, peaking at
``s_peak = tau_rise ln(1 + tau_fall / tau_rise)``. Half of them sit in a catalog galaxy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core import Camera, ab_mag_to_njy
from .catalog import catalog_radius_deg, uniform_in_cap
from .config import BANDS, TAG_TRANSIENTS, TAG_VARIABLES, SimConfig

#: ids of variables start here, transients at ``TRANSIENT_ID_BASE`` (catalog ids are below both).
VARIABLE_ID_BASE = 1_000_000_000
TRANSIENT_ID_BASE = 2_000_000_000
#: Columns of :func:`make_transient_catalog`.
TRANSIENT_COLUMNS: tuple[str, ...] = (
    "id",
    "kind",
    "subtype",
    "ra",
    "dec",
    *(f"{b}_flux" for b in BANDS),
    "amplitude",
    "period",
    "phase_mjd",
    "t_explode",
    "tau_rise",
    "tau_fall",
    "host_id",
)
# Saw-tooth rise fraction of the RR-Lyrae-like light curve.
_RR_RISE = 0.15


def make_transient_catalog(
    camera: Camera, config: SimConfig, seed: int, catalog: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Draw the variables and transients of a field.

    Parameters
    ----------
    camera : Camera
    config : SimConfig
        Densities, magnitude ranges and time scales (see :class:`SimConfig`).
    seed : int
        Master seed; variables and transients have their own streams.
    catalog : pandas.DataFrame, optional
        Static catalog whose galaxies may host transients (``transient_host_fraction``).

    Returns
    -------
    pandas.DataFrame
        :data:`TRANSIENT_COLUMNS`: ``id`` (int64), ``kind`` ("variable"/"transient"), ``subtype``
        ("sinusoid", "rrlyrae", "supernova"), ``ra``/``dec`` (deg), ``<band>_flux`` (nJy: mean
        flux of a variable, peak flux of a transient), ``amplitude`` (peak-to-peak mag),
        ``period`` (days), ``phase_mjd`` (MJD of phase 0), ``t_explode`` (MJD TAI),
        ``tau_rise``/``tau_fall`` (days), ``host_id`` (catalog id of the host galaxy, or 0).
        Unused parameters are NaN.
    """
    radius = catalog_radius_deg(camera, config)
    area = 2.0 * math.pi * (1.0 - math.cos(math.radians(radius))) * (180.0 / math.pi) ** 2
    variables = _draw_variables(np.random.default_rng([seed, TAG_VARIABLES]), config, area, radius)
    transients = _draw_transients(
        np.random.default_rng([seed, TAG_TRANSIENTS]), config, area, radius, catalog
    )
    table = pd.concat([variables, transients], ignore_index=True)
    return table[list(TRANSIENT_COLUMNS)]


def light_curve_flux(table: pd.DataFrame, mjd: float | np.ndarray, band: str) -> np.ndarray:
    """True flux (nJy) in ``band`` of each row of a transient catalog at ``mjd`` (TAI).

    ``mjd`` is a scalar or an array broadcastable against the rows.
    """
    mjd = np.asarray(mjd, dtype=float)
    base = table[f"{band}_flux"].to_numpy()
    kind = table["kind"].to_numpy()
    out = np.zeros(np.broadcast(base, mjd).shape)
    var = kind == "variable"
    if np.any(var):
        out[var] = base[var] * (1.0 + _variable_shape(table[var], _pick(mjd, var)))
    tr = kind == "transient"
    if np.any(tr):
        out[tr] = base[tr] * _supernova_shape(table[tr], _pick(mjd, tr))
    return out


def template_flux(table: pd.DataFrame, band: str, mjd: float) -> np.ndarray:
    """Flux (nJy) of each row in a template made at ``mjd``.

    A deep template averages many epochs: variables appear at their mean flux; transients at
    their flux at the template epoch (0 before their explosion).
    """
    out = light_curve_flux(table, mjd, band)
    var = table["kind"].to_numpy() == "variable"
    out[var] = table[f"{band}_flux"].to_numpy()[var]
    return out


def _pick(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return values if values.ndim == 0 else values[mask]


def _variable_shape(rows: pd.DataFrame, mjd: np.ndarray) -> np.ndarray:
    """Zero-mean fractional flux change of variables."""
    amp = 10.0 ** (0.4 * rows["amplitude"].to_numpy())
    a = (amp - 1.0) / (amp + 1.0)
    phase = np.mod((mjd - rows["phase_mjd"].to_numpy()) / rows["period"].to_numpy(), 1.0)
    sine = np.sin(2.0 * math.pi * phase)
    tooth = np.where(
        phase < _RR_RISE,
        -1.0 + 2.0 * phase / _RR_RISE,
        1.0 - 2.0 * (phase - _RR_RISE) / (1.0 - _RR_RISE),
    )
    return a * np.where(rows["subtype"].to_numpy() == "rrlyrae", tooth, sine)


def _supernova_shape(rows: pd.DataFrame, mjd: np.ndarray) -> np.ndarray:
    """Light curve of transients normalised to 1 at peak; 0 before the explosion."""
    rise = rows["tau_rise"].to_numpy()
    fall = rows["tau_fall"].to_numpy()
    s = np.maximum(mjd - rows["t_explode"].to_numpy(), 0.0)
    s_peak = rise * np.log1p(fall / rise)
    peak = -np.expm1(-s_peak / rise) * np.exp(-s_peak / fall)
    return -np.expm1(-s / rise) * np.exp(-s / fall) / peak


def _band_fluxes(r_mag: np.ndarray, g_r: np.ndarray, r_i: np.ndarray) -> dict[str, np.ndarray]:
    mags = {"g": r_mag + g_r, "r": r_mag, "i": r_mag - r_i}
    return {f"{b}_flux": np.asarray(ab_mag_to_njy(mags[b]), dtype=float) for b in BANDS}


def _draw_variables(
    rng: np.random.Generator, config: SimConfig, area: float, radius: float
) -> pd.DataFrame:
    n = int(rng.poisson(config.variable_density * area))
    ra, dec = uniform_in_cap(rng, n, config.field_ra, config.field_dec, radius)
    r_mag = rng.uniform(*config.variable_mag_range, n)
    g_r = rng.uniform(0.2, 0.8, n)
    rrlyrae = rng.random(n) < 0.4
    lo, hi = np.log(config.variable_period_range_days)
    period = np.where(rrlyrae, rng.uniform(0.3, 0.9, n), np.exp(rng.uniform(lo, hi, n)))
    data = {
        "id": VARIABLE_ID_BASE + np.arange(1, n + 1, dtype=np.int64),
        "kind": np.full(n, "variable"),
        "subtype": np.where(rrlyrae, "rrlyrae", "sinusoid"),
        "ra": ra,
        "dec": dec,
        **_band_fluxes(r_mag, g_r, 0.3 * g_r),
        "amplitude": rng.uniform(*config.variable_amplitude_range, n),
        "period": period,
        "phase_mjd": config.mjd_start - rng.random(n) * period,
        "t_explode": np.full(n, np.nan),
        "tau_rise": np.full(n, np.nan),
        "tau_fall": np.full(n, np.nan),
        "host_id": np.zeros(n, dtype=np.int64),
    }
    return pd.DataFrame(data)


def _draw_transients(
    rng: np.random.Generator,
    config: SimConfig,
    area: float,
    radius: float,
    catalog: pd.DataFrame | None,
) -> pd.DataFrame:
    n = int(rng.poisson(config.transient_density * area))
    ra, dec = uniform_in_cap(rng, n, config.field_ra, config.field_dec, radius)
    host_id = np.zeros(n, dtype=np.int64)
    galaxies = catalog[~catalog["is_star"]] if catalog is not None else None
    hosted = rng.random(n) < config.transient_host_fraction
    if galaxies is not None and len(galaxies) and np.any(hosted):
        pick = rng.integers(0, len(galaxies), int(hosted.sum()))
        host = galaxies.iloc[pick]
        # offset within the host's half-light radius, in a random direction
        offset = rng.random(len(pick)) * host["half_light_radius"].to_numpy() / 3600.0
        angle = rng.random(len(pick)) * 2.0 * math.pi
        host_dec = host["dec"].to_numpy()
        dec[hosted] = host_dec + offset * np.cos(angle)
        ra[hosted] = host["ra"].to_numpy() + offset * np.sin(angle) / np.cos(np.radians(host_dec))
        host_id[hosted] = host["id"].to_numpy()
    new = rng.random(n) < config.transient_new_fraction
    window = config.transient_new_window_visits * config.visit_cadence_s / 86400.0
    t_explode = np.where(
        new,
        config.mjd_start + rng.random(n) * window,
        config.mjd_start - rng.random(n) * config.transient_max_age_days,
    )
    r_peak = rng.uniform(*config.transient_peak_mag_range, n)
    g_r = rng.uniform(-0.2, 0.6, n)
    data = {
        "id": TRANSIENT_ID_BASE + np.arange(1, n + 1, dtype=np.int64),
        "kind": np.full(n, "transient"),
        "subtype": np.full(n, "supernova"),
        "ra": ra % 360.0,
        "dec": dec,
        **_band_fluxes(r_peak, g_r, 0.5 * g_r),
        "amplitude": np.full(n, np.nan),
        "period": np.full(n, np.nan),
        "phase_mjd": np.full(n, np.nan),
        "t_explode": t_explode,
        "tau_rise": rng.uniform(2.0, 8.0, n),
        "tau_fall": rng.uniform(15.0, 50.0, n),
        "host_id": host_id,
    }
    return pd.DataFrame(data)

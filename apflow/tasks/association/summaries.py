"""DiaObject summaries computed from all the DiaSources and DiaForcedSources of each object.

:func:`dia_object_summaries` is a pure function of its input rows (sorted internally), so the same
sources give bit-identical DiaObject rows whatever order they arrive in: that is what lets a rerun
of a visit leave the APDB unchanged. Definitions (Rubin's ``DiaCalculation`` plugins, columns of
``apdb.yaml``; fluxes in nJy):

====================================  ==========================================================
``ra``, ``dec``                       direction of the mean unit vector of the DiaSources
``raErr``, ``decErr``, ``ra_dec_Cov`` error of that mean from the sources' own errors:
                                      ``sqrt(sum(err^2)) / n`` (``sum(cov) / n^2``); NaN if
                                      any source lacks one
``nDiaSources``                       DiaSources of the object
``first/lastDiaSourceMjdTai``         earliest / latest DiaSource midpoint
``validityStartMjdTai``               latest midpoint of any DiaSource or DiaForcedSource
                                      summarised (the row's "as of" time); validityEnd NULL
``<b>_psfFluxMean``, ``MeanErr``      inverse-variance weighted mean of ``psfFlux`` over the
                                      band's DiaSources with finite flux and error > 0, and
                                      ``1 / sqrt(sum(1 / err^2))``
``<b>_psfFluxNdata``                  number of those sources (0 for a band without any)
``<b>_psfFluxSigma``                  sample standard deviation (ddof 1) of finite ``psfFlux``
``<b>_psfFluxMin``, ``Max``           extremes of finite ``psfFlux``
``<b>_psfFluxMaxSlope``               largest ``d psfFlux / d t`` (nJy/d) between time-ordered
                                      consecutive sources (pairs at one time skipped)
``<b>_psfFluxErrMean``                mean of finite ``psfFluxErr``
``<b>_scienceFluxMean``, ``MeanErr``  weighted mean of the DiaSources' ``scienceFlux``
``<b>_fpFluxMean``, ``MeanErr``       weighted mean of the DiaForcedSources' ``psfFlux``
                                      (forced photometry on the difference images)
====================================  ==========================================================

Bands are Rubin's ``u g r i z y``; sources in other bands count for position and
``nDiaSources`` only. Negative fluxes (a source fainter than in the template) and dipoles enter
every statistic as measured: they are the object's variability.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...apdb.schema import empty_frame, table_columns

#: Bands with per-band columns in the APDB DiaObject table.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")


def dia_object_summaries(
    dia_sources: pd.DataFrame, dia_forced_sources: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One current DiaObject row per ``diaObjectId`` of ``dia_sources`` (0 and NA ignored).

    Parameters
    ----------
    dia_sources : pandas.DataFrame
        Every DiaSource of the objects to summarise (APDB DiaSource columns; needs
        ``diaObjectId``, ``diaSourceId``, ``ra``, ``dec``, ``midpointMjdTai``, ``band``,
        ``psfFlux``, ``psfFluxErr``; ``raErr``, ``decErr``, ``ra_dec_Cov``, ``scienceFlux``,
        ``scienceFluxErr`` when present).
    dia_forced_sources : pandas.DataFrame, optional
        Every DiaForcedSource of those objects (rows of other objects are ignored).

    Returns
    -------
    pandas.DataFrame
        Conformed to the APDB DiaObject schema, sorted by ``diaObjectId``.
    """
    src = _sorted(dia_sources, "diaSourceId")
    src = src[src["diaObjectId"].notna() & (src["diaObjectId"] != 0)]
    if src.empty:
        return empty_frame("DiaObject")
    ids, inverse = np.unique(src["diaObjectId"].to_numpy(dtype=np.int64), return_inverse=True)
    groups = _Groups(inverse, ids.size)
    out: dict[str, np.ndarray] = {"diaObjectId": ids}
    out.update(_mean_positions(src, groups))
    out["nDiaSources"] = groups.count.astype(np.int32)
    t = _values(src, "midpointMjdTai")
    out["firstDiaSourceMjdTai"] = groups.min(t)
    out["lastDiaSourceMjdTai"] = groups.max(t)
    latest = out["lastDiaSourceMjdTai"].copy()

    forced = None
    if dia_forced_sources is not None and not dia_forced_sources.empty:
        forced = _sorted(dia_forced_sources, "diaForcedSourceId")
        forced = forced[forced["diaObjectId"].isin(ids)]
        forced_groups = _Groups(np.searchsorted(ids, forced["diaObjectId"].to_numpy()), ids.size)
        latest = np.fmax(latest, forced_groups.max(_values(forced, "midpointMjdTai")))
    out["validityStartMjdTai"] = latest

    band = src["band"].to_numpy(dtype=object)
    forced_band = None if forced is None else forced["band"].to_numpy(dtype=object)
    for b in BANDS:
        in_band = band == b
        in_forced = None if forced_band is None else forced_band == b
        if not in_band.any() and (in_forced is None or not in_forced.any()):
            out[f"{b}_psfFluxNdata"] = np.zeros(ids.size, dtype=np.int32)
            continue  # conform fills the band's other columns with NaN
        out.update(_band_columns(b, src[in_band], groups.subset(in_band), t[in_band]))
        if in_forced is not None:
            fp = forced[in_forced]
            fp_groups = _Groups(np.searchsorted(ids, fp["diaObjectId"].to_numpy()), ids.size)
            mean, err, _ = _weighted_mean(
                fp_groups, _values(fp, "psfFlux"), _values(fp, "psfFluxErr")
            )
            out[f"{b}_fpFluxMean"], out[f"{b}_fpFluxMeanErr"] = mean, err
    return _object_frame(out, ids.size)


def mean_positions(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean-unit-vector ``ra``, ``dec`` (degrees) per ``diaObjectId`` of ``frame``."""
    src = _sorted(frame, "diaSourceId")
    ids, inverse = np.unique(src["diaObjectId"].to_numpy(dtype=np.int64), return_inverse=True)
    pos = _mean_positions(src, _Groups(inverse, ids.size), errors=False)
    return pd.DataFrame(pos, index=pd.Index(ids, name="diaObjectId"))


def _object_frame(columns: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    """The DiaObject frame in schema order and dtypes (what ``conform`` makes, built directly:
    most of the 83 columns are per-band NaN, and filling them one Series at a time is slow)."""
    data = {}
    for spec in table_columns("DiaObject"):
        if spec.name in columns:
            data[spec.name] = np.asarray(columns[spec.name]).astype(spec.dtype)
        elif spec.datatype in ("float", "double"):
            data[spec.name] = np.full(n, np.nan, dtype=spec.dtype)
        else:  # pragma: no cover - every non-float column is computed above
            raise AssertionError(f"DiaObject.{spec.name} is not computed")
    return pd.DataFrame(data)


class _Groups:
    """Per-object reductions of row values, given each row's object index (numpy, no pandas)."""

    def __init__(self, index: np.ndarray, n_groups: int) -> None:
        self.index = np.asarray(index, dtype=np.intp)
        self.n = n_groups
        self.count = np.bincount(self.index, minlength=n_groups)

    def subset(self, rows: np.ndarray) -> _Groups:
        return _Groups(self.index[rows], self.n)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.index, weights=values, minlength=self.n)

    def min(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.n, np.inf)
        np.minimum.at(out, self.index, values)
        return np.where(self.count > 0, out, np.nan)

    def max(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.n, -np.inf)
        np.maximum.at(out, self.index, values)
        return np.where(self.count > 0, out, np.nan)

    def any(self, flags: np.ndarray) -> np.ndarray:
        return np.bincount(self.index, weights=flags.astype(np.float64), minlength=self.n) > 0


def _values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """float64 values of a column (NaN where missing or absent)."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return frame[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _sorted(frame: pd.DataFrame, id_column: str) -> pd.DataFrame:
    # Float sums depend on order: fix it so a summary is a function of the set of rows.
    keys = [c for c in ("diaObjectId", "midpointMjdTai", id_column) if c in frame]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _mean_positions(
    src: pd.DataFrame, groups: _Groups, errors: bool = True
) -> dict[str, np.ndarray]:
    ra = np.radians(_values(src, "ra"))
    dec = np.radians(_values(src, "dec"))
    x = groups.sum(np.cos(dec) * np.cos(ra))
    y = groups.sum(np.cos(dec) * np.sin(ra))
    z = groups.sum(np.sin(dec))
    out = {
        "ra": np.degrees(np.arctan2(y, x)) % 360.0,
        "dec": np.degrees(np.arctan2(z, np.hypot(x, y))),
    }
    if errors:
        n = groups.count.astype(np.float64)
        for column in ("raErr", "decErr"):
            err = _values(src, column)
            missing = groups.any(~np.isfinite(err))
            out[column] = np.where(
                missing, np.nan, np.sqrt(groups.sum(np.nan_to_num(err) ** 2)) / n
            )
        cov = _values(src, "ra_dec_Cov")
        missing = groups.any(~np.isfinite(cov))
        out["ra_dec_Cov"] = np.where(missing, np.nan, groups.sum(np.nan_to_num(cov)) / n**2)
    return out


def _band_columns(
    band: str, rows: pd.DataFrame, groups: _Groups, t: np.ndarray
) -> dict[str, np.ndarray]:
    """The ``<band>_psfFlux*`` and ``<band>_scienceFlux*`` columns of one band's DiaSources."""
    flux, err = _values(rows, "psfFlux"), _values(rows, "psfFluxErr")
    out: dict[str, np.ndarray] = {}
    mean, mean_err, ndata = _weighted_mean(groups, flux, err)
    out[f"{band}_psfFluxMean"], out[f"{band}_psfFluxMeanErr"] = mean, mean_err
    out[f"{band}_psfFluxNdata"] = ndata
    finite = np.isfinite(flux)
    fg = groups.subset(finite)
    f = flux[finite]
    n = fg.count.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        plain_mean = fg.sum(f) / n
        # Two passes (mean, then squared deviations): stable for large fluxes.
        var = fg.sum((f - plain_mean[fg.index]) ** 2) / (n - 1)
    out[f"{band}_psfFluxSigma"] = np.where(n > 1, np.sqrt(var), np.nan)
    out[f"{band}_psfFluxMin"] = fg.min(f)
    out[f"{band}_psfFluxMax"] = fg.max(f)
    out[f"{band}_psfFluxMaxSlope"] = _max_slope(fg, f, t[finite])
    finite_err = np.isfinite(err)
    eg = groups.subset(finite_err)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[f"{band}_psfFluxErrMean"] = np.where(
            eg.count > 0, eg.sum(err[finite_err]) / eg.count, np.nan
        )
    mean, mean_err, _ = _weighted_mean(
        groups, _values(rows, "scienceFlux"), _values(rows, "scienceFluxErr")
    )
    out[f"{band}_scienceFluxMean"], out[f"{band}_scienceFluxMeanErr"] = mean, mean_err
    return out


def _weighted_mean(
    groups: _Groups, flux: np.ndarray, err: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-variance weighted mean, its error and the number of usable rows per object."""
    ok = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    used = groups.subset(ok)
    weight = 1.0 / err[ok] ** 2
    total = used.sum(weight)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = used.sum(weight * flux[ok]) / total
        mean_err = 1.0 / np.sqrt(total)
    empty = used.count == 0
    mean[empty] = mean_err[empty] = np.nan
    return mean, mean_err, used.count.astype(np.int32)


def _max_slope(groups: _Groups, flux: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Largest flux change per day between consecutive (time-ordered) sources of each object."""
    order = np.lexsort((t, groups.index))
    key, t, flux = groups.index[order], t[order], flux[order]
    dt = np.diff(t)
    valid = (key[1:] == key[:-1]) & (dt > 0)
    out = np.full(groups.n, -np.inf)
    np.maximum.at(out, key[1:][valid], np.diff(flux)[valid] / dt[valid])
    return np.where(np.isfinite(out), out, np.nan)

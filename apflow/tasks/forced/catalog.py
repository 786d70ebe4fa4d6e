"""Assembly of the ``forced_src`` table: names, units (nJy) and order of the columns.

See :mod:`apflow.tasks.forced.task` for the list of columns. Measurements are computed for the
sources on the image (rows ``idx``); every column is scattered back to one row per reference
source, with NaN values and set failure flags elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...core import PhotoCalib
from .apertures import ApertureSums
from .background import LocalBackground
from .blends import PsfFit
from .flags import PIXEL_FLAG_PLANES
from .measure import StampMeasurements
from .reference import ReferencePositions

if TYPE_CHECKING:
    from .task import ForcedPhotConfig


def aperture_column(radius: float) -> str:
    """Column stem of an aperture radius: 3 -> ``ap03``, 4.5 -> ``ap04p5``, 70 -> ``ap70``."""
    whole = int(math.floor(radius))
    frac = f"{radius - whole:.4f}".rstrip("0").rstrip(".")
    stem = f"ap{whole:02d}"
    return stem if frac in ("0", "") else f"{stem}p{frac.split('.')[1]}"


def scatter(n: int, idx: np.ndarray, values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
    """Full-length column: ``values`` at rows ``idx``, ``fill`` elsewhere."""
    out = np.full(n, fill, dtype=dtype)
    out[idx] = values
    return out


def _to_njy(cal: PhotoCalib, flux: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    njy, njy_err = cal.instflux_to_njy(flux, err)
    return np.asarray(njy), np.asarray(njy_err)


def aperture_columns(
    sums: ApertureSums, radii: tuple[float, ...], cal: PhotoCalib
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, radius in enumerate(radii):
        stem = aperture_column(radius)
        flux, err = _to_njy(cal, sums.flux[:, k], np.sqrt(sums.variance[:, k]))
        out[f"{stem}Flux"] = flux
        out[f"{stem}FluxErr"] = err
        out[f"{stem}Flux_flag"] = sums.truncated[:, k] | ~np.isfinite(flux)
        out[f"{stem}Flux_flag_apertureTruncated"] = sums.truncated[:, k].copy()
    return out


def psf_columns(
    n: int,
    idx: np.ndarray,
    fit: PsfFit,
    stamps: StampMeasurements,
    cal: PhotoCalib,
    with_background: bool,
) -> dict[str, np.ndarray]:
    """PSF-flux columns (nJy) from the combined single-source and joint fits."""
    sums = stamps.sums
    no_good = (sums.n_pixels == 0) | ~(sums.pp > 0)
    flux_njy, err_njy = _to_njy(cal, fit.flux, fit.flux_err)
    failed = (
        no_good | stamps.psf_edge | fit.too_large | fit.singular | ~np.isfinite(flux_njy)
    )  # fmt: skip
    out = {
        "psfFlux": scatter(n, idx, flux_njy, np.nan, float),
        "psfFluxErr": scatter(n, idx, err_njy, np.nan, float),
        "psfFlux_flag": scatter(n, idx, failed, True, bool),
        "psfFlux_flag_edge": scatter(n, idx, stamps.psf_edge, False, bool),
        "psfFlux_flag_noGoodPixels": scatter(n, idx, no_good, False, bool),
        "psfFlux_flag_blendTooLarge": scatter(n, idx, fit.too_large, False, bool),
        "psfFlux_flag_blendSingular": scatter(n, idx, fit.singular, False, bool),
        "psfFlux_nBlend": scatter(n, idx, fit.n_blend, 0, np.int32),
        "psfFlux_area": scatter(n, idx, sums.area, np.nan, float),
        "psfFlux_npixels": scatter(n, idx, sums.n_pixels, 0, np.int32),
        "psfFlux_chi2": scatter(n, idx, fit.chi2, np.nan, float),
    }
    if with_background:
        background = fit.background * cal.calibration_mean
        out["psfFlux_background"] = scatter(n, idx, background, np.nan, float)
    return out


def empty_psf_columns(n: int) -> dict[str, np.ndarray]:
    """PSF-dependent columns of sources that cannot be measured (off image or no PSF)."""
    nan = np.full(n, np.nan)
    true = np.ones(n, dtype=bool)
    false = np.zeros(n, dtype=bool)
    out: dict[str, np.ndarray] = {
        "psfFlux": nan,
        "psfFluxErr": nan,
        "psfFlux_flag": true,
        "psfFlux_flag_edge": false,
        "psfFlux_flag_noGoodPixels": false,
        "psfFlux_flag_blendTooLarge": false,
        "psfFlux_flag_blendSingular": false,
        "psfFlux_nBlend": np.zeros(n, dtype=np.int32),
        "psfFlux_area": nan,
        "psfFlux_npixels": np.zeros(n, dtype=np.int32),
        "psfFlux_chi2": nan,
        "localBackground_instFlux": nan,
        "localBackground_instFluxErr": nan,
        "localBackground_nPixels": np.zeros(n, dtype=np.int32),
        "localBackground_flag": true,
        "localBackground_flag_noGoodPixels": false,
        "centroid_x": nan,
        "centroid_y": nan,
        "centroid_xErr": nan,
        "centroid_yErr": nan,
        "centroid_flag": true,
        "variance_value": nan,
        "variance_flag": true,
        "variance_flag_emptyFootprint": false,
    }
    for name in PIXEL_FLAG_PLANES:
        out[f"pixelFlags_{name}"] = false
        out[f"pixelFlags_{name}Center"] = false
    return {k: v.copy() for k, v in out.items()}


def stamp_columns(
    n: int,
    idx: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    stamps: StampMeasurements,
    cal: PhotoCalib,
) -> dict[str, np.ndarray]:
    c = stamps.centroid
    xi, yi = np.rint(x), np.rint(y)
    out = {
        "centroid_x": scatter(n, idx, xi + c.dx, np.nan, float),
        "centroid_y": scatter(n, idx, yi + c.dy, np.nan, float),
        "centroid_xErr": scatter(n, idx, c.dx_err, np.nan, float),
        "centroid_yErr": scatter(n, idx, c.dy_err, np.nan, float),
        "centroid_flag": scatter(n, idx, c.flag, True, bool),
        "variance_value": scatter(
            n, idx, stamps.variance_value * cal.calibration_mean**2, np.nan, float
        ),
        "variance_flag": scatter(n, idx, stamps.variance_empty, True, bool),
        "variance_flag_emptyFootprint": scatter(n, idx, stamps.variance_empty, False, bool),
    }
    for name, value in stamps.flags.items():
        out[f"pixelFlags_{name}"] = scatter(n, idx, value, False, bool)
    return out


def background_columns(
    n: int, idx: np.ndarray, bg: LocalBackground, cal: PhotoCalib
) -> dict[str, np.ndarray]:
    empty = bg.n_pixels == 0
    return {
        "localBackground_instFlux": scatter(n, idx, bg.mean * cal.calibration_mean, np.nan, float),
        "localBackground_instFluxErr": scatter(
            n, idx, bg.std * cal.calibration_mean, np.nan, float
        ),
        "localBackground_nPixels": scatter(n, idx, bg.n_pixels, 0, np.int32),
        "localBackground_flag": scatter(n, idx, empty | ~np.isfinite(bg.mean), True, bool),
        "localBackground_flag_noGoodPixels": scatter(n, idx, empty, False, bool),
    }


def assemble(
    columns: dict[str, np.ndarray],
    ref: ReferencePositions,
    band: str,
    data_id: Mapping[str, Any] | None,
    cfg: ForcedPhotConfig,
) -> pd.DataFrame:
    """The ``forced_src`` table, columns in the documented order."""
    n = ref.ids.size
    on_image = columns.pop("on_image")
    head: dict[str, Any] = {
        "id": ref.ids,
        "coord_ra": ref.ra,
        "coord_dec": ref.dec,
        "band": np.full(n, band, dtype=object),
    }
    for key in ("tract", "patch"):
        if data_id and key in data_id:
            head[key] = np.full(n, data_id[key])
    head.update({"x": ref.x, "y": ref.y, "coord_flag": ref.bad_coord})
    if ref.shape is not None:
        head["shape_xx"] = ref.shape[:, 0]
        head["shape_yy"] = ref.shape[:, 1]
        head["shape_xy"] = ref.shape[:, 2]
        head["shape_flag"] = ~np.all(np.isfinite(ref.shape), axis=1)
    order = [
        "psfFlux",
        "psfFluxErr",
        "psfFlux_flag",
        "psfFlux_flag_edge",
        "psfFlux_flag_noGoodPixels",
        "psfFlux_flag_blendTooLarge",
        "psfFlux_flag_blendSingular",
        "psfFlux_nBlend",
        "psfFlux_area",
        "psfFlux_npixels",
        "psfFlux_chi2",
        *(["psfFlux_background"] if "psfFlux_background" in columns else []),
        "invalidPsfFlag",
    ]
    for radius in cfg.aperture_radii:
        stem = aperture_column(radius)
        order += [f"{stem}Flux", f"{stem}FluxErr", f"{stem}Flux_flag"]
        order += [f"{stem}Flux_flag_apertureTruncated"]
    order += [
        "localBackground_instFlux",
        "localBackground_instFluxErr",
        "localBackground_nPixels",
        "localBackground_flag",
        "localBackground_flag_noGoodPixels",
        "localBackground_flag_noPsf",
        "centroid_x",
        "centroid_y",
        "centroid_xErr",
        "centroid_yErr",
        "centroid_flag",
    ]
    columns["localBackground_flag_noPsf"] = columns["invalidPsfFlag"].copy()
    body = {k: columns[k] for k in order}
    body["pixelFlags_offimage"] = ~on_image
    for name in PIXEL_FLAG_PLANES:
        body[f"pixelFlags_{name}"] = columns[f"pixelFlags_{name}"]
    for name in PIXEL_FLAG_PLANES:
        body[f"pixelFlags_{name}Center"] = columns[f"pixelFlags_{name}Center"]
    for key in (
        "inputCount",
        "inputCount_flag",
        "inputCount_flag_noInputs",
        "variance_value",
        "variance_flag",
        "variance_flag_emptyFootprint",
    ):
        body[key] = columns[key]
    return pd.DataFrame({**head, **body})

"""FITS import and export of exposures.

Reading accepts two layouts:

- **multi-extension**, as Rubin writes exposures: HDUs named ``IMAGE``, ``MASK`` and ``VARIANCE``
  (``EXTNAME``), observation keywords in the primary header, the WCS in each image header, mask
  plane bits as ``MP_<PLANE>`` cards (bit index) in the ``MASK`` header;
- **single image**: the first HDU with 2-D data; mask zero, variance unknown (NaN).

The WCS (TAN, TAN-SIP) is read with astropy from the image HDU's header. Observation fields come
from header keywords through a mapping *field -> keyword* (or a list of keywords, first found
wins) that the caller can override; :data:`DEFAULT_HEADER_MAP` lists the defaults. Keywords are
looked up in the image HDU's header, then in the primary header.

The epoch is the exposure midpoint in TAI: ``MJD-AVG`` when present (a midpoint), otherwise
``MJD-OBS`` (a start) plus half the exposure time; the time scale is taken from ``TIMESYS``
(UTC when absent, as the FITS standard says) and converted to TAI with astropy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from ..core import Exposure, MaskPlanes, PhotoCalib, VisitInfo, psf_from_dict, psf_to_dict
from ..errors import ApflowError, IngestError
from . import strict_json
from .exposure_zarr import wcs_to_header

#: Default header keywords of each observation field (first one present wins).
DEFAULT_HEADER_MAP: dict[str, tuple[str, ...]] = {
    "visit": ("VISIT", "EXPID", "EXPNUM"),
    "detector": ("DETECTOR", "CCDNUM"),
    "band": ("BAND", "FILTBAND", "FILTER"),
    "physical_filter": ("PHYSFILT", "FILTER"),
    "mjd": ("MJD-AVG",),
    "mjd_start": ("MJD-OBS",),
    "exposure_time": ("EXPTIME", "EXPOSURE"),
    "boresight_ra": ("RA", "RA_DEG"),
    "boresight_dec": ("DEC", "DEC_DEG"),
    "rotation_angle": ("ROTPA", "ROTANG"),
    "airmass": ("AIRMASS", "AMSTART"),
}
# Fields without which an exposure cannot be placed in a repository or calibrated.
REQUIRED_FIELDS = ("visit", "detector", "band", "exposure_time")
# JSON-valued cards apflow adds when exporting, so that an export re-imports completely.
_JSON_CARDS = {"psf": "APFPSF", "photo_calib": "APFCALIB", "metadata": "APFMETA"}
# Cards that describe the file rather than the observation; not copied into metadata.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "COMMENT", "HISTORY", ""}


def read_exposure_fits(
    path: str | os.PathLike, header_map: Mapping[str, str | Sequence[str]] | None = None
) -> tuple[Exposure, dict[str, Any]]:
    """Read an exposure and its observation fields from a FITS file.

    Parameters
    ----------
    path : str or path-like
        FITS file (single image or IMAGE/MASK/VARIANCE extensions).
    header_map : dict, optional
        Overrides of :data:`DEFAULT_HEADER_MAP`: field -> keyword or list of keywords. A field
        that is not an observation field (e.g. ``tract``) names an extra data id value to read.

    Returns
    -------
    exposure : Exposure
    fields : dict
        ``visit``, ``detector``, ``band``, ``physical_filter``, ``mjd`` (TAI midpoint),
        ``exposure_time`` and any extra mapped fields; usable as (a superset of) a data id.

    Raises
    ------
    IngestError
        Naming the file, and the keyword when one is missing.
    """
    name = str(path)
    mapping = _merged_map(header_map, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            # memory-mapped: each plane is then read once, by the byte-swapping copy below
            with fits.open(name, memmap=True) as hdul:
                return _read_hdul(hdul, name, mapping)
    except IngestError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise IngestError(f"{name}: cannot read FITS: {type(exc).__name__}: {exc}") from exc


def write_exposure_fits(
    exposure: Exposure, path: str | os.PathLike, overwrite: bool = False
) -> None:
    """Write an exposure as multi-extension FITS (primary + IMAGE, MASK, VARIANCE).

    The WCS is written to each image extension at full precision; visit info goes to the primary
    header under the keywords of :data:`DEFAULT_HEADER_MAP`, and PSF, photometric calibration and
    metadata as JSON strings (``APFPSF``, ``APFCALIB``, ``APFMETA``), so that
    :func:`read_exposure_fits` restores the exposure.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite=True)")
    primary = fits.PrimaryHDU()
    header = primary.header
    vi = exposure.visit_info
    if vi is not None:
        header["VISIT"] = vi.visit
        header["BAND"] = vi.band
        header["FILTER"] = vi.physical_filter or vi.band
        header["TIMESYS"] = "TAI"
        for key, value, comment in (
            ("MJD-AVG", vi.mjd, "[d] exposure midpoint (TAI)"),
            ("EXPTIME", vi.exposure_time, "[s] exposure time"),
            ("RA", vi.boresight_ra, "[deg] boresight"),
            ("DEC", vi.boresight_dec, "[deg] boresight"),
            ("ROTPA", vi.rotation_angle, "[deg] rotation angle"),
            ("AIRMASS", vi.airmass, ""),
        ):
            if np.isfinite(value):  # FITS has no NaN header values: absent means unknown
                header[key] = (float(value), comment)
    if exposure.detector is not None:
        header["DETECTOR"] = exposure.detector
    for attr, key in _JSON_CARDS.items():
        value = getattr(exposure, attr)
        if value:
            if attr == "metadata":
                data = value
            else:
                data = psf_to_dict(value) if attr == "psf" else value.to_dict()
            header[key] = strict_json.dumps(data).decode().replace("\n", "")
    wcs_header = wcs_to_header(exposure.wcs) if exposure.wcs is not None else fits.Header()
    hdus = [primary]
    for extname, data in (
        ("IMAGE", exposure.image),
        ("MASK", exposure.mask),
        ("VARIANCE", exposure.variance),
    ):
        hdu = fits.ImageHDU(data=data, header=wcs_header.copy(), name=extname)
        hdu.header["EXTTYPE"] = extname
        if extname == "MASK":
            for plane, bit in MaskPlanes.to_dict().items():
                hdu.header[f"HIERARCH MP_{plane}"] = int(bit).bit_length() - 1
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)


def ingest_fits(
    repo: Any,
    paths: Iterable[str | os.PathLike],
    dataset_type: str = "post_isr",
    header_map: Mapping[str, str | Sequence[str]] | None = None,
    overwrite: bool = False,
    check_shape: bool = True,
) -> list[dict[str, Any]]:
    """Ingest FITS files into a repository as exposures.

    Every file's header is checked first (keywords, data ids, duplicates, existing datasets), so
    a bad file is reported before anything is written. Each dataset is then written atomically:
    a file that fails while its pixels are read leaves no dataset behind.

    Parameters
    ----------
    repo : Repository
    paths : iterable of path
    dataset_type : str
        An ``exposure`` dataset type (default ``post_isr``).
    header_map : dict, optional
        See :func:`read_exposure_fits`.
    overwrite : bool
        Replace datasets that exist.
    check_shape : bool
        Require each image to have its detector's size in the repository's camera (a sub-image
        or a file of another camera is refused); turn off for cut-outs made on purpose.

    Returns
    -------
    list of dict
        Data ids written, in the order of ``paths``.

    Raises
    ------
    IngestError
        Naming the file that could not be ingested.
    """
    dtype = repo.dataset_type(dataset_type)
    if dtype.storage != "exposure":
        raise IngestError(f"{dataset_type} stores {dtype.storage!r}, not exposures")
    names = [str(p) for p in paths]
    planned: dict[tuple, str] = {}
    data_ids = []
    for name in names:
        fields = _header_fields(name, header_map)
        data_id = _data_id_for(repo, dtype, fields, name)
        shape = fields.pop("_shape", None)
        if check_shape:
            _check_shape(repo, data_id, shape, name)
        key = tuple(data_id.items())
        if key in planned:
            raise IngestError(f"{name}: same data id {data_id} as {planned[key]}")
        planned[key] = name
        if not overwrite and repo.exists(dataset_type, **data_id):
            raise IngestError(f"{name}: {dataset_type} {data_id} exists (use overwrite)")
        data_ids.append(data_id)
    for name, data_id in zip(names, data_ids, strict=True):
        exposure, _ = read_exposure_fits(name, header_map)
        exposure.detector = data_id.get("detector", exposure.detector)
        provenance = {"ingested_from": os.path.abspath(name)}
        try:
            repo.put(exposure, dataset_type, overwrite=overwrite, provenance=provenance, **data_id)
        except (ApflowError, OSError) as exc:
            raise IngestError(f"{name}: {exc}") from exc
    return data_ids


# --- helpers --------------------------------------------------------------------------------


def _merged_map(
    header_map: Mapping[str, str | Sequence[str]] | None, name: str
) -> dict[str, tuple[str, ...]]:
    mapping = dict(DEFAULT_HEADER_MAP)
    for field, keywords in (header_map or {}).items():
        keys = (keywords,) if isinstance(keywords, str) else tuple(keywords)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise IngestError(
                f"{name}: header map entry {field!r} -> {keywords!r} is not a keyword"
            )
        mapping[field] = tuple(k.upper() for k in keys)
        if field == "mjd":  # an explicit midpoint keyword replaces the start-time fallback
            mapping["mjd_start"] = ()
    return mapping


def _header_fields(name: str, header_map: Mapping[str, Any] | None) -> dict[str, Any]:
    """Observation fields from the headers only (no pixels read)."""
    mapping = _merged_map(header_map, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            with fits.open(name) as hdul:
                image_hdu = _image_hdu(hdul, name)
                fields = _fields(hdul[0].header, image_hdu.header, name, mapping)
                fields["_shape"] = (image_hdu.header.get("NAXIS2"), image_hdu.header.get("NAXIS1"))
                return fields
    except IngestError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise IngestError(f"{name}: cannot read FITS: {type(exc).__name__}: {exc}") from exc


def _check_shape(repo: Any, data_id: dict[str, Any], shape: Any, name: str) -> None:
    """A CCD image must have its detector's size: a wrong file would break every later stage."""
    if "detector" not in data_id or shape is None or None in shape:
        return
    camera = repo.camera
    if isinstance(camera, str):
        from ..core import get_camera

        camera = get_camera(camera)
    try:
        detector = camera[data_id["detector"]]
    except (KeyError, IndexError):
        raise IngestError(
            f"{name}: detector {data_id['detector']} is not in camera {camera.name}"
        ) from None
    if tuple(shape) != tuple(detector.shape):
        raise IngestError(
            f"{name}: image is {shape[1]} x {shape[0]} pixels but detector {detector.id} "
            f"({detector.name}) of camera {camera.name} is {detector.width} x {detector.height}"
        )


def _data_id_for(repo: Any, dtype: Any, fields: dict[str, Any], name: str) -> dict[str, Any]:
    data_id = {}
    for dim in dtype.dimensions:
        if dim not in fields:
            raise IngestError(
                f"{name}: no value for data id key {dim!r} of {dtype.name}; map it to a header "
                f"keyword (header_map={{{dim!r}: 'KEYWORD'}})"
            )
        value = fields[dim]
        if dim == "detector" and isinstance(value, str) and not value.lstrip("-").isdigit():
            by_name = {d.name: d.id for d in repo.camera}
            if value not in by_name:
                raise IngestError(f"{name}: detector {value!r} is not in camera {repo.camera.name}")
            value = by_name[value]
        data_id[dim] = value
    try:
        return dtype.validate_data_id(data_id)
    except ValueError as exc:
        raise IngestError(f"{name}: {exc}") from exc


def _image_hdu(hdul: fits.HDUList, name: str) -> Any:
    if "IMAGE" in hdul:
        return hdul["IMAGE"]
    for hdu in hdul:
        if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
            return hdu
    raise IngestError(f"{name}: no 2-D image HDU (and no IMAGE extension)")


def _read_hdul(
    hdul: fits.HDUList, name: str, mapping: dict[str, tuple[str, ...]]
) -> tuple[Exposure, dict[str, Any]]:
    image_hdu = _image_hdu(hdul, name)
    primary = hdul[0].header
    fields = _fields(primary, image_hdu.header, name, mapping)
    # astype copies, so nothing refers to the memory map once the file is closed
    image = image_hdu.data.astype(np.float32)
    mask = variance = None
    if "MASK" in hdul:
        mask = _remap_fits_mask(hdul["MASK"].data, hdul["MASK"].header)
    if "VARIANCE" in hdul:
        variance = hdul["VARIANCE"].data.astype(np.float32)
    wcs = WCS(image_hdu.header, naxis=2) if "CTYPE1" in image_hdu.header else None
    extras = {}
    for attr, key in _JSON_CARDS.items():
        text = primary.get(key)
        if text:
            extras[attr] = strict_json.loads(text)
    metadata = extras.get("metadata") or {
        "fits_file": os.path.basename(name),
        "fits_header": _plain_cards(primary),
    }
    exposure = Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=wcs,
        psf=psf_from_dict(extras["psf"]) if "psf" in extras else None,
        photo_calib=PhotoCalib.from_dict(extras["photo_calib"])
        if "photo_calib" in extras
        else None,
        visit_info=VisitInfo(
            visit=int(fields["visit"]),
            band=str(fields["band"]),
            physical_filter=str(fields["physical_filter"]),
            mjd=fields["mjd"],
            exposure_time=fields["exposure_time"],
            boresight_ra=fields.get("boresight_ra", float("nan")),
            boresight_dec=fields.get("boresight_dec", float("nan")),
            rotation_angle=fields.get("rotation_angle", 0.0),
            airmass=fields.get("airmass", float("nan")),
        ),
        detector=fields["detector"] if isinstance(fields["detector"], int) else None,
        metadata=metadata,
    )
    return exposure, fields


def _lookup(headers: Sequence[fits.Header], keywords: Sequence[str]) -> tuple[str, Any] | None:
    for keyword in keywords:
        for header in headers:
            if keyword in header and header[keyword] is not None:
                value = header[keyword]
                if not isinstance(value, fits.card.Undefined):
                    return keyword, value
    return None


def _fields(
    primary: fits.Header, image: fits.Header, name: str, mapping: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    headers = [image, primary]
    fields: dict[str, Any] = {}
    for field in REQUIRED_FIELDS:
        found = _lookup(headers, mapping[field])
        if found is None:
            raise IngestError(
                f"{name}: missing header keyword {' or '.join(mapping[field])} (for {field}; "
                f"set header_map={{{field!r}: 'KEYWORD'}} to use another keyword)"
            )
        fields[field] = found[1]
    for field in ("visit", "detector"):
        value = fields[field]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        fields[field] = value.strip() if isinstance(value, str) else value
    fields["visit"] = _as_int(fields["visit"], "visit", name)
    if isinstance(fields["detector"], str) and fields["detector"].lstrip("-").isdigit():
        fields["detector"] = int(fields["detector"])
    fields["band"] = str(fields["band"]).strip()
    fields["exposure_time"] = _as_float(fields["exposure_time"], "exposure_time", name)
    physical = _lookup(headers, mapping["physical_filter"])
    fields["physical_filter"] = str(physical[1]).strip() if physical else fields["band"]
    fields["mjd"] = _midpoint_tai(headers, mapping, fields["exposure_time"], name)
    for field in ("boresight_ra", "boresight_dec", "rotation_angle", "airmass"):
        found = _lookup(headers, mapping[field])
        if found is not None and isinstance(found[1], (int, float)):
            fields[field] = float(found[1])
    for field, keywords in mapping.items():  # extra data id values (tract, patch, snap, ...)
        if field not in DEFAULT_HEADER_MAP:
            found = _lookup(headers, keywords)
            if found is None:
                raise IngestError(f"{name}: missing header keyword {' or '.join(keywords)}")
            fields[field] = found[1]
    return fields


def _midpoint_tai(
    headers: Sequence[fits.Header],
    mapping: dict[str, tuple[str, ...]],
    exposure_time: float,
    name: str,
) -> float:
    found = _lookup(headers, mapping["mjd"])
    offset_days = 0.0
    if found is None:
        found = _lookup(headers, mapping["mjd_start"])
        offset_days = exposure_time / 2.0 / 86400.0
    if found is None:
        keywords = (*mapping["mjd"], *mapping["mjd_start"])
        raise IngestError(f"{name}: missing header keyword {' or '.join(keywords)} (for mjd)")
    mjd = _as_float(found[1], "mjd", name) + offset_days
    timesys = _lookup(headers, ("TIMESYS",))
    scale = str(timesys[1]).strip().lower() if timesys else "utc"
    try:
        return float(Time(mjd, format="mjd", scale=scale).tai.mjd)
    except ValueError as exc:
        raise IngestError(f"{name}: TIMESYS {scale!r} is not a time scale astropy knows") from exc


def _as_int(value: Any, field: str, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise IngestError(f"{name}: {field} {value!r} is not an integer") from None


def _as_float(value: Any, field: str, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise IngestError(f"{name}: {field} {value!r} is not a number") from None


def _remap_fits_mask(mask: np.ndarray, header: fits.Header) -> np.ndarray:
    """Map a file's mask bits (``MP_<PLANE>`` = bit index) onto :class:`MaskPlanes`."""
    mask = mask.astype(np.int32)  # native byte order, a copy (not a view of the memory map)
    planes = {k[3:]: int(v) for k, v in header.items() if k.startswith("MP_")}
    current = MaskPlanes.to_dict()
    if not planes:
        return mask
    # planes apflow has no name for are dropped rather than left on a bit that means another
    # plane here
    unknown = sum(1 << bit for plane, bit in planes.items() if plane not in current)
    if all(current[p] == 1 << bit for p, bit in planes.items() if p in current):
        # the usual case (files apflow wrote, or the same layout): one pass, not one per plane
        keep = np.uint32(~unknown & 0xFFFFFFFF).view(np.int32)
        return mask & keep if unknown else mask
    out = np.zeros(mask.shape, dtype=np.int32)
    for plane, bit in planes.items():
        if plane in current:
            out |= ((mask >> bit) & 1) * np.int32(current[plane])
    return out


def _plain_cards(header: fits.Header) -> dict[str, Any]:
    out = {}
    for key, value in header.items():
        if key in _STRUCTURAL or key in _JSON_CARDS.values():
            continue
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out

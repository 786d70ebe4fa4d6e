"""Exposures and array bundles as Zarr v3 groups.

An exposure is one group with three arrays, ``image`` (float32), ``mask`` (int32) and
``variance`` (float32), chunked in about 1024 x 1024 pixel tiles (the edge tiles of a 4004-row
CCD would otherwise be 932 rows; sizes are split evenly instead), compressed losslessly with
:data:`PIXEL_COMPRESSOR`, and every chunk written even when it equals the fill value
(``write_empty_chunks=True``), so that a missing chunk always means damage. The group's
attributes hold everything else as strict JSON (:mod:`apflow.io.strict_json`):

``apflow``        ``{"format": "exposure", "format_version": 1, "apflow_version": ...}``
``wcs``           FITS header cards ``[[keyword, value, comment], ...]`` from
                  ``WCS.to_header(relax=True)`` at 17 significant digits (SIP included), or null
``psf``           ``Psf.to_dict()`` or null
``photo_calib``   ``PhotoCalib.to_dict()`` or null
``visit_info``    ``VisitInfo.to_dict()`` or null
``detector``      detector id or null
``metadata``      the exposure's metadata dict
``mask_planes``   ``MaskPlanes.to_dict()`` at writing time (bits are remapped on reading if the
                  plane definitions have changed since)
``provenance``    what the writer recorded

Codec choice (``benchmarks/io.py``, figures in ``benchmarks/RESULTS.md``): Blosc with LZ4 at
level 5 and byte shuffle. On a simulated 4096 x 4096 CCD every Blosc/Zstd setting stores the
three planes in 0.23-0.29 of the FITS size (0.44-0.54 for a flat-fielded, all-noise worst case),
because the noise bits of float32 pixels are incompressible whatever the codec; what differs is
CPU. LZ4 decodes and encodes 2-3x faster than zstd for 3-4 % more bytes, and Blosc-zstd above
level 1 buys at most 11 % in size for 1.5-3x the write time. On a warm page cache reading is
bound by decompression and copying, so LZ4 brings Zarr closest to an uncompressed, memory-mapped
FITS read (about 1.2x its time; Zarr moves 3.7x fewer bytes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from zarr.codecs import BloscCodec
from zarr.storage import WrapperStore

from .. import __version__
from ..core import Exposure, MaskPlanes, PhotoCalib, VisitInfo, psf_from_dict
from .strict_json import from_jsonable, to_jsonable

#: Lossless compressor of every pixel array (chosen from benchmarks/io.py, see module docstring).
PIXEL_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
#: Target chunk side in pixels.
CHUNK_SIDE = 1024
#: Largest chunk of a 1-D array, in elements.
CHUNK_1D = 1 << 20

FORMAT_VERSION = 1
EXPOSURE_PLANES = ("image", "mask", "variance")


class MissingChunkError(KeyError):
    """A chunk that must exist (every chunk is written) is missing from the store."""


class StrictStore(WrapperStore):
    """A read-only store that raises instead of returning nothing for a missing chunk.

    zarr fills missing chunks with the fill value. Because apflow writes every chunk, a missing
    one means the dataset was damaged or is being replaced under the reader, and silently
    reading zeros would hide that.
    """

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        value = await self._store.get(key, prototype, byte_range)
        if value is None and "/c/" in f"/{key}":
            raise MissingChunkError(f"chunk {key!r} is missing")
        return value


@dataclass
class ArrayBundle(Mapping):
    """Named numpy arrays with JSON attributes: the Python type of the ``arrays`` storage class.

    It behaves as a read-only ``dict`` of arrays (``bundle["model"]``, ``bundle.keys()``), so
    code that stored a plain ``dict[str, numpy.ndarray]`` can use what it reads back unchanged.

    Parameters
    ----------
    arrays : dict of str to numpy.ndarray
        Numeric or boolean arrays of any shape; names of letters, digits, ``_``, ``.``, ``-``.
    attrs : dict
        JSON-serialisable attributes (NaN allowed).
    """

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def chunk_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of about ``CHUNK_SIDE`` along the last two axes, 1 along leading axes.

    Axes are split into equal parts (4004 rows -> 4 chunks of 1001) rather than into
    ``CHUNK_SIDE`` plus a thin remainder.
    """
    if len(shape) == 0:
        return ()
    if len(shape) == 1:
        return (max(1, min(shape[0], CHUNK_1D)),)

    def split(n: int) -> int:
        return max(1, math.ceil(n / max(1, math.ceil(n / CHUNK_SIDE))))

    return (*(1 for _ in shape[:-2]), split(shape[-2]), split(shape[-1]))


def wcs_to_cards(wcs: WCS) -> list[list[Any]]:
    """WCS as FITS header cards at full double precision (SIP included).

    ``WCS.to_header(relax=True)`` rounds to 14 significant digits, which moves a position by up
    to ~1e-12 deg; asking wcslib for 17 digits makes the round trip exact.
    """
    return [[card.keyword, card.value, card.comment] for card in wcs_to_header(wcs).cards]


def wcs_to_header(wcs: WCS) -> fits.Header:
    """``wcs.to_header(relax=True)`` with 17 significant digits."""
    try:
        from astropy.wcs import WCSHDO_P17, WCSHDO_all
        from astropy.wcs.wcs import WCSHDO_SIP

        return wcs.to_header(relax=WCSHDO_all | WCSHDO_P17 | WCSHDO_SIP)
    except ImportError:  # an astropy without the precision flags: 14 digits is still < 1e-10 deg
        return wcs.to_header(relax=True)


def cards_to_wcs(cards: list[list[Any]]) -> WCS:
    """Inverse of :func:`wcs_to_cards`."""
    header = fits.Header([tuple(card) for card in cards])
    with warnings.catch_warnings():
        # wcslib "fixes" (MJDREF, DATE-OBS) are informational for a header it wrote itself
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def _create_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    array = group.create_array(
        name,
        shape=data.shape,
        chunks=chunk_shape(data.shape),
        dtype=data.dtype,
        compressors=[PIXEL_COMPRESSOR] if PIXEL_COMPRESSOR is not None else None,
        fill_value=0,
        config={"write_empty_chunks": True},
    )
    array[...] = data


def write_exposure(store: Any, exposure: Exposure, provenance: Mapping[str, Any] | None) -> None:
    """Write an exposure as a new Zarr group in ``store`` (which must be empty)."""
    attrs = {
        "apflow": {
            "format": "exposure",
            "format_version": FORMAT_VERSION,
            "apflow_version": __version__,
        },
        "wcs": wcs_to_cards(exposure.wcs) if exposure.wcs is not None else None,
        "psf": exposure.psf.to_dict() if exposure.psf is not None else None,
        "photo_calib": exposure.photo_calib.to_dict() if exposure.photo_calib else None,
        "visit_info": exposure.visit_info.to_dict() if exposure.visit_info else None,
        "detector": exposure.detector,
        "metadata": exposure.metadata,
        "mask_planes": MaskPlanes.to_dict(),
        "provenance": dict(provenance or {}),
    }
    group = zarr.create_group(store, zarr_format=3, attributes=to_jsonable(attrs))
    for name in EXPOSURE_PLANES:
        _create_array(group, name, getattr(exposure, name))


def read_exposure(store: Any) -> Exposure:
    """Read an exposure written by :func:`write_exposure`."""
    group = zarr.open_group(store, mode="r", zarr_format=3)
    attrs = _checked_attrs(group, "exposure")
    planes = {name: _read_array(group, name) for name in EXPOSURE_PLANES}
    mask = _remap_mask(planes["mask"], attrs.get("mask_planes") or MaskPlanes.to_dict())
    return Exposure(
        image=planes["image"],
        mask=mask,
        variance=planes["variance"],
        wcs=cards_to_wcs(attrs["wcs"]) if attrs.get("wcs") else None,
        psf=psf_from_dict(attrs["psf"]) if attrs.get("psf") else None,
        photo_calib=PhotoCalib.from_dict(attrs["photo_calib"])
        if attrs.get("photo_calib")
        else None,
        visit_info=VisitInfo.from_dict(attrs["visit_info"]) if attrs.get("visit_info") else None,
        detector=attrs.get("detector"),
        metadata=attrs.get("metadata") or {},
    )


def write_arrays(store: Any, bundle: ArrayBundle, provenance: Mapping[str, Any] | None) -> None:
    """Write an :class:`ArrayBundle` as a new Zarr group in ``store``."""
    attrs = {
        "apflow": {
            "format": "arrays",
            "format_version": FORMAT_VERSION,
            "apflow_version": __version__,
        },
        # zarr lists members alphabetically; keep the writer's order
        "arrays": list(bundle.arrays),
        "attrs": bundle.attrs,
        "provenance": dict(provenance or {}),
    }
    group = zarr.create_group(store, zarr_format=3, attributes=to_jsonable(attrs))
    for name, data in bundle.arrays.items():
        _create_array(group, name, data)


def read_arrays(store: Any) -> ArrayBundle:
    """Read an :class:`ArrayBundle` written by :func:`write_arrays`."""
    group = zarr.open_group(store, mode="r", zarr_format=3)
    attrs = _checked_attrs(group, "arrays")
    return ArrayBundle(
        arrays={name: _read_array(group, name) for name in attrs["arrays"]},
        attrs=attrs.get("attrs") or {},
    )


def _read_array(group: zarr.Group, name: str) -> np.ndarray:
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise ValueError(f"member {name!r} is not an array")
    return np.asarray(array[...])


def _checked_attrs(group: zarr.Group, expected: str) -> dict[str, Any]:
    attrs = from_jsonable(dict(group.attrs))
    found = (attrs.get("apflow") or {}).get("format")
    if found != expected:
        raise ValueError(f"Zarr group holds {found or 'no apflow data'!r}, expected {expected!r}")
    return attrs


def _remap_mask(mask: np.ndarray, stored_planes: Mapping[str, int]) -> np.ndarray:
    current = MaskPlanes.to_dict()
    if dict(stored_planes) == current:
        return mask
    # Plane bits changed since writing: move each known plane to its current bit. Planes that no
    # longer exist are dropped rather than left on a bit that now means something else.
    out = np.zeros_like(mask)
    for name, bit in stored_planes.items():
        if name in current:
            out |= np.where((mask & int(bit)) != 0, current[name], 0).astype(mask.dtype)
    return out

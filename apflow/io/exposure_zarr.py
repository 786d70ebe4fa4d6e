"""Exposures and array bundles as Zarr v3 groups.

An exposure is one group with three arrays, ``image`` (float32), ``mask`` (int32) and
``variance`` (float32), chunked in full-width strips of about 1024 x 1024 pixels (256 rows of a
4096-wide CCD; rows split evenly, see :func:`chunk_shape`), compressed losslessly with
:data:`PIXEL_COMPRESSOR` (:data:`MASK_COMPRESSOR` for the mask), and every chunk written even
when it equals the fill value (``write_empty_chunks=True``), so that a missing chunk always
means damage. The group's attributes hold everything else as strict JSON
(:mod:`apflow.io.strict_json`):

``apflow``        ``{"format": "exposure", "format_version": 1, "apflow_version": ...}``
``wcs``           FITS header cards ``[[keyword, value, comment], ...]`` from
                  ``WCS.to_header(relax=True)`` at 17 significant digits (SIP included), or null
``sky_corners``   ``[[ra, dec], ...]`` (degrees) of the four outer pixel corners through the WCS
                  (:func:`apflow.core.region.pixel_corners_radec`), or null: planning places an
                  exposure on the sky from this alone (:func:`read_exposure_header`), since
                  building an astropy WCS costs milliseconds per exposure; older groups lack it
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
level 1 buys at most 11 % in size for 1.5-3x the write time.

Reading (:func:`_read_planes`) bypasses zarr's codec pipeline for arrays in this layout: all
chunks of the three planes are read at once (local chunk files memory-mapped), and each is
Blosc-decoded on a thread (Blosc releases the GIL) straight into its strip of the output array.
zarr 3.1 decodes every chunk into a scratch buffer, copies it into the output, and reads one
array after another, which made Zarr reads 1.2-2x slower than a memory-mapped FITS read; the
direct path does the same work as a FITS read (allocate, then write every output byte once) on
3.7x fewer input bytes plus the LZ4 decoding, and reads at par with FITS or faster.
"""

from __future__ import annotations

import asyncio
import functools
import math
import mmap
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from numcodecs import blosc
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.sync import sync
from zarr.storage import LocalStore, WrapperStore

from .. import __version__
from ..core import Exposure, MaskPlanes, PhotoCalib, VisitInfo, psf_from_dict, psf_to_dict
from ..core.region import pixel_corners_radec
from . import strict_json
from .strict_json import from_jsonable, to_jsonable

#: Lossless compressor of every pixel array (chosen from benchmarks/io.py, see module docstring).
PIXEL_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
#: Lossless compressor of integer arrays named ``mask`` (bit planes): mostly runs of equal
#: values, which LZ4 packs as well without the byte shuffle (0.54 vs 0.51 MiB on a simulated
#: 4k x 4k CCD) and then decodes 3x faster (3.5 vs 10 ms per 64 MiB plane, one core).
MASK_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
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
    """Chunks of about ``CHUNK_SIDE**2`` elements: full-width strips of the last two axes.

    A chunk spans whole rows (4096 x 4096 -> 16 strips of 256 x 4096), so that it is one
    contiguous block of the C-ordered array and is decompressed straight into the output on
    reading (:func:`_read_planes`), with no intermediate copy. The rows are split evenly
    (4004 rows of 4004 -> 16 strips of 251 rows, the last 239, rather than 15 of 261 and a thin
    remainder).
    Rows wider than ``CHUNK_SIDE**2`` fall back to tiles of about ``CHUNK_SIDE``. Leading axes
    get chunks of 1.
    """
    if len(shape) == 0:
        return ()
    if len(shape) == 1:
        return (max(1, min(shape[0], CHUNK_1D)),)

    def split(n: int, target: int) -> int:
        return max(1, math.ceil(n / max(1, math.ceil(n / target))))

    height, width = shape[-2], shape[-1]
    lead = tuple(1 for _ in shape[:-2])
    if width > CHUNK_SIDE * CHUNK_SIDE:
        return (*lead, split(height, CHUNK_SIDE), split(width, CHUNK_SIDE))
    rows = split(height, max(1, (CHUNK_SIDE * CHUNK_SIDE) // max(1, width)))
    return (*lead, rows, max(1, width))


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
    is_mask = name == "mask" and data.dtype.kind in "iu"
    compressor = MASK_COMPRESSOR if is_mask else PIXEL_COMPRESSOR
    array = group.create_array(
        name,
        shape=data.shape,
        chunks=chunk_shape(data.shape),
        dtype=data.dtype,
        compressors=[compressor] if compressor is not None else None,
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
        "sky_corners": _sky_corners(exposure),
        "psf": psf_to_dict(exposure.psf) if exposure.psf is not None else None,
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
    planes = _read_planes(group, EXPOSURE_PLANES)
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


@dataclass(frozen=True)
class ExposureHeader:
    """What an exposure says about itself without its pixels: enough to place it on the sky.

    Attributes
    ----------
    shape : tuple of int
        ``(height, width)`` of the image plane.
    wcs_cards : list or None
        The stored WCS header cards; :attr:`wcs` builds the astropy WCS from them on first use.
    sky_corners : list or None
        ``[[ra, dec], ...]`` of the outer pixel corners, when the writer stored them.
    visit_info : VisitInfo or None
    detector : int or None
    metadata : dict
    """

    shape: tuple[int, int]
    wcs_cards: list[list[Any]] | None
    sky_corners: list[list[float]] | None
    visit_info: VisitInfo | None
    detector: int | None
    metadata: dict[str, Any]

    @functools.cached_property
    def wcs(self) -> WCS | None:
        """The exposure's WCS (None without one)."""
        return cards_to_wcs(self.wcs_cards) if self.wcs_cards else None


def read_exposure_header(backend: Any, path: str) -> ExposureHeader:
    """Read an exposure's attributes and image shape: two small JSON documents, no chunks.

    The Zarr v3 metadata documents (``zarr.json`` of the group and of its ``image`` array) are
    read directly: opening the group through zarr costs a few milliseconds of event-loop round
    trips, which planning would pay for every template patch of a survey.
    """
    group = strict_json.loads(backend.read_bytes(f"{path}/zarr.json"))
    image = strict_json.loads(backend.read_bytes(f"{path}/image/zarr.json"))
    if group.get("node_type") != "group" or image.get("node_type") != "array":
        raise ValueError("not a Zarr v3 group with an 'image' array")
    attrs = group.get("attributes") or {}
    found = (attrs.get("apflow") or {}).get("format")
    if found != "exposure":
        raise ValueError(f"Zarr group holds {found or 'no apflow data'!r}, expected 'exposure'")
    shape = image.get("shape")
    if not isinstance(shape, list) or len(shape) != 2:
        raise ValueError(f"member 'image' is not a 2-d array (shape {shape!r})")
    return ExposureHeader(
        shape=(int(shape[0]), int(shape[1])),
        wcs_cards=attrs.get("wcs") or None,
        sky_corners=attrs.get("sky_corners") or None,
        visit_info=VisitInfo.from_dict(attrs["visit_info"]) if attrs.get("visit_info") else None,
        detector=attrs.get("detector"),
        metadata=attrs.get("metadata") or {},
    )


def _sky_corners(exposure: Exposure) -> list[list[float]] | None:
    if exposure.wcs is None or exposure.image.ndim != 2:
        return None
    try:
        ra, dec = pixel_corners_radec(exposure.wcs, exposure.image.shape)
    except Exception:  # noqa: BLE001 - an odd WCS (not 2-d celestial): readers use the cards
        return None
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        return None
    return [[float(r), float(d)] for r, d in zip(ra, dec, strict=True)]


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
        arrays=_read_planes(group, attrs["arrays"]),
        attrs=attrs.get("attrs") or {},
    )


def _read_planes(group: zarr.Group, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read whole arrays of ``group``, their chunks fetched and decoded concurrently.

    Arrays in apflow's own layout (regular chunks, little-endian bytes, Blosc) take a direct
    path: the chunks of all arrays are read concurrently (local files on a thread pool of one
    thread per CPU; other stores through their async API, ``async.concurrency`` at a time) and
    each is Blosc-decoded on a thread (Blosc releases the GIL) straight into its place in the
    output array when the chunk is a contiguous block of it (full-width strips, see
    :func:`chunk_shape`), else into a scratch buffer then copied. zarr's own pipeline decodes
    into a scratch buffer and copies every chunk, one array after another. Anything else
    (other codecs, big-endian data, 0-d arrays) is read through zarr.
    """
    arrays: dict[str, zarr.Array] = {}
    for name in names:
        array = group[name]
        if not isinstance(array, zarr.Array):
            raise ValueError(f"member {name!r} is not an array")
        arrays[name] = array
    out: dict[str, np.ndarray] = {}
    jobs: list[_ChunkRead] = []
    for name, array in arrays.items():
        if _direct_layout(array):
            out[name] = np.empty(array.shape, dtype=array.dtype)
            jobs.extend(_chunk_reads(array, out[name]))
    root = _local_root(group.store)
    if jobs and root is not None:
        _read_local(jobs, root, strict=isinstance(group.store, StrictStore))
    elif jobs:
        sync(_fetch_and_decode(jobs))
    for name, array in arrays.items():
        if name not in out:
            out[name] = np.asarray(array[...])
    return {name: out[name] for name in arrays}


@dataclass
class _ChunkRead:
    """One stored chunk and where its pixels go."""

    key: Any  # zarr StorePath of the chunk
    target: np.ndarray  # the chunk's region of the output array (a view)
    chunk: tuple[int, ...]  # full chunk shape as stored (edge chunks are padded)
    dtype: np.dtype
    fill_value: Any

    def decode(self, data: Any) -> None:
        """Blosc-decode ``data`` (a buffer, zarr Buffer, or None if missing) into the target."""
        if data is None:  # only a non-strict store gets here; zarr's meaning is "fill value"
            self.target[...] = self.fill_value
            return
        if hasattr(data, "as_numpy_array"):  # a zarr Buffer
            source = data.as_numpy_array()
        else:  # bytes or a memory map of the chunk file
            source = np.frombuffer(data, dtype=np.uint8)
        direct = self.target.shape == self.chunk and self.target.flags.c_contiguous
        dest = self.target if direct else np.empty(self.chunk, dtype=self.dtype)
        # Blosc-1 header: bytes 4-7 uncompressed size, 12-15 compressed size (little-endian).
        # Checked here because decompressing into a caller's buffer trusts them.
        header = source[:16].tobytes()
        if (
            len(header) < 16
            or int.from_bytes(header[4:8], "little") != dest.nbytes
            or int.from_bytes(header[12:16], "little") != source.nbytes
        ):
            raise ValueError(f"chunk {self.key} is damaged (bad size in its Blosc header)")
        blosc.decompress(source, dest)
        if not direct:
            self.target[...] = dest[tuple(slice(0, n) for n in self.target.shape)]


def _direct_layout(array: zarr.Array) -> bool:
    """Whether ``array`` is stored as apflow writes it: regular chunks, LE bytes, Blosc only."""
    metadata = array.metadata
    if metadata.zarr_format != 3 or array.ndim == 0:
        return False
    if not isinstance(metadata.chunk_grid, RegularChunkGrid):
        return False
    codecs = metadata.codecs
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec):
        return False
    if not isinstance(codecs[1], BloscCodec):
        return False
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biufc":
        return False
    endian = codecs[0].endian
    native = dtype.itemsize == 1 or (endian is not None and endian.value == sys.byteorder)
    return native


def _chunk_reads(array: zarr.Array, out: np.ndarray) -> list[_ChunkRead]:
    chunks = tuple(array.metadata.chunk_grid.chunk_shape)
    grid = tuple(math.ceil(n / c) for n, c in zip(array.shape, chunks, strict=True))
    dtype = np.dtype(array.dtype)
    fill_value = array.metadata.fill_value
    reads = []
    for index in np.ndindex(*grid):
        region = tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(index, chunks, array.shape, strict=True)
        )
        key = array.store_path / array.metadata.encode_chunk_key(index)
        reads.append(_ChunkRead(key, out[region], chunks, dtype, fill_value))
    return reads


def _local_root(store: Any) -> Path | None:
    """Directory of a local store (through :class:`StrictStore`), or None for other stores."""
    if isinstance(store, StrictStore):
        store = store._store
    return Path(store.root) if isinstance(store, LocalStore) else None


def _read_local(jobs: list[_ChunkRead], root: Path, strict: bool) -> None:
    """Decode chunk files directly from memory maps, one thread per CPU.

    On local disk, zarr's async store costs a thread hop and an event-loop round trip per
    chunk and copies each file into a fresh buffer; mapping the file lets Blosc read the page
    cache in place (together about a fifth of the CPU of a whole read).
    """

    def one(job: _ChunkRead) -> None:
        try:
            with open(root / job.key.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                # The map outlives the file descriptor; it is unmapped when dropped.
                data: Any = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            if strict:
                raise MissingChunkError(f"chunk {job.key.path!r} is missing") from None
            data = None
        job.decode(data)

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), _usable_cpus()))) as pool:
        for _ in pool.map(one, jobs):
            pass


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


async def _fetch_and_decode(jobs: list[_ChunkRead]) -> None:
    prototype = default_buffer_prototype()
    # As many chunks in flight as zarr itself allows (``async.concurrency``, default 10): enough
    # to keep both the store and the decoding threads busy, bounded for object stores.
    limit = asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency") or 10)))

    async def one(job: _ChunkRead) -> None:
        async with limit:
            data = await job.key.get(prototype=prototype)
            # zarr's loop runs to_thread on its executor (``threading.max_workers``).
            await asyncio.to_thread(job.decode, data)

    await asyncio.gather(*(one(job) for job in jobs))


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

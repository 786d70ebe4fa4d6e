"""Small multi-extension FITS files written straight to bytes.

Alert packaging writes three cutouts per DiaSource, tens of thousands per visit. Building an
``astropy.io.fits.HDUList`` for each (what ``CCDData.write`` does) costs milliseconds, almost all
of it in header bookkeeping and verification. A cutout's layout is fixed (a primary image and a
few image extensions with a handful of known keywords), so here the 80-character cards are
formatted directly and the arrays are written big-endian, each block padded to 2880 bytes as the
FITS standard requires. The result is an ordinary FITS file that ``astropy.io.fits`` (and so
``astropy.nddata.CCDData.read``) opens and verifies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

BLOCK = 2880
CARD = 80

#: numpy dtype -> (FITS BITPIX, big-endian dtype)
_BITPIX = {
    np.dtype(np.float32): (-32, ">f4"),
    np.dtype(np.float64): (-64, ">f8"),
    np.dtype(np.int32): (32, ">i4"),
    np.dtype(np.int16): (16, ">i2"),
    np.dtype(np.uint8): (8, "u1"),
}

#: A header card: (keyword, value, comment). A None value is left out of the header.
Card = tuple[str, Any, str]


def format_value(value: Any) -> str:
    """The value field of a card (FITS fixed format where it fits).

    Strings are quoted and left-justified with quotes doubled; logicals are ``T``/``F``;
    numbers are right-justified to column 30. Floats use the shortest text that round-trips
    (``repr``), so no precision is lost; a float that needs more than 20 characters is written
    in free format, which the standard allows and astropy reads.

    Raises
    ------
    ValueError
        For a non-finite float (FITS has no text for NaN or infinity) or an unsupported type.
    """
    if isinstance(value, (bool, np.bool_)):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):>20d}"
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"FITS header values cannot be {number}")
        text = repr(number).upper()
        if "." not in text and "E" not in text:
            text += ".0"
        return f"{text:>20}"
    if isinstance(value, str):
        quoted = "'" + f"{value.replace(chr(39), chr(39) * 2):<8}" + "'"
        return f"{quoted:<20}"
    raise ValueError(f"unsupported FITS header value type {type(value).__name__}")


def format_card(keyword: str, value: Any, comment: str = "") -> str:
    """One 80-character card ``KEYWORD = value / comment`` (comment cut to fit)."""
    if len(keyword) > 8:
        raise ValueError(f"FITS keyword {keyword!r} is longer than 8 characters")
    text = f"{keyword.upper():<8}= {format_value(value)}"
    if len(text) > CARD:
        raise ValueError(f"FITS card {keyword} does not fit 80 characters")
    if comment:
        text = f"{text} / {comment}"
    return f"{text[:CARD]:<80}"


def header_bytes(cards: Sequence[Card]) -> bytes:
    """Header block: the cards with a non-None value, ``END``, blank-padded to 2880 bytes."""
    lines = [
        format_card(k, v, c) if isinstance(v, float) else _repeated_card(k, v, c)
        for k, v, c in cards
        if v is not None
    ]
    lines.append(f"{'END':<80}")
    text = "".join(lines)
    pad = -len(text) % BLOCK
    return (text + " " * pad).encode("ascii")


# Cards other than floats (structural sizes, names, ids, flags) repeat from cutout to cutout;
# formatting them once is most of the speed of writing a cutout.
@functools.lru_cache(maxsize=4096, typed=True)
def _repeated_card(keyword: str, value: Any, comment: str) -> str:
    return format_card(keyword, value, comment)


def data_bytes(array: np.ndarray) -> bytes:
    """Array as big-endian FITS data, zero-padded to a multiple of 2880 bytes."""
    _, big_endian = _BITPIX[array.dtype]
    raw = np.ascontiguousarray(array, dtype=big_endian).tobytes()
    pad = -len(raw) % BLOCK
    return raw + b"\0" * pad if pad else raw


def image_hdu(
    array: np.ndarray, cards: Sequence[Card], *, primary: bool, constant: bool = False
) -> bytes:
    """One image HDU (header + data) of a 2-D array.

    Parameters
    ----------
    array : numpy.ndarray
        2-D float32, float64, int32, int16 or uint8 array; ``array[y, x]`` with x along NAXIS1.
    cards : sequence of (keyword, value, comment)
        Extra header cards after the structural ones (``EXTNAME`` here for an extension).
    primary : bool
        Write a primary HDU (``SIMPLE``, ``EXTEND``) rather than an ``IMAGE`` extension.
    constant : bool
        The cards repeat from call to call (an extension's ``EXTNAME`` ...): the whole header
        is formatted once per array shape and dtype and reused.
    """
    if array.ndim != 2:
        raise ValueError(f"image HDU needs a 2-D array, got shape {array.shape}")
    try:
        bitpix, _ = _BITPIX[array.dtype]
    except KeyError:
        raise ValueError(f"unsupported FITS image dtype {array.dtype}") from None
    height, width = array.shape
    if constant:
        # The value's type is part of the key: True == 1 would otherwise share an entry.
        typed = tuple((k, type(v), v, c) for k, v, c in cards)
        return _constant_header(primary, bitpix, width, height, typed) + data_bytes(array)
    return _header(primary, bitpix, width, height, cards) + data_bytes(array)


@functools.lru_cache(maxsize=1024)
def _constant_header(
    primary: bool,
    bitpix: int,
    width: int,
    height: int,
    typed_cards: tuple[tuple[str, type, Any, str], ...],
) -> bytes:
    return _header(primary, bitpix, width, height, [(k, v, c) for k, _, v, c in typed_cards])


def _header(primary: bool, bitpix: int, width: int, height: int, cards: Sequence[Card]) -> bytes:
    if primary:
        structural: list[Card] = [
            ("SIMPLE", True, "conforms to FITS standard"),
            ("BITPIX", bitpix, "array data type"),
            ("NAXIS", 2, "number of array dimensions"),
            ("NAXIS1", width, ""),
            ("NAXIS2", height, ""),
            ("EXTEND", True, ""),
        ]
    else:
        structural = [
            ("XTENSION", "IMAGE", "Image extension"),
            ("BITPIX", bitpix, "array data type"),
            ("NAXIS", 2, "number of array dimensions"),
            ("NAXIS1", width, ""),
            ("NAXIS2", height, ""),
            ("PCOUNT", 0, "number of parameters"),
            ("GCOUNT", 1, "number of groups"),
        ]
    return header_bytes([*structural, *cards])

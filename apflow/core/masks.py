"""Mask bit planes of an exposure."""

from __future__ import annotations

import enum

import numpy as np


class MaskPlanes(enum.IntFlag):
    """Bit planes of the int32 ``mask`` array of an :class:`~apflow.core.Exposure`.

    The names follow Rubin's afw mask planes; the bit values are apflow's own and are stored
    with every exposure (attribute ``mask_planes``) so that files stay readable if planes are added.
    """

    BAD = 1 << 0
    SAT = 1 << 1
    INTRP = 1 << 2
    CR = 1 << 3
    EDGE = 1 << 4
    DETECTED = 1 << 5
    DETECTED_NEGATIVE = 1 << 6
    NO_DATA = 1 << 7
    SUSPECT = 1 << 8

    @classmethod
    def to_dict(cls) -> dict[str, int]:
        """Plane name -> bit value, as stored in repository metadata."""
        return {plane.name: int(plane.value) for plane in cls}

    @classmethod
    def bits(cls, *names: str) -> int:
        """OR of the named planes, e.g. ``MaskPlanes.bits("BAD", "SAT")``.

        Raises
        ------
        KeyError
            If a name is not a mask plane; the message lists the valid names.
        """
        value = 0
        for name in names:
            try:
                value |= int(cls[name])
            except KeyError:
                raise KeyError(
                    f"unknown mask plane {name!r}; valid planes: {', '.join(cls.to_dict())}"
                ) from None
        return value


def mask_any(mask: np.ndarray, *names: str) -> np.ndarray:
    """Boolean array, True where any of the named planes is set."""
    return (mask & MaskPlanes.bits(*names)) != 0

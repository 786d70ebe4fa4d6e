"""Dataset types: a name, the dimensions that form its data id, and a storage class.

Storage classes and the Python type each one stores:

==============  ===========================================  ===================================
storage         Python type                                  on disk
==============  ===========================================  ===================================
``exposure``    :class:`apflow.core.Exposure`                Zarr v3 group (``.zarr``)
``arrays``      :class:`apflow.io.ArrayBundle` (or a plain   Zarr v3 group of named arrays plus
                ``dict[str, numpy.ndarray]`` on writing)     JSON attributes (``.zarr``)
``dataframe``   :class:`pandas.DataFrame`                    Parquet (``.parquet``)
``json``        ``dict`` of JSON values                      strict JSON (``.json``)
``avro``        ``bytes`` of an Avro container file          ``.avro``
``png``         ``bytes`` of a PNG image                     ``.png``
``fits``        ``bytes`` of a FITS file                     ``.fits``
==============  ===========================================  ===================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.dataid import DataId, normalize_data_id
from ..errors import InvalidDataIdError

#: storage class -> file extension of its payload
STORAGE_EXTENSIONS: dict[str, str] = {
    "exposure": "zarr",
    "arrays": "zarr",
    "dataframe": "parquet",
    "json": "json",
    "avro": "avro",
    "png": "png",
    "fits": "fits",
}

# Lower-case identifiers only: a name becomes a directory and a file name, and must never collide
# with the repository's own entries (apflow.json, _COMMITTED.json, .tmp-* temporaries).
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DIMENSION = re.compile(r"^[a-z][a-z0-9_]*$")
_INTEGER = re.compile(r"^-?[0-9]+$")


@dataclass(frozen=True)
class DatasetType:
    """What a dataset is: its name, the keys of its data id, and how it is stored.

    Parameters
    ----------
    name : str
        Lower-case identifier, e.g. ``"calexp"``.
    dimensions : tuple of str
        Required data id keys, in path order (e.g. ``("visit", "detector")``); empty for a
        dataset that exists once per repository.
    storage : str
        Storage class, a key of :data:`STORAGE_EXTENSIONS`.
    """

    name: str
    dimensions: tuple[str, ...]
    storage: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TYPE_NAME.match(self.name):
            raise ValueError(
                f"dataset type name {self.name!r} must be a lower-case identifier "
                "(letters, digits, '_', starting with a letter)"
            )
        dims = tuple(self.dimensions)
        for dim in dims:
            if not isinstance(dim, str) or not _DIMENSION.match(dim):
                raise ValueError(
                    f"dataset type {self.name}: dimension {dim!r} is not an identifier"
                )
        if len(set(dims)) != len(dims):
            raise ValueError(f"dataset type {self.name}: repeated dimension in {list(dims)}")
        object.__setattr__(self, "dimensions", dims)
        if self.storage not in STORAGE_EXTENSIONS:
            raise ValueError(
                f"dataset type {self.name}: unknown storage {self.storage!r}; "
                f"known: {', '.join(STORAGE_EXTENSIONS)}"
            )

    @property
    def extension(self) -> str:
        """File extension of the payload (``zarr``, ``parquet``, ...)."""
        return STORAGE_EXTENSIONS[self.storage]

    @property
    def filename(self) -> str:
        """Name of the payload inside its dataset directory, e.g. ``calexp.zarr``."""
        return f"{self.name}.{self.extension}"

    def validate_data_id(self, data_id: Mapping[str, Any]) -> DataId:
        """Check a data id against this type's dimensions and return it normalised.

        Values that are integers written as strings (``"12"``) become ``int``, so that a data id
        read back from a path is the one that was written.

        Returns
        -------
        dict
            Keys in dimension order.

        Raises
        ------
        InvalidDataIdError
            On unsafe values or when the keys are not exactly the dimensions.
        """
        given = set(data_id)
        if given != set(self.dimensions):
            missing = [d for d in self.dimensions if d not in given]
            extra = sorted(given - set(self.dimensions))
            problems = []
            if missing:
                problems.append(f"missing {missing}")
            if extra:
                problems.append(f"unexpected {extra}")
            raise InvalidDataIdError(
                f"dataset type {self.name!r} needs data id keys {list(self.dimensions)}; "
                f"got {sorted(given)} ({', '.join(problems)})"
            )
        return self.validate_constraints(data_id)

    def validate_constraints(self, constraints: Mapping[str, Any]) -> DataId:
        """Validate a partial data id (a subset of the dimensions), keys in dimension order."""
        unknown = sorted(set(constraints) - set(self.dimensions))
        if unknown:
            raise InvalidDataIdError(
                f"dataset type {self.name!r} has dimensions {list(self.dimensions)}; "
                f"{unknown} {'is' if len(unknown) == 1 else 'are'} not among them"
            )
        try:
            normal = normalize_data_id(constraints)
        except InvalidDataIdError as exc:
            raise InvalidDataIdError(f"dataset type {self.name!r}: {exc}") from None
        return {d: canonical_value(normal[d]) for d in self.dimensions if d in normal}

    def relative_dir(self, data_id: DataId) -> str:
        """Directory of one dataset relative to the repository root, ``calexp/visit=1/detector=4``."""
        return "/".join([self.name, *(f"{d}={data_id[d]}" for d in self.dimensions)])

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in ``apflow.json``."""
        return {"dimensions": list(self.dimensions), "storage": self.storage}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> DatasetType:
        """Inverse of :meth:`to_dict`."""
        return cls(name, tuple(data["dimensions"]), str(data["storage"]))


def canonical_value(value: int | str) -> int | str:
    """Integral strings become ``int`` (a path component cannot tell ``"7"`` from ``7``)."""
    if isinstance(value, str) and _INTEGER.match(value):
        return int(value)
    return value


def parse_path_value(text: str) -> int | str:
    """Data id value from a ``key=value`` path component."""
    return canonical_value(text)


def _builtin(name: str, dimensions: Sequence[str], storage: str) -> tuple[str, DatasetType]:
    return name, DatasetType(name, tuple(dimensions), storage)


VD = ("visit", "detector")

#: Dataset types every repository knows (see DESIGN.md section 8).
BUILTIN_DATASET_TYPES: dict[str, DatasetType] = dict(
    [
        # pixels
        _builtin("post_isr", VD, "exposure"),
        _builtin("post_isr_snap", (*VD, "snap"), "exposure"),
        _builtin("post_isr_skycorr", VD, "exposure"),  # post_isr minus the scaled sky frame
        _builtin("calexp", VD, "exposure"),
        _builtin("calexp_background", VD, "arrays"),
        _builtin("sky_frame", ("detector", "physical_filter"), "exposure"),  # per filter
        _builtin("sky_camera", ("physical_filter",), "exposure"),
        _builtin("deep_coadd", ("tract", "patch", "band"), "exposure"),
        _builtin("template", ("tract", "patch", "band"), "exposure"),
        _builtin("diff_image", VD, "exposure"),
        # catalogs
        _builtin("ref_cat", (), "dataframe"),
        _builtin("stars", VD, "dataframe"),
        _builtin("psf_stars", VD, "dataframe"),
        _builtin("astrom_matches", VD, "dataframe"),
        _builtin("photom_matches", VD, "dataframe"),
        _builtin("coadd_ref", ("tract", "patch"), "dataframe"),
        _builtin("forced_src", ("tract", "patch", "band"), "dataframe"),
        _builtin("dia_source", VD, "dataframe"),
        _builtin("ss_ephemeris", ("visit",), "dataframe"),
        _builtin("ss_source", VD, "dataframe"),
        # files for other tools
        _builtin("alerts", VD, "avro"),
        _builtin("sky_camera_png", ("physical_filter",), "png"),
        # simulator truth (the simulator may register more truth_* types)
        _builtin("truth_sky_frame", ("detector",), "arrays"),
        _builtin("truth_visits", (), "dataframe"),
        _builtin("truth_sources", (), "dataframe"),
        _builtin("truth_wcs", VD, "json"),
    ]
)

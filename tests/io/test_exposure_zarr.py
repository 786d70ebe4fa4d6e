import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from apflow.core import Exposure, MaskPlanes
from apflow.errors import CorruptDatasetError
from apflow.io import ArrayBundle, exposure_zarr
from apflow.io.exposure_zarr import (
    MASK_COMPRESSOR,
    PIXEL_COMPRESSOR,
    StrictStore,
    cards_to_wcs,
    chunk_shape,
    read_exposure,
    wcs_to_cards,
    write_exposure,
)


def test_exposure_round_trip_is_bit_exact(repo, make_exposure, exposures_identical):
    exposure = make_exposure()
    repo.put(exposure, "calexp", visit=7, detector=4)
    back = repo.get("calexp", visit=7, detector=4)
    exposures_identical(exposure, back)
    assert np.isnan(back.visit_info.airmass) and np.isnan(back.metadata["unknown"])


def test_tan_sip_wcs_maps_random_pixels_to_same_sky(repo, make_exposure, sky_offset):
    exposure = make_exposure(width=96, height=80)
    repo.put(exposure, "calexp", visit=7, detector=4)
    back = repo.get("calexp", visit=7, detector=4)
    assert back.wcs.sip is not None
    assert back.wcs.wcs.ctype[0] == "RA---TAN-SIP"
    assert sky_offset(exposure.wcs, back.wcs, 96, 80) <= 1e-10


def test_wcs_cards_keep_full_precision(make_exposure):
    wcs = make_exposure().wcs
    back = cards_to_wcs(json.loads(json.dumps(wcs_to_cards(wcs))))
    np.testing.assert_array_equal(back.wcs.crval, wcs.wcs.crval)
    np.testing.assert_array_equal(back.wcs.crpix, wcs.wcs.crpix)
    np.testing.assert_array_equal(back.sip.a, wcs.sip.a)


def test_attributes_are_strict_json(tmp_path, make_exposure):
    write_exposure(str(tmp_path / "e.zarr"), make_exposure(), {"note": float("nan")})
    text = (tmp_path / "e.zarr" / "zarr.json").read_text()
    assert "NaN" not in text.replace('"NaN"', "")  # only the tagged string form
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in zarr.json"))


def test_layout_chunks_codec_and_every_chunk_written(tmp_path):
    exposure = Exposure(image=np.zeros((2100, 1500), dtype=np.float32))  # all fill value
    write_exposure(str(tmp_path / "e.zarr"), exposure, None)
    group = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")
    assert sorted(group.array_keys()) == ["image", "mask", "variance"]
    image = group["image"]
    # Full-width strips of about 1024 x 1024 pixels, rows split evenly: 4 x 525, not 3 x 699 + 3
    assert image.chunks == (525, 1500)
    assert image.dtype == np.float32 and group["mask"].dtype == np.int32
    codec = image.compressors[0]
    assert (codec.cname, codec.clevel, codec.shuffle) == (
        PIXEL_COMPRESSOR.cname,
        PIXEL_COMPRESSOR.clevel,
        PIXEL_COMPRESSOR.shuffle,
    )
    assert codec.typesize == 4  # shuffle works on float32 bytes
    mask_codec = group["mask"].compressors[0]
    assert (mask_codec.cname, mask_codec.shuffle) == (
        MASK_COMPRESSOR.cname,
        MASK_COMPRESSOR.shuffle,
    )
    chunk_files = list((tmp_path / "e.zarr" / "image" / "c").rglob("*"))
    assert sum(f.is_file() for f in chunk_files) == 4  # zero chunks are written too


@pytest.mark.parametrize(
    "shape, chunks",
    [
        ((4096, 4004), (256, 4004)),
        ((4004, 4072), (251, 4072)),
        ((1024, 1024), (1024, 1024)),
        ((3, 10, 20), (1, 10, 20)),
        ((3, 2_000_000), (3, 1024)),  # rows wider than a chunk: tiles
    ],
)
def test_chunk_shape_splits_evenly(shape, chunks):
    assert chunk_shape(shape) == chunks


def test_missing_chunk_is_an_error_not_zeros(repo, make_exposure):
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    payload = repo.uri("calexp", visit=7, detector=4)
    chunk = next(p for p in (Path(payload) / "image" / "c").rglob("*") if p.is_file())
    chunk.unlink()
    with pytest.raises(CorruptDatasetError, match=r"calexp \[detector=4, visit=7\]"):
        repo.get("calexp", visit=7, detector=4)


def test_strict_store_only_guards_chunks(tmp_path):
    write_exposure(str(tmp_path / "e.zarr"), Exposure(image=np.ones((4, 4))), None)
    store = StrictStore(zarr.storage.LocalStore(str(tmp_path / "e.zarr"), read_only=True))
    assert read_exposure(store).image.sum() == 16


def test_mask_bits_are_remapped_when_plane_definitions_change(tmp_path):
    mask = np.array([[MaskPlanes.SAT, MaskPlanes.CR]], dtype=np.int32)
    write_exposure(str(tmp_path / "e.zarr"), Exposure(image=np.zeros((1, 2)), mask=mask), None)
    group = zarr.open_group(str(tmp_path / "e.zarr"), mode="r+")
    # pretend the file was written when SAT was bit 5 and a plane "OLD" (now gone) was bit 3
    group.attrs["mask_planes"] = {"SAT": 2, "OLD": 8}
    back = read_exposure(str(tmp_path / "e.zarr"))
    assert back.mask.tolist() == [[MaskPlanes.SAT, 0]]


def test_array_bundle_round_trip(repo):
    arrays = {
        "model": np.arange(12, dtype=np.float64).reshape(3, 4),
        "counts": np.array([1, 2, 3], dtype=np.uint16),
        "flags": np.array([[True, False]]),
        "scale": np.array(2.5, dtype=np.float32),
    }
    bundle = ArrayBundle(arrays, {"kind": "partial", "scale": float("nan"), "bins": [32, 32]})
    repo.put(bundle, "calexp_background", visit=1, detector=2)
    back = repo.get("calexp_background", visit=1, detector=2)
    assert isinstance(back, ArrayBundle)
    assert list(back) == list(arrays)  # the writer's order
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
    assert back.attrs["kind"] == "partial" and np.isnan(back.attrs["scale"])


def test_plain_dict_of_arrays_is_accepted(repo):
    repo.put({"a": np.ones((2, 2))}, "truth_sky_frame", detector=0)
    back = repo.get("truth_sky_frame", detector=0)
    assert dict(back)["a"].tolist() == [[1, 1], [1, 1]] and back.attrs == {}


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of about 16 x 16 pixels, so that small test images have many (and edge) chunks."""
    monkeypatch.setattr(exposure_zarr, "CHUNK_SIDE", 16)


def test_many_strip_chunks_read_back_bit_exact(tmp_path, make_exposure, small_chunks):
    exposure = make_exposure(width=96, height=81)  # 2-row strips, the last one partial
    write_exposure(str(tmp_path / "e.zarr"), exposure, None)
    group = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")
    assert group["image"].chunks == (2, 96) and group["image"].nchunks == 41
    assert exposure_zarr._direct_layout(group["image"])
    back = read_exposure(str(tmp_path / "e.zarr"))
    for plane in ("image", "mask", "variance"):
        assert getattr(back, plane).tobytes() == getattr(exposure, plane).tobytes(), plane
        assert getattr(back, plane).flags.c_contiguous and getattr(back, plane).flags.writeable


def test_tiled_layout_of_earlier_versions_reads_bit_exact(tmp_path, make_exposure, monkeypatch):
    # Tiles are not contiguous in the output: decoded into a scratch buffer, then copied.
    monkeypatch.setattr(exposure_zarr, "chunk_shape", lambda shape: (17, 23))
    exposure = make_exposure(width=96, height=80)
    write_exposure(str(tmp_path / "e.zarr"), exposure, None)
    monkeypatch.undo()
    assert zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["mask"].chunks == (17, 23)
    back = read_exposure(str(tmp_path / "e.zarr"))
    for plane in ("image", "mask", "variance"):
        assert getattr(back, plane).tobytes() == getattr(exposure, plane).tobytes(), plane


def test_n_dimensional_and_boolean_bundles_with_many_chunks(repo, small_chunks):
    rng = np.random.default_rng(3)
    arrays = {
        "cube": rng.normal(size=(3, 50, 40)).astype(np.float64),
        "flags": rng.random((37, 29)) > 0.5,
        "line": np.arange(1000, dtype=np.int16),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    repo.put(arrays, "calexp_background", visit=1, detector=2)
    back = repo.get("calexp_background", visit=1, detector=2)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert back[name].tobytes() == value.tobytes(), name


def test_other_codecs_and_byte_orders_are_read_through_zarr(tmp_path):
    group = zarr.create_group(str(tmp_path / "g.zarr"), zarr_format=3)
    data = np.arange(120, dtype=np.float32).reshape(10, 12)
    big = group.create_array(
        "big",
        shape=data.shape,
        chunks=(3, 12),
        dtype=data.dtype,
        serializer=BytesCodec(endian="big"),
    )
    big[...] = data
    other = group.create_array(
        "zstd", shape=data.shape, chunks=(3, 12), dtype=data.dtype, compressors=[ZstdCodec()]
    )
    other[...] = data
    assert not exposure_zarr._direct_layout(big) and not exposure_zarr._direct_layout(other)
    back = exposure_zarr._read_planes(zarr.open_group(str(tmp_path / "g.zarr")), ["big", "zstd"])
    assert np.array_equal(back["big"], data) and np.array_equal(back["zstd"], data)


def test_truncated_chunk_is_a_corrupt_dataset(repo, make_exposure, small_chunks):
    repo.put(make_exposure(), "calexp", visit=7, detector=4)
    payload = Path(repo.uri("calexp", visit=7, detector=4))
    chunk = sorted(p for p in (payload / "variance" / "c").rglob("*") if p.is_file())[3]
    chunk.write_bytes(chunk.read_bytes()[:-5])
    with pytest.raises(CorruptDatasetError, match=r"calexp \[detector=4, visit=7\]"):
        repo.get("calexp", visit=7, detector=4)


def test_missing_chunk_reads_as_fill_value_only_without_the_strict_store(
    tmp_path, make_exposure, small_chunks
):
    exposure = make_exposure(width=96, height=81)
    write_exposure(str(tmp_path / "e.zarr"), exposure, None)
    (tmp_path / "e.zarr" / "image" / "c" / "3" / "0").unlink()  # rows 6-7
    back = read_exposure(str(tmp_path / "e.zarr"))  # a plain store: zarr's meaning, fill value
    assert (back.image[6:8] == 0).all()
    assert back.image[8:].tobytes() == exposure.image[8:].tobytes()
    strict = StrictStore(zarr.storage.LocalStore(str(tmp_path / "e.zarr"), read_only=True))
    with pytest.raises(exposure_zarr.MissingChunkError, match="image/c/3/0"):
        read_exposure(strict)

"""Fixtures of the storage tests: small exposures with a TAN-SIP WCS, repositories, an S3 server."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from astropy.wcs import WCS, Sip

from apflow.core import Exposure, MaskPlanes, MoffatPsf, PhotoCalib, VisitInfo
from apflow.io import Repository


def tan_sip_wcs(width: int = 96, height: int = 80) -> WCS:
    """A TAN-SIP WCS with awkward (non-round) values in every term."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crval = [150.12345678901234, 2.2098765432109876]
    wcs.wcs.crpix = [width / 2 + 0.123456789012, height / 2 - 0.98765432101]
    wcs.wcs.cd = np.array([[-5.5555555555555e-5, 1.234567890123e-7], [1.11111111e-7, 5.55555e-5]])
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[0, 2], a[1, 1], a[3, 0] = 1.2345678901234e-6, -3.3333333333e-7, 2.2e-7, 1.1e-10
    b[0, 2], b[2, 0], b[1, 2] = 1.23456789e-6, -4.4e-7, 3.3e-11
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def build_exposure(
    width: int = 96, height: int = 80, seed: int = 0, visit: int = 7, detector: int = 4
) -> Exposure:
    rng = np.random.default_rng(seed)
    image = (1000 + rng.normal(0, 30, (height, width))).astype(np.float32)
    image[3, 5] = np.nan  # NaN and infinities must survive bit for bit
    image[4, 6] = -np.inf
    mask = np.zeros((height, width), dtype=np.int32)
    mask[:, 0] |= MaskPlanes.EDGE
    mask[10:12, 20:22] |= MaskPlanes.SAT | MaskPlanes.DETECTED
    variance = (image / 1.5 + 25).astype(np.float32)
    return Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=tan_sip_wcs(width, height),
        psf=MoffatPsf(fwhm=3.7, e1=0.01, e2=-0.02, beta=3.1),
        photo_calib=PhotoCalib(0.0576, 0.0012),
        visit_info=VisitInfo(
            visit=visit,
            band="r",
            physical_filter="r_57",
            mjd=60400.123456789,
            exposure_time=30.0,
            boresight_ra=150.1,
            boresight_dec=2.2,
            rotation_angle=12.5,
        ),  # airmass left NaN
        detector=detector,
        metadata={"seeing": 0.71, "unknown": float("nan"), "limits": [float("inf"), -1], "n": 3},
    )


@pytest.fixture
def make_exposure() -> Callable[..., Exposure]:
    """Factory of small exposures (TAN-SIP WCS, Moffat PSF, NaN in pixels and metadata)."""
    return build_exposure


@pytest.fixture
def repo(tmp_path) -> Repository:
    """A fresh repository on local disk."""
    return Repository.create(str(tmp_path / "repo"), camera="mini")


@pytest.fixture
def memory_repo() -> Iterator[Repository]:
    """A fresh repository in fsspec's (process-global) memory filesystem."""
    url = f"memory://apflow-test-{uuid.uuid4().hex}"
    yield Repository.create(url, camera="mini")
    import fsspec

    fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


def assert_exposures_identical(a: Exposure, b: Exposure) -> None:
    """Bit-exact pixel planes (NaN payloads included) and equal metadata."""
    for plane in ("image", "mask", "variance"):
        pa, pb = getattr(a, plane), getattr(b, plane)
        assert pa.dtype == pb.dtype and pa.shape == pb.shape, plane
        assert pa.tobytes() == pb.tobytes(), plane
    assert a.psf == b.psf
    assert a.photo_calib == b.photo_calib
    assert a.detector == b.detector
    assert _same(a.visit_info.to_dict(), b.visit_info.to_dict())
    assert _same(a.metadata, b.metadata)


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
        return True
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y, strict=True))
    return x == y


@pytest.fixture
def exposures_identical() -> Callable[[Exposure, Exposure], None]:
    return assert_exposures_identical


def max_sky_offset_deg(w1: WCS, w2: WCS, width: int, height: int, n: int = 100) -> float:
    """Largest coordinate difference (deg, RA or Dec) between two WCSs at ``n`` random pixels."""
    rng = np.random.default_rng(42)
    x = rng.uniform(-0.5, width - 0.5, n)
    y = rng.uniform(-0.5, height - 0.5, n)
    ra1, dec1 = w1.all_pix2world(x, y, 0)
    ra2, dec2 = w2.all_pix2world(x, y, 0)
    return float(max(np.abs(ra1 - ra2).max(), np.abs(dec1 - dec2).max()))


@pytest.fixture
def sky_offset() -> Callable[..., float]:
    return max_sky_offset_deg


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 (free port); yields storage_options and a bucket name."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}"}
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("apflow-test")
    try:
        yield {"storage_options": options, "bucket": "apflow-test"}
    finally:
        server.stop()

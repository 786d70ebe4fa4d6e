"""Benchmark: storing one 4096 x 4096 exposure as Zarr (apflow.io) against uncompressed FITS.

Measures, in the same run and interleaved so that load from other processes hits every variant
alike, the median over ``--repeats`` of

- FITS baseline: ``write_exposure_fits`` / ``read_exposure_fits`` (astropy, uncompressed,
  Exposure -> file -> Exposure, the like-for-like comparison), and bare astropy
  (``HDUList.writeto`` of the three planes; ``fits.open`` + conversion to native-endian arrays);
- Zarr: ``Repository.put`` / ``Repository.get`` on local disk (commit protocol, attributes,
  WCS and all) for several lossless codecs, and for the default codec with the earlier
  1024 x 1024 tiles and/or read through zarr's own codec pipeline instead of apflow's direct
  chunk reader (where the read time goes);

and prints write time, read time and size as ratios to the FITS baseline, plus absolute figures
and a bit-for-bit lossless check. Page cache is warm for every variant.

Run: ``.venv/bin/python benchmarks/io.py`` (``--repeats 7``, ``--size 2048``; ``--codecs default``
skips the codec comparison).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from astropy.io import fits
from astropy.wcs import WCS, Sip
from zarr.codecs import BloscCodec, ZstdCodec

from apflow.core import Exposure, MaskPlanes, MoffatPsf, PhotoCalib, VisitInfo
from apflow.io import Repository, exposure_zarr
from apflow.io.fits import read_exposure_fits, write_exposure_fits

CODECS = {
    "no compression": None,
    "blosc-zstd1-shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
    "blosc-zstd3-shuffle": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
    "blosc-zstd5-shuffle": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
    "blosc-zstd1-bitshuffle": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    "blosc-zstd3-bitshuffle": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    "blosc-lz4-1-shuffle": BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),
    "blosc-lz4-5-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "blosc-lz4-9-shuffle": BloscCodec(cname="lz4", clevel=9, shuffle="shuffle"),
    "zstd3 (no shuffle)": ZstdCodec(level=3),
}


def realistic_exposure(size: int, seed: int = 1, flat_field: bool = False) -> Exposure:
    """A post-ISR-like CCD as the simulator makes it.

    Sky of ~1000 e- with a gentle gradient, ~2000 Gaussian stars, Poisson noise plus 5 e- read
    noise (gain 1, so pixel values are not integers), a smooth variance model, and a mask with
    edge, bad-column, saturation, cosmic-ray and detection bits. With ``flat_field`` the image is
    divided by a 1 % pixel-to-pixel flat and the variance is computed from the noisy image: the
    hardest case for lossless compression (every mantissa bit is noise in both planes).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    model = 1000.0 + 0.01 * xx - 0.005 * yy
    n_stars = size * size // 8000
    xs, ys = rng.uniform(0, size, n_stars), rng.uniform(0, size, n_stars)
    fluxes = 10 ** rng.uniform(3, 6.5, n_stars)
    sigma = 1.7
    for x0, y0, flux in zip(xs, ys, fluxes, strict=True):
        x1, x2 = int(max(0, x0 - 12)), int(min(size, x0 + 13))
        y1, y2 = int(max(0, y0 - 12)), int(min(size, y0 + 13))
        gx, gy = xx[y1:y2, x1:x2], yy[y1:y2, x1:x2]
        model[y1:y2, x1:x2] += (flux / (2 * np.pi * sigma**2)) * np.exp(
            -((gx - x0) ** 2 + (gy - y0) ** 2) / (2 * sigma**2)
        )
    image = rng.poisson(model).astype(np.float32)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(5.0)
    variance = (model + 25.0).astype(np.float32)
    if flat_field:
        flat = (1.0 + 0.01 * rng.standard_normal(image.shape)).astype(np.float32)
        image /= flat
        variance = np.maximum(image, 0) / flat + np.float32(25.0)
    mask = np.zeros(image.shape, dtype=np.int32)
    mask[:, :8] |= MaskPlanes.EDGE
    mask[:, -8:] |= MaskPlanes.EDGE
    for col in rng.integers(0, size, 3):
        mask[:, col] |= MaskPlanes.BAD
    saturated = image > 80000
    image[saturated] = 80000
    mask[saturated] |= MaskPlanes.SAT
    mask[rng.integers(0, size, 500), rng.integers(0, size, 500)] |= MaskPlanes.CR
    mask[model > 1060] |= MaskPlanes.DETECTED
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.cd = np.array([[-5.5e-5, 1e-7], [1e-7, 5.5e-5]])
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], b[0, 2] = 1e-7, -2e-7
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=wcs,
        psf=MoffatPsf(fwhm=4.0),
        photo_calib=PhotoCalib(0.06, 0.001),
        visit_info=VisitInfo(
            visit=1, band="r", physical_filter="r_57", mjd=60400.1, exposure_time=30.0
        ),
        detector=0,
        metadata={"seeing": 0.8},
    )


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall-clock seconds, CPU seconds of this process (all threads), and the result."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def identical(a: Exposure, b: Exposure) -> bool:
    return all(
        getattr(a, p).tobytes() == getattr(b, p).tobytes() for p in ("image", "mask", "variance")
    )


def bare_astropy(exposure: Exposure, path: Path) -> tuple[float, float, float, float]:
    def write() -> None:
        hdus = [fits.PrimaryHDU()] + [
            fits.ImageHDU(getattr(exposure, p), name=p.upper())
            for p in ("image", "mask", "variance")
        ]
        fits.HDUList(hdus).writeto(path, overwrite=True)

    def read() -> list[np.ndarray]:
        with fits.open(path) as hdul:
            return [
                hdul[p].data.astype(hdul[p].data.dtype.newbyteorder("="))
                for p in ("IMAGE", "MASK", "VARIANCE")
            ]

    w, w_cpu, _ = timed(write)
    os.sync()
    r, r_cpu, _ = timed(read)
    return w, w_cpu, r, r_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--codecs", default="all", help="'all' or 'default' (the chosen codec only)"
    )
    parser.add_argument("--flat-field", action="store_true", help="worst-case noisy image/variance")
    args = parser.parse_args()
    default_name = "default (LZ4-5 + shuffle; mask LZ4-5, no shuffle)"
    print(f"zarr {zarr.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    import zarr.core.codec_pipeline as pipelines

    # name -> (zarr.config overrides, exposure_zarr attributes replaced for the variant). A codec
    # variant uses its codec for every plane; the extra variants keep the defaults and show
    # where the read time goes.
    zarr_variants: dict[str, tuple[dict, dict]] = {default_name: ({}, {})}
    if args.codecs == "all":
        zarr_variants |= {
            f"{name}, every plane": ({}, {"PIXEL_COMPRESSOR": codec, "MASK_COMPRESSOR": codec})
            for name, codec in CODECS.items()
        }
    zarr_variants["default, read through zarr's pipeline"] = (
        {},
        {"_direct_layout": lambda array: False},
    )
    zarr_variants["default, 1024x1024 tiles (earlier layout)"] = (
        {},
        {"chunk_shape": lambda shape: (*(1 for _ in shape[:-2]), 1024, 1024)},
    )
    zarr_variants["default, tiles, read through zarr's pipeline"] = (
        {},
        {
            "chunk_shape": lambda shape: (*(1 for _ in shape[:-2]), 1024, 1024),
            "_direct_layout": lambda array: False,
        },
    )
    if hasattr(pipelines, "FusedCodecPipeline"):
        zarr_variants["default, zarr pipeline read, FusedCodecPipeline"] = (
            {"codec_pipeline.path": "zarr.core.codec_pipeline.FusedCodecPipeline"},
            {"_direct_layout": lambda array: False},
        )
    else:
        print("FusedCodecPipeline: not in this zarr version (added in zarr 3.3)")
    exposure = realistic_exposure(args.size, flat_field=args.flat_field)
    mib = 3 * exposure.image.nbytes / 2**20
    kind = "flat-fielded (worst case)" if args.flat_field else "sky + stars + Poisson/read noise"
    print(f"exposure {args.size}x{args.size} {kind}, three planes {mib:.0f} MiB")
    work = Path(tempfile.mkdtemp(prefix="apflow-bench-io-"))
    # per run: write s, write CPU s, read s, read CPU s, bytes, lossless
    runs: dict[str, list[tuple[float, float, float, float, int, bool]]] = {}
    runs["fits"], runs["astropy bare"] = [], []
    runs |= {name: [] for name in zarr_variants}
    try:
        repo = Repository.create(str(work / "repo"))
        fits_path = work / "e.fits"
        for rep in range(args.repeats):
            fits_path.unlink(missing_ok=True)
            w, w_cpu, _ = timed(lambda: write_exposure_fits(exposure, fits_path))
            os.sync()  # reads must not compete with the write-back of what was just written
            r, r_cpu, (back, _) = timed(lambda: read_exposure_fits(fits_path))
            ok = identical(exposure, back)
            runs["fits"].append((w, w_cpu, r, r_cpu, tree_size(fits_path), ok))
            bare = bare_astropy(exposure, work / "bare.fits")
            runs["astropy bare"].append((*bare, tree_size(work / "bare.fits"), True))
            for name, (config, patches) in zarr_variants.items():
                saved = {attr: getattr(exposure_zarr, attr) for attr in patches}
                try:
                    for attr, value in patches.items():
                        setattr(exposure_zarr, attr, value)
                    with zarr.config.set(config):
                        w, w_cpu, _ = timed(
                            lambda v=rep: repo.put(exposure, "post_isr", visit=v, detector=0)
                        )
                        os.sync()
                        r, r_cpu, back = timed(
                            lambda v=rep: repo.get("post_isr", visit=v, detector=0)
                        )
                finally:
                    for attr, value in saved.items():
                        setattr(exposure_zarr, attr, value)
                size = tree_size(Path(repo.uri("post_isr", visit=rep, detector=0)))
                runs[name].append((w, w_cpu, r, r_cpu, size, identical(exposure, back)))
                repo.remove("post_isr", visit=rep, detector=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(measured: list[tuple], index: int) -> float:
        return statistics.median(x[index] for x in measured)

    base = runs["fits"]
    base_w, base_r, base_r_cpu, base_size = (
        median(base, 0),
        median(base, 2),
        median(base, 3),
        base[0][4],
    )
    print(
        f"\nmedians (and minima) of {args.repeats} interleaved runs; ratios are to apflow's FITS path"
    )
    print(
        "| variant | write s | read s (min) | read CPU s | MiB | write ratio | read ratio (min) "
        "| read CPU ratio | size ratio | lossless |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base_r_min = min(x[2] for x in base)
    for name, measured in runs.items():
        w, r, r_cpu, size = (
            median(measured, 0),
            median(measured, 2),
            median(measured, 3),
            measured[0][4],
        )
        r_min = min(x[2] for x in measured)
        lossless = "yes" if all(x[5] for x in measured) else "NO"
        print(
            f"| {name} | {w:.3f} | {r:.3f} ({r_min:.3f}) | {r_cpu:.3f} | {size / 2**20:.1f} "
            f"| {w / base_w:.2f} | {r / base_r:.2f} ({r_min / base_r_min:.2f}) "
            f"| {r_cpu / base_r_cpu:.2f} | {size / base_size:.3f} | {lossless} |"
        )


if __name__ == "__main__":
    main()

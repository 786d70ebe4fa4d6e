"""Render one simulated (visit, detector) exposure in memory, with its truth.

:class:`SkyModel` holds the static sky (catalog), the camera, the config and the seed;
:func:`render_exposure` turns it plus one :class:`~apflow.sim.visits.VisitParameters` into a
``post_isr``-like :class:`~apflow.core.Exposure` (counts, initial TAN WCS, true PSF, no photo-calib)
and everything needed to check a measurement against the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core import Camera, Detector, Exposure, MaskPlanes, VariablePsf, ab_mag_to_njy, get_camera
from .background import background_image, sky_pattern
from .catalog import make_catalog, make_reference_catalog
from .config import TAG_DEFECTS, TAG_NOISE, TAG_NOISE_DYNAMIC, SimConfig
from .dynamic import dynamic_sky_at, empty_dynamic_frame
from .movers import MoverPopulation
from .render import galaxy_shape_matrices, local_psf_parameters, render_galaxies, render_stars
from .transients import make_transient_catalog
from .visits import VisitParameters, detector_psf, make_visits
from .wcs import (
    cd_matrix,
    initial_wcs_header,
    pixel_to_sky,
    sky_to_pixel,
    true_wcs_header,
    unit_vectors,
    wcs_from_header,
)

# Sources whose centre is this far off the detector can still put light on it.
_MARGIN_PX = 48
_BRIGHT_MARGIN_PX = 256
_BRIGHT_COUNTS = 1.0e6


@dataclass(eq=False)
class SkyModel:
    """The sky of a simulation: camera, source catalog, configuration and seed.

    Build one with :meth:`generate`; it is cheap (catalogs only) and deterministic. Besides the
    static ``catalog`` it holds ``transients`` (variable stars and supernova-like transients,
    :mod:`apflow.sim.transients`) and ``movers`` (:mod:`apflow.sim.movers`), which
    :func:`render_exposure` draws at each exposure's time; ``None`` means none.
    """

    camera: Camera
    catalog: pd.DataFrame
    config: SimConfig
    seed: int
    transients: pd.DataFrame | None = None
    movers: MoverPopulation | None = None
    _unit_vectors: np.ndarray | None = field(default=None, init=False, repr=False)
    _dynamic: dict[tuple[float, str, float], pd.DataFrame] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def generate(
        cls,
        camera: str | Camera = "mini",
        seed: int = 0,
        config: SimConfig | None = None,
        **options: Any,
    ) -> SkyModel:
        """Draw the catalog for a camera.

        Parameters
        ----------
        camera : str or Camera
            Built-in camera name or a :class:`~apflow.core.Camera`.
        seed : int
            Master seed of the whole simulation.
        config : SimConfig, optional
            Base configuration; ``options`` override its fields.
        """
        cam = get_camera(camera) if isinstance(camera, str) else camera
        cfg = (config or SimConfig()).updated(**options) if options else (config or SimConfig())
        cfg.validate()
        catalog = make_catalog(cam, cfg, seed)
        return cls(
            camera=cam,
            catalog=catalog,
            config=cfg,
            seed=int(seed),
            transients=make_transient_catalog(cam, cfg, seed, catalog),
            movers=MoverPopulation.for_camera(cam, cfg, seed),
        )

    def sources_near(self, ra: float, dec: float, radius_deg: float) -> np.ndarray:
        """Indices of catalog sources within ``radius_deg`` of (ra, dec).

        A dot product with cached unit vectors: cheap even for millions of sources, so each
        render projects only the sources near its detector.
        """
        if self._unit_vectors is None or len(self._unit_vectors) != len(self.catalog):
            self._unit_vectors = unit_vectors(
                self.catalog["ra"].to_numpy(), self.catalog["dec"].to_numpy()
            )
        centre = unit_vectors(np.array([ra]), np.array([dec]))[0]
        return np.flatnonzero(self._unit_vectors @ centre > math.cos(math.radians(radius_deg)))

    def dynamic_at(self, mjd: float, band: str, exposure_time: float = 0.0) -> pd.DataFrame:
        """Variables, transients and movers at a time (:func:`~apflow.sim.dynamic.dynamic_sky_at`).

        The last few results are cached: every detector of a visit asks for the same time.
        """
        key = (float(mjd), band, float(exposure_time))
        if key not in self._dynamic:
            if len(self._dynamic) >= 64:
                self._dynamic.pop(next(iter(self._dynamic)))
            self._dynamic[key] = dynamic_sky_at(self, mjd, band, exposure_time)
        return self._dynamic[key]

    def visits(self, n_visits: int, band: str = "r", first_visit: int = 1) -> list[VisitParameters]:
        """The simulation's visits (deterministic from the seed and the visit id)."""
        return make_visits(self.camera, self.config, self.seed, n_visits, band, first_visit)

    def reference_catalog(self) -> pd.DataFrame:
        """The ``ref_cat`` table (see :func:`~apflow.sim.catalog.make_reference_catalog`)."""
        return make_reference_catalog(self.catalog, self.config, self.seed)

    def sky_pattern(self, detector: int | Detector) -> tuple[np.ndarray, dict[str, Any]]:
        """The fixed sky pattern ``P`` of a detector (see :mod:`apflow.sim.background`)."""
        det = detector if isinstance(detector, Detector) else self.camera[detector]
        return sky_pattern(det, self.seed, self.config.sky_pattern_rms)

    def bad_columns(self, detector: int | Detector) -> list[tuple[int, int]]:
        """Bad columns of a detector as ``(column, first_bad_row)``; fixed across visits."""
        det = detector if isinstance(detector, Detector) else self.camera[detector]
        rng = np.random.default_rng([self.seed, TAG_DEFECTS, det.id])
        n = self.config.n_bad_columns
        cols = rng.choice(np.arange(16, det.width - 16), size=n, replace=False)
        # half of them are bad from a random row up (a charge trap), the others over the full height
        starts = np.where(rng.random(n) < 0.5, 0, rng.integers(0, det.height // 2, n))
        return sorted((int(c), int(s)) for c, s in zip(cols, starts, strict=True))


@dataclass
class SimulatedExposure:
    """Result of :func:`render_exposure`.

    Attributes
    ----------
    exposure : Exposure
        What the pipeline sees: image and variance in counts, masks, initial (wrong) TAN WCS,
        true PSF, visit info; no photo-calib.
    model : numpy.ndarray
        float32 noiseless expected counts (background + sources), before saturation and defects.
    background : numpy.ndarray
        float32 expected sky counts.
    true_wcs : dict
        FITS cards of the exact TAN-SIP WCS.
    sources : pandas.DataFrame
        Sources rendered: ``id``, ``x``, ``y`` (true pixel position), ``counts``, ``is_star``,
        ``on_detector``.
    truth : dict
        Per-(visit, detector) truth (a row of ``truth_exposures``).
    dia_sources : pandas.DataFrame
        Variables, transients and movers rendered (see
        :func:`~apflow.sim.dynamic.dynamic_sky_at`), with ``x``, ``y`` (true pixel position at the
        exposure midpoint), ``counts`` (in this exposure) and ``on_detector``.
    """

    exposure: Exposure
    model: np.ndarray
    background: np.ndarray
    true_wcs: dict[str, Any]
    sources: pd.DataFrame
    truth: dict[str, Any] = field(default_factory=dict)
    dia_sources: pd.DataFrame = field(default_factory=pd.DataFrame)


def counts_per_njy(zero_point: float) -> float:
    """Counts per nJy for an AB zero point (the magnitude that gives one count)."""
    return 1.0 / float(ab_mag_to_njy(zero_point))


def render_exposure(
    sky: SkyModel,
    visit: VisitParameters,
    detector: int | Detector,
    *,
    snap: int | None = None,
    n_snaps: int = 1,
    noise: bool = True,
    saturate: bool = True,
    defects: bool = True,
    catalog: pd.DataFrame | None = None,
    dynamic: bool | None = None,
) -> SimulatedExposure:
    """Render one detector of one visit (or one snap of it).

    Parameters
    ----------
    sky : SkyModel
    visit : VisitParameters
    detector : int or Detector
    snap : int, optional
        Snap index (0-based) when the visit is split into ``n_snaps`` snaps; each snap has
        ``1 / n_snaps`` of the exposure, independent noise and the same pointing.
    noise : bool
        Add Poisson and read noise; ``False`` gives the expected counts (variance unchanged).
    saturate : bool
        Clip at the full well and flag SAT (with bleed trails when ``config.bleed``).
    defects : bool
        Apply bad columns (image 0, BAD).
    catalog : pandas.DataFrame, optional
        Sources to draw instead of ``sky.catalog`` (same columns), e.g. a test grid of stars.
    dynamic : bool, optional
        Draw the sky's variables, transients and movers at the exposure's midpoint (movers
        trailed when ``config.mover_trail``); default: unless ``catalog`` is given.

    Returns
    -------
    SimulatedExposure
        Deterministic from ``(sky.seed, visit.visit, detector, snap)``.
    """
    cfg, camera = sky.config, sky.camera
    det = detector if isinstance(detector, Detector) else camera[detector]
    cat = sky.catalog if catalog is None else catalog
    fraction = 1.0 / n_snaps
    snap_index = 0 if snap is None else int(snap)

    # cheap cone cut first: only sources near the detector are projected exactly
    cx, cy = det.center_pixel
    ra_c, dec_c = pixel_to_sky(
        camera, det, cx, cy, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle
    )
    half_diagonal_px = math.hypot(det.width, det.height) / 2.0 + _BRIGHT_MARGIN_PX
    radius = 1.05 * half_diagonal_px * camera.plate_scale * det.pixel_size / 3600.0
    if catalog is None:
        cat = sky.catalog.iloc[sky.sources_near(float(ra_c), float(dec_c), radius)]
    x, y = sky_to_pixel(
        camera, det, cat["ra"].to_numpy(), cat["dec"].to_numpy(),
        visit.boresight_ra, visit.boresight_dec, visit.rotation_angle,
    )  # fmt: skip
    counts = cat[f"{visit.band}_flux"].to_numpy() * counts_per_njy(visit.zero_point) * fraction
    margin = np.where(counts > _BRIGHT_COUNTS, _BRIGHT_MARGIN_PX, _MARGIN_PX)
    near = (x > -margin) & (x < det.width + margin) & (y > -margin) & (y < det.height + margin)
    near &= np.isfinite(x) & np.isfinite(y)
    sel = np.flatnonzero(near)
    is_star = cat["is_star"].to_numpy()[sel]

    psf = detector_psf(visit, camera, det)
    source_image = np.zeros(det.shape)
    stars, gals = sel[is_star], sel[~is_star]
    render_stars(source_image, x[stars], y[stars], counts[stars], psf)
    if len(gals):
        cd_arcsec = cd_matrix(camera, det, visit.rotation_angle) * 3600.0
        shapes = galaxy_shape_matrices(
            cat["half_light_radius"].to_numpy()[gals],
            cat["axis_ratio"].to_numpy()[gals],
            cat["position_angle"].to_numpy()[gals],
            cd_arcsec,
        )
        render_galaxies(source_image, x[gals], y[gals], counts[gals], shapes, psf)
    visit_info = visit.visit_info(snap=snap, n_snaps=n_snaps)
    if dynamic is None:
        dynamic = catalog is None
    dynamic_image = np.zeros(det.shape) if dynamic else None
    dia_sources = _render_dynamic(sky, visit, det, visit_info, fraction, psf, dynamic_image)

    pattern, _ = sky.sky_pattern(det)
    background = background_image(visit, det, pattern, fraction)
    model = background + source_image
    if noise:
        rng = np.random.default_rng([sky.seed, TAG_NOISE, visit.visit, det.id, snap_index])
        image = rng.poisson(model * cfg.gain).astype(np.float32)
    if dynamic_image is not None:
        lit = np.flatnonzero(dynamic_image)
        model.flat[lit] += dynamic_image.flat[lit]
        if noise and len(lit):
            # The sum of independent Poisson draws is Poisson: drawing the light of variables,
            # transients and movers from its own stream leaves the static sky's noise
            # realisation unchanged by them.
            extra = np.random.default_rng(
                [sky.seed, TAG_NOISE_DYNAMIC, visit.visit, det.id, snap_index]
            ).poisson(dynamic_image.flat[lit] * cfg.gain)
            image.flat[lit] += extra.astype(np.float32)
    # pixel planes are float32 from here on: that is what is stored, and it halves the passes
    model32 = model.astype(np.float32)
    variance = model32 / np.float32(cfg.gain) + np.float32((cfg.read_noise / cfg.gain) ** 2)
    if noise:
        image += rng.standard_normal(det.shape, dtype=np.float32) * np.float32(cfg.read_noise)
        image /= np.float32(cfg.gain)
    else:
        image = model32.copy()

    mask = np.zeros(det.shape, dtype=np.int32)
    if saturate:
        if cfg.bleed:
            _bleed(image, cfg.saturation)
        saturated = image >= cfg.saturation
        image[saturated] = cfg.saturation
        mask[saturated] |= int(MaskPlanes.SAT)
    bad_columns = sky.bad_columns(det) if defects else []
    for col, start in bad_columns:
        image[start:, col] = 0.0
        mask[start:, col] |= int(MaskPlanes.BAD)
    e = cfg.edge_width
    if e > 0:
        edge = np.zeros(det.shape, dtype=bool)
        edge[:e, :] = edge[-e:, :] = edge[:, :e] = edge[:, -e:] = True
        mask[edge] |= int(MaskPlanes.EDGE)

    true_wcs = true_wcs_header(
        camera, det, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle
    )
    initial = initial_wcs_header(
        camera, det, visit.boresight_ra, visit.boresight_dec, visit.rotation_angle,
        (visit.pointing_error_east, visit.pointing_error_north), visit.rotation_error,
    )  # fmt: skip
    exposure = Exposure(
        image=image,
        mask=mask,
        variance=variance,
        wcs=wcs_from_header(initial),
        psf=psf,
        visit_info=visit_info,
        detector=det.id,
        metadata={"simulated": True, "seed": sky.seed, "snap": snap, "n_snaps": n_snaps},
    )
    on_det = det.contains_pixel(x[sel], y[sel])
    sources = pd.DataFrame(
        {
            "id": cat["id"].to_numpy()[sel],
            "x": x[sel],
            "y": y[sel],
            "counts": counts[sel],
            "is_star": is_star,
            "on_detector": on_det,
        }
    )
    truth = _exposure_truth(
        visit, det, psf, background, camera, snap, n_snaps, sources, mask, bad_columns
    )
    return SimulatedExposure(
        exposure=exposure,
        model=model32,
        background=background.astype(np.float32),
        true_wcs=true_wcs,
        sources=sources,
        truth=truth,
        dia_sources=dia_sources,
    )


def _render_dynamic(
    sky: SkyModel,
    visit: VisitParameters,
    det: Detector,
    visit_info: Any,
    fraction: float,
    psf: VariablePsf,
    image: np.ndarray | None,
) -> pd.DataFrame:
    """Add variables, transients and movers to ``image`` (in place, unless None); list them."""
    camera = sky.camera
    if image is not None:
        objs = sky.dynamic_at(visit_info.mjd, visit.band, visit_info.exposure_time)
    else:
        objs = empty_dynamic_frame()
    pointing = (visit.boresight_ra, visit.boresight_dec, visit.rotation_angle)
    x, y = sky_to_pixel(camera, det, objs["ra"].to_numpy(), objs["dec"].to_numpy(), *pointing)
    near = (x > -_MARGIN_PX) & (x < det.width + _MARGIN_PX)
    near &= (y > -_MARGIN_PX) & (y < det.height + _MARGIN_PX)
    sel = np.flatnonzero(near)
    x, y = x[sel], y[sel]
    ends = {c: objs[c].to_numpy()[sel] for c in ("ra_start", "dec_start", "ra_end", "dec_end")}
    counts = objs["flux"].to_numpy()[sel] * counts_per_njy(visit.zero_point) * fraction
    if sky.config.mover_trail and len(sel):
        x0, y0 = sky_to_pixel(camera, det, ends["ra_start"], ends["dec_start"], *pointing)
        x1, y1 = sky_to_pixel(camera, det, ends["ra_end"], ends["dec_end"], *pointing)
        # a trail is drawn as points about 0.5 px apart on the line between its ends
        steps = np.maximum(1, np.ceil(np.hypot(x1 - x0, y1 - y0) / 0.5)).astype(int)
        owner = np.repeat(np.arange(len(sel)), steps)
        index = np.arange(len(owner)) - np.repeat(np.cumsum(steps) - steps, steps)
        t = (index + 0.5) / steps[owner]
        trailed = steps[owner] > 1
        px = np.where(trailed, x0[owner] + t * (x1 - x0)[owner], x[owner])
        py = np.where(trailed, y0[owner] + t * (y1 - y0)[owner], y[owner])
        render_stars(image, px, py, counts[owner] / steps[owner], psf)
    else:
        render_stars(image, x, y, counts, psf)
    columns = ("id", "kind", "ra", "dec", "flux", "ssObjectId", "designation")
    drawn = {c: objs[c].to_numpy()[sel] for c in columns}
    drawn.update(x=x, y=y, counts=counts, on_detector=det.contains_pixel(x, y))
    return pd.DataFrame(drawn)


def _bleed(image: np.ndarray, full_well: float) -> None:
    """Move charge above the full well along the column, half up and half down, in place.

    Charge is conserved: each run of over-full pixels is set to the full well and its excess fills
    the neighbouring pixels of the column up to the full well, outward from the run.
    """
    cols = np.flatnonzero((image > full_well).any(axis=0))
    height = image.shape[0]
    for c in cols:
        column = image[:, c]
        over = column > full_well
        edges = np.diff(np.concatenate([[0], over.astype(np.int8), [0]]))
        for start, stop in zip(
            np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True
        ):
            excess = float(np.sum(column[start:stop] - full_well))
            column[start:stop] = full_well
            for direction, first in ((1, stop), (-1, start - 1)):
                remaining = excess / 2.0
                rows = np.arange(first, height if direction > 0 else -1, direction)
                room = np.maximum(full_well - column[rows], 0.0)
                filled = np.cumsum(room)
                n_full = int(np.searchsorted(filled, remaining))
                column[rows[:n_full]] = full_well
                if n_full < len(rows):
                    column[rows[n_full]] += remaining - (filled[n_full - 1] if n_full else 0.0)


def _exposure_truth(
    visit: VisitParameters,
    det: Detector,
    psf: VariablePsf,
    background: np.ndarray,
    camera: Camera,
    snap: int | None,
    n_snaps: int,
    sources: pd.DataFrame,
    mask: np.ndarray,
    bad_columns: list[tuple[int, int]],
) -> dict[str, Any]:
    pixel_scale = camera.plate_scale * det.pixel_size
    gx = np.linspace(0, det.width - 1, 9)
    gy = np.linspace(0, det.height - 1, 9)
    fwhm, _, _ = local_psf_parameters(psf, *np.meshgrid(gx, gy))
    cx, cy = det.center_pixel
    fx, fy = det.pixel_to_focal_plane(cx, cy)
    on = sources["on_detector"].to_numpy()
    return {
        "visit": visit.visit,
        "detector": det.id,
        "snap": -1 if snap is None else int(snap),
        # a snap collects 1/n_snaps of the light: its zero point is brighter by 2.5 log10(n)
        "zero_point": visit.zero_point - 2.5 * math.log10(n_snaps),
        "psf_fwhm_center": float(psf.fwhm_at(cx, cy) * pixel_scale),
        "psf_fwhm_min": float(fwhm.min() * pixel_scale),
        "psf_fwhm_max": float(fwhm.max() * pixel_scale),
        "sky_level_center": float(visit.sky_level / n_snaps * visit.sky_gradient(fx, fy)),
        "sky_mean": float(background.mean()),
        "n_stars": int(np.sum(on & sources["is_star"].to_numpy())),
        "n_galaxies": int(np.sum(on & ~sources["is_star"].to_numpy())),
        "n_saturated_pixels": int(np.count_nonzero(mask & int(MaskPlanes.SAT))),
        "bad_columns": ",".join(str(c) for c, _ in bad_columns),
    }

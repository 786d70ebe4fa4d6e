"""Per-visit observing conditions: pointing, rotation, seeing, PSF field, sky, zero point.

Everything about a visit is drawn from the stream ``(seed, TAG_VISITS, visit)``, so visit 7 is the
same whether 7 or 70 visits are simulated. Focal-plane functions (PSF FWHM and ellipticity, the
large-scale sky gradient) are written in the normalised focal-plane radius ``rho = f / R`` where
``R`` is the camera's focal-plane radius in mm, so they have the same meaning for every camera.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..core import Camera, Detector, VariablePsf, VisitInfo
from .config import TAG_VISITS, SimConfig
from .wcs import tangent_to_sky


@dataclass(frozen=True)
class VisitParameters:
    """True conditions of one visit (one row of ``truth_visits``).

    Attributes
    ----------
    visit : int
    band : str
    mjd : float
        Midpoint, MJD TAI.
    exposure_time : float
        Seconds (whole visit; snaps share it).
    boresight_ra, boresight_dec : float
        True pointing, degrees.
    rotation_angle : float
        Position angle (North through East) of the focal plane's +y axis, degrees.
    airmass : float
    seeing_fwhm : float
        PSF FWHM at the optical axis, arcsec.
    psf_beta : float
        Moffat index.
    psf_fwhm_variation : float
        Fractional FWHM growth at focal-plane radius R: ``fwhm = seeing (1 + var rho^2 + tilt)``.
    psf_tilt_x, psf_tilt_y : float
        Linear fractional FWHM terms in ``rho_x``, ``rho_y`` (a tilted focal plane).
    psf_e1, psf_e2 : float
        Constant PSF ellipticity (focal-plane frame).
    psf_astigmatism : float
        ``e1 += a (rho_x^2 - rho_y^2)``, ``e2 += a 2 rho_x rho_y``.
    zero_point : float
        AB magnitude giving one count in the full visit (includes extinction and clouds).
    cloud_extinction : float
        Mag of cloud extinction included in ``zero_point``.
    sky_level : float
        Sky counts per pixel at the optical axis for the full visit.
    bg_x, bg_y, bg_xx, bg_xy, bg_yy : float
        Focal-plane gradient: ``G = 1 + bg_x rho_x + bg_y rho_y + bg_xx rho_x^2 + bg_xy rho_x
        rho_y + bg_yy rho_y^2``.
    focal_plane_radius_mm : float
        ``R``, the normalisation of ``rho``.
    pointing_error_east, pointing_error_north : float
        Offset (arcsec) of the initial WCS's boresight from the truth.
    rotation_error : float
        Rotation error (degrees) of the initial WCS.
    """

    visit: int
    band: str
    mjd: float
    exposure_time: float
    boresight_ra: float
    boresight_dec: float
    rotation_angle: float
    airmass: float
    seeing_fwhm: float
    psf_beta: float
    psf_fwhm_variation: float
    psf_tilt_x: float
    psf_tilt_y: float
    psf_e1: float
    psf_e2: float
    psf_astigmatism: float
    zero_point: float
    cloud_extinction: float
    sky_level: float
    bg_x: float
    bg_y: float
    bg_xx: float
    bg_xy: float
    bg_yy: float
    focal_plane_radius_mm: float
    pointing_error_east: float
    pointing_error_north: float
    rotation_error: float

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain dict (a row of ``truth_visits``)."""
        return asdict(self)

    def visit_info(
        self, physical_filter: str | None = None, snap: int | None = None, n_snaps: int = 1
    ) -> VisitInfo:
        """The :class:`~apflow.core.VisitInfo` of the visit, or of one snap of it."""
        exptime = self.exposure_time / n_snaps
        mjd = self.mjd
        if snap is not None:
            # snaps follow each other; the midpoint of snap s is offset from the visit midpoint
            mjd += (snap - (n_snaps - 1) / 2.0) * exptime / 86400.0
        return VisitInfo(
            visit=self.visit,
            band=self.band,
            physical_filter=physical_filter or f"{self.band}_sim",
            mjd=mjd,
            exposure_time=exptime,
            boresight_ra=self.boresight_ra,
            boresight_dec=self.boresight_dec,
            rotation_angle=self.rotation_angle,
            airmass=self.airmass,
        )

    def sky_gradient(self, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        """Large-scale focal-plane sky factor ``G(fx, fy)`` (1 on the optical axis)."""
        rx = np.asarray(fx, dtype=float) / self.focal_plane_radius_mm
        ry = np.asarray(fy, dtype=float) / self.focal_plane_radius_mm
        return (
            1.0
            + self.bg_x * rx
            + self.bg_y * ry
            + self.bg_xx * rx * rx
            + self.bg_xy * rx * ry
            + self.bg_yy * ry * ry
        )

    def psf_parameters(
        self, fx: np.ndarray, fy: np.ndarray, pixel_scale: float
    ) -> tuple[np.ndarray, ...]:
        """PSF ``(fwhm_pixels, e1, e2)`` at focal-plane positions (focal-plane frame)."""
        rx = np.asarray(fx, dtype=float) / self.focal_plane_radius_mm
        ry = np.asarray(fy, dtype=float) / self.focal_plane_radius_mm
        fwhm = (
            self.seeing_fwhm
            / pixel_scale
            * (
                1.0
                + self.psf_fwhm_variation * (rx * rx + ry * ry)
                + self.psf_tilt_x * rx
                + self.psf_tilt_y * ry
            )
        )
        e1 = self.psf_e1 + self.psf_astigmatism * (rx * rx - ry * ry)
        e2 = self.psf_e2 + self.psf_astigmatism * 2.0 * rx * ry
        return fwhm, e1, e2


def focal_plane_radius(camera: Camera) -> float:
    """Radius (mm) of the circle about the optical axis that encloses every detector."""
    xmin, xmax, ymin, ymax = camera.focal_plane_bounds()
    return max(math.hypot(x, y) for x in (xmin, xmax) for y in (ymin, ymax))


def make_visit(
    camera: Camera, config: SimConfig, seed: int, visit: int, index: int, band: str
) -> VisitParameters:
    """Draw the conditions of one visit.

    Parameters
    ----------
    index : int
        Position of the visit in the night (sets the MJD: visits are ``visit_cadence_s`` apart).
    """
    rng = np.random.default_rng([seed, TAG_VISITS, visit])
    # dither uniform in a disc
    rad = config.dither_arcmin / 60.0 * math.sqrt(rng.random())
    phi = rng.random() * 2.0 * math.pi
    ra, dec = tangent_to_sky(
        rad * math.sin(phi), rad * math.cos(phi), config.field_ra, config.field_dec
    )
    rot_lo, rot_hi = config.rotation_range_deg
    rotation = rng.uniform(rot_lo, rot_hi) * rng.choice([-1.0, 1.0])
    airmass = rng.uniform(*config.airmass_range)
    cloud = (
        0.0 if rng.random() < config.photometric_fraction else rng.uniform(0.0, config.cloud_max)
    )
    zero_point = config.zero_point[band] - config.extinction * (airmass - 1.0) - cloud
    err_r = rng.uniform(*config.pointing_error_arcsec)
    err_phi = rng.random() * 2.0 * math.pi
    g = config.sky_gradient
    return VisitParameters(
        visit=int(visit),
        band=band,
        mjd=config.mjd_start
        + index * config.visit_cadence_s / 86400.0
        + rng.uniform(0, 5) / 86400.0,
        exposure_time=config.exposure_time,
        boresight_ra=float(ra),
        boresight_dec=float(dec),
        rotation_angle=float(rotation),
        airmass=float(airmass),
        seeing_fwhm=float(rng.uniform(*config.seeing_range_arcsec)),
        psf_beta=config.psf_beta,
        psf_fwhm_variation=float(config.psf_fwhm_variation * rng.uniform(0.5, 1.0)),
        psf_tilt_x=float(rng.normal(0.0, 0.02)),
        psf_tilt_y=float(rng.normal(0.0, 0.02)),
        psf_e1=float(rng.normal(0.0, 0.02)),
        psf_e2=float(rng.normal(0.0, 0.02)),
        psf_astigmatism=float(config.psf_ellipticity_variation * rng.uniform(-1.0, 1.0)),
        zero_point=float(zero_point),
        cloud_extinction=float(cloud),
        sky_level=float(rng.uniform(*config.sky_range)),
        bg_x=float(rng.normal(0.0, g)),
        bg_y=float(rng.normal(0.0, g)),
        bg_xx=float(rng.normal(0.0, g / 2)),
        bg_xy=float(rng.normal(0.0, g / 2)),
        bg_yy=float(rng.normal(0.0, g / 2)),
        focal_plane_radius_mm=focal_plane_radius(camera),
        pointing_error_east=float(err_r * math.cos(err_phi)),
        pointing_error_north=float(err_r * math.sin(err_phi)),
        rotation_error=float(rng.normal(0.0, config.rotation_error_deg)),
    )


def make_visits(
    camera: Camera, config: SimConfig, seed: int, n_visits: int, band: str, first_visit: int = 1
) -> list[VisitParameters]:
    """Visits ``first_visit .. first_visit + n_visits - 1`` in time order."""
    return [make_visit(camera, config, seed, first_visit + i, i, band) for i in range(n_visits)]


def detector_psf(visit: VisitParameters, camera: Camera, detector: Detector) -> VariablePsf:
    """The visit's PSF on a detector as a :class:`~apflow.core.VariablePsf` (exact, order 2).

    The FWHM and ellipticity are quadratic in focal-plane position, and the detector map is
    affine, so a degree-2 polynomial in the detector's normalised coordinates reproduces them
    exactly; the coefficients come from a least-squares solve on a small grid.
    """
    u = np.linspace(-1.0, 1.0, 5)
    uu, vv = (a.ravel() for a in np.meshgrid(u, u, indexing="ij"))
    x = (uu + 1.0) * (detector.width - 1) / 2.0
    y = (vv + 1.0) * (detector.height - 1) / 2.0
    fx, fy = detector.pixel_to_focal_plane(x, y)
    fwhm, e1, e2 = visit.psf_parameters(fx, fy, camera.plate_scale * detector.pixel_size)
    # ellipticity is a spin-2 quantity: rotate it from the focal-plane frame into pixel axes
    yaw = math.radians(detector.yaw_deg)
    c2, s2 = math.cos(2 * yaw), math.sin(2 * yaw)
    e1, e2 = c2 * e1 + s2 * e2, -s2 * e1 + c2 * e2
    terms = np.column_stack([uu**i * vv**j for i in range(3) for j in range(3 - i)])

    def fit(values: np.ndarray) -> tuple[float, ...]:
        coeffs, *_ = np.linalg.lstsq(terms, values, rcond=None)
        return tuple(float(c) for c in coeffs)

    return VariablePsf(
        profile="moffat",
        width=detector.width,
        height=detector.height,
        fwhm_coeffs=fit(fwhm),
        e1_coeffs=fit(e1),
        e2_coeffs=fit(e2),
        beta=visit.psf_beta,
    )

"""Every knob of the simulator in one place, with its documented default.

Units: magnitudes are AB, fluxes nJy, angles degrees unless the name says arcsec/arcmin, pixel
values counts (electrons with gain 1). The defaults give a Rubin-like r-band 30 s visit: sky
~21 mag/arcsec^2 (800-2000 counts per 0.2" pixel), zero point ~32 mag (a 20th-magnitude star gives
~7e4 counts), stars brighter than ~16.5 mag saturate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

#: Bands for which every source has a true flux.
BANDS: tuple[str, ...] = ("g", "r", "i")

# Stream tags for ``numpy.random.default_rng([seed, TAG, ...])``: every random quantity is drawn
# from its own stream keyed by what it describes, so results never depend on loop order or
# parallelism, and adding a new random quantity does not change existing ones.
TAG_CATALOG = 1
TAG_VISITS = 2
TAG_PATTERN = 3
TAG_DEFECTS = 4
TAG_NOISE = 5
TAG_COADD = 6
TAG_REFCAT = 7
TAG_VARIABLES = 8
TAG_TRANSIENTS = 9
TAG_MOVERS = 10
TAG_TEMPLATE = 11
TAG_NOISE_DYNAMIC = 12


@dataclass(frozen=True)
class SimConfig:
    """Simulation parameters (all have defaults; ``simulate(**options)`` overrides them).

    Sky
    ---
    field_ra, field_dec : float
        Centre of the simulated field (ICRS degrees).
    star_density, galaxy_density : float
        Sources per square degree between the bright and faint magnitude limits (r band).
    star_mag_range, galaxy_mag_range : tuple of float
        r-band AB magnitude range; number counts rise as ``10**(count_slope * m)``.
    count_slope : float
        Logarithmic slope of the differential number counts (dex per mag).
    galaxy_re_arcsec : float
        Median half-light radius of an r = 20 galaxy; fainter galaxies are smaller.
    catalog_margin_arcsec : float
        Extra radius around the dithered camera footprint in which sources are generated.

    Visits
    ------
    dither_arcmin : float
        Boresight offsets are uniform in a disc of this radius around the field centre.
    rotation_range_deg : tuple of float
        Visit rotation angles are uniform in +-[min, max] degrees.
    seeing_range_arcsec : tuple of float
        Per-visit PSF FWHM at the optical axis.
    psf_beta : float
        Moffat index of the PSF.
    psf_fwhm_variation : float
        Maximum fractional FWHM growth from the optical axis to the focal-plane edge.
    psf_ellipticity_variation : float
        Amplitude of the astigmatism-like e1/e2 pattern at the focal-plane edge.
    sky_range : tuple of float
        Per-visit sky level at the optical axis, counts per pixel per full visit.
    sky_gradient : float
        Typical fractional amplitude of the per-visit focal-plane gradient at the edge.
    zero_point : dict
        AB magnitude giving one count in ``exposure_time`` at airmass 1 without clouds.
    extinction : float
        Mag per airmass.
    cloud_max : float
        Cloud extinction of a non-photometric visit is uniform in [0, cloud_max] mag.
    photometric_fraction : float
        Fraction of visits with no cloud extinction.
    airmass_range : tuple of float
    exposure_time : float
        Seconds per visit (each of ``n_snaps`` snaps gets ``exposure_time / n_snaps``).
    mjd_start : float
        MJD (TAI) of the first visit's midpoint.
    visit_cadence_s : float
        Mean time between visit midpoints.
    pointing_error_arcsec : tuple of float
        Range of the pointing error of the initial (header) WCS.
    rotation_error_deg : float
        Standard deviation of the rotation error of the initial WCS.

    Detector
    --------
    read_noise : float
        Gaussian read noise, electrons (= counts, gain 1).
    gain : float
        Electrons per count.
    saturation : float
        Full well in counts; pixels reaching it are clipped and flagged SAT.
    bleed : bool
        Spill the charge above the full well along columns (bleed trails).
    n_bad_columns : int
        Bad columns per detector (fixed per detector across visits, flagged BAD, image set to 0).
    edge_width : int
        Border pixels flagged EDGE.
    sky_pattern_rms : float
        Rms of the fixed per-detector small-scale sky pattern P (fraction of the sky).

    Coadds
    ------
    coadd_bands : tuple of str
    coadd_pixel_scale : float
        Arcsec per pixel of the tract's TAN projection.
    patches_per_side : int
        The tract is cut into at least this many patches per side; patches tile the union of the
        visit footprints and are at most ``max_patch_size`` pixels on a side.
    max_patch_size : int
        Largest patch side in pixels (more patches are made for a larger field).
    coadd_fwhm_arcsec : float
        FWHM of the constant Moffat PSF of the deep coadds.
    coadd_depth : float
        5-sigma point-source depth of the deep coadds (AB mag).
    coadd_ref_snr : float
        Minimum coadd point-source S/N of a source listed in ``coadd_ref``.

    Reference catalog
    -----------------
    ref_mag_limit : float
        Faintest star (r band) in ``ref_cat``.
    ref_flux_error_floor : float
        Fractional systematic error of reference fluxes, added to the photon noise.
    ref_depth : float
        5-sigma depth (AB mag) that sets the photon-noise part of the reference flux errors.
    ref_position_error_mas : float
        Rms scatter of reference positions (0 gives exact positions).

    Variable stars and transients (not in ``ref_cat``; see :mod:`apflow.sim.transients`)
    ------------------------------------------------------------------------------------
    variable_density, transient_density : float
        Objects per square degree (0 turns them off). The defaults give about 5 variables and 3
        transients per mini-camera CCD.
    variable_mag_range : tuple of float
        Mean r-band AB magnitude of the variables. Bright point sources missing from ``ref_cat``
        (r < ~21) move calibrate's zero point by a few mmag, so the defaults stay fainter.
    variable_amplitude_range : tuple of float
        Peak-to-peak amplitude in magnitudes.
    variable_period_range_days : tuple of float
        Periods are log-uniform in this range (RR-Lyrae-like ones use 0.3-0.9 days).
    transient_peak_mag_range : tuple of float
        Peak r-band AB magnitude of the supernova-like transients.
    transient_max_age_days : float
        Transients already on at ``mjd_start`` exploded up to this many days before.
    transient_new_fraction : float
        Fraction of transients that explode after ``mjd_start``, uniformly within
        ``transient_new_window_visits`` visit cadences (the span of a default run).
    transient_new_window_visits : float
    transient_host_fraction : float
        Fraction of transients placed in a catalog galaxy (offset within its half-light radius).

    Moving objects (see :mod:`apflow.sim.movers`)
    ---------------------------------------------
    known_mover_density, unknown_mover_density : float
        Movers per square degree placed in the field at the start of each ``mover_epoch_days``
        slice of time; known ones have an ephemeris (``ss_ephemeris``), unknown ones are only
        rendered. The defaults give about 3 known movers per mini CCD.
    mover_vmag_range : tuple of float
        V magnitude at the slice start (r = V - 0.2; single-visit S/N about 15-60 for the
        defaults, and fainter than r ~21 for the same reason as the variables).
    mover_epoch_days : float
        Length of the time slices (a night); each slice has its own movers.
    mover_position_error_arcsec : tuple of float
        Per-object 1-sigma (per coordinate) ephemeris prediction error, uniform in this range.
    mover_trail : bool
        Draw movers trailed along their motion during the exposure.

    Templates (see :mod:`apflow.sim.template`)
    ------------------------------------------
    templates : bool
        Write ``template`` patches (the visits' band) with the static sky at the template epoch.
    template_fwhm_arcsec : float
        FWHM of the templates' constant Moffat PSF (better than any visit's seeing).
    template_depth : float
        5-sigma point-source depth of the templates (AB mag).
    template_epoch_days : float
        Template epoch relative to ``mjd_start`` (days; before the run, so no transient is on).
    """

    field_ra: float = 150.0
    field_dec: float = 2.2
    star_density: float = 40_000.0
    galaxy_density: float = 20_000.0
    star_mag_range: tuple[float, float] = (14.0, 24.5)
    galaxy_mag_range: tuple[float, float] = (18.0, 24.5)
    count_slope: float = 0.3
    galaxy_re_arcsec: float = 0.8
    catalog_margin_arcsec: float = 30.0

    dither_arcmin: float = 2.0
    rotation_range_deg: tuple[float, float] = (0.1, 1.0)
    seeing_range_arcsec: tuple[float, float] = (0.6, 1.1)
    psf_beta: float = 3.5
    psf_fwhm_variation: float = 0.1
    psf_ellipticity_variation: float = 0.04
    sky_range: tuple[float, float] = (800.0, 2000.0)
    sky_gradient: float = 0.06
    zero_point: dict[str, float] = field(default_factory=lambda: {"g": 32.2, "r": 32.0, "i": 31.7})
    extinction: float = 0.1
    cloud_max: float = 0.3
    photometric_fraction: float = 0.5
    airmass_range: tuple[float, float] = (1.0, 1.6)
    exposure_time: float = 30.0
    mjd_start: float = 60400.1
    visit_cadence_s: float = 39.0
    pointing_error_arcsec: tuple[float, float] = (2.0, 5.0)
    rotation_error_deg: float = 0.1

    read_noise: float = 5.0
    gain: float = 1.0
    saturation: float = 100_000.0
    bleed: bool = True
    n_bad_columns: int = 3
    edge_width: int = 4
    sky_pattern_rms: float = 0.02

    coadd_bands: tuple[str, ...] = ("r", "g")
    coadd_pixel_scale: float = 0.2
    patches_per_side: int = 2
    max_patch_size: int = 4096
    coadd_fwhm_arcsec: float = 0.8
    coadd_depth: float = 26.5
    coadd_ref_snr: float = 5.0

    ref_mag_limit: float = 22.5
    ref_flux_error_floor: float = 0.015
    ref_depth: float = 24.0
    ref_position_error_mas: float = 0.0

    variable_density: float = 1500.0
    variable_mag_range: tuple[float, float] = (21.0, 23.5)
    variable_amplitude_range: tuple[float, float] = (0.1, 1.0)
    variable_period_range_days: tuple[float, float] = (0.08, 10.0)
    transient_density: float = 900.0
    transient_peak_mag_range: tuple[float, float] = (19.5, 23.5)
    transient_max_age_days: float = 40.0
    transient_new_fraction: float = 0.25
    transient_new_window_visits: float = 10.0
    transient_host_fraction: float = 0.5

    known_mover_density: float = 900.0
    unknown_mover_density: float = 200.0
    mover_vmag_range: tuple[float, float] = (21.5, 23.0)
    mover_epoch_days: float = 1.0
    mover_position_error_arcsec: tuple[float, float] = (0.1, 0.3)
    mover_trail: bool = True

    templates: bool = True
    template_fwhm_arcsec: float = 0.5
    template_depth: float = 26.5
    template_epoch_days: float = -365.0

    def updated(self, **overrides: Any) -> SimConfig:
        """Copy with fields replaced.

        Raises
        ------
        ConfigError
            On an unknown field name.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"unknown simulation option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        new = dataclasses.replace(self, **overrides)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise :class:`~apflow.errors.ConfigError` on an inconsistent value."""
        for name in (
            "star_mag_range",
            "galaxy_mag_range",
            "seeing_range_arcsec",
            "sky_range",
            "variable_mag_range",
            "variable_amplitude_range",
            "variable_period_range_days",
            "transient_peak_mag_range",
            "mover_vmag_range",
            "mover_position_error_arcsec",
        ):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ConfigError(f"SimConfig.{name}: need min <= max, got ({lo}, {hi})")
        densities = (
            "star_density",
            "galaxy_density",
            "variable_density",
            "transient_density",
            "known_mover_density",
            "unknown_mover_density",
        )
        for name in densities:
            if getattr(self, name) < 0:
                raise ConfigError(f"SimConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.variable_period_range_days[0] <= 0 or self.mover_epoch_days <= 0:
            raise ConfigError("SimConfig: variable periods and mover_epoch_days must be > 0")
        for name in ("transient_new_fraction", "transient_host_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"SimConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.psf_beta <= 1.0:
            raise ConfigError(f"SimConfig.psf_beta must be > 1, got {self.psf_beta}")
        for band in self.coadd_bands:
            if band not in BANDS:
                raise ConfigError(f"SimConfig.coadd_bands: {band!r} not in {BANDS}")
        if self.patches_per_side < 1 or self.max_patch_size < 64:
            raise ConfigError("SimConfig: patches_per_side must be >= 1 and max_patch_size >= 64")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (recorded with the truth)."""
        return dataclasses.asdict(self)

"""Solar-system association (inside ``alert_production``): DiaSources matched one to one with
the predicted positions of known moving objects on the CCD, giving APDB ``SSSource`` rows.

:class:`SsoAssociationTask` is the stage; :func:`match_ephemerides` (KD-tree on unit vectors)
and :func:`in_footprint` are its algorithms on plain arrays.
"""

from .footprint import footprint_margin_px, in_footprint, pixel_scale_arcsec
from .matching import match_ephemerides, unit_vectors
from .sssource import ss_source_rows
from .task import SsoAssociationConfig, SsoAssociationResult, SsoAssociationTask

__all__ = [
    "SsoAssociationConfig",
    "SsoAssociationResult",
    "SsoAssociationTask",
    "footprint_margin_px",
    "in_footprint",
    "match_ephemerides",
    "pixel_scale_arcsec",
    "ss_source_rows",
    "unit_vectors",
]

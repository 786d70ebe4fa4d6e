"""DiaObject association: DiaSources of a (visit, detector) to DiaObjects in the APDB.

:class:`AssociationTask` matches, creates and updates DiaObjects, forced-photometers them and
writes the (visit, detector) to the APDB in one transaction (see :mod:`.task` for the model and
the ordering assumptions).
"""

from .matching import match_greedy
from .summaries import BANDS, dia_object_summaries
from .task import AssociationConfig, AssociationResult, AssociationTask

__all__ = [
    "BANDS",
    "AssociationConfig",
    "AssociationResult",
    "AssociationTask",
    "dia_object_summaries",
    "match_greedy",
]

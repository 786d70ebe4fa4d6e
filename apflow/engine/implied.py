"""Implied dimensions: a visit determines its band and physical filter (as in Rubin's Butler).

Data ids of per-visit datasets (``post_isr``: visit, detector) do not carry the filter, yet some
products are per filter: a sky frame is per (detector, physical_filter). A stage may therefore
use ``band`` or ``physical_filter`` as if every data id with a ``visit`` had them:

- a stage over ``[visit, detector]`` reads an input over ``[detector, physical_filter]`` one to
  one: the frame of the visit's filter (``sky_correct``);
- a stage over ``[detector, physical_filter]`` gathers an input over ``[visit, detector]``: the
  visits of that filter only (``combine_sky``), and has one quantum per filter present;
- a stage's required inputs determine its implied dimensions through their visits.

The values come from the visit info stored with the exposures of the repository (the header,
never the pixels), one exposure per visit, read once per plan (:class:`VisitRecords`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..core.dataid import IMPLIED_DIMENSIONS
from ..errors import WorkflowError

__all__ = ["IMPLIED_DIMENSIONS", "VisitRecords", "implied_by", "with_implied"]


#: A data id as a sorted tuple of (key, value) pairs (``apflow.engine.graph.IdKey``).
IdKey = tuple[tuple[str, Any], ...]


def implied_by(dimensions: Iterable[str]) -> frozenset[str]:
    """The dimensions implied by ``dimensions`` that they do not already contain."""
    dims = frozenset(dimensions)
    implied = {d for key in dims for d in IMPLIED_DIMENSIONS.get(key, ())}
    return frozenset(implied - dims)


def with_implied(dimensions: Iterable[str]) -> frozenset[str]:
    """``dimensions`` plus those they imply."""
    dims = frozenset(dimensions)
    return dims | implied_by(dims)


class VisitRecords:
    """Band and physical filter of visits, read from stored exposures' visit info.

    Parameters
    ----------
    repo : Repository
        Where the exposures are.
    dataset_types : iterable of str
        Exposure dataset types with a ``visit`` dimension to look in, in order of preference
        (a workflow's inputs, which exist before the run: ``post_isr``).
    """

    def __init__(self, repo: Any, dataset_types: Iterable[str]):
        self.repo = repo
        self.dataset_types = []
        for name in dict.fromkeys(dataset_types):
            try:
                spec = repo.dataset_type(name)
            except KeyError:  # not registered: nothing stored to read
                continue
            if spec.storage == "exposure" and "visit" in spec.dimensions:
                self.dataset_types.append(name)
        self._records: dict[Any, dict[str, str]] = {}
        self._ids: dict[str, dict[Any, dict[str, Any]]] = {}

    def __call__(self, visits: Iterable[Any]) -> dict[Any, dict[str, str]]:
        """``{visit: {"band": ..., "physical_filter": ...}}`` for the visits found.

        A visit none of the dataset types holds, or whose visit info lacks the filter, is
        left out (the graph then reports it).
        """
        for visit in visits:
            if visit not in self._records:
                record = self._read(visit)
                if record is not None:
                    self._records[visit] = record
        return self._records

    def _read(self, visit: Any) -> dict[str, str] | None:
        for name in self.dataset_types:
            if name not in self._ids:
                first: dict[Any, dict[str, Any]] = {}
                for data_id in self.repo.data_ids(name):
                    first.setdefault(data_id["visit"], data_id)
                self._ids[name] = first
            data_id = self._ids[name].get(visit)
            if data_id is None:
                continue
            info = self.repo.exposure_header(name, **data_id).visit_info
            if info is not None and info.physical_filter:
                return {"band": str(info.band or ""), "physical_filter": str(info.physical_filter)}
        return None


class Implied:
    """Adds implied values to data ids during one graph build.

    Parameters
    ----------
    source : callable, optional
        Visits -> ``{visit: {"band": ..., "physical_filter": ...}}`` (a :class:`VisitRecords`).
    workflow : str
        For error messages.
    """

    def __init__(
        self,
        source: Callable[[Iterable[Any]], Mapping[Any, Mapping[str, str]]] | None,
        workflow: str,
    ):
        self.source = source
        self.workflow = workflow

    def augment(self, ids: Iterable[IdKey], wanted: frozenset[str], where: str) -> list[IdKey]:
        """``ids`` with the ``wanted`` implied dimensions added (sorted keys).

        Raises
        ------
        WorkflowError
            Without a source, or for a visit whose band / physical filter is unknown.
        """
        ids = list(ids)
        if not wanted or not ids:
            return ids
        if self.source is None:
            raise WorkflowError(
                f"workflow {self.workflow!r}, {where}: needs {sorted(wanted)} of each visit "
                "(plan() with a repository reads them from the exposures' visit info)"
            )
        records = self.source({dict(i)["visit"] for i in ids})
        out = []
        for data_id in ids:
            values = dict(data_id)
            record = records.get(values["visit"])
            if record is None or any(not record.get(d) for d in wanted):
                raise WorkflowError(
                    f"workflow {self.workflow!r}, {where}: the {'/'.join(sorted(wanted))} of "
                    f"visit {values['visit']} is unknown (no stored exposure of the visit "
                    "records it in its visit info)"
                )
            values.update({d: record[d] for d in wanted})
            out.append(tuple(sorted(values.items())))
        return out

"""The execution engine: workflow -> quantum graph -> Dask; clusters, progress, resume, provenance.

The engine is the only part of apflow that knows Dask (DESIGN.md section 2). Entry points:

- :func:`run` (also ``apflow.run``) runs a workflow over a repository and returns a
  :class:`RunSummary`; ``apflow run`` is its command line (:mod:`apflow.engine.cli`).
- :func:`load_workflow` reads and validates ``workflows/*.yaml``; :func:`plan` builds the
  quantum graph without running it; :func:`parse_where` parses ``--where`` expressions.
"""

from __future__ import annotations

from .runner import plan, run
from .summary import Failure, RunSummary, StageSummary
from .where import Where, WhereError, parse_where
from .workflow import Stage, Workflow, load_workflow

__all__ = [
    "Failure",
    "RunSummary",
    "Stage",
    "StageSummary",
    "Where",
    "WhereError",
    "Workflow",
    "load_workflow",
    "parse_where",
    "plan",
    "run",
]

"""The result of a run: per-stage counts and timings, failures, and a printable table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import format_data_id

__all__ = ["Failure", "RunSummary", "StageSummary", "STATUSES"]

#: Quantum outcomes. ``skipped``: outputs already existed (resume). ``blocked``: not run because
#: an input's producer failed or did not produce it.
STATUSES = ("done", "skipped", "failed", "blocked")


@dataclass
class Failure:
    """A quantum that raised (``status="failed"``) or could not run (``status="blocked"``).

    Attributes
    ----------
    stage : str
    data_id : dict
    key : str
        The quantum's Dask key.
    error : str
        ``ExceptionType: message`` for a failure; the reason for a blocked quantum.
    traceback : str
        The last frames of the traceback (empty for blocked quanta).
    status : str
        ``"failed"`` or ``"blocked"``.
    """

    stage: str
    data_id: dict[str, Any]
    key: str
    error: str
    traceback: str = ""
    status: str = "failed"

    def __str__(self) -> str:
        return f"{self.stage} [{format_data_id(self.data_id)}]: {self.error}"


#: Per-stage timing sums (seconds) in :meth:`RunSummary.to_dict`.
TIMINGS = ("wall_seconds", "task_seconds", "read_seconds", "compute_seconds", "write_seconds")


@dataclass
class StageSummary:
    """Counts and timings of one stage.

    Attributes
    ----------
    total : int
        Quanta of the stage in this run's graph.
    done, skipped, failed, blocked : int
    wall_seconds : float
        From the first submission of the stage's quanta to the last completion.
    task_seconds : float
        Sum of the quanta's own durations (read + compute + write).
    read_seconds, compute_seconds, write_seconds : float
        The parts of ``task_seconds``: reading inputs, running the task, writing outputs.
    """

    name: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    blocked: int = 0
    wall_seconds: float = 0.0
    task_seconds: float = 0.0
    read_seconds: float = 0.0
    compute_seconds: float = 0.0
    write_seconds: float = 0.0

    @property
    def finished(self) -> int:
        """Quanta with an outcome so far."""
        return self.done + self.skipped + self.failed + self.blocked


@dataclass
class RunSummary:
    """What :func:`apflow.run` did.

    Attributes
    ----------
    run_id, workflow, repo : str
    stages : dict of str to StageSummary
        In dependency order.
    failures : list of Failure
        Quanta that raised.
    blocked : list of Failure
        Quanta not run because of a failed or missing input.
    wall_seconds : float
        Whole run, graph building included.
    dashboard : str or None
        Dashboard link of the cluster used.
    results : list of dict
        Summary dict of every quantum that ran (status, timings, the task's small numbers).
    """

    run_id: str
    workflow: str
    repo: str
    stages: dict[str, StageSummary] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    blocked: list[Failure] = field(default_factory=list)
    wall_seconds: float = 0.0
    dashboard: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no quantum failed or was blocked."""
        return not self.failures and not self.blocked

    def count(self, status: str) -> int:
        """Number of quanta with ``status`` over all stages."""
        return sum(getattr(s, status) for s in self.stages.values())

    def as_table(self) -> str:
        """A fixed-width table: quanta done / skipped / failed / blocked and times per stage."""
        headers = ("stage", "quanta", "done", "skipped", "failed", "blocked", "wall s", "task s")
        rows = [
            (
                s.name,
                str(s.total),
                str(s.done),
                str(s.skipped),
                str(s.failed),
                str(s.blocked),
                f"{s.wall_seconds:.1f}",
                f"{s.task_seconds:.1f}",
            )
            for s in self.stages.values()
        ]
        rows.append(
            (
                "total",
                str(sum(s.total for s in self.stages.values())),
                *(str(self.count(status)) for status in STATUSES),
                f"{self.wall_seconds:.1f}",
                f"{sum(s.task_seconds for s in self.stages.values()):.1f}",
            )
        )
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

        def line(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join([first, *rest])

        rule = "-" * len(line(headers))
        out = [line(headers), rule, *map(line, rows[:-1]), rule, line(rows[-1])]
        for failure in self.failures:
            out.append(f"FAILED  {failure}")
        for blocked in self.blocked[:20]:
            out.append(f"BLOCKED {blocked}")
        if len(self.blocked) > 20:
            out.append(f"BLOCKED ... and {len(self.blocked) - 20} more")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.as_table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without per-quantum results)."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "repo": self.repo,
            "ok": self.ok,
            "wall_seconds": self.wall_seconds,
            "stages": {
                n: {k: getattr(s, k) for k in ("total", *STATUSES, *TIMINGS)}
                for n, s in self.stages.items()
            },
            "failures": [vars(f) for f in self.failures],
            "blocked": [vars(f) for f in self.blocked],
        }

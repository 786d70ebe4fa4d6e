"""Progress of a run: a bar per stage in a terminal or notebook, one line per stage otherwise.

Counts come from the engine's completion loop (authoritative: one outcome per quantum). Quanta
also publish events on a Dask topic (``log_event``: started / finished / failed with the task's
summary numbers); :meth:`Progress.on_event` consumes them to show what is running right now and
the latest numbers, and anyone else can subscribe to the same topic (``event_topic(run_id)``).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .summary import StageSummary

__all__ = ["Progress", "event_topic"]


def event_topic(run_id: str) -> str:
    """Name of the Dask event topic the quanta of ``run_id`` publish to."""
    return f"apflow-run-{run_id}"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """Per-stage progress display.

    Parameters
    ----------
    stages : mapping of str to StageSummary
        The run's stage summaries (their ``total``/``skipped`` are read at start, the rest as the
        run goes).
    enabled : bool
        False shows nothing.
    stream : file, optional
        Where to write (default ``sys.stderr``).
    """

    def __init__(
        self, stages: Mapping[str, StageSummary], enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.stages = stages
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.running: dict[str, int] = {name: 0 for name in stages}
        self.latest: dict[str, dict[str, Any]] = {}
        self._bars: dict[str, Any] = {}
        self._reported: set[str] = set()
        self._events_seen = False
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self.mode = "off"
        if enabled:
            if _in_notebook():
                self.mode = "notebook"
                if stream is None:
                    # stderr shows as error-tinted output in JupyterLab: banner and lines are not
                    self.stream = sys.stdout
            elif getattr(self.stream, "isatty", lambda: False)():
                self.mode = "terminal"
            else:
                self.mode = "lines"

    def print(self, message: str) -> None:
        """Write one line above the bars (or plainly)."""
        if not self.enabled:
            return
        if self.mode == "terminal" and self._bars:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def start(self) -> None:
        """Create the bars once the graph is known."""
        if self.mode in ("terminal", "notebook"):
            if self.mode == "notebook":
                from tqdm.notebook import tqdm
            else:
                from tqdm import tqdm
            width = max((len(n) for n in self.stages), default=5)
            columns, rows = shutil.get_terminal_size((0, 0))
            for position, (name, stage) in enumerate(self.stages.items()):
                bar = tqdm(
                    total=stage.total,
                    desc=name.ljust(width),
                    unit="q",
                    position=position,
                    file=self.stream if self.mode == "terminal" else None,
                    # a pseudo-terminal without a size reports 0 x 0: tqdm would draw nothing
                    ncols=None if columns > 0 else 100,
                    nrows=None if rows > 0 else 50,
                    dynamic_ncols=columns > 0,
                    leave=True,
                )
                self._bars[name] = bar
        for name, stage in self.stages.items():
            self.update(name, "")
            if stage.total == 0:
                self._line(name)

    def update(self, stage: str, status: str) -> None:
        """Record one outcome (``status`` empty: refresh only)."""
        if not self.enabled:
            return
        summary = self.stages[stage]
        bar = self._bars.get(stage)
        if bar is not None:
            if status:
                bar.update(1)
            with self._lock:
                running = self.running.get(stage, 0)
                latest = self.latest.get(stage)
            postfix: dict[str, Any] = {
                "skip": summary.skipped,
                "fail": summary.failed + summary.blocked,
            }
            if self._events_seen:  # only quanta on a distributed cluster publish events
                postfix["run"] = running
            if latest:
                postfix.update({k: _short(v) for k, v in list(latest.items())[:2]})
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
        if status and summary.finished == summary.total:
            self._line(stage)

    def on_event(self, event: Any) -> None:
        """Handler for ``Client.subscribe_topic``: ``(timestamp, message)`` from a quantum."""
        message = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if not isinstance(message, Mapping) or message.get("stage") not in self.running:
            return
        stage = message["stage"]
        self._events_seen = True
        with self._lock:
            if message.get("kind") == "started":
                self.running[stage] += 1
            elif message.get("kind") in ("finished", "failed"):
                self.running[stage] = max(0, self.running[stage] - 1)
                if message.get("summary"):
                    self.latest[stage] = dict(message["summary"])

    def close(self) -> None:
        """Close the bars."""
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def _line(self, stage: str) -> None:
        # a terminal's bars show this already; plain output (CI logs, pipes) gets one line per
        # finished stage, and so does a notebook, whose saved copy keeps only the bars' first state
        if self.mode not in ("lines", "notebook") or stage in self._reported:
            return
        self._reported.add(stage)
        s = self.stages[stage]
        elapsed = time.monotonic() - self._started
        print(
            f"[apflow] {stage}: {s.total} quanta: {s.done} done, {s.skipped} skipped, "
            f"{s.failed} failed, {s.blocked} blocked ({elapsed:.1f} s since start)",
            file=self.stream,
            flush=True,
        )


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value

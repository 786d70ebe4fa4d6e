"""Pure algorithms. A task never does I/O and never imports Dask (see DESIGN.md section 2)."""

from .base import Task, TaskConfig

__all__ = ["Task", "TaskConfig"]

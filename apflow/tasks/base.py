"""The task convention shared by every algorithm in :mod:`apflow.tasks`.

A task is a config dataclass plus a ``run(...)`` on in-memory objects that returns a result
dataclass (Rubin's ``run`` / ``runQuantum`` split: the engine does the storage, the task computes).

How the engine calls a task (see :mod:`apflow.engine`):

- ``run`` receives one keyword argument per input named in the workflow stage. An input whose
  dataset dimensions are covered by the stage's quantum dimensions arrives as one object; an
  input with more dimensions (a gather) arrives as a ``list`` ordered by data id.
- Context parameters are passed only when ``run`` declares them: ``data_id`` (dict of the
  quantum), ``camera`` (:class:`~apflow.core.Camera`), ``detector``
  (:class:`~apflow.core.Detector`, when the quantum has a detector), ``input_data_ids``
  (input name -> list of data ids, for gathered inputs).
- The result's attributes named in the stage's ``outputs`` are written as datasets; ``None``
  means "not produced". A result may define ``summary() -> dict`` of small JSON numbers that the
  engine reports and records in provenance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..errors import ConfigError


@dataclasses.dataclass
class TaskConfig:
    """Base of task configs: a dataclass whose fields are documented defaults."""

    def validate(self) -> None:
        """Raise :class:`~apflow.errors.ConfigError` on an invalid value. Override to add checks."""

    def updated(self, **overrides: Any) -> TaskConfig:
        """Copy with fields replaced, converting strings from the command line to field types.

        Raises
        ------
        ConfigError
            On an unknown field or a value that cannot be converted.
        """
        names = {f.name: f for f in dataclasses.fields(self)}
        values = {}
        for key, value in overrides.items():
            if key not in names:
                raise ConfigError(
                    f"{type(self).__name__} has no field {key!r}; fields: {', '.join(sorted(names))}"
                )
            values[key] = _coerce(type(self).__name__, key, value, getattr(self, key))
        new = dataclasses.replace(self, **values)
        new.validate()
        return new

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for provenance)."""
        return dataclasses.asdict(self)


def _coerce(owner: str, key: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str) or isinstance(current, str) or current is None:
        return value
    try:
        if isinstance(current, bool):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, (list, tuple)):
            items = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
            sample = current[0] if current else ""
            converted = [_coerce(owner, key, v, sample) for v in items]
            return type(current)(converted)
    except ValueError:
        raise ConfigError(
            f"{owner}.{key}: cannot convert {value!r} to {type(current).__name__}"
        ) from None
    return value


class Task:
    """Base class of apflow tasks.

    Subclasses set ``ConfigClass`` and implement ``run``.

    Parameters
    ----------
    config : TaskConfig, optional
        Configuration; the defaults of ``ConfigClass`` when omitted.
    """

    ConfigClass: ClassVar[type[TaskConfig]] = TaskConfig

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config if config is not None else self.ConfigClass()
        if not isinstance(self.config, self.ConfigClass):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.ConfigClass.__name__}, "
                f"got {type(self.config).__name__}"
            )
        self.config.validate()

    def run(self, **inputs: Any) -> Any:  # pragma: no cover - the interface
        """Compute the task's outputs from in-memory inputs."""
        raise NotImplementedError

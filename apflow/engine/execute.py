"""Run a quantum graph: bounded submission, completion handling, failure isolation.

The client keeps the quantum graph and submits a quantum only once every producer of its inputs
has finished, with at most ``max_in_flight`` quanta on the cluster at a time (``as_completed``
gives the completions; each one frees a slot). So the scheduler never holds more than a window
of independent tasks, however large the survey (1,000 visits x 189 CCDs x 4 stages is ~750k
quanta, far past what one Dask graph handles well), and nothing travels between tasks through
Dask: inputs are read from the repository, where upstream quanta wrote them.

Deciding dependants on the client is also what isolates failures: when a quantum fails, its
dependants are marked ``blocked`` (recursively) instead of being sent, a gather whose stage
allows it (``min_inputs`` / ``allow_partial``) runs on the inputs that exist, and everything else
carries on.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import time
import traceback as tb_module
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import WorkflowError, format_data_id
from .graph import IdKey, Quantum, QuantumGraph
from .quantum import QuantumSpec, run_quantum
from .summary import Failure, RunSummary, StageSummary

__all__ = ["DistributedBackend", "LocalBackend", "execute"]

_TRACEBACK_FRAMES = 6


class Backend(Protocol):
    """Where quanta run: :class:`DistributedBackend` or :class:`LocalBackend`."""

    def submit(self, spec: QuantumSpec, priority: int) -> Any: ...

    def next_done(self) -> Any: ...

    def outcome(self, handle: Any) -> tuple[dict[str, Any] | None, str, str]: ...

    def nthreads(self) -> int: ...

    def cancel(self, handles: list[Any]) -> None: ...


class DistributedBackend:
    """Quanta as futures on a ``distributed`` cluster.

    Parameters
    ----------
    client : distributed.Client
    retries : int
        Dask re-runs a quantum that raised up to this many times (transient errors such as a
        flaky file system). A quantum lost with a dead worker is rescheduled by Dask anyway.
    """

    def __init__(self, client: Any, retries: int = 0) -> None:
        from distributed import as_completed

        self.client = client
        self.retries = retries
        # results travel with the completion notice, gathered in the background in batches,
        # instead of one round trip per finished quantum
        self._completed = as_completed(with_results=True, raise_errors=False)
        self._results: dict[str, Any] = {}
        self._nthreads = (0, 0.0)

    def submit(self, spec: QuantumSpec, priority: int) -> Any:
        future = self.client.submit(
            run_quantum,
            spec,
            key=spec.dask_key,
            retries=self.retries,
            pure=False,
            priority=priority,
        )
        self._completed.add(future)
        return future

    def next_done(self) -> Any:
        future, result = next(self._completed)
        self._results[future.key] = result
        return future

    def outcome(self, handle: Any) -> tuple[dict[str, Any] | None, str, str]:
        result = self._results.pop(handle.key, None)
        if handle.status == "finished" and isinstance(result, dict):
            return result, "", ""
        if handle.status == "error":
            exc = result if isinstance(result, BaseException) else handle.exception()
            return None, _describe(exc), _format_tb(handle.traceback())
        if self.client.status not in ("running", "connecting"):
            raise WorkflowError(
                "lost the connection to the Dask scheduler; run again to finish the rest "
                "(finished quanta are kept and skipped)"
            )
        # cancelled by someone else (client.cancel, scheduler restart): report, do not guess
        return None, f"CancelledError: quantum was {handle.status} on the cluster", ""

    def nthreads(self) -> int:
        # cached for a few seconds: adaptive clusters (dask-jobqueue) grow and shrink
        count, when = self._nthreads
        if time.monotonic() - when > 5.0:
            count = sum(self.client.nthreads().values())
            self._nthreads = (count, time.monotonic())
        return count

    def cancel(self, handles: list[Any]) -> None:
        if handles:
            self.client.cancel(handles)


class LocalBackend:
    """Quanta in this process: ``"synchronous"`` (one at a time, for debugging and reference
    runs) or ``"threads"`` (a thread pool)."""

    def __init__(self, mode: str = "synchronous", retries: int = 0, workers: int | None = None):
        if mode not in ("synchronous", "threads"):
            raise ValueError(f"unknown local scheduler {mode!r}")
        self.mode = mode
        self.retries = retries
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(workers or None) if mode == "threads" else None
        )
        self._pending: set[concurrent.futures.Future] = set()
        self._done: deque[concurrent.futures.Future] = deque()

    def _call(self, spec: QuantumSpec) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                return run_quantum(spec)
            except Exception:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")

    def submit(self, spec: QuantumSpec, priority: int) -> Any:
        if self._pool is not None:
            future = self._pool.submit(self._call, spec)
            self._pending.add(future)
            return future
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(self._call(spec))
        except Exception as exc:  # noqa: BLE001 - reported like a Dask task error
            future.set_exception(exc)
        self._done.append(future)
        return future

    def next_done(self) -> Any:
        if not self._done:
            done, self._pending = concurrent.futures.wait(
                self._pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            self._done.extend(done)
        return self._done.popleft()

    def outcome(self, handle: Any) -> tuple[dict[str, Any] | None, str, str]:
        exc = handle.exception()
        if exc is None:
            return handle.result(), "", ""
        return None, _describe(exc), _format_tb(exc.__traceback__)

    def nthreads(self) -> int:
        return self._pool._max_workers if self._pool is not None else 1

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            handle.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def execute(
    graph: QuantumGraph,
    backend: Backend,
    make_spec: Callable[[Quantum, dict[str, list[tuple[IdKey, bool]]]], QuantumSpec],
    summary: RunSummary,
    max_in_flight: int | None = None,
    on_outcome: Callable[[str, str], None] | None = None,
) -> RunSummary:
    """Run every non-skipped quantum of ``graph`` on ``backend``; fill and return ``summary``.

    Parameters
    ----------
    graph : QuantumGraph
    backend : Backend
    make_spec : callable
        ``(quantum, lost)`` -> the spec to submit; ``lost`` maps input names to
        ``(data id, failed)`` pairs to leave out (their producer failed or wrote nothing).
    summary : RunSummary
        Receives counts, timings, failures and per-quantum results.
    max_in_flight : int, optional
        Most quanta submitted but not finished at once. Default: four per worker thread (at
        least 16), enough to keep every thread busy while completions are handled.
    on_outcome : callable, optional
        ``(stage, status)`` after every quantum's outcome, for progress displays.
    """
    quanta = graph.quanta
    for name, items in graph.by_stage().items():
        summary.stages.setdefault(name, StageSummary(name, total=len(items)))
    first_submit: dict[str, float] = {}
    last_done: dict[str, float] = {}
    waiting = {k: len(q.upstream) for k, q in quanta.items() if not q.skip}
    outputs_of = {s.name: {dt for _, dt in s.outputs} for s in graph.workflow.stages}
    # per dependant: input name -> (data id, producer failed?) for inputs that will not exist
    lost: dict[str, dict[str, list[tuple[IdKey, bool]]]] = defaultdict(lambda: defaultdict(list))
    causes: dict[str, str] = {}
    ready: list[tuple[int, int, str]] = []
    order = {k: n for n, k in enumerate(quanta)}
    gates = _Gates(graph)

    def push(key: str) -> None:
        quantum = quanta[key]
        if gates.admit(quantum):
            heapq.heappush(ready, (-quantum.depth, order[key], key))

    def record(quantum: Quantum, status: str) -> None:
        stage = summary.stages[quantum.stage]
        setattr(stage, status, getattr(stage, status) + 1)
        if on_outcome is not None:
            on_outcome(quantum.stage, status)
        if status != "skipped":
            for key in gates.finished(quantum):
                heapq.heappush(ready, (-quanta[key].depth, order[key], key))

    def resolve(key: str, produced: set[str] | None, cause: str) -> None:
        # ``produced`` = dataset types the quantum wrote; None when it failed or was blocked
        stack = [(key, produced, cause)]
        while stack:
            key, produced, cause = stack.pop()
            producer = quanta[key]
            for child_key in producer.downstream:
                child = quanta[child_key]
                for ref in child.inputs:
                    if (
                        ref.dataset_type in outputs_of[producer.stage]
                        and producer.data_id in ref.ids
                        and (produced is None or ref.dataset_type not in produced)
                    ):
                        lost[child_key][ref.name].append((producer.data_id, produced is None))
                        causes.setdefault(child_key, cause)
                waiting[child_key] -= 1
                if waiting[child_key] == 0:
                    reason = _blocking_reason(child, lost.get(child_key, {}), causes)
                    if reason is None:
                        push(child_key)
                    else:
                        record(child, "blocked")
                        summary.blocked.append(
                            Failure(
                                child.stage, dict(child.data_id), child_key, reason, "", "blocked"
                            )
                        )
                        stack.append((child_key, None, causes.get(child_key, cause)))

    for key, quantum in quanta.items():
        if quantum.skip:
            record(quantum, "skipped")
        elif not quantum.upstream:
            push(key)

    in_flight: dict[Any, str] = {}
    try:
        while ready or in_flight:
            limit = max_in_flight or max(16, 4 * backend.nthreads())
            while ready and len(in_flight) < limit:
                _, _, key = heapq.heappop(ready)
                quantum = quanta[key]
                spec = make_spec(quantum, lost.pop(key, {}))
                first_submit.setdefault(quantum.stage, time.time())
                in_flight[backend.submit(spec, priority=quantum.depth)] = key
            handle = backend.next_done()
            key = in_flight.pop(handle)
            result, error, trace = backend.outcome(handle)
            del handle  # release the future: the scheduler forgets the task
            quantum = quanta[key]
            last_done[quantum.stage] = time.time()
            if result is not None:
                record(quantum, "done")
                stage_summary = summary.stages[quantum.stage]
                stage_summary.task_seconds += result.get("seconds", 0.0)
                stage_summary.read_seconds += result.get("read_seconds", 0.0)
                stage_summary.compute_seconds += result.get("compute_seconds", 0.0)
                stage_summary.write_seconds += result.get("write_seconds", 0.0)
                summary.results.append(
                    {"stage": quantum.stage, "data_id": dict(quantum.data_id), **result}
                )
                resolve(key, set(result.get("written", ())), f"{key} did not write")
            else:
                record(quantum, "failed")
                summary.failures.append(
                    Failure(quantum.stage, dict(quantum.data_id), key, error, trace)
                )
                resolve(
                    key, None, f"{quantum.stage} [{format_data_id(dict(quantum.data_id))}] failed"
                )
    except BaseException:
        backend.cancel(list(in_flight))
        raise
    for name, stage in summary.stages.items():
        if name in first_submit:
            stage.wall_seconds = last_done.get(name, first_submit[name]) - first_submit[name]
    return summary


class _Gates:
    """Barriers of stages with ``ordered_by``: one value of that dimension runs at a time.

    A ready quantum of a later value is parked until every quantum of the earlier values has
    finished (done, failed or blocked). Counting per value keeps this O(quanta), where explicit
    edges between consecutive visits would be O(CCDs^2) per visit.
    """

    def __init__(self, graph: QuantumGraph) -> None:
        self._dimension: dict[str, str] = {
            s.name: s.ordered_by for s in graph.workflow.stages if s.ordered_by
        }
        self._remaining: dict[str, dict[Any, int]] = {s: {} for s in self._dimension}
        for quantum in graph.quanta.values():
            dim = self._dimension.get(quantum.stage)
            if dim is None or quantum.skip:
                continue
            value = self._value(quantum, dim)
            counts = self._remaining[quantum.stage]
            counts[value] = counts.get(value, 0) + 1
        self._values = {s: sorted(c, key=_orderable) for s, c in self._remaining.items()}
        self._open = {s: 0 for s in self._dimension}
        self._parked: dict[str, dict[Any, list[str]]] = {
            s: defaultdict(list) for s in self._dimension
        }

    @staticmethod
    def _value(quantum: Quantum, dim: str) -> Any:
        return dict(quantum.data_id)[dim]

    def _current(self, stage: str) -> Any:
        values = self._values[stage]
        index = self._open[stage]
        return values[index] if index < len(values) else None

    def admit(self, quantum: Quantum) -> bool:
        """True when ``quantum`` may be submitted now; otherwise it is parked."""
        dim = self._dimension.get(quantum.stage)
        if dim is None:
            return True
        value = self._value(quantum, dim)
        if value == self._current(quantum.stage):
            return True
        self._parked[quantum.stage][value].append(quantum.key)
        return False

    def finished(self, quantum: Quantum) -> list[str]:
        """Record an outcome; return the parked keys that the barrier now releases."""
        dim = self._dimension.get(quantum.stage)
        if dim is None:
            return []
        stage = quantum.stage
        counts = self._remaining[stage]
        counts[self._value(quantum, dim)] -= 1
        released: list[str] = []
        while (current := self._current(stage)) is not None and counts[current] == 0:
            self._open[stage] += 1
            following = self._current(stage)
            if following is not None:
                released.extend(self._parked[stage].pop(following, []))
        return released


def _orderable(value: Any) -> tuple[bool, Any]:
    return (isinstance(value, str), value)


def _blocking_reason(
    quantum: Quantum, lost: dict[str, list[tuple[IdKey, bool]]], causes: dict[str, str]
) -> str | None:
    """Why ``quantum`` cannot run given the inputs it lost, or None when it can.

    A required single input that will not exist blocks the quantum. A gathered input simply
    goes without datasets their producer chose not to write (``None`` results), but losing
    datasets to failures blocks it unless the stage set ``min_inputs`` / ``allow_partial`` and
    enough remain. Optional inputs never block.
    """
    cause = causes.get(quantum.key, "an upstream quantum failed")
    for ref in quantum.inputs:
        missing = lost.get(ref.name, [])
        if not missing or ref.optional:
            continue
        if not ref.gathered:
            return f"input {ref.name!r} ({ref.dataset_type}) is missing: {cause}"
        failed = sum(1 for _, by_failure in missing if by_failure)
        remaining = len(ref.ids) - len(missing)
        if failed and ref.min_inputs is None:
            return (
                f"input {ref.name!r} lost {failed} of {len(ref.ids)} {ref.dataset_type} "
                f"datasets ({cause}); set min_inputs or allow_partial to run without them"
            )
        if remaining < max(ref.min_inputs or 0, 1):
            return (
                f"input {ref.name!r} has {remaining} of {len(ref.ids)} {ref.dataset_type} "
                f"datasets, fewer than min_inputs={max(ref.min_inputs or 0, 1)} ({cause})"
            )
    return None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}"


def _format_tb(tb: Any) -> str:
    if tb is None:
        return ""
    try:
        frames = tb_module.extract_tb(tb)[-_TRACEBACK_FRAMES:]
        return "".join(tb_module.format_list(frames))
    except Exception:  # noqa: BLE001 - a traceback we cannot format is not worth a crash
        return ""

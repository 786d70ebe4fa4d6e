"""The commit protocol: a dataset is visible only when complete, on every backend.

One scheme serves local disk, ``memory://`` and object stores (S3 has no atomic rename, and a
Zarr group is many objects):

**A dataset exists if and only if its commit marker exists.** The marker is a small JSON file,
``<dataset dir>/_COMMITTED.json``, written last and in one atomic step (local disk: temporary
file + ``os.replace``; S3: one PUT; memory: one assignment). It names the payload it commits
(``file``), a random ``token`` of the write, the time, the apflow version and the provenance.
Readers look only at the marker and the payload it names; everything else in a dataset
directory (``.tmp-*`` temporaries, leftovers of interrupted writes) is ignored, and removed by
:func:`clean_dataset_dir` (``Repository.clean_incomplete()``).

Writing ``<type>.<ext>`` into a dataset directory:

1. First write (no marker). Local disk and memory: write the payload as
   ``.tmp-<token>.<type>.<ext>``, rename it to ``<type>.<ext>`` (one rename, even for a Zarr
   directory), write the marker. Object stores: write ``<type>.<ext>`` directly (without a
   marker it is invisible), write the marker.
2. Overwrite (a marker exists). Write the new payload as ``.tmp-<token>.<type>.<ext>``; point
   the marker at it (the new version is now the visible one, the old one is untouched until this
   moment); delete the old payload; build ``<type>.<ext>`` again from the temporary (hard links
   on local disk, a server-side copy on S3); point the marker back at the canonical name; delete
   the temporary.

Invariant: **a payload is never changed while the marker names it**; it is deleted only after the
marker has moved away. So a reader that sees the same marker before and after reading a
multi-object payload (Zarr) has read one complete version, and a reader whose read fails or
whose marker changed simply reads again. An interrupted write therefore leaves either the old
version or the new one visible, never a mixture and never nothing-after-something; a marker left
pointing at a temporary is a complete dataset, and cleaning finishes the rename.

The protocol protects against crashes of the writing process (exceptions, SIGKILL, lost Dask
workers). It does not fsync, so it does not promise durability across a power failure, and it
assumes one writer per dataset at a time (as the engine guarantees).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import strict_json
from .backend import TMP_PREFIX, Backend, new_token

MARKER = "_COMMITTED.json"
MARKER_VERSION = 1


class MarkerError(ValueError):
    """A commit marker exists but cannot be parsed."""


@dataclass(frozen=True)
class Commit:
    """The content of one commit marker."""

    file: str
    token: str
    record: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """What identifies one visible state of a dataset."""
        return (self.token, self.file)


def read_commit(backend: Backend, dataset_dir: str) -> Commit | None:
    """The dataset's commit marker, or ``None`` when the dataset does not exist."""
    data = backend.read_bytes_or_none(f"{dataset_dir}/{MARKER}")
    if data is None:
        return None
    try:
        record = strict_json.loads(data)
        file, token = record["file"], record["token"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MarkerError(f"unreadable commit marker {dataset_dir}/{MARKER}: {exc}") from exc
    if not isinstance(file, str) or "/" in file or file in ("", ".", ".."):
        raise MarkerError(f"commit marker {dataset_dir}/{MARKER} names an invalid file {file!r}")
    return Commit(file=file, token=str(token), record=record)


def _write_marker(backend: Backend, dataset_dir: str, file: str, token: str, record: dict) -> None:
    content = {"marker_version": MARKER_VERSION, "file": file, "token": token, **record}
    backend.write_file_atomic(f"{dataset_dir}/{MARKER}", strict_json.dumps(content))


def write_dataset(
    backend: Backend,
    dataset_dir: str,
    filename: str,
    write_payload: Callable[[str], None],
    record: dict[str, Any],
    overwrite: bool,
    on_exists: Callable[[], Exception],
) -> None:
    """Write one dataset under the commit protocol (see the module docstring).

    Parameters
    ----------
    backend : Backend
    dataset_dir : str
        Backend path of the dataset's directory.
    filename : str
        Canonical payload name, ``<type>.<ext>``.
    write_payload : callable
        Writes the complete payload at the backend path it is given.
    record : dict
        JSON-serialisable fields stored in the marker (dataset type, data id, provenance...).
    overwrite : bool
        Replace an existing dataset; otherwise ``on_exists()`` is raised.
    on_exists : callable
        Builds the exception raised when the dataset exists and ``overwrite`` is false.
    """
    try:
        old = read_commit(backend, dataset_dir)
    except MarkerError:
        if not overwrite:
            raise
        old = Commit(file=filename, token="", record={})  # damaged: replace it like a dataset
    if old is not None and not overwrite:
        raise on_exists()
    token = new_token()
    canonical = f"{dataset_dir}/{filename}"
    staged_name = f"{TMP_PREFIX}{token}.{filename}"
    staged = f"{dataset_dir}/{staged_name}"
    direct = old is None and not backend.cheap_rename
    target = canonical if direct else staged
    backend.makedirs(dataset_dir)
    if old is None:
        backend.remove(canonical)  # leftover of an interrupted write; never visible
    try:
        write_payload(target)
    except BaseException:
        backend.remove(target)
        raise
    if old is None:
        if not direct:
            backend.move(staged, canonical)
    else:
        _write_marker(backend, dataset_dir, staged_name, token, record)
        if old.file != filename:
            backend.remove(f"{dataset_dir}/{old.file}")
        backend.remove(canonical)
        _copy_payload(backend, staged, canonical)
    _write_marker(backend, dataset_dir, filename, token, record)
    if old is not None:
        backend.remove(staged)


def _copy_payload(backend: Backend, src: str, dst: str) -> None:
    """Make ``dst`` a copy of the committed (hence immutable) payload ``src``."""
    if backend.is_local:
        _link_tree(src, dst)
    elif backend.fs.isdir(src):
        files = backend.fs.find(src)
        backend.fs.copy(files, [dst + f[len(src) :] for f in files])
    else:
        backend.fs.copy(src, dst)


def _link_tree(src: str, dst: str) -> None:
    # Hard links share the data blocks, so re-creating the canonical name costs no copy; payload
    # files are never modified in place, so sharing them is safe. A half-built ``dst`` is not
    # referenced by the marker, hence invisible, and cleaning removes it.
    if not os.path.isdir(src):
        _link_or_copy(src, dst)
        return
    for dirpath, _, filenames in os.walk(src):
        target_dir = os.path.join(dst, os.path.relpath(dirpath, src))
        os.makedirs(target_dir, exist_ok=True)
        for name in filenames:
            _link_or_copy(os.path.join(dirpath, name), os.path.join(target_dir, name))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copy2(src, dst)


def read_dataset(
    backend: Backend,
    dataset_dir: str,
    read_payload: Callable[[str], Any],
    multi_object: bool,
    attempts: int = 4,
) -> tuple[Any, Commit] | None:
    """Read the committed payload of a dataset; ``None`` if the dataset does not exist.

    A read that fails, or (for multi-object payloads) during which the marker changed, is
    retried: the dataset was being replaced. The last failure is re-raised when the marker did
    not change, since the payload itself is then damaged.
    """
    for attempt in range(attempts):
        commit = read_commit(backend, dataset_dir)
        if commit is None:
            return None
        try:
            value = read_payload(f"{dataset_dir}/{commit.file}")
        except Exception:
            after = read_commit(backend, dataset_dir)
            if (after is not None and after.key == commit.key) or attempt == attempts - 1:
                raise
            continue
        if not multi_object:
            return value, commit
        after = read_commit(backend, dataset_dir)
        if after is not None and after.key == commit.key:
            return value, commit
        time.sleep(0.01 * (attempt + 1))
    raise RuntimeError(f"{dataset_dir} kept changing while being read")


def clean_dataset_dir(backend: Backend, dataset_dir: str, filename: str) -> list[str]:
    """Remove what no marker references in one dataset directory; finish interrupted overwrites.

    Must not run while a write to this dataset is in progress (its temporary would be deleted).

    Returns
    -------
    list of str
        Backend paths removed.
    """
    removed = []
    try:
        commit = read_commit(backend, dataset_dir)
    except MarkerError:
        return removed  # leave damaged datasets for a human to look at
    if commit is not None and commit.file != filename:
        # an overwrite stopped after its new version became visible: finish it
        canonical = f"{dataset_dir}/{filename}"
        backend.remove(canonical)
        _copy_payload(backend, f"{dataset_dir}/{commit.file}", canonical)
        record = {k: v for k, v in commit.record.items() if k not in ("file", "token")}
        _write_marker(backend, dataset_dir, filename, commit.token, record)
        commit = Commit(filename, commit.token, commit.record)
    for name in backend.list_dir(dataset_dir):
        keep = name == MARKER or (commit is not None and name == commit.file)
        is_payload = name == filename or name.startswith(TMP_PREFIX)
        if is_payload and not keep:
            path = f"{dataset_dir}/{name}"
            backend.remove(path)
            removed.append(path)
    return removed

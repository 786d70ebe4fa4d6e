"""One storage backend behind a repository root: local disk, ``memory://`` or an object store.

A thin layer over fsspec that exposes exactly the operations the commit protocol
(:mod:`apflow.io.atomic`) needs, with the backend's real guarantees:

- ``write_file_atomic``: a reader sees the old content or the new one, never a part. Local disk:
  temporary file in the same directory, then ``os.replace``. Object stores: one PUT, which S3
  makes visible only when complete. ``memory://``: one dict assignment.
- ``move``: ``os.rename`` locally (one atomic call for a whole directory); object stores have no
  rename, so it is copy-then-delete, and is used only where a partial copy is harmless.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

TMP_PREFIX = ".tmp-"


def new_token() -> str:
    """Random token naming one write attempt."""
    return uuid.uuid4().hex[:16]


class Backend:
    """A filesystem and a root path in it.

    Parameters
    ----------
    url : str
        Root URL: a local path, ``file://...``, ``memory://...``, ``s3://bucket/prefix``, or any
        other fsspec URL.
    storage_options : dict, optional
        Passed to fsspec (for s3fs: ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``...).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.storage_options = dict(storage_options or {})
        fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.fs = fs
        self.is_local = isinstance(fs, LocalFileSystem)
        if self.is_local:
            root = os.path.abspath(root)
        self.root = root.rstrip("/") or "/"
        # Renames are cheap (and atomic for a whole directory) only on local disk; memory:// renames
        # are cheap dict updates. On object stores a "rename" copies every object.
        self.cheap_rename = self.is_local or isinstance(fs, MemoryFileSystem)

    @property
    def url(self) -> str:
        """Canonical root URL (a plain absolute path for local disk)."""
        return self.root if self.is_local else self.fs.unstrip_protocol(self.root)

    def path(self, *parts: str) -> str:
        """Backend path of a location below the root."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def full_url(self, path: str) -> str:
        """URL of a backend path (what users and zarr see)."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # --- reading -------------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        """Whole content of a file; ``FileNotFoundError`` if absent."""
        if self.is_local:
            with open(path, "rb") as f:
                return f.read()
        # cat_file issues a GET without consulting listing caches, so a file written by another
        # process is seen at once.
        return self.fs.cat_file(path)

    def read_bytes_or_none(self, path: str) -> bytes | None:
        """Like :meth:`read_bytes`, ``None`` when the file does not exist."""
        try:
            return self.read_bytes(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def exists(self, path: str) -> bool:
        """True if a file or directory exists at ``path``."""
        if self.is_local:
            return os.path.lexists(path)
        # s3fs answers from its listing cache when it has one; another process may have written
        self.fs.invalidate_cache(path.rsplit("/", 1)[0])
        return self.fs.exists(path)

    def list_dir(self, path: str) -> list[str]:
        """Names (not paths) directly inside a directory; empty if it does not exist."""
        if self.is_local:
            try:
                return sorted(os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            self.fs.invalidate_cache(path)
            entries = self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path})

    def find_files(self, path: str, max_depth: int | None = None) -> Iterator[str]:
        """Paths of all files below ``path`` (relative to it) down to ``max_depth`` levels."""
        if self.is_local:
            base_depth = path.rstrip("/").count("/")
            for dirpath, dirnames, filenames in os.walk(path):
                depth = dirpath.rstrip("/").count("/") - base_depth
                if max_depth is not None and depth + 1 >= max_depth:
                    dirnames[:] = []  # do not descend into zarr payloads
                    if depth + 1 > max_depth:
                        continue
                rel = os.path.relpath(dirpath, path)
                for name in filenames:
                    yield name if rel == "." else f"{rel}/{name}"
            return
        # On object stores one flat listing (1000 keys per request) is far cheaper than one
        # request per directory, even though it also lists the objects inside payloads.
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path)
        except FileNotFoundError:
            return
        prefix = path.rstrip("/") + "/"
        for full in found:
            if full.startswith(prefix):
                rel = full[len(prefix) :]
                if max_depth is None or rel.count("/") < max_depth:
                    yield rel

    # --- writing -------------------------------------------------------------------------------

    def makedirs(self, path: str) -> None:
        """Create a directory and its parents (a no-op on object stores)."""
        if self.is_local:
            os.makedirs(path, exist_ok=True)
        elif isinstance(self.fs, MemoryFileSystem):
            self.fs.makedirs(path, exist_ok=True)

    def write_file(self, path: str, data: bytes) -> None:
        """Write a file in place (not atomic on local disk: use for temporaries)."""
        if self.is_local:
            with open(path, "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(path, data)

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace a file so that readers see either the old or the new content, never a part."""
        if self.is_local:
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f"{TMP_PREFIX}{new_token()}.{name}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                _silent_remove(tmp)
                raise
        else:
            self.fs.pipe_file(path, data)

    def remove(self, path: str) -> None:
        """Remove a file or a directory tree; missing paths are ignored."""
        if self.is_local:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _silent_remove(path)
            return
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def move(self, src: str, dst: str) -> None:
        """Move a file or directory tree to ``dst``, which must not exist."""
        if self.is_local:
            os.rename(src, dst)
            return
        if not self.fs.isdir(src):
            self.fs.mv(src, dst)
            return
        # fsspec's recursive mv on s3fs tries to copy the pseudo-directories and fails, so copy
        # the files one by one (s3fs runs the copies concurrently) and then delete them.
        files = self.fs.find(src)
        targets = [dst + f[len(src) :] for f in files]
        self.fs.copy(files, targets)
        self.remove(src)
        self.fs.invalidate_cache(dst)

    def remove_empty_dirs(self, path: str) -> None:
        """Remove empty local directories below ``path`` (and ``path`` itself if it is empty)."""
        if not self.is_local:
            return
        for dirpath, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(dirpath)  # fails, as wanted, on a directory that is not empty
            except OSError:
                pass

    def remove_empty_parents(self, path: str, stop: str) -> None:
        """Remove empty local directories from ``path`` up to (not including) ``stop``."""
        if not self.is_local:
            return  # object stores have no empty directories
        path = os.path.abspath(path)
        stop = os.path.abspath(stop)
        while path.startswith(stop + os.sep):
            try:
                os.rmdir(path)
            except OSError:
                return
            path = os.path.dirname(path)


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

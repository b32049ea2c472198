"""Atomic file writes: a crash mid-write leaves the old file, never a half-written one.

Every write goes to a temporary file beside the target (``.<name>.<random>.tmp``, created with
permissions 0600), which is flushed, fsynced and renamed over the target with :func:`os.replace`;
the directory is then fsynced where the platform allows it, so the rename itself survives a
crash. On any error the temporary file is removed and the old file is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"

__all__ = ["TEMP_SUFFIX", "fsync_dir", "write_bytes", "write_json", "write_text"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush ``directory``'s entries (creations, renames, deletions) to disk; a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Atomically replace ``path`` with ``data``; returns ``path``.

    The file ends with permissions ``mode`` when given (set before the data reaches the disk, so a
    secret is never readable by others), otherwise 0600 as the temporary file is created. Missing
    parent directories are created.
    """
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(
    path: str | os.PathLike[str], text: str, mode: int | None = None, encoding: str = "utf-8"
) -> Path:
    """Atomically replace ``path`` with ``text`` (no newline translation); see :func:`write_bytes`."""
    return write_bytes(path, text.encode(encoding), mode)


def write_json(
    path: str | os.PathLike[str], data: object, indent: int = 1, mode: int | None = None
) -> Path:
    """Atomically replace ``path`` with ``data`` as JSON (non-JSON values as ``str``); see :func:`write_bytes`."""
    return write_text(path, json.dumps(data, indent=indent, default=str), mode)

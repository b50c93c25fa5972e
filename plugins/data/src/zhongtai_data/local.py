"""Blobs as local files, for the readers that need a path (DuckDB, PyArrow)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from zhongtai_data.blobs import blob_key

if TYPE_CHECKING:
    from zhongtai.platform import Platform

__all__ = ["local_copy", "place_blob"]


@contextlib.contextmanager
def local_copy(platform: Platform, sha256: str, *, head: int | None = None) -> Iterator[Path]:
    """The blob as a file: the local driver's own (read only), or a temporary copy of
    the whole object, or of its first ``head`` bytes (enough for a preview of a
    row-oriented file), removed afterwards."""
    key = blob_key(sha256)
    path = platform.storage.local_path(key)
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="zt-data-") as folder:
        copy = Path(folder) / "blob"
        with copy.open("wb") as out:
            for chunk in platform.storage.open(key, end=head):
                out.write(chunk)
        yield copy


def place_blob(platform: Platform, sha256: str, destination: Path) -> None:
    """The blob's bytes at ``destination`` (a new file), to hand to another program: a
    hard link to the local driver's file where the two share a file system, else a
    copy. Treat the file as read only: a link shares its bytes with the store."""
    key = blob_key(sha256)
    destination.parent.mkdir(parents=True, exist_ok=True)
    path = platform.storage.local_path(key)
    if path is not None:
        try:
            os.link(path, destination)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    with destination.open("wb") as out:
        for chunk in platform.storage.open(key):
            out.write(chunk)

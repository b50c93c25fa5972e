"""Content-addressed storage of the bytes of dataset files.

A file's bytes live in the object store under ``data/blobs/<sha256[:2]>/<sha256>``,
once, whatever the dataset, version or project it appears in. Uploads are hashed
while they are read from the request's spooled temporary file, then written only if
no blob of that digest exists yet.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from zhongtai_data.models import Blob, File

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.platform import Platform

__all__ = ["TooLarge", "blob_key", "forget_unused", "store_blob"]

CHUNK = 1024 * 1024


class TooLarge(ValueError):
    """The file is larger than the setting allows."""


def blob_key(sha256: str) -> str:
    return f"data/blobs/{sha256[:2]}/{sha256}"


def _digest(stream: BinaryIO, limit: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    stream.seek(0)
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"larger than {limit} bytes")
        digest.update(chunk)
    return digest.hexdigest(), size


def store_blob(platform: Platform, stream: BinaryIO, *, limit: int) -> tuple[str, int]:
    """Hash ``stream`` (seekable, e.g. an upload's spooled file), store its bytes once;
    return (sha256, size). The blob row is committed here: bytes are in the store
    before anything refers to them.

    Raises:
        TooLarge: the stream is longer than ``limit`` bytes (nothing stored).
    """
    sha256, size = _digest(stream, limit)
    key = blob_key(sha256)
    with platform.db.transaction() as session:
        known = session.get(Blob, sha256) is not None
    if not known or not platform.storage.exists(key):
        stream.seek(0)
        platform.storage.put(key, stream, content_type="application/octet-stream")
        try:
            with platform.db.transaction() as session:
                if session.get(Blob, sha256) is None:
                    session.add(Blob(sha256=sha256, size=size))
        except IntegrityError:
            pass  # the same bytes, stored by a concurrent upload: its row will do
    return sha256, size


def forget_unused(session: Session, candidates: set[str]) -> list[str]:
    """Delete the rows of ``candidates`` that no file refers to any more (in the
    caller's transaction); return their keys, to delete from the store after commit."""
    if not candidates:
        return []
    used = set(session.scalars(select(File.sha256).where(File.sha256.in_(candidates))))
    unused = sorted(candidates - used)
    for sha256 in unused:
        blob = session.get(Blob, sha256)
        if blob is not None:
            session.delete(blob)
    return [blob_key(s) for s in unused]

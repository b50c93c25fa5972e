"""What every way of filling a version shares: putting a file in a draft, and giving a
draft its number (single uploads, archives, resumable uploads and imports)."""

from __future__ import annotations

import mimetypes
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from zhongtai.hooks.events import utcnow
from zhongtai_data.models import File, Version
from zhongtai_data.tabular import tabular_format

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["assign_number", "put_file"]


def put_file(session: Session, version: Version, path: str, sha256: str, size: int) -> File:
    """Add a stored blob to a draft at ``path``, replacing a file already there; keeps
    the version's file count and size right. The caller has checked the path and that
    the version is a draft."""
    old = session.scalar(select(File).where(File.version_id == version.id, File.path == path))
    if old is not None:
        version.file_count -= 1
        version.total_size -= old.size
        session.delete(old)
        session.flush()
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    row = File(
        version_id=version.id,
        path=path,
        sha256=sha256,
        size=size,
        media_type=media_type,
        tabular=tabular_format(path, media_type),
    )
    session.add(row)
    version.file_count += 1
    version.total_size += size
    return row


def assign_number(session: Session, version: Version) -> int:
    """Commit a draft: the dataset's next number, and it never changes again. The
    caller holds the dataset's row lock, so two commits cannot take one number."""
    latest = session.scalar(
        select(func.max(Version.number)).where(Version.dataset_id == version.dataset_id)
    )
    number = (latest or 0) + 1
    version.number = number
    version.status = "committed"
    version.committed_at = utcnow()
    return number

"""The data plugin's tables (all prefixed ``data_``).

- ``data_datasets``: a named collection of files in a project.
- ``data_versions``: a numbered, immutable snapshot of a dataset. A version is a
  ``draft`` while files are added to it and gets its number when it is committed;
  only committed versions are listed, and a committed version never changes.
- ``data_files``: a version's manifest, one row per path: size, SHA-256, media type
  and, for tabular files, the schema and row count.
- ``data_uploads``: resumable uploads in progress (their parts are in the object
  store's multipart uploads).
- ``data_reports``: the quality report of each tabular file of a committed version.
- ``data_sources``: registered places to import from (a SQL database, an S3 prefix);
  their credentials are encrypted at rest (see :mod:`zhongtai_data.sources`).
- ``data_blobs``: the content-addressed bytes (object store key
  ``data/blobs/<sha256[:2]>/<sha256>``): identical files are stored once, whatever
  the dataset or project. A blob no file refers to any more is deleted with the last
  version that used it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from zhongtai.hooks.events import utcnow
from zhongtai.metadata.base import Base
from zhongtai.metadata.ids import new_id

NAME_MAX = 200
PATH_MAX = 1024


class Dataset(Base):
    __tablename__ = "data_datasets"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_data_datasets_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Version(Base):
    __tablename__ = "data_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "number", name="uq_data_versions_dataset_number"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("data_datasets.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)  # set at commit
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft | committed
    message: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # where it came from
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Blob(Base):
    __tablename__ = "data_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class File(Base):
    __tablename__ = "data_files"
    __table_args__ = (UniqueConstraint("version_id", "path", name="uq_data_files_version_path"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version_id: Mapped[str] = mapped_column(
        ForeignKey("data_versions.id", ondelete="CASCADE"), index=True
    )
    path: Mapped[str] = mapped_column(String(PATH_MAX))
    sha256: Mapped[str] = mapped_column(ForeignKey("data_blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(200))
    tabular: Mapped[str | None] = mapped_column(String(16), nullable=True)  # csv, parquet…
    columns: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Report(Base):
    """The quality report of one tabular file of a committed version (job
    ``data.quality``); ``status`` is ``ok`` or ``failed`` (then ``report`` says why)."""

    __tablename__ = "data_reports"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("data_files.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16))
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """A resumable upload of one file into a draft (see :mod:`zhongtai_data.uploads`).

    ``multipart`` is the object store's multipart upload id; the parts live there.
    ``status``: open, completed, failed (size or checksum wrong), aborted, expired.
    """

    __tablename__ = "data_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("data_datasets.id", ondelete="CASCADE"), index=True
    )
    version_id: Mapped[str] = mapped_column(ForeignKey("data_versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(PATH_MAX))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    part_size: Mapped[int] = mapped_column(BigInteger)
    multipart: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class Source(Base):
    """A place a project imports data from: a SQL database or an S3 bucket and prefix.

    ``config`` holds what may be shown (the SQL URL without its password; the bucket,
    prefix, endpoint and region); ``secret`` holds the credentials (the full SQL URL;
    the S3 access key pair) as a Fernet token, never returned by the API.
    """

    __tablename__ = "data_sources"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_data_sources_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    kind: Mapped[str] = mapped_column(String(16))  # sql | s3
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)  # a Fernet token
    has_credentials: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

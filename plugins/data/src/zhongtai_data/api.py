"""``/api/v1/data/``: datasets, their versions, and the files of a version.

Every route states its permission, and every handler checks it on the project of the
stored dataset: a dataset of another project answers 404, as if it did not exist.
A version is a ``draft`` while files are added; ``POST …/commit`` gives it the next
number and makes it immutable. Versions are addressed by number, drafts by id.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar

import anyio.to_thread
from litestar import Request, Response, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Redirect, Stream
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from zhongtai.hooks.events import Event, emit
from zhongtai.identity.guard import Access, AccessDep, requires
from zhongtai.jobs.engine import JobRefused, jobs_engine
from zhongtai.jobs.models import Job
from zhongtai.metadata.lineage import EntityRef, LineageEdge, record_edge
from zhongtai.platform import Platform
from zhongtai.storage import ObjectNotFound
from zhongtai.web.errors import field_error
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep
from zhongtai_data.archives import safe_path
from zhongtai_data.blobs import TooLarge, blob_key, forget_unused, store_blob
from zhongtai_data.local import local_copy
from zhongtai_data.models import NAME_MAX, Dataset, File, Version
from zhongtai_data.permissions import DATASET_DELETE, DATASET_READ, DATASET_WRITE
from zhongtai_data.settings import DataSettings
from zhongtai_data.versions import assign_number, put_file

__all__ = ["ROUTES", "VersionCreated"]

log = logging.getLogger("zhongtai.data")

TAGS = ["data"]
Ref = Annotated[str, PathParameter(min_length=1, max_length=32)]
FilePath = Annotated[str, PathParameter(min_length=1, max_length=4096)]
VERSION_KIND = "data.version"
# Served inline (with nosniff): nothing a browser would run. Everything else, HTML
# and SVG included, is an attachment.
INLINE = {
    "text/plain",
    "text/csv",
    "application/json",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
}
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VersionCreated(Event):
    """``dataset.version.created``: a version was committed."""

    name: ClassVar[str] = "dataset.version.created"
    dataset_id: str
    version_id: str
    number: int


# --------------------------------------------------------------------------- bodies


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    project: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=r"^[^/\\\x00-\x1f]+$")
    description: str = Field(default="", max_length=10_000)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50
    )


class DatasetPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=r"^[^/\\\x00-\x1f]+$"
    )
    description: str | None = Field(default=None, max_length=10_000)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=50
    )


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(default="", max_length=10_000)
    parent: int | None = Field(
        default=None, ge=1, description="Start from the files of this committed version."
    )


class CommitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str | None = Field(default=None, max_length=10_000)


# --------------------------------------------------------------------------- helpers


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def dataset_dict(dataset: Dataset, latest: int | None = None) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "project": dataset.project_id,
        "name": dataset.name,
        "description": dataset.description,
        "tags": list(dataset.tags or []),
        "latest_version": latest,
        "created_by": dataset.created_by,
        "created_at": _iso(dataset.created_at),
        "updated_at": _iso(dataset.updated_at),
    }


def version_dict(version: Version) -> dict[str, Any]:
    return {
        "id": version.id,
        "dataset": version.dataset_id,
        "number": version.number,
        "status": version.status,
        "message": version.message,
        "source": version.source,
        "file_count": version.file_count,
        "total_size": version.total_size,
        "created_by": version.created_by,
        "created_at": _iso(version.created_at),
        "committed_at": _iso(version.committed_at),
    }


def file_dict(row: File) -> dict[str, Any]:
    return {
        "path": row.path,
        "size": row.size,
        "sha256": row.sha256,
        "media_type": row.media_type,
        "tabular": row.tabular,
        "columns": row.columns,
        "rows": row.rows,
    }


def _dataset(session: Session, access: Access, dataset_id: str, permission: Any) -> Dataset:
    """The dataset, if the caller holds ``permission`` on its project; 404 otherwise."""
    dataset = session.get(Dataset, dataset_id)
    access.require(
        session, project_id=dataset.project_id if dataset else None, permission=permission
    )
    assert dataset is not None
    return dataset


def _version(session: Session, dataset: Dataset, ref: str) -> Version:
    """A committed version by number, or any version of the dataset by id."""
    if ref.isdigit():
        query = select(Version).where(
            Version.dataset_id == dataset.id,
            Version.number == int(ref),
            Version.status == "committed",
        )
    else:
        query = select(Version).where(Version.dataset_id == dataset.id, Version.id == ref)
    version = session.scalar(query)
    if version is None:
        raise NotFoundException(f"no version {ref} in this dataset")
    return version


def _draft(session: Session, dataset: Dataset, ref: str) -> Version:
    version = _version(session, dataset, ref)
    if version.status != "draft":
        raise ClientException(
            status_code=409,
            detail=f"version {version.number} is committed: it cannot change; start a new one",
        )
    return version


def _settings(platform: Platform) -> DataSettings:
    settings = platform.plugin_settings("data")
    assert isinstance(settings, DataSettings)
    return settings


def _checked_path(value: Any, field: str = "path") -> str:
    if not isinstance(value, str):
        raise field_error(field, "give the file's path in the version")
    try:
        return safe_path(value)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None


def _downstream(session: Session, version_ids: list[str]) -> int:
    """How many lineage edges lead from these versions to something else."""
    if not version_ids:
        return 0
    return int(
        session.scalar(
            select(func.count())
            .select_from(LineageEdge)
            .where(LineageEdge.source_kind == VERSION_KIND, LineageEdge.source_id.in_(version_ids))
        )
        or 0
    )


# --------------------------------------------------------------------------- datasets


@post("/datasets", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_WRITE), status_code=201)
def create_dataset(
    platform: PlatformDep, access: AccessDep, data: JSONBody[DatasetIn]
) -> dict[str, Any]:
    """Create a dataset in a project (its name unique there: 409 naming ``name``)."""
    access.audit(action="data.dataset.create", target_kind="dataset")
    with platform.db.transaction() as session:
        access.require(session, project_id=data.project)
        taken = session.scalar(
            select(Dataset.id).where(Dataset.project_id == data.project, Dataset.name == data.name)
        )
        if taken:
            raise field_error("name", f"{data.name!r} is already a dataset here", 409)
        dataset = Dataset(
            project_id=data.project,
            name=data.name,
            description=data.description,
            tags=data.tags,
            created_by=access.principal.user_id,
        )
        session.add(dataset)
        session.flush()
        access.audit(target_id=dataset.id, project_id=dataset.project_id)
        return dataset_dict(dataset)


@get("/datasets", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_READ))
def list_datasets(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, QueryParameter(max_length=32)] = None,
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    tag: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Datasets of the projects the caller can read, newest first; ``q`` searches the
    name and description, ``tag`` filters by a tag."""
    page = page_for(platform.settings, limit, cursor)
    query = select(Dataset).where(Dataset.project_id.in_(access.visible_projects()))
    if project is not None:
        query = query.where(Dataset.project_id == project)
    if q:
        query = query.where(
            or_(
                Dataset.name.contains(q, autoescape=True),
                Dataset.description.contains(q, autoescape=True),
            )
        )
    with platform.db.transaction() as session:
        found = paginate(session, query, Dataset.id, page, newest_first=True)
        items = [d for d in found.items if tag is None or tag in (d.tags or [])]
        latest = _latest(session, [d.id for d in items])
        return {
            "items": [dataset_dict(d, latest.get(d.id)) for d in items],
            "next_cursor": found.next_cursor,
        }


def _latest(session: Session, dataset_ids: list[str]) -> dict[str, int]:
    if not dataset_ids:
        return {}
    rows = session.execute(
        select(Version.dataset_id, func.max(Version.number))
        .where(Version.dataset_id.in_(dataset_ids), Version.status == "committed")
        .group_by(Version.dataset_id)
    ).all()
    return {dataset_id: number for dataset_id, number in rows if number is not None}


@get("/datasets/{dataset_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_READ))
def get_dataset(platform: PlatformDep, access: AccessDep, dataset_id: Ref) -> dict[str, Any]:
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_READ)
        return dataset_dict(dataset, _latest(session, [dataset.id]).get(dataset.id))


@patch("/datasets/{dataset_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_WRITE))
def update_dataset(
    platform: PlatformDep, access: AccessDep, dataset_id: Ref, data: JSONBody[DatasetPatch]
) -> dict[str, Any]:
    access.audit(action="data.dataset.update", target_kind="dataset", target_id=dataset_id)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        if data.name is not None and data.name != dataset.name:
            taken = session.scalar(
                select(Dataset.id).where(
                    Dataset.project_id == dataset.project_id, Dataset.name == data.name
                )
            )
            if taken:
                raise field_error("name", f"{data.name!r} is already a dataset here", 409)
            dataset.name = data.name
        if data.description is not None:
            dataset.description = data.description
        if data.tags is not None:
            dataset.tags = data.tags
        session.flush()
        access.audit(project_id=dataset.project_id)
        return dataset_dict(dataset, _latest(session, [dataset.id]).get(dataset.id))


@delete("/datasets/{dataset_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_DELETE))
def delete_dataset(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    force: Annotated[bool, QueryParameter()] = False,
) -> None:
    """Delete a dataset and its versions; 409 if something downstream uses one of them
    (lineage), unless ``force=true``."""
    access.audit(action="data.dataset.delete", target_kind="dataset", target_id=dataset_id)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_DELETE)
        versions = list(session.scalars(select(Version.id).where(Version.dataset_id == dataset.id)))
        used = _downstream(session, versions)
        if used and not force:
            raise ClientException(
                status_code=409,
                detail=f"{used} lineage edges lead from its versions; delete with force=true",
            )
        shas = set(session.scalars(select(File.sha256).where(File.version_id.in_(versions))))
        access.audit(project_id=dataset.project_id, detail={"force": force, "used_by": used})
        session.delete(dataset)
        session.flush()
        keys = forget_unused(session, shas)
    _delete_objects(platform, keys)


def _delete_objects(platform: Platform, keys: list[str]) -> None:
    for key in keys:
        try:
            platform.storage.delete(key)
        except Exception:  # an orphan object wastes space; it never shows
            log.warning("could not delete %s", key, exc_info=True)


# --------------------------------------------------------------------------- versions


@post(
    "/datasets/{dataset_id:str}/versions",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_WRITE),
    status_code=201,
)
def create_version(
    platform: PlatformDep, access: AccessDep, dataset_id: Ref, data: JSONBody[VersionIn]
) -> dict[str, Any]:
    """Start a draft version (empty, or with the files of committed version ``parent``);
    add files to it, then commit it."""
    access.audit(action="data.version.create", target_kind="dataset", target_id=dataset_id)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        source: dict[str, Any] = {"kind": "upload"}
        parent = None
        if data.parent is not None:
            parent = session.scalar(
                select(Version).where(
                    Version.dataset_id == dataset.id,
                    Version.number == data.parent,
                    Version.status == "committed",
                )
            )
            if parent is None:
                raise field_error("parent", f"no committed version {data.parent}")
            source = {"kind": "derived", "version": parent.id, "number": parent.number}
        version = Version(
            dataset_id=dataset.id,
            status="draft",
            message=data.message,
            source=source,
            created_by=access.principal.user_id,
        )
        session.add(version)
        session.flush()
        if parent is not None:
            for row in session.scalars(select(File).where(File.version_id == parent.id)):
                session.add(
                    File(
                        version_id=version.id,
                        path=row.path,
                        sha256=row.sha256,
                        size=row.size,
                        media_type=row.media_type,
                        tabular=row.tabular,
                        columns=row.columns,
                        rows=row.rows,
                    )
                )
            version.file_count = parent.file_count
            version.total_size = parent.total_size
        access.audit(project_id=dataset.project_id)
        return version_dict(version)


@get(
    "/datasets/{dataset_id:str}/versions",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_READ),
)
def list_versions(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    status: Annotated[str, QueryParameter(pattern="^(committed|draft)$")] = "committed",
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Committed versions, newest first (``status=draft``: drafts not yet committed)."""
    page = page_for(platform.settings, limit, cursor)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_READ)
        query = select(Version).where(Version.dataset_id == dataset.id, Version.status == status)
        found = paginate(session, query, Version.id, page, newest_first=True)
        return found.to_dict(version_dict)


@get(
    "/datasets/{dataset_id:str}/versions/{ref:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_READ),
)
def get_version(
    platform: PlatformDep, access: AccessDep, dataset_id: Ref, ref: Ref
) -> dict[str, Any]:
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_READ)
        return version_dict(_version(session, dataset, ref))


@post(
    "/datasets/{dataset_id:str}/versions/{ref:str}/commit",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_WRITE),
    status_code=200,
)
def commit_version(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
    data: JSONBody[CommitIn | None] = None,
) -> dict[str, Any]:
    """Give a draft the dataset's next number and make it immutable (409 if committed
    already, 400 if it has no file)."""
    access.audit(action="data.version.commit", target_kind="version", target_id=ref)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        # One commit of a dataset at a time: the row lock orders the numbers.
        session.refresh(dataset, with_for_update=not platform.db.is_embedded)
        version = _draft(session, dataset, ref)
        if version.file_count == 0:
            raise field_error("files", "the version has no file; add one first")
        number = assign_number(session, version)
        if data is not None and data.message is not None:
            version.message = data.message
        parent = version.source.get("version") if version.source else None
        if parent:
            record_edge(
                session,
                EntityRef(VERSION_KIND, parent),
                EntityRef(VERSION_KIND, version.id),
                "derived",
                project_id=dataset.project_id,
            )
        session.flush()
        job = _queue_quality(platform, session, access, dataset, version)
        emit(
            session,
            VersionCreated(
                project=dataset.project_id,
                dataset_id=dataset.id,
                version_id=version.id,
                number=number,
            ),
        )
        access.audit(project_id=dataset.project_id, detail={"number": number})
        body = {**version_dict(version), "quality_job": job.id if job is not None else None}
    if job is not None:
        jobs_engine(platform).dispatch([job])
    return body


def _queue_quality(
    platform: Platform, session: Session, access: Access, dataset: Dataset, version: Version
) -> Job | None:
    """Queue ``data.quality`` for a version with tabular files, in the commit's own
    transaction (so a failed commit queues nothing); dispatched after the commit."""
    from zhongtai_data.quality import QualityParams

    has_tables = session.scalar(
        select(File.id).where(File.version_id == version.id, File.tabular.is_not(None)).limit(1)
    )
    if not has_tables:
        return None
    engine = jobs_engine(platform)
    job_type = engine.types.get("data.quality")
    if job_type is None:
        return None
    try:
        with session.begin_nested():  # a refusal takes back the job's row, not the commit
            return engine.submit(
                session,
                job_type=job_type,
                project_id=dataset.project_id,
                principal=access.principal,
                params=QualityParams(version_id=version.id),
            )
    except JobRefused as exc:
        log.warning("version %s: no quality report queued: %s", version.id, exc)
        return None


@delete(
    "/datasets/{dataset_id:str}/versions/{ref:str}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_DELETE),
)
def delete_version(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
    force: Annotated[bool, QueryParameter()] = False,
) -> None:
    """Delete a version (or a draft); 409 if something downstream uses it (a lineage
    edge from it), unless ``force=true``."""
    access.audit(action="data.version.delete", target_kind="version", target_id=ref)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_DELETE)
        version = _version(session, dataset, ref)
        used = _downstream(session, [version.id])
        if used and not force:
            raise ClientException(
                status_code=409,
                detail=f"{used} lineage edges lead from this version; delete with force=true",
            )
        shas = set(session.scalars(select(File.sha256).where(File.version_id == version.id)))
        access.audit(
            project_id=dataset.project_id,
            detail={"number": version.number, "force": force, "used_by": used},
        )
        session.delete(version)
        session.flush()
        keys = forget_unused(session, shas)
    _delete_objects(platform, keys)


# --------------------------------------------------------------------------- files


@get(
    "/datasets/{dataset_id:str}/versions/{ref:str}/files",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_READ),
)
def list_files(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
    prefix: Annotated[str | None, QueryParameter(max_length=1024)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """The version's manifest: path, size, SHA-256, media type (and schema and row
    count for tabular files), in upload order; ``prefix`` narrows to a folder."""
    page = page_for(platform.settings, limit, cursor)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_READ)
        version = _version(session, dataset, ref)
        query = select(File).where(File.version_id == version.id)
        if prefix:
            query = query.where(File.path.startswith(prefix, autoescape=True))
        return paginate(session, query, File.id, page).to_dict(file_dict)


@post(
    "/datasets/{dataset_id:str}/versions/{ref:str}/files",
    tags=TAGS,
    opt=requires(DATASET_WRITE),
    status_code=201,
    request_max_body_size=None,
)
async def upload_file(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
) -> dict[str, Any]:
    """Add a file to a draft: a ``multipart/form-data`` body with ``path`` (where it
    goes in the version) and ``file``. The body streams to a temporary file, is
    hashed, and is stored once whatever the dataset (content-addressed). A path that
    is already in the draft is replaced."""

    def check() -> None:
        with platform.db.transaction() as session:
            _draft(session, _dataset(session, access, dataset_id, DATASET_WRITE), ref)

    # Access first: nobody else's body is read.
    await anyio.to_thread.run_sync(check)
    settings = _settings(platform)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_file_size + 64 * 1024:
        raise ClientException(
            status_code=413,
            detail=f"larger than {settings.max_file_size} bytes: use a resumable upload",
        )
    form = await request.form()
    try:
        path = _checked_path(form.get("path"))
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise field_error("file", "send the file as a multipart part named 'file'")
        return await anyio.to_thread.run_sync(
            _add_file, platform, access, dataset_id, ref, path, upload, settings.max_file_size
        )
    finally:
        for value in form.values():
            if isinstance(value, UploadFile):
                await value.close()


def _add_file(
    platform: Platform,
    access: Access,
    dataset_id: str,
    ref: str,
    path: str,
    upload: UploadFile,
    limit: int,
) -> dict[str, Any]:
    try:
        sha256, size = store_blob(platform, upload.file, limit=limit)  # type: ignore[arg-type]
    except TooLarge as exc:
        raise ClientException(status_code=413, detail=f"file: {exc}") from None
    access.audit(action="data.file.add", target_kind="version", target_id=ref)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        version = _draft(session, dataset, ref)
        row = put_file(session, version, path, sha256, size)
        session.flush()
        access.audit(project_id=dataset.project_id, detail={"path": path, "size": size})
        return file_dict(row)


@delete(
    "/datasets/{dataset_id:str}/versions/{ref:str}/files/{path:path}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_WRITE),
)
def remove_file(
    platform: PlatformDep, access: AccessDep, dataset_id: Ref, ref: Ref, path: FilePath
) -> None:
    """Take a file out of a draft (its bytes go when nothing else uses them)."""
    path = _checked_path(path.lstrip("/"))
    access.audit(action="data.file.remove", target_kind="version", target_id=ref)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        version = _draft(session, dataset, ref)
        row = session.scalar(select(File).where(File.version_id == version.id, File.path == path))
        if row is None:
            raise NotFoundException(f"no file {path!r} in this version")
        version.file_count -= 1
        version.total_size -= row.size
        session.delete(row)
        session.flush()
        keys = forget_unused(session, {row.sha256})
    _delete_objects(platform, keys)


@get(
    "/datasets/{dataset_id:str}/versions/{ref:str}/download/{path:path}",
    tags=TAGS,
    opt=requires(DATASET_READ),
)
async def download_file(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
    path: FilePath,
) -> Response[Any]:
    """The file's bytes, streamed; ``Range: bytes=a-b`` gives 206 and the range. On
    the ``s3`` driver the answer is a redirect to a presigned URL. Only plain text,
    JSON, CSV and images are shown inline; anything else (HTML, SVG…) downloads as an
    attachment, always with ``nosniff`` and a sandboxing CSP."""
    checked = _checked_path(path.lstrip("/"))

    def lookup() -> File:
        with platform.db.transaction() as session:
            dataset = _dataset(session, access, dataset_id, DATASET_READ)
            version = _version(session, dataset, ref)
            row = session.scalar(
                select(File).where(File.version_id == version.id, File.path == checked)
            )
            if row is None:
                raise NotFoundException(f"no file {checked!r} in this version")
            session.expunge(row)
            return row

    row = await anyio.to_thread.run_sync(lookup)
    name = checked.rsplit("/", 1)[-1]
    inline = row.media_type in INLINE
    disposition = _disposition("inline" if inline else "attachment", name)
    headers = {
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Accept-Ranges": "bytes",
        "ETag": f'"{row.sha256}"',
    }
    if platform.storage.name == "s3":
        url = platform.storage.presign_get(blob_key(row.sha256), filename=name)
        return Redirect(url, status_code=307)
    start, end, status = 0, row.size, 200
    wanted = request.headers.get("range")
    if wanted:
        span = _range(wanted, row.size)
        if span is None:
            return Response(
                b"",
                status_code=416,
                headers={**headers, "Content-Range": f"bytes */{row.size}"},
            )
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{row.size}"
    headers["Content-Length"] = str(end - start)
    media_type = row.media_type if inline else "application/octet-stream"
    try:
        stream = platform.storage.open(blob_key(row.sha256), start=start, end=end)
    except ObjectNotFound:
        raise NotFoundException("the file's bytes are missing from the store") from None
    return Stream(stream, status_code=status, media_type=media_type, headers=headers)


@post(
    "/datasets/{dataset_id:str}/versions/{ref:str}/archive",
    tags=TAGS,
    opt=requires(DATASET_WRITE),
    status_code=201,
    request_max_body_size=None,
)
async def upload_archive(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
) -> dict[str, Any]:
    """Expand a zip, tar or tar.gz (multipart ``file``; optional ``prefix`` folder)
    into a draft. The whole archive is inspected first: a path that leaves the
    version, a link, a device, or sizes, counts or compression ratios beyond the
    limits reject all of it and nothing is added."""

    def check() -> None:
        with platform.db.transaction() as session:
            _draft(session, _dataset(session, access, dataset_id, DATASET_WRITE), ref)

    await anyio.to_thread.run_sync(check)
    settings = _settings(platform)
    form = await request.form()
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise field_error("file", "send the archive as a multipart part named 'file'")
        prefix_value = form.get("prefix") or ""
        prefix = _checked_path(prefix_value, "prefix") + "/" if prefix_value else ""
        return await anyio.to_thread.run_sync(
            _expand, platform, access, dataset_id, ref, upload, prefix, settings
        )
    finally:
        for value in form.values():
            if isinstance(value, UploadFile):
                await value.close()


def _expand(
    platform: Platform,
    access: Access,
    dataset_id: str,
    ref: str,
    upload: UploadFile,
    prefix: str,
    settings: DataSettings,
) -> dict[str, Any]:
    import shutil
    import tempfile
    from pathlib import Path

    from zhongtai_data.archives import ArchiveRejected, Limits, detect, extract

    stored: list[tuple[str, str, int]] = []  # (path, sha256, size)

    def write(member: Any, stream: Any) -> None:
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(stream, spool, 1024 * 1024)
            sha256, size = store_blob(platform, spool, limit=settings.max_file_size)
        stored.append((prefix + member.path, sha256, size))

    with tempfile.TemporaryDirectory(prefix="zt-archive-") as folder:
        source = Path(folder) / "archive"
        with source.open("wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, 1024 * 1024)
        with source.open("rb") as fh:
            head = fh.read(4096)
        kind = detect(upload.filename or "", head)
        if kind is None:
            raise field_error("file", "not a zip, tar or tar.gz archive")
        limits = Limits(max_entry_size=settings.max_file_size)
        try:
            extract(source, kind, write, limits)
        except (ArchiveRejected, TooLarge) as exc:
            _discard(platform, {sha for _p, sha, _s in stored})
            raise field_error("file", str(exc)) from None
    access.audit(action="data.archive.expand", target_kind="version", target_id=ref)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        version = _draft(session, dataset, ref)
        for path, sha256, size in stored:
            put_file(session, version, path, sha256, size)
        session.flush()
        access.audit(project_id=dataset.project_id, detail={"files": len(stored), "kind": kind})
        return {"files": len(stored), "version": version_dict(version)}


def _discard(platform: Platform, shas: set[str]) -> None:
    """Drop blobs stored for an archive that was then rejected (unless used elsewhere)."""
    with platform.db.transaction() as session:
        keys = forget_unused(session, shas)
    _delete_objects(platform, keys)


@get(
    "/datasets/{dataset_id:str}/versions/{ref:str}/diff",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_READ),
)
def diff_versions(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
    against: Annotated[str, QueryParameter(min_length=1, max_length=32)],
) -> dict[str, Any]:
    """What changed from version ``against`` to this one: files added, removed and
    changed (by SHA-256); for tables, columns added, removed or retyped and the
    change in row count (once the quality job has counted them)."""
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_READ)
        new = _version(session, dataset, ref)
        try:
            old = _version(session, dataset, against)
        except NotFoundException:
            raise field_error("against", f"no version {against} in this dataset") from None
        before = {f.path: f for f in session.scalars(select(File).where(File.version_id == old.id))}
        after = {f.path: f for f in session.scalars(select(File).where(File.version_id == new.id))}
        changed = []
        for path in sorted(before.keys() & after.keys()):
            a, b = before[path], after[path]
            if a.sha256 == b.sha256:
                continue
            entry: dict[str, Any] = {"path": path, "size": [a.size, b.size]}
            if a.columns is not None and b.columns is not None:
                old_cols = {c["name"]: c["type"] for c in a.columns}
                new_cols = {c["name"]: c["type"] for c in b.columns}
                entry["columns"] = {
                    "added": [c for c in new_cols if c not in old_cols],
                    "removed": [c for c in old_cols if c not in new_cols],
                    "retyped": [
                        {"name": c, "from": old_cols[c], "to": new_cols[c]}
                        for c in new_cols
                        if c in old_cols and old_cols[c] != new_cols[c]
                    ],
                }
            if a.rows is not None and b.rows is not None:
                entry["rows"] = {"from": a.rows, "to": b.rows, "change": b.rows - a.rows}
            changed.append(entry)
        return {
            "from": old.number,
            "to": new.number,
            "added": [file_dict(after[p]) for p in sorted(after.keys() - before.keys())],
            "removed": [file_dict(before[p]) for p in sorted(before.keys() - after.keys())],
            "changed": changed,
        }


PREVIEW_HEAD = 64 * 2**20  # bytes of a row-oriented file copied for a preview (s3)
TEXT_HEAD = 64 * 1024


def _file_of(
    platform: Platform, access: Access, dataset_id: str, ref: str, path: str, permission: Any
) -> tuple[File, Version]:
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, permission)
        version = _version(session, dataset, ref)
        row = session.scalar(select(File).where(File.version_id == version.id, File.path == path))
        if row is None:
            raise NotFoundException(f"no file {path!r} in this version")
        session.expunge(row)
        session.expunge(version)
        return row, version


@get(
    "/datasets/{dataset_id:str}/versions/{ref:str}/preview/{path:path}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_READ),
)
def preview_file(
    platform: PlatformDep,
    access: AccessDep,
    dataset_id: Ref,
    ref: Ref,
    path: FilePath,
    offset: Annotated[int, QueryParameter(ge=0, le=10**12)] = 0,
    limit: Annotated[int | None, QueryParameter(ge=1, le=1000)] = None,
) -> dict[str, Any]:
    """A look at a file without downloading it: a page of rows with the schema for
    CSV, TSV, Parquet and JSON Lines (reading only what is needed; ragged rows and
    bad encodings are listed in ``problems``), the first lines of a text file, or
    ``kind: image`` / ``binary``."""
    row, _version_row = _file_of(
        platform, access, dataset_id, ref, _checked_path(path.lstrip("/")), DATASET_READ
    )
    base = {"path": row.path, "size": row.size, "media_type": row.media_type}
    if row.tabular is not None:
        from zhongtai_data.tabular import preview

        rows = limit or _settings(platform).preview_rows
        head = None if row.tabular == "parquet" else PREVIEW_HEAD
        with local_copy(platform, row.sha256, head=head) as local:
            shown = preview(local, row.tabular, offset=offset, limit=rows)  # type: ignore[arg-type]
        return {
            **base,
            "kind": "table",
            "format": row.tabular,
            "columns": [{"name": c.name, "type": c.type} for c in shown.columns],
            "rows": shown.rows,
            "offset": shown.offset,
            "limit": shown.limit,
            "problems": shown.problems,
        }
    if row.media_type.startswith("image/"):
        return {**base, "kind": "image"}
    if row.media_type.startswith("text/") or row.media_type in ("application/json",):
        head_bytes = b"".join(platform.storage.open(blob_key(row.sha256), end=TEXT_HEAD))
        text = head_bytes.decode("utf-8", errors="replace")
        lines = text.splitlines()[: limit or 200]
        return {**base, "kind": "text", "lines": lines, "truncated": row.size > TEXT_HEAD}
    return {**base, "kind": "binary"}


@get(
    "/datasets/{dataset_id:str}/versions/{ref:str}/quality/{path:path}",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_READ),
)
def get_quality(
    platform: PlatformDep, access: AccessDep, dataset_id: Ref, ref: Ref, path: FilePath
) -> dict[str, Any]:
    """The quality report of a tabular file (404 while the version's ``data.quality``
    job has not written it)."""
    from zhongtai_data.models import Report

    row, _ = _file_of(
        platform, access, dataset_id, ref, _checked_path(path.lstrip("/")), DATASET_READ
    )
    with platform.db.transaction() as session:
        report = session.get(Report, row.id)
        if report is None:
            raise NotFoundException("no quality report yet (the data.quality job makes it)")
        return {
            "path": row.path,
            "status": report.status,
            "job": report.job_id,
            "created_at": _iso(report.created_at),
            **report.report,
        }


@post(
    "/datasets/{dataset_id:str}/versions/{ref:str}/quality",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_WRITE),
    status_code=202,
)
def rerun_quality(
    platform: PlatformDep, access: AccessDep, dataset_id: Ref, ref: Ref
) -> dict[str, Any]:
    """Queue ``data.quality`` for a committed version again; returns the job."""
    access.audit(action="data.quality.run", target_kind="version", target_id=ref)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, dataset_id, DATASET_WRITE)
        version = _version(session, dataset, ref)
        if version.status != "committed":
            raise ClientException(status_code=409, detail="commit the version first")
        job = _queue_quality(platform, session, access, dataset, version)
        if job is None:
            raise field_error("files", "the version has no tabular file")
        body = {"job": job.id}
    jobs_engine(platform).dispatch([job])
    return body


def _disposition(kind: str, name: str) -> str:
    from urllib.parse import quote

    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def _range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` (one range) as [start, end); None when it cannot be satisfied."""
    found = RANGE.match(header.strip())
    if found is None or size == 0:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        return (max(0, size - count), size) if count else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return start, end


from zhongtai_data.sources import ROUTES as SOURCE_ROUTES  # noqa: E402 - uses this module
from zhongtai_data.uploads import ROUTES as UPLOAD_ROUTES  # noqa: E402 - uses this module

ROUTES = [
    *UPLOAD_ROUTES,
    *SOURCE_ROUTES,
    create_dataset,
    list_datasets,
    get_dataset,
    update_dataset,
    delete_dataset,
    create_version,
    list_versions,
    get_version,
    commit_version,
    delete_version,
    list_files,
    upload_file,
    remove_file,
    download_file,
    upload_archive,
    diff_versions,
    preview_file,
    get_quality,
    rerun_quality,
]

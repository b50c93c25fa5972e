"""Resumable uploads of large files into a draft version.

1. ``POST /uploads`` ``{dataset, version, path, size, sha256}`` opens an upload: the
   answer gives its id, the part size and the number of parts (on the ``s3`` driver
   also presigned URLs, so parts go straight to S3).
2. ``PUT /uploads/{id}/parts/{n}`` sends part ``n`` (1-based; every part but the last
   is exactly ``part_size`` bytes; a part of the wrong length is a 409 and changes
   nothing). Parts may come in any order and again.
3. ``GET /uploads/{id}`` says which parts the server holds and the ``offset`` up to
   which everything is there: after a lost connection, or a server restart, the
   client sends the rest.
4. ``POST /uploads/{id}/complete`` assembles the parts, checks the size and the
   SHA-256 (a mismatch is a 422 and nothing is added), stores the bytes once
   (content-addressed) and adds the file to the draft. ``DELETE /uploads/{id}``
   aborts and frees the parts.

Parts live in the object store's own multipart uploads (the local driver keeps
them on disk), so an upload survives a server restart. Uploads not completed by
their ``expires_at`` are aborted by the ``data.sweep`` job.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio.from_thread
import anyio.to_thread
from litestar import Request, delete, get, post, put
from litestar.exceptions import ClientException
from litestar.params import JSONBody, PathParameter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from zhongtai.hooks.events import utcnow
from zhongtai.identity.guard import Access, AccessDep, requires
from zhongtai.platform import Platform
from zhongtai.storage import MIN_PART_SIZE, InvalidUpload, ObjectNotFound
from zhongtai.web.params import PlatformDep
from zhongtai_data.blobs import blob_key
from zhongtai_data.models import Blob, Dataset, Upload
from zhongtai_data.permissions import DATASET_WRITE

__all__ = ["ROUTES", "sweep"]

log = logging.getLogger("zhongtai.data")
TAGS = ["data"]
Ref = Annotated[str, PathParameter(min_length=1, max_length=32)]
CHUNK = 1024 * 1024


class UploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=32)
    version: str = Field(min_length=1, max_length=32, description="The draft's id.")
    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0, le=5 * 2**40)
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The file's SHA-256, checked at completion (without it, only the size).",
    )


class _Hashes:
    """SHA-256 of the uploads whose parts this process received in order, so that
    completing them need not read the file again (the usual case: one client sending
    parts 1, 2, 3…). A part out of order, or sent twice, drops the upload from here;
    its completion then reads the assembled file to hash it."""

    LIMIT = 1000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: dict[str, tuple[int, Any]] = {}  # upload id -> (next part, hasher)

    def start(self, upload_id: str, number: int) -> Any | None:
        """A copy of the hasher to extend with part ``number``, or None."""
        with self.lock:
            state = self.states.get(upload_id)
            if state is None and number == 1:
                return hashlib.sha256()
            if state is not None and state[0] == number:
                return state[1].copy()
            if state is not None and number < state[0]:
                del self.states[upload_id]  # sent again: it may differ
            return None

    def done(self, upload_id: str, number: int, hasher: Any) -> None:
        with self.lock:
            state = self.states.get(upload_id)
            if (state is None and number == 1) or (state is not None and state[0] == number):
                if len(self.states) >= self.LIMIT:
                    self.states.pop(next(iter(self.states)))
                self.states[upload_id] = (number + 1, hasher)

    def digest(self, upload_id: str, parts: int) -> str | None:
        with self.lock:
            state = self.states.pop(upload_id, None)
        return state[1].hexdigest() if state is not None and state[0] == parts + 1 else None

    def forget(self, upload_id: str) -> None:
        with self.lock:
            self.states.pop(upload_id, None)


HASHES = _Hashes()


class _PartRejected(Exception):
    """The part's body is not the length it must be (nothing is stored)."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _key(upload_id: str) -> str:
    return f"data/uploads/{upload_id}"


def _parts_of(upload: Upload) -> int:
    return max(1, math.ceil(upload.size / upload.part_size))


def _part_length(upload: Upload, number: int) -> int:
    if number < _parts_of(upload):
        return upload.part_size
    return upload.size - upload.part_size * (_parts_of(upload) - 1)


def upload_dict(platform: Platform, upload: Upload) -> dict[str, Any]:
    held: list[dict[str, int]] = []
    if upload.status == "open":
        try:
            held = [
                {"number": n, "size": size}
                for n, size, _etag in platform.storage.list_parts(_key(upload.id), upload.multipart)
            ]
        except ObjectNotFound:
            held = []
    numbers = {p["number"] for p in held}
    offset = 0
    for n in range(1, _parts_of(upload) + 1):
        if n not in numbers:
            break
        offset += _part_length(upload, n)
    return {
        "id": upload.id,
        "dataset": upload.dataset_id,
        "version": upload.version_id,
        "path": upload.path,
        "size": upload.size,
        "sha256": upload.sha256 or None,
        "part_size": upload.part_size,
        "parts": _parts_of(upload),
        "received": held,
        "offset": offset,
        "status": upload.status,
        "error": upload.error,
        "created_at": _iso(upload.created_at),
        "expires_at": _iso(upload.expires_at),
    }


def _upload(session: Any, access: Access, upload_id: str) -> Upload:
    """The upload, if the caller may write its dataset; 404 otherwise."""
    upload: Upload | None = session.get(Upload, upload_id)
    dataset = session.get(Dataset, upload.dataset_id) if upload is not None else None
    access.require(
        session, project_id=dataset.project_id if dataset else None, permission=DATASET_WRITE
    )
    assert upload is not None
    return upload


def _open_upload(upload: Upload) -> None:
    if upload.status != "open":
        raise ClientException(status_code=409, detail=f"the upload is {upload.status}")


@post("/uploads", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_WRITE), status_code=201)
def create_upload(platform: PlatformDep, access: AccessDep, data: JSONBody[UploadIn]) -> Any:
    """Open a resumable upload of one file into a draft."""
    from zhongtai_data.api import _checked_path, _dataset, _draft, _settings

    path = _checked_path(data.path)
    settings = _settings(platform)
    part_size = max(settings.part_size, MIN_PART_SIZE, math.ceil(data.size / 10_000))
    access.audit(action="data.upload.create", target_kind="dataset", target_id=data.dataset)
    with platform.db.transaction() as session:
        dataset = _dataset(session, access, data.dataset, DATASET_WRITE)
        version = _draft(session, dataset, data.version)
        upload = Upload(
            dataset_id=dataset.id,
            version_id=version.id,
            path=path,
            size=data.size,
            sha256=data.sha256 or "",
            part_size=part_size,
            multipart="",
            status="open",
            created_by=access.principal.user_id,
            expires_at=utcnow() + timedelta(seconds=settings.upload_ttl),
        )
        session.add(upload)
        session.flush()
        upload.multipart = platform.storage.create_multipart(_key(upload.id))
        access.audit(target_id=upload.id, project_id=dataset.project_id, detail={"path": path})
        body = upload_dict(platform, upload)
        if platform.storage.name == "s3":
            body["urls"] = [
                platform.storage.presign_part(_key(upload.id), upload.multipart, n)
                for n in range(1, _parts_of(upload) + 1)
            ]
        return body


@get("/uploads/{upload_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_WRITE))
def get_upload(platform: PlatformDep, access: AccessDep, upload_id: Ref) -> dict[str, Any]:
    """Which parts the server holds, and ``offset``: every byte before it is there."""
    with platform.db.transaction() as session:
        return upload_dict(platform, _upload(session, access, upload_id))


@put(
    "/uploads/{upload_id:str}/parts/{number:int}",
    tags=TAGS,
    opt=requires(DATASET_WRITE),
    request_max_body_size=None,
)
async def put_part(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    upload_id: Ref,
    number: Annotated[int, PathParameter(ge=1, le=10_000)],
) -> dict[str, Any]:
    """Store part ``number`` (the request body). Its length must be the part's: every
    part but the last is ``part_size`` bytes; anything else is a 409."""

    def check() -> Upload:
        with platform.db.transaction() as session:
            upload = _upload(session, access, upload_id)
            _open_upload(upload)
            session.expunge(upload)
            return upload

    upload = await anyio.to_thread.run_sync(check)
    if number > _parts_of(upload):
        raise ClientException(status_code=409, detail=f"the upload has {_parts_of(upload)} parts")
    expected = _part_length(upload, number)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != expected:
        raise ClientException(
            status_code=409,
            detail=f"part {number} is {expected} bytes, not {declared}; nothing was stored",
        )
    # The body streams straight into the store's part (which the store writes to a
    # temporary file and installs only when complete): a body of the wrong length
    # raises before the end, so nothing is stored.
    body = request.stream()
    hasher = HASHES.start(upload.id, number)
    counted = [0]

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = anyio.from_thread.run(body.__anext__)
            except StopAsyncIteration:
                break
            counted[0] += len(chunk)
            if counted[0] > expected:
                raise _PartRejected(f"part {number} is longer than {expected} bytes")
            if hasher is not None:
                hasher.update(chunk)
            yield chunk
        if counted[0] != expected:
            raise _PartRejected(
                f"part {number} is {expected} bytes, not {counted[0]}; nothing was stored"
            )

    try:
        etag = await anyio.to_thread.run_sync(
            platform.storage.upload_part, _key(upload.id), upload.multipart, number, chunks()
        )
    except _PartRejected as exc:
        raise ClientException(status_code=409, detail=str(exc)) from None
    if hasher is not None:
        HASHES.done(upload.id, number, hasher)
    received = counted[0]
    return {"number": number, "size": received, "etag": etag}


@post(
    "/uploads/{upload_id:str}/complete",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_WRITE),
    status_code=201,
)
def complete_upload(platform: PlatformDep, access: AccessDep, upload_id: Ref) -> dict[str, Any]:
    """Assemble, verify (size and SHA-256: 422 and nothing added when they differ),
    store once, and add the file to the draft."""
    from zhongtai_data.api import _draft, file_dict
    from zhongtai_data.versions import put_file

    access.audit(action="data.upload.complete", target_kind="upload", target_id=upload_id)
    with platform.db.transaction() as session:
        upload = _upload(session, access, upload_id)
        _open_upload(upload)
        session.expunge(upload)
    key = _key(upload.id)
    parts = platform.storage.list_parts(key, upload.multipart)
    missing = sorted(set(range(1, _parts_of(upload) + 1)) - {n for n, _s, _e in parts})
    if missing:
        raise ClientException(
            status_code=409,
            detail=f"parts not received yet: {missing[:20]}",
            extra=[{"key": "parts", "message": "send the missing parts first"}],
        )
    try:
        platform.storage.complete_multipart(
            key, upload.multipart, [(n, etag) for n, _size, etag in parts]
        )
    except InvalidUpload as exc:
        raise ClientException(status_code=409, detail=str(exc)) from None
    known = HASHES.digest(upload.id, _parts_of(upload))
    if known is not None:  # hashed while the parts came in, in order
        sha256, size = known, platform.storage.stat(key).size
    else:
        digest = hashlib.sha256()
        size = 0
        with platform.storage.open(key) as chunks:
            for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
        sha256 = digest.hexdigest()
    if size != upload.size or (upload.sha256 and sha256 != upload.sha256):
        platform.storage.delete(key)
        what = "size" if size != upload.size else "sha256"
        message = (
            f"received {size} bytes, declared {upload.size}"
            if what == "size"
            else f"the bytes hash to {sha256}, not the declared {upload.sha256}"
        )
        with platform.db.transaction() as session:
            failed = session.get(Upload, upload.id)
            if failed is not None:
                failed.status, failed.error = "failed", message
        raise ClientException(
            status_code=422, detail=f"{what}: {message}", extra=[{"key": what, "message": message}]
        )
    target = blob_key(sha256)
    if platform.storage.exists(target):
        platform.storage.delete(key)  # the same bytes are stored already
    else:
        platform.storage.move(key, target)  # a rename on the local driver
    with platform.db.transaction() as session:
        if session.get(Blob, sha256) is None:
            session.add(Blob(sha256=sha256, size=size))
            session.flush()
        dataset = session.get(Dataset, upload.dataset_id)
        assert dataset is not None
        version = _draft(session, dataset, upload.version_id)
        added = put_file(session, version, upload.path, sha256, size)
        stored = session.get(Upload, upload.id)
        if stored is not None:
            stored.status = "completed"
        session.flush()
        access.audit(project_id=dataset.project_id, detail={"path": upload.path, "size": size})
        return file_dict(added)


@delete("/uploads/{upload_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_WRITE))
def abort_upload(platform: PlatformDep, access: AccessDep, upload_id: Ref) -> None:
    """Abort an upload and free its parts (nothing was added to the draft)."""
    access.audit(action="data.upload.abort", target_kind="upload", target_id=upload_id)
    with platform.db.transaction() as session:
        upload = _upload(session, access, upload_id)
        if upload.status == "open":
            platform.storage.abort_multipart(_key(upload.id), upload.multipart)
        upload.status = "aborted"
    HASHES.forget(upload_id)


def sweep(platform: Platform) -> int:
    """Abort the open uploads whose time is up; return how many."""
    now = utcnow()
    with platform.db.transaction() as session:
        expired = list(
            session.scalars(select(Upload).where(Upload.status == "open", Upload.expires_at < now))
        )
        for upload in expired:
            try:
                platform.storage.abort_multipart(_key(upload.id), upload.multipart)
            except Exception:
                log.warning("upload %s: could not free its parts", upload.id, exc_info=True)
            upload.status = "expired"
        return len(expired)


ROUTES = [create_upload, get_upload, put_part, complete_upload, abort_upload]

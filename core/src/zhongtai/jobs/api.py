"""``/api/v1/jobs``: submit, list, inspect, cancel and retry jobs; read and follow logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from litestar import Request, Response, Router, get, post
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import (
    ClientException,
    NotFoundException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.middleware.rate_limit import (
    CacheObject,
    RateLimitConfig,
    RateLimitMiddleware,
    get_remote_address,
)
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Stream
from litestar.types import Message, Receive, Scope, Send
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zhongtai.identity.guard import (
    NO_AUDIT_SCOPE_KEY,
    Access,
    AccessDep,
    authenticated,
    requires,
)
from zhongtai.identity.permissions import JOBS_READ, JOBS_SUBMIT
from zhongtai.jobs.engine import JobConflict, JobRefused, jobs_engine
from zhongtai.jobs.models import FINISHED, Job, JobIdempotency, JobLog, JobStatus
from zhongtai.jobs.types import InvalidParams
from zhongtai.logs import mask_fields
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep

TAGS = ["jobs"]
JobRef = Annotated[str, PathParameter(min_length=1, max_length=32)]
STREAM_POLL = 1.0  # seconds of quiet after which a follower checks the database
STREAM_BATCH = 5000  # lines read from the database, or drained from the hub, at once


class JobIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    type: str = Field(min_length=1, max_length=128)
    project: str = Field(min_length=1, max_length=32, description="The project's id.")
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=-100, le=100)
    run_at: datetime | None = Field(
        default=None, description="Start no earlier (ISO 8601, with zone)."
    )
    parent: str | None = Field(default=None, max_length=32)


def job_dict(job: Job) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": job.id,
        "type": job.type,
        "project": job.project_id,
        "owner": job.owner_id,
        "parent": job.parent_id,
        "status": job.status,
        "params": mask_fields(job.params),
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "interruptions": job.interruptions,
        "timeout": job.timeout,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "result": job.result,
        "error": job.error,
        "worker": job.worker,
        "cancel_requested": job.cancel_requested,
        "log_lines": job.log_lines,
        "run_at": iso(job.run_at),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "finished_at": iso(job.finished_at),
    }


def _field_error(field: str, message: str) -> ValidationException:
    return ValidationException(
        detail=f"invalid value for {field!r}: {message}",
        extra=[{"key": field, "message": message, "source": "body"}],
        status_code=422,
    )


def _request_hash(data: JobIn) -> str:
    canonical = json.dumps(data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@post("/api/v1/jobs", tags=TAGS, sync_to_thread=True, opt=requires(JOBS_SUBMIT), status_code=201)
def submit_job(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    data: JSONBody[JobIn],
) -> Response[dict[str, Any]]:
    """Submit a job of a registered type to a project.

    ``params`` are validated against the type's schema (422 naming the field). With an
    ``Idempotency-Key`` header, a repeat of the same request by the same caller returns
    the first job (200) instead of a new one; the same key with another body → 422.
    Admission may hold the job (``status: held``) or refuse it (429).
    """
    engine = jobs_engine(platform)
    job_type = engine.types.get(data.type)
    if job_type is None:
        raise _field_error("type", f"unknown job type {data.type!r}")
    try:
        params = job_type.params.model_validate(data.params)
    except ValidationError as exc:
        errors = [
            {
                "key": ".".join(["params", *(str(p) for p in err["loc"])]),
                "message": err["msg"],
                "source": "body",
            }
            for err in exc.errors()
        ]
        first = errors[0]
        raise ValidationException(
            detail=f"invalid value for {first['key']!r}: {first['message']}",
            extra=errors,
            status_code=422,
        ) from None
    if data.run_at is not None and data.run_at.tzinfo is None:
        raise _field_error("run_at", "give a time zone (e.g. 2026-01-01T08:00:00Z)")
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise ClientException("Idempotency-Key must be 1-200 characters")
    principal = access.principal
    caller = principal.api_key_id or principal.user_id
    digest = _request_hash(data) if key is not None else ""
    # Refuse (503) before anything is written when the queue is down, rather than
    # acknowledge jobs that wait for the reconciler.
    engine.driver.check()
    access.audit(action="job.submit", target_kind="job", project_id=data.project)
    try:
        job = None
        with platform.db.autocommit() as session:
            access.require(session, project_id=data.project)
            if job_type.permission is not None:
                access.require(session, project_id=data.project, permission=job_type.permission)
            if key is None and data.parent is None:
                # Most submissions: one INSERT committing by itself (or None, the long
                # way), with the request's audit row where it can go in the same one.
                audit = access.audit_row(201) if engine.audits_at_once else None
                job = engine.submit_at_once(
                    session,
                    job_type=job_type,
                    project_id=data.project,
                    principal=principal,
                    params=params,
                    priority=data.priority,
                    run_at=data.run_at,
                    audit=audit,
                )
                if job is not None and audit is not None:
                    access.audit_written()
        if job is None:
            with platform.db.transaction() as session:
                if data.parent is not None:
                    parent = session.get(Job, data.parent)
                    if parent is None or parent.project_id != data.project:
                        raise _field_error("parent", "no such job in this project")
                if key is not None:
                    earlier = session.get(JobIdempotency, (caller, key))
                    if earlier is not None:
                        return _repeat(session, earlier, digest)
                job = engine.submit(
                    session,
                    job_type=job_type,
                    project_id=data.project,
                    principal=principal,
                    params=params,
                    priority=data.priority,
                    run_at=data.run_at,
                    parent_id=data.parent,
                )
                if key is not None:
                    session.add(
                        JobIdempotency(caller=caller, key=key, request_hash=digest, job_id=job.id)
                    )
        body = job_dict(job)  # its attributes stay loaded after the commit
        access.audit(target_id=job.id)  # for the row written after the response, if any
    except InvalidParams as exc:
        raise _field_error(f"params.{exc.field}", exc.message) from None
    except JobRefused as exc:
        raise TooManyRequestsException(detail=str(exc), headers={"Retry-After": "5"}) from None
    except IntegrityError:
        # Two requests with one new Idempotency-Key raced: the winner's job is the answer.
        if key is None:
            raise
        with platform.db.transaction() as session:
            earlier = session.get(JobIdempotency, (caller, key))
            if earlier is None:
                raise
            return _repeat(session, earlier, digest)
    engine.dispatch([job])
    return Response(body, status_code=201)


def _repeat(session: Session, earlier: JobIdempotency, digest: str) -> Response[dict[str, Any]]:
    if earlier.request_hash != digest:
        raise ClientException(
            detail="this Idempotency-Key was used with a different request body",
            status_code=422,
            extra=[
                {
                    "key": "Idempotency-Key",
                    "message": "reused with a different body",
                    "source": "header",
                }
            ],
        )
    job = session.get(Job, earlier.job_id)
    if job is None:  # pragma: no cover - the key row cascades with the job
        raise NotFoundException()
    return Response(job_dict(job), status_code=200)


@get("/api/v1/jobs", tags=TAGS, sync_to_thread=True, opt=requires(JOBS_READ))
def list_jobs(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, QueryParameter(max_length=32)] = None,
    type: Annotated[str | None, QueryParameter(max_length=128)] = None,
    status: Annotated[JobStatus | None, QueryParameter()] = None,
    owner: Annotated[str | None, QueryParameter(max_length=32)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Jobs in the projects the caller can read, newest first. ``owner=me`` for one's own."""
    page = page_for(platform.settings, limit, cursor)
    query = select(Job).where(Job.project_id.in_(access.visible_projects()))
    if project is not None:
        query = query.where(Job.project_id == project)
    if type is not None:
        query = query.where(Job.type == type)
    if status is not None:
        query = query.where(Job.status == str(status))
    if owner is not None:
        query = query.where(Job.owner_id == (access.principal.user_id if owner == "me" else owner))
    with platform.db.transaction() as session:
        found = paginate(session, query, Job.id, page, newest_first=True)
        return {"items": [job_dict(j) for j in found.items], "next_cursor": found.next_cursor}


@get("/api/v1/jobs/types", tags=TAGS, sync_to_thread=False, opt=authenticated())
def list_job_types(platform: PlatformDep) -> dict[str, Any]:
    """Every job type the platform can run, with its parameter schema."""
    engine = jobs_engine(platform)
    return {"items": [t.describe() for t in engine.types]}


def _readable_job(session: Session, access: Access, job_id: str, permission: Any = None) -> Job:
    job = session.get(Job, job_id)
    access.require(session, project_id=job.project_id if job else None, permission=permission)
    assert job is not None
    return job


@get("/api/v1/jobs/{job_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(JOBS_READ))
def get_job(platform: PlatformDep, access: AccessDep, job_id: JobRef) -> dict[str, Any]:
    with platform.db.transaction() as session:
        return job_dict(_readable_job(session, access, job_id))


@post(
    "/api/v1/jobs/{job_id:str}/cancel",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(JOBS_SUBMIT),
    status_code=202,
)
def cancel_job(platform: PlatformDep, access: AccessDep, job_id: JobRef) -> dict[str, Any]:
    """Cancel a waiting job at once, or ask a running one to stop; 409 if it finished."""
    with platform.db.transaction() as session:
        _readable_job(session, access, job_id)
    try:
        jobs_engine(platform).cancel(job_id)
    except JobConflict as exc:
        raise ClientException(detail=str(exc), status_code=409) from None
    with platform.db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        access.audit(
            action="job.cancel", target_kind="job", target_id=job.id, project_id=job.project_id
        )
        return job_dict(job)


@post(
    "/api/v1/jobs/{job_id:str}/retry",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(JOBS_SUBMIT),
    status_code=202,
)
def retry_job(platform: PlatformDep, access: AccessDep, job_id: JobRef) -> dict[str, Any]:
    """Queue a failed or cancelled job again; 409 for any other state."""
    with platform.db.transaction() as session:
        job = _readable_job(session, access, job_id)
        engine = jobs_engine(platform)
        job_type = engine.types.get(job.type)
        if job_type is not None and job_type.permission is not None:
            access.require(session, project_id=job.project_id, permission=job_type.permission)
    try:
        engine.retry(job_id)
    except JobConflict as exc:
        raise ClientException(detail=str(exc), status_code=409) from None
    with platform.db.transaction() as session:
        retried = session.get(Job, job_id)
        assert retried is not None
        access.audit(
            action="job.retry",
            target_kind="job",
            target_id=retried.id,
            project_id=retried.project_id,
        )
        return job_dict(retried)


def _lines(session: Session, job_id: str, after: int, limit: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(JobLog)
        .where(JobLog.job_id == job_id, JobLog.seq > after)
        .order_by(JobLog.seq)
        .limit(limit)
    )
    return [
        {"seq": r.seq, "at": r.at.isoformat(), "attempt": r.attempt, "line": r.line} for r in rows
    ]


@get("/api/v1/jobs/{job_id:str}/logs", tags=TAGS, sync_to_thread=True, opt=requires(JOBS_READ))
def get_logs(
    platform: PlatformDep,
    access: AccessDep,
    job_id: JobRef,
    after: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Log lines after sequence number ``after``, oldest first; ``next_after`` pages on."""
    with platform.db.transaction() as session:
        _readable_job(session, access, job_id)
        items = _lines(session, job_id, after, limit)
    return {
        "items": items,
        "next_after": items[-1]["seq"] if len(items) == limit else None,
    }


@get(
    "/api/v1/jobs/{job_id:str}/logs/stream",
    tags=TAGS,
    opt=requires(JOBS_READ),
)
async def stream_logs(
    request: Request[Any, Any, Any],
    platform: PlatformDep,
    access: AccessDep,
    job_id: JobRef,
    after: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> Stream:
    """Server-sent events: ``line`` (id = sequence number), ``progress`` and ``status``.

    Starts after ``Last-Event-ID`` (or ``after``), sends the stored lines, then live
    ones, and ends with the job's final ``status`` once every line is out.
    """

    def check() -> None:
        with platform.db.transaction() as session:
            _readable_job(session, access, job_id)

    await anyio.to_thread.run_sync(check)
    start = after or 0
    last_event = request.headers.get("last-event-id")
    if last_event is not None:
        if not last_event.isdigit():
            raise ClientException("Last-Event-ID must be a log sequence number")
        start = int(last_event)
    return Stream(
        _follow(platform, job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One server-sent event, CRLF-separated like Litestar's own (JSON never contains a
    line break, so ``data`` is one line)."""
    head = f"id: {event_id}\r\n" if event_id is not None else ""
    return f"{head}event: {event}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()


def _line_event(item: dict[str, Any]) -> bytes:
    return _sse("line", {k: v for k, v in item.items() if k != "kind"}, item["seq"])


async def _follow(platform: Any, job_id: str, after: int) -> AsyncIterator[bytes]:
    """The stream: stored lines from the database, then live ones from the hub.

    Lines go out strictly in sequence: a line is sent only after the one before it,
    so a follower never skips a batch that is still being written. Everything that
    arrived together is written in one chunk (a fast job's 10,000 lines are a few
    writes, not 10,000), and only the latest progress of a chunk is sent.
    """
    engine = jobs_engine(platform)

    def snapshot(since: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        with platform.db.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                return [], {"status": "deleted", "log_lines": 0}
            lines = _lines(session, job_id, since, STREAM_BATCH)
            return lines, {
                "status": job.status,
                "progress": job.progress,
                "message": job.progress_message,
                "error": job.error,
                "log_lines": job.log_lines,
            }

    last = after
    sent_progress: dict[str, Any] | None = None
    sent_status: str | None = None
    stalled = 0
    need_db = True
    with engine.hub.follow(job_id) as follower:
        # Subscribed first, then read: a line written in between arrives both ways,
        # and the sequence numbers drop the copy.
        while True:
            if need_db or follower.overflowed:
                follower.overflowed = False
                lines, state = await anyio.to_thread.run_sync(snapshot, last)
                chunk: list[bytes] = []
                for item in lines:
                    if item["seq"] != last + 1:
                        break  # an earlier batch is still being written
                    last = item["seq"]
                    chunk.append(_line_event(item))
                progress = {"progress": state.get("progress"), "message": state.get("message")}
                if progress != sent_progress and state["status"] != "deleted":
                    sent_progress = progress
                    chunk.append(_sse("progress", progress))
                finished = state["status"] in FINISHED or state["status"] == "deleted"
                if finished and last < state["log_lines"] and lines and lines[0]["seq"] > last + 1:
                    stalled += 1
                    if stalled >= 3:  # a line that will never come: do not hang on it
                        last = lines[0]["seq"] - 1
                        need_db = True
                        if chunk:
                            yield b"".join(chunk)
                        continue
                if finished and last >= state["log_lines"]:
                    chunk.append(_sse("status", state))
                    yield b"".join(chunk)
                    return
                if not finished and state["status"] != sent_status:
                    sent_status = state["status"]
                    chunk.append(_sse("status", {"status": sent_status}))
                if chunk:
                    yield b"".join(chunk)
                if len(lines) == STREAM_BATCH and last == lines[-1]["seq"]:
                    continue  # more stored lines before anything live
                need_db = finished  # a finished job's last lines are being written
                if finished:
                    await asyncio.sleep(0.1)
                    continue
            try:
                first = await asyncio.wait_for(follower.queue.get(), STREAM_POLL)
            except TimeoutError:
                need_db = True  # quiet: check the database (another process may write)
                continue
            messages = [first]
            while len(messages) < STREAM_BATCH and not follower.queue.empty():
                messages.append(follower.queue.get_nowait())
            chunk = []
            latest_progress: dict[str, Any] | None = None
            for message in messages:
                kind = message.get("kind")
                if kind == "line":
                    if message["seq"] == last + 1:
                        last = message["seq"]
                        chunk.append(_line_event(message))
                    elif message["seq"] > last + 1:
                        need_db = True  # a gap: read the missing lines from the database
                elif kind == "progress":
                    latest_progress = {
                        "progress": message["progress"],
                        "message": message["message"],
                    }
                elif kind == "status":
                    need_db = True  # re-read the job: it may have finished
            if latest_progress is not None and latest_progress != sent_progress:
                sent_progress = latest_progress
                chunk.append(_sse("progress", latest_progress))
            if chunk:
                yield b"".join(chunk)


class SubmissionLimit(RateLimitMiddleware):
    """Litestar's rate limit, per caller, with ``Retry-After`` on the 429."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException:
            scope[NO_AUDIT_SCOPE_KEY] = True  # type: ignore[literal-required]
            raise

    def create_response_headers(self, cache_object: CacheObject) -> dict[str, str]:
        """The headers of the 429 this middleware answers."""
        headers = super().create_response_headers(cache_object)
        headers["Retry-After"] = str(max(1, int(headers["RateLimit-Reset"])))
        return headers

    def create_send_wrapper(self, send: Send, cache_object: CacheObject) -> Send:
        """The headers of an admitted request's answer: no ``Retry-After`` of ours."""

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableScopeHeaders(message)
                for key, value in (
                    super(SubmissionLimit, self).create_response_headers(cache_object).items()
                ):
                    headers[key] = value
            await send(message)

        return send_wrapper


def _caller(request: Request[Any, Any, Any]) -> str:
    """Who submits, before authentication has run: the credential (hashed), else the
    address (a request without one is answered 401 anyway)."""
    credential = request.headers.get("authorization")
    if credential:
        return "credential:" + hashlib.sha256(credential.encode()).hexdigest()
    return "address:" + get_remote_address(request)


def submission_routes(per_second: int) -> list[Any]:
    """``POST /api/v1/jobs``, limited to ``per_second`` submissions per caller in each
    server process (0: no limit); more are answered 429 before any work is done."""
    if not per_second:
        return [submit_job]
    limit = RateLimitConfig(
        rate_limit=("second", per_second),
        identifier_for_request=_caller,
        middleware_class=SubmissionLimit,
        store="zhongtai-job-submissions",
    )
    return [Router(path="/", route_handlers=[submit_job], middleware=[limit.middleware])]


ROUTES = [
    list_jobs,
    list_job_types,
    get_job,
    cancel_job,
    retry_job,
    get_logs,
    stream_logs,
]

__all__ = ["ROUTES", "job_dict", "submission_routes"]

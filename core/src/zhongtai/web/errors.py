"""Every error is RFC 9457 problem details (``application/problem+json``).

Validation errors name the offending field in ``detail`` and list every problem in
``errors``; a 500 carries the request id and never a stack trace.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import ClientException, HTTPException, ValidationException

from zhongtai.identity.access import Forbidden, NotFound
from zhongtai.logs import request_id_var

log = logging.getLogger("zhongtai.web")

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    """A problem-details response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title or phrase, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    rid = request_id_var.get()
    if rid:
        body["request_id"] = rid
    body.update(extra)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_error(field: str, message: str, status: int = 400) -> ClientException:
    """A 4xx whose problem-details body names ``field`` (in ``errors``), for a value a
    route's own checks refuse after its body model accepted it."""
    return ClientException(
        status_code=status,
        detail=f"{field}: {message}",
        extra=[{"key": field, "message": message}],
    )


def _field_errors(extra: Any) -> list[dict[str, Any]]:
    errors = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                field = item.get("key") or item.get("field") or item.get("loc")
                entry = {"field": field, "message": str(item.get("message", item.get("msg", "")))}
                source = item.get("source")
                if source:
                    entry["source"] = str(getattr(source, "value", source))
                errors.append(entry)
    elif isinstance(extra, dict) and extra:
        errors.append({"field": extra.get("key") or extra.get("field"), **extra})
    return errors


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    errors = _field_errors(exc.extra)
    detail = exc.detail
    if isinstance(exc, ValidationException) or (errors and status in (400, 422)):
        named = [e for e in errors if e.get("field")]
        if named:
            first = named[0]
            where = f" in {first['source']}" if first.get("source") else ""
            detail = f"invalid value for {first['field']!r}{where}: {first['message']}"
    if status >= 500:
        log.error("HTTP %s: %s", status, detail)
    headers = dict(exc.headers or {})
    return problem(
        status, detail, errors=errors or None, headers=headers or None, instance=request.url.path
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        "The server hit an unexpected error; quote the request id when reporting it.",
        instance=request.url.path,
    )


def not_found_handler(request: Request[Any, Any, Any], exc: NotFound) -> Response[Any]:
    # The same answer whether the object is missing or belongs to a project the caller
    # cannot see: nothing in it may tell the two apart.
    return problem(404, "not found", instance=request.url.path)


def forbidden_handler(request: Request[Any, Any, Any], exc: Forbidden) -> Response[Any]:
    return problem(403, f"requires the permission {exc}", instance=request.url.path)


def unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """503 with ``Retry-After`` while the database or the queue cannot be reached.

    Lost connections are retried by the next request (the pool pre-pings and
    reconnects), so the caller's best move is to try again shortly.
    """
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and _is_busy(exc):
        # SQLite's one writer was busy for longer than its busy timeout: nothing was
        # written, and the same request shortly after will go through.
        log.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
        return problem(
            503,
            "the database is busy; try again shortly",
            headers={"Retry-After": "1"},
            instance=request.url.path,
        )
    if isinstance(exc, DBAPIError) and not exc.connection_invalidated and not _is_outage(exc):
        return internal_error_handler(request, exc)
    log.warning("service unavailable on %s %s: %s", request.method, request.url.path, exc)
    what = "the database" if isinstance(exc, DBAPIError) else "the job queue"
    return problem(
        503,
        f"{what} is unavailable right now; try again shortly",
        headers={"Retry-After": "5"},
        instance=request.url.path,
    )


def _is_busy(exc: Exception) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and "database is locked" in str(exc).lower()


def _is_outage(exc: Exception) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError) and "locked" not in str(exc).lower()


def _handlers() -> dict[Any, Any]:
    from sqlalchemy.exc import DBAPIError

    from zhongtai.jobs.queue.base import QueueUnavailable

    return {
        NotFound: not_found_handler,
        Forbidden: forbidden_handler,
        HTTPException: http_exception_handler,
        DBAPIError: unavailable_handler,
        QueueUnavailable: unavailable_handler,
        Exception: internal_error_handler,
    }


EXCEPTION_HANDLERS: dict[Any, Any] = _handlers()

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "field_error", "problem"]

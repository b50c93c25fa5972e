"""Identity API: the audit log, read and exported; never changed.

``GET /api/v1/audit`` lists rows newest first with a cursor; ``GET /api/v1/audit/export``
streams the same rows as JSON lines. Superusers see every row. An organization owner
(who holds ``core.audit.read`` there) sees the rows of that organization and of its
projects. Everyone else gets 403, and so does an API key scoped to one project or to
permissions without ``core.audit.read``.

Filters (query parameters, all optional, combined with AND): ``actor`` (user id),
``action`` (exact, or a prefix with a trailing ``*``: ``apikey.*``), ``target_kind``,
``target_id``, ``project``, ``org``, ``outcome`` (``success``, ``denied``, ``failure``),
``since`` and ``until`` (ISO 8601; a time without a timezone is taken as UTC;
``since`` is inclusive, ``until`` exclusive).

There is deliberately no route to change or delete a row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import get
from litestar.di import Dependency, Provide
from litestar.exceptions import PermissionDeniedException, ValidationException
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy import Select, and_, exists, or_, select
from sqlalchemy.orm import Session

from zhongtai.identity.audit import DENIED, FAILURE, SUCCESS
from zhongtai.identity.guard import Access, AccessDep, authenticated
from zhongtai.identity.models import AuditEvent, OrgMember, User
from zhongtai.identity.permissions import AUDIT_READ
from zhongtai.web.pagination import PageRequest, page_for, paginate
from zhongtai.web.params import PlatformDep

TAGS = ["audit"]
OUTCOMES = (SUCCESS, DENIED, FAILURE)
EXPORT_BATCH = 500
NDJSON = "application/x-ndjson"

Text = Annotated[str | None, QueryParameter(min_length=1, max_length=128)]


def _invalid(field: str, message: str) -> ValidationException:
    return ValidationException(
        detail=f"invalid {field}",
        extra=[{"key": field, "message": message, "source": "query"}],
    )


def _parse_time(field: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _invalid(field, "must be an ISO 8601 date and time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@dataclass(frozen=True)
class AuditFilters:
    """The query's filters, validated."""

    actor: str | None = None
    action: str | None = None
    target_kind: str | None = None
    target_id: str | None = None
    project: str | None = None
    org: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.actor is not None:
            query = query.where(AuditEvent.actor_user_id == self.actor)
        if self.action is not None:
            if self.action.endswith("*"):
                prefix = self.action[:-1]
                if prefix:
                    query = query.where(AuditEvent.action.startswith(prefix, autoescape=True))
            else:
                query = query.where(AuditEvent.action == self.action)
        if self.target_kind is not None:
            query = query.where(AuditEvent.target_kind == self.target_kind)
        if self.target_id is not None:
            query = query.where(AuditEvent.target_id == self.target_id)
        if self.project is not None:
            query = query.where(AuditEvent.project_id == self.project)
        if self.org is not None:
            query = query.where(AuditEvent.org_id == self.org)
        if self.outcome is not None:
            query = query.where(AuditEvent.outcome == self.outcome)
        if self.since is not None:
            query = query.where(AuditEvent.occurred_at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.occurred_at < self.until)
        return query


def provide_filters(
    actor: Text = None,
    action: Text = None,
    target_kind: Text = None,
    target_id: Text = None,
    project: Text = None,
    org: Text = None,
    outcome: Text = None,
    since: Annotated[str | None, QueryParameter(max_length=64)] = None,
    until: Annotated[str | None, QueryParameter(max_length=64)] = None,
) -> AuditFilters:
    """The filters of both audit routes, read from the query (a Litestar dependency)."""
    if outcome is not None and outcome not in OUTCOMES:
        raise _invalid("outcome", f"must be one of {', '.join(OUTCOMES)}")
    if action is not None and "*" in action[:-1]:
        raise _invalid("action", "'*' is only allowed at the end (a prefix)")
    start, end = _parse_time("since", since), _parse_time("until", until)
    if start is not None and end is not None and end < start:
        raise _invalid("until", "must not be before since")
    return AuditFilters(
        actor=actor,
        action=action,
        target_kind=target_kind,
        target_id=target_id,
        project=project,
        org=org,
        outcome=outcome,
        since=start,
        until=end,
    )


def _visible_rows(session: Session, access: Access) -> Select[Any]:
    """``SELECT audit_events`` the caller may read, as one SQL filter; 403 if none at all.

    Superusers: every row. Otherwise the rows of organizations where the caller's
    organization role holds ``core.audit.read``, and of those organizations' projects.
    """
    principal = access.principal
    if principal.key_project_id is not None or (
        principal.key_permissions is not None and AUDIT_READ.name not in principal.key_permissions
    ):
        # A key for one project never holds an organization permission.
        raise PermissionDeniedException(f"requires the permission {AUDIT_READ.name}")
    query = select(AuditEvent)
    if principal.is_superuser:
        return query
    orgs = (
        select(OrgMember.org_id)
        .join(User, and_(User.id == OrgMember.user_id, User.is_active))
        .where(
            OrgMember.user_id == principal.user_id,
            OrgMember.role >= int(AUDIT_READ.min_role),
        )
    )
    if not session.scalar(select(exists(orgs))):
        raise PermissionDeniedException(f"requires the permission {AUDIT_READ.name}")
    return query.where(
        or_(
            AuditEvent.org_id.in_(orgs),
            AuditEvent.project_id.in_(access.visible_projects(AUDIT_READ)),
        )
    )


def _event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "occurred_at": event.occurred_at.isoformat(),
        "actor_user_id": event.actor_user_id,
        "actor_key_id": event.actor_key_id,
        "action": event.action,
        "target_kind": event.target_kind,
        "target_id": event.target_id,
        "project_id": event.project_id,
        "org_id": event.org_id,
        "client_addr": event.client_addr,
        "outcome": event.outcome,
        "detail": event.detail,
    }


FiltersDep = Annotated[AuditFilters, Dependency(kind="named")]
_FILTERS = {"filters": Provide(provide_filters, sync_to_thread=False)}


@get(
    "/api/v1/audit",
    tags=TAGS,
    sync_to_thread=True,
    opt=authenticated(),
    dependencies=_FILTERS,
)
def list_audit(
    platform: PlatformDep,
    access: AccessDep,
    filters: FiltersDep,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Audit rows the caller may read, newest first, filtered and paginated.

    For superusers and organization owners (others: 403); see the module docstring
    for the filters. A bad filter is a 400 naming it.
    """
    page = page_for(platform.settings, limit, cursor)
    with platform.db.transaction() as session:
        query = filters.apply(_visible_rows(session, access))
        return paginate(session, query, AuditEvent.id, page, newest_first=True).to_dict(_event_dict)


def _export_lines(platform: Any, query: Select[Any]) -> Iterator[bytes]:
    """JSON lines of ``query``, newest first, one chunk per batch of rows.

    Each batch is read in its own short transaction, by keyset on the id, so neither
    the table nor a long-lived cursor is held in memory or open.
    """
    import msgspec

    encode = msgspec.json.Encoder().encode
    page = PageRequest(limit=EXPORT_BATCH, after=None)
    while True:
        with platform.db.transaction() as session:
            batch = paginate(session, query, AuditEvent.id, page, newest_first=True)
            chunk = b"".join(encode(_event_dict(row)) + b"\n" for row in batch.items)
        if chunk:
            yield chunk
        if batch.next_cursor is None:
            return
        page = PageRequest(limit=EXPORT_BATCH, after=batch.items[-1].id)


@get(
    "/api/v1/audit/export",
    tags=TAGS,
    sync_to_thread=True,
    opt=authenticated(),
    dependencies=_FILTERS,
)
def export_audit(
    platform: PlatformDep,
    access: AccessDep,
    filters: FiltersDep,
) -> Stream:
    """Every audit row the caller may read and the filters keep, as JSON lines.

    Same access and filters as ``GET /api/v1/audit``, newest first, streamed in
    batches (``application/x-ndjson``, downloaded as ``audit.jsonl``).
    """
    with platform.db.transaction() as session:
        # Checked before the first byte, so a refusal is a 403 and not a cut stream.
        query = filters.apply(_visible_rows(session, access))
    return Stream(
        _export_lines(platform, query),
        media_type=NDJSON,
        headers={"Content-Disposition": "attachment; filename=audit.jsonl"},
    )


ROUTES: list[Any] = [list_audit, export_audit]

"""The audit log: one append-only row per state-changing request, login and key event.

Rows are written by the application, not by each route: after every request with a
mutating method (POST, PUT, PATCH, DELETE) that reached a route, :func:`audit_request`
appends who (user, API key), what (action, target), where (project, organization),
when, from where (client address) and how it ended (``success``, ``denied``,
``failure``). A plugin's routes are audited without any code of its own. A route can
name the action and target better with :meth:`zhongtai.identity.guard.Access.audit`,
and :meth:`~zhongtai.identity.guard.Access.require` records the project or
organization it checked. Code outside a request (the CLI) calls :func:`record`.

The API offers no way to change or delete a row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity.guard import (
    AUDIT_CONTEXT_KEY,
    AUDIT_SCOPE_KEY,
    NO_AUDIT_SCOPE_KEY,
    PRINCIPAL_SCOPE_KEY,
)
from zhongtai.identity.models import AuditEvent
from zhongtai.identity.principal import Principal

if TYPE_CHECKING:
    from zhongtai.platform import Platform

log = logging.getLogger("zhongtai.audit")

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SUCCESS, DENIED, FAILURE = "success", "denied", "failure"
# Keys in an audit ``detail`` whose values are never stored.
_SECRET_KEYS = ("password", "token", "secret", "key", "authorization")


def outcome_of(status: int) -> str:
    """``success`` below 400, ``denied`` for 401 and 403 (and 429), ``failure`` otherwise."""
    if status < 400:
        return SUCCESS
    if status in (401, 403, 429):
        return DENIED
    return FAILURE


def _clean(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not detail:
        return None
    return {
        key: ("********" if any(s in key.lower() for s in _SECRET_KEYS) else value)
        for key, value in detail.items()
    }


def record(
    session: Session,
    *,
    action: str,
    outcome: str = SUCCESS,
    principal: Principal | None = None,
    actor_user_id: str | None = None,
    target_kind: str | None = None,
    target_id: str | None = None,
    project_id: str | None = None,
    org_id: str | None = None,
    client_addr: str | None = None,
    detail: Mapping[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> AuditEvent:
    """Append one audit row in the caller's transaction."""
    row = AuditEvent(
        **_values(
            action=action,
            outcome=outcome,
            principal=principal,
            actor_user_id=actor_user_id,
            target_kind=target_kind,
            target_id=target_id,
            project_id=project_id,
            org_id=org_id,
            client_addr=client_addr,
            detail=detail,
            occurred_at=occurred_at,
        )
    )
    session.add(row)
    return row


def _values(
    *,
    action: str,
    outcome: str,
    principal: Principal | None,
    actor_user_id: str | None,
    target_kind: str | None,
    target_id: str | None,
    project_id: str | None,
    org_id: str | None,
    client_addr: str | None,
    detail: Mapping[str, Any] | None,
    occurred_at: datetime | None,
) -> dict[str, Any]:
    """An audit row's columns, cut to their sizes and with secrets masked."""
    return {
        "occurred_at": occurred_at or utcnow(),
        "actor_user_id": principal.user_id if principal else actor_user_id,
        "actor_key_id": principal.api_key_id if principal else None,
        "action": action[:128],
        "target_kind": target_kind,
        "target_id": target_id[:128] if target_id else None,
        "project_id": project_id,
        "org_id": org_id,
        "client_addr": client_addr[:64] if client_addr else None,
        "outcome": outcome,
        "detail": _clean(detail),
    }


def wants_audit(scope: Mapping[str, Any]) -> bool:
    """Whether this request gets an audit row (mutating and routed, or asked for; never
    one a rate limit refused)."""
    if NO_AUDIT_SCOPE_KEY in scope:
        return False
    if AUDIT_SCOPE_KEY in scope:
        return True
    return scope.get("method") in MUTATING_METHODS and scope.get("route_handler") is not None


def audit_request(platform: Platform, scope: Mapping[str, Any], status: int) -> None:
    """Write the audit row of one finished request (called by the app, in a thread).

    A failure to write is logged, never raised: the response has already been sent.
    """
    entry: dict[str, Any] = {
        **(scope.get(AUDIT_CONTEXT_KEY) or {}),
        **(scope.get(AUDIT_SCOPE_KEY) or {}),
    }
    principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
    method = str(scope.get("method", ""))
    template = scope.get("path_template") or scope.get("path", "")
    action = entry.pop("action", None) or f"{method} {template}"
    if "target_id" not in entry:
        params = scope.get("path_params") or {}
        if params:
            kind, value = list(params.items())[-1]
            entry.setdefault("target_kind", str(kind))
            entry["target_id"] = str(value)
    client = scope.get("client")
    detail = entry.pop("detail", None) or {}
    detail = {**detail, "method": method, "path": scope.get("path"), "status": status}
    fields = {k: entry.get(k) for k in _FIELDS}
    values = _values(
        action=action,
        outcome=entry.pop("outcome", None) or outcome_of(status),
        principal=principal,
        actor_user_id=entry.pop("actor_user_id", None),
        client_addr=str(client[0]) if client else None,
        detail=detail,
        occurred_at=None,
        **fields,
    )
    try:
        # One INSERT, committed by itself, and no ORM unit of work: this runs after
        # every state-changing request.
        with platform.db.autocommit() as session:
            session.execute(_INSERT, values)
    except Exception:
        log.exception("could not write the audit row of %s %s", method, scope.get("path"))


_FIELDS = ("target_kind", "target_id", "project_id", "org_id")
_TABLE: Table = AuditEvent.__table__  # type: ignore[assignment]  # declarative: a Table
_INSERT = insert(_TABLE)  # Core, not ORM: no compile state of the ORM's per row

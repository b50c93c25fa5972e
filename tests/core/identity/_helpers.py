"""Small helpers shared by the organization and project API tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from zhongtai.identity.models import AuditEvent


def fields(response: Any) -> set[str]:
    """The field names a problem-details answer names in ``errors``."""
    return {e.get("field") for e in response.json().get("errors", [])}


def audit_events(platform: Any, action: str, **where: Any) -> list[AuditEvent]:
    """Audit rows of ``action`` whose columns equal ``where``, oldest first."""
    query = select(AuditEvent).where(AuditEvent.action == action)
    for column, value in where.items():
        query = query.where(getattr(AuditEvent, column) == value)
    with platform.db.transaction() as session:
        rows = list(session.scalars(query.order_by(AuditEvent.occurred_at, AuditEvent.id)))
        for row in rows:
            session.expunge(row)
        return rows

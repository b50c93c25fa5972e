"""Domain events: dataclasses with a name, delivered after the transaction commits.

Code records an event on the SQLAlchemy session it is writing with::

    emit(session, LineageEdgeCreated(...))

and, once that session commits, every plugin's ``on_event`` hook is called. A
rolled-back transaction delivers nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

SESSION_KEY = "zhongtai.events"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """Base class of domain events. Subclasses set ``name`` and add fields."""

    name: ClassVar[str] = "event"
    project: str | None = None
    occurred_at: datetime = dataclasses.field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data (``name`` included, datetimes as ISO 8601)."""
        data = {"name": self.name}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            data[field.name] = value.isoformat() if isinstance(value, datetime) else value
        return data


def emit(session: Session, event: Event) -> None:
    """Record ``event`` to be delivered when ``session`` commits."""
    session.info.setdefault(SESSION_KEY, []).append(event)


def take_pending(session: Session) -> list[Event]:
    """Remove and return the events recorded on ``session``."""
    pending: list[Event] = session.info.pop(SESSION_KEY, [])
    return pending

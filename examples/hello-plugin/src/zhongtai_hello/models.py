"""The ``hello_greetings`` table, the event it emits, and the one way to write it.

Tables are declared on the platform's single :class:`~zhongtai.metadata.base.Base`
and named ``hello_*``: the core refuses to start when a plugin's table lacks its
prefix or collides with another plugin's.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, Session, mapped_column

from zhongtai.hooks.events import Event, emit, utcnow
from zhongtai.metadata.base import Base
from zhongtai.metadata.ids import new_id

NAME_MAX = 100


class Greeting(Base):
    """One greeting, as created through the API or ``zhongtai hello NAME --save``."""

    __tablename__ = "hello_greetings"

    # Time-ordered ids: zhongtai.web.pagination pages by id.
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # Every greeting belongs to a project: permissions are checked against it, and
    # deleting the project deletes its greetings.
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    message: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GreetingCreated(Event):
    """Delivered to every plugin's ``on_event`` once the greeting is committed."""

    name = "hello.greeting.created"
    greeting_id: str
    person: str


def create_greeting(session: Session, project_id: str, name: str, message: str) -> Greeting:
    """Add a greeting to a project in the caller's transaction and record its event.

    The caller checks that the project exists and that whoever asks may write there.
    The event is delivered only if the caller's transaction commits.
    """
    greeting = Greeting(project_id=project_id, name=name, message=message)
    session.add(greeting)
    session.flush()  # assigns the id the event carries
    emit(session, GreetingCreated(project=project_id, greeting_id=greeting.id, person=name))
    return greeting

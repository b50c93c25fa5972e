"""HTTP routes, mounted by the core under ``/api/v1/hello/``.

Handlers that touch the database are sync (the core's database access is
synchronous) and run in Litestar's thread pool with ``sync_to_thread=True``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import select

from zhongtai.web.pagination import page_request, paginate
from zhongtai.web.params import PlatformDep
from zhongtai_hello import PLUGIN_NAME
from zhongtai_hello.models import NAME_MAX, Greeting, create_greeting
from zhongtai_hello.settings import HelloSettings
from zhongtai_hello.state import stats_of


class GreetingCreate(BaseModel):
    """Body of ``POST /greetings``; unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX)
    ]


class GreetingRead(BaseModel):
    """One greeting as the API returns it."""

    id: str
    name: str
    message: str
    created_at: datetime

    @classmethod
    def of(cls, row: Greeting) -> GreetingRead:
        return cls(id=row.id, name=row.name, message=row.message, created_at=row.created_at)


class GreetingPage(BaseModel):
    """One page of greetings; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[GreetingRead]
    next_cursor: str | None


class GreetingController(Controller):
    """Create, list and read greetings."""

    path = "/greetings"
    tags = ["hello"]

    @post("/", sync_to_thread=True)
    def create(self, data: JSONBody[GreetingCreate], platform: PlatformDep) -> GreetingRead:
        """Greet someone; the greeting text comes from ``ZHONGTAI_HELLO__GREETING``."""
        settings = platform.plugin_settings(PLUGIN_NAME)
        assert isinstance(settings, HelloSettings)
        with platform.db.transaction() as session:
            row = create_greeting(session, data.name, settings.render(data.name))
            return GreetingRead.of(row)

    @get("/", sync_to_thread=True)
    def list_greetings(
        self,
        platform: PlatformDep,
        limit: Annotated[int | None, QueryParameter(description="Page size.")] = None,
        cursor: Annotated[
            str | None, QueryParameter(description="next_cursor of the previous page.")
        ] = None,
    ) -> GreetingPage:
        """Greetings, oldest first, ``limit`` per page (``cursor`` from the previous page)."""
        core = platform.settings
        page = page_request(
            limit, cursor, default=core.default_page_size, maximum=core.max_page_size
        )
        with platform.db.transaction() as session:
            result = paginate(session, select(Greeting), Greeting.id, page)
            return GreetingPage(
                items=[GreetingRead.of(row) for row in result.items],
                next_cursor=result.next_cursor,
            )

    @get("/{greeting_id:str}", sync_to_thread=True)
    def get_greeting(
        self, greeting_id: Annotated[str, PathParameter(max_length=32)], platform: PlatformDep
    ) -> GreetingRead:
        """One greeting; 404 when there is none with this id."""
        with platform.db.transaction() as session:
            row = session.get(Greeting, greeting_id)
            if row is None:
                raise NotFoundException(detail=f"no greeting with id {greeting_id!r}")
            return GreetingRead.of(row)


@get("/stats", tags=["hello"], sync_to_thread=False)
def stats(platform: PlatformDep) -> dict[str, Any]:
    """What the plugin's ``startup``, ``shutdown`` and ``on_event`` hooks recorded."""
    return stats_of(platform).to_dict()

"""HTTP routes, mounted by the core under ``/api/v1/hello/``.

Handlers that touch the database are sync (the core's database access is
synchronous) and run in Litestar's thread pool with ``sync_to_thread=True``.

Every route states its access: ``opt=requires(PERMISSION)`` with a permission this
plugin registers, or ``authenticated()``. A handler checks the permission against
the project of the stored greeting (``access.require``), and the list filters by the
projects where the caller may read, in SQL (``access.visible_projects()``): a
greeting of another project answers 404, as if it did not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import select

from zhongtai.identity.guard import AccessDep, authenticated, requires
from zhongtai.web.pagination import page_request, paginate
from zhongtai.web.params import PlatformDep
from zhongtai_hello import PLUGIN_NAME
from zhongtai_hello.models import NAME_MAX, Greeting, create_greeting
from zhongtai_hello.permissions import GREETING_READ, GREETING_WRITE
from zhongtai_hello.settings import HelloSettings
from zhongtai_hello.state import stats_of


class GreetingCreate(BaseModel):
    """Body of ``POST /greetings``; unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    project: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX)
    ]


class GreetingRead(BaseModel):
    """One greeting as the API returns it."""

    id: str
    project: str
    name: str
    message: str
    created_at: datetime

    @classmethod
    def of(cls, row: Greeting) -> GreetingRead:
        return cls(
            id=row.id,
            project=row.project_id,
            name=row.name,
            message=row.message,
            created_at=row.created_at,
        )


class GreetingPage(BaseModel):
    """One page of greetings; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[GreetingRead]
    next_cursor: str | None


class GreetingController(Controller):
    """Create, list and read greetings."""

    path = "/greetings"
    tags = ["hello"]

    @post("/", sync_to_thread=True, opt=requires(GREETING_WRITE))
    def create(
        self, data: JSONBody[GreetingCreate], platform: PlatformDep, access: AccessDep
    ) -> GreetingRead:
        """Greet someone in a project; the text comes from ``ZHONGTAI_HELLO__GREETING``."""
        settings = platform.plugin_settings(PLUGIN_NAME)
        assert isinstance(settings, HelloSettings)
        with platform.db.transaction() as session:
            # 404 for a project the caller cannot see, 403 for one it may only read.
            access.require(session, project_id=data.project)
            row = create_greeting(session, data.project, data.name, settings.render(data.name))
            access.audit(
                action="hello.greeting.create", target_kind="hello.greeting", target_id=row.id
            )
            return GreetingRead.of(row)

    @get("/", sync_to_thread=True, opt=requires(GREETING_READ))
    def list_greetings(
        self,
        platform: PlatformDep,
        access: AccessDep,
        limit: Annotated[int | None, QueryParameter(description="Page size.")] = None,
        cursor: Annotated[
            str | None, QueryParameter(description="next_cursor of the previous page.")
        ] = None,
    ) -> GreetingPage:
        """Greetings of the caller's projects, oldest first, ``limit`` per page."""
        core = platform.settings
        page = page_request(
            limit, cursor, default=core.default_page_size, maximum=core.max_page_size
        )
        with platform.db.transaction() as session:
            visible = select(Greeting).where(Greeting.project_id.in_(access.visible_projects()))
            result = paginate(session, visible, Greeting.id, page)
            return GreetingPage(
                items=[GreetingRead.of(row) for row in result.items],
                next_cursor=result.next_cursor,
            )

    @get("/{greeting_id:str}", sync_to_thread=True, opt=requires(GREETING_READ))
    def get_greeting(
        self,
        greeting_id: Annotated[str, PathParameter(max_length=32)],
        platform: PlatformDep,
        access: AccessDep,
    ) -> GreetingRead:
        """One greeting; 404 when there is none with this id in the caller's projects."""
        with platform.db.transaction() as session:
            row = session.get(Greeting, greeting_id)
            # The project comes from the stored greeting, never from the request. A
            # missing greeting (None) gets the same 404 as another project's, so the
            # answer never tells an outsider that an id exists.
            access.require(session, project_id=row.project_id if row else None)
            assert row is not None  # require raised NotFound otherwise
            return GreetingRead.of(row)


@get("/stats", tags=["hello"], sync_to_thread=False, opt=authenticated())
def stats(platform: PlatformDep) -> dict[str, Any]:
    """What the plugin's ``startup``, ``shutdown`` and ``on_event`` hooks recorded."""
    return stats_of(platform).to_dict()

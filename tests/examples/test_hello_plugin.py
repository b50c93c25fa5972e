"""The example plugin ``hello`` (examples/hello-plugin), end to end, on SQLite and PostgreSQL.

What a plugin adds must work when it is loaded and vanish when it is not, and its
routes must be guarded by the permissions it registers. Tests named
``test_hook_<hook>`` are the ones ``tests/core/test_hooks_meta.py`` counts as
exercising that hook: each asserts the hook's effect, not merely that it ran.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from litestar import post
from litestar.exceptions import ValidationException
from litestar.testing import TestClient
from sqlalchemy import func, inspect, select, text

import zhongtai
from zhongtai.hooks.events import Event, emit
from zhongtai.identity.guard import public
from zhongtai.identity.models import AuditEvent
from zhongtai.identity.roles import Role
from zhongtai.settings import SettingsError
from zhongtai.testing import ZtIdentity
from zhongtai.web.params import PlatformDep
from zhongtai_hello import plugin as hello_plugin
from zhongtai_hello.models import Greeting, create_greeting
from zhongtai_hello.settings import HelloSettings
from zhongtai_hello.state import STATS

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Litestar

    from zhongtai.platform import Platform

    from .conftest import CliInvoke, Member, MemberFactory

HELLO = pytest.mark.zt_plugins("hello")
GREETINGS = "/api/v1/hello/greetings"
STATS_URL = "/api/v1/hello/stats"
REVISION = "50c4ef9e0b66"  # the hello branch's first (and only) revision
CORE_REVISION = "c0e1a0000002"  # the core revision that creates ``projects``
HOOKS = [
    "on_event",
    "register_commands",
    "register_job_types",
    "register_migrations",
    "register_panels",
    "register_permissions",
    "register_routes",
    "register_settings",
    "shutdown",
    "startup",
]


def create(
    client: TestClient[Any], who: Member, name: str, *, project: str | None = None
) -> dict[str, Any]:
    """POST a greeting as ``who`` in their project (or ``project``); assert it was created."""
    body = {"project": project or who.project_id, "name": name}
    response = client.post(GREETINGS, json=body, headers=who.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def listed_ids(client: TestClient[Any], headers: dict[str, str], **params: Any) -> list[str]:
    response = client.get(GREETINGS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def table_names(platform: Platform) -> set[str]:
    return set(inspect(platform.db.engine).get_table_names())


def stored_names(platform: Platform) -> list[str]:
    with platform.db.transaction() as session:
        return list(session.scalars(select(Greeting.name).order_by(Greeting.id)))


def events_seen(platform: Platform) -> dict[str, int]:
    return dict(platform.stash[STATS].events) if STATS in platform.stash else {}


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """A problem-details response with ``status`` whose ``errors`` name ``field``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body["errors"]]
        assert repr(field) in body["detail"]
    return body


def without_request_details(body: dict[str, Any]) -> dict[str, Any]:
    """A problem body without what differs between any two requests."""
    return {k: v for k, v in body.items() if k not in ("instance", "request_id")}


# ---------------------------------------------------------------------------
# register_routes: the greetings API
# ---------------------------------------------------------------------------


@HELLO
def test_hook_register_routes(zt_client: TestClient[Litestar], developer: Member) -> None:
    """The controller is mounted under /api/v1/hello/ and creates and reads greetings."""
    created = create(zt_client, developer, "  Ada  ")
    assert created["name"] == "Ada"  # surrounding whitespace is not part of a name
    assert created["message"] == "Hello, Ada!"
    assert created["project"] == developer.project_id
    assert created["created_at"].endswith("Z") or created["created_at"].endswith("+00:00")

    fetched = zt_client.get(f"{GREETINGS}/{created['id']}", headers=developer.headers)
    assert fetched.status_code == 200
    assert fetched.json() == created

    paths = zt_client.get("/api/openapi.json").json()["paths"]
    assert {GREETINGS, GREETINGS + "/{greeting_id}", STATS_URL} <= set(paths)


@HELLO
def test_greetings_are_listed_page_by_page(
    zt_client: TestClient[Litestar], developer: Member
) -> None:
    ids = [create(zt_client, developer, f"person {i}")["id"] for i in range(5)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = zt_client.get(GREETINGS, params=params, headers=developer.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(ids)  # every greeting once, in id (creation) order

    everything = zt_client.get(GREETINGS, headers=developer.headers).json()
    assert [item["id"] for item in everything["items"]] == sorted(ids)
    assert everything["next_cursor"] is None


@HELLO
@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": "many"}, "limit"), ({"cursor": "!!"}, "cursor")],
)
def test_bad_page_parameters_are_refused_naming_them(
    zt_client: TestClient[Litestar], developer: Member, params: dict[str, Any], field: str
) -> None:
    assert_problem(zt_client.get(GREETINGS, params=params, headers=developer.headers), 400, field)


@HELLO
def test_missing_greeting_is_a_404_like_another_projects(
    zt_client: TestClient[Litestar], developer: Member, member: MemberFactory
) -> None:
    """A missing id and a greeting of a project the caller cannot see get the same 404."""
    elsewhere = create(zt_client, member("developer"), "Bob")

    missing = assert_problem(
        zt_client.get(f"{GREETINGS}/01nosuchgreeting", headers=developer.headers), 404
    )
    hidden = assert_problem(
        zt_client.get(f"{GREETINGS}/{elsewhere['id']}", headers=developer.headers), 404
    )
    assert without_request_details(missing) == without_request_details(hidden)
    assert "Bob" not in str(hidden)


@HELLO
@pytest.mark.parametrize(
    "body",
    [{"name": ""}, {"name": "   "}, {"name": "x" * 101}, {}, {"name": 5}, {"name": None}],
    ids=["empty", "blank", "too-long", "missing", "number", "null"],
)
def test_bad_name_is_refused_naming_the_field(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    developer: Member,
    body: dict[str, Any],
) -> None:
    body = {"project": developer.project_id, **body}
    assert_problem(zt_client.post(GREETINGS, json=body, headers=developer.headers), 400, "name")
    assert stored_names(zt_platform) == []


@HELLO
@pytest.mark.parametrize(
    "body",
    [{}, {"project": ""}, {"project": "x" * 33}, {"project": 5}, {"project": None}],
    ids=["missing", "empty", "too-long", "number", "null"],
)
def test_bad_project_is_refused_naming_the_field(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    developer: Member,
    body: dict[str, Any],
) -> None:
    body = {"name": "Ada", **body}
    assert_problem(zt_client.post(GREETINGS, json=body, headers=developer.headers), 400, "project")
    assert stored_names(zt_platform) == []


@HELLO
def test_unknown_field_is_refused_not_ignored(
    zt_client: TestClient[Litestar], zt_platform: Platform, developer: Member
) -> None:
    body = {"project": developer.project_id, "name": "Ada", "admin": True}
    assert_problem(zt_client.post(GREETINGS, json=body, headers=developer.headers), 400, "admin")
    assert stored_names(zt_platform) == []


@HELLO
def test_a_body_that_is_not_an_object_is_refused(
    zt_client: TestClient[Litestar], developer: Member
) -> None:
    assert_problem(zt_client.post(GREETINGS, json=["Ada"], headers=developer.headers), 400)
    assert_problem(
        zt_client.post(
            GREETINGS,
            content=b"{nope",
            headers={**developer.headers, "content-type": "application/json"},
        ),
        400,
    )


# ---------------------------------------------------------------------------
# register_permissions: the routes are guarded by the plugin's own permissions
# ---------------------------------------------------------------------------


@HELLO
def test_hook_register_permissions(zt_platform: Platform) -> None:
    """The plugin's permissions join the platform's registry with their lowest roles."""
    registry = zt_platform.permissions
    read = registry.get("hello.greeting.read")
    write = registry.get("hello.greeting.write")
    assert (read.min_role, read.scope) == (Role.viewer, "project")
    assert (write.min_role, write.scope) == (Role.developer, "project")
    assert read.description and write.description
    assert {read.name, write.name} <= registry.held_by(Role.developer)
    assert read.name in registry.held_by(Role.viewer)
    assert write.name not in registry.held_by(Role.viewer)
    assert "core.project.read" in registry  # the core's own are there too


def test_without_the_plugin_its_permissions_are_not_declared(zt_platform: Platform) -> None:
    assert "hello.greeting.read" not in zt_platform.permissions
    assert not [p for p in zt_platform.permissions.all() if p.name.startswith("hello.")]


@HELLO
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", GREETINGS),
        ("GET", f"{GREETINGS}/01anygreeting"),
        ("POST", GREETINGS),
        ("GET", STATS_URL),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Bearer zt_notakey", "Basic YWRhOnNlY3JldA=="],
    ids=["none", "bad-token", "bad-key", "basic"],
)
def test_every_route_needs_credentials(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    developer: Member,
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    body = {"project": developer.project_id, "name": "Ada"} if method == "POST" else None
    response = zt_client.request(method, path, json=body, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stored_names(zt_platform) == []


@HELLO
def test_forwarded_identity_headers_grant_nothing(
    zt_client: TestClient[Litestar], developer: Member
) -> None:
    spoofed = {"X-Forwarded-User": developer.user.email, "X-User-Id": developer.user.id}
    assert_problem(zt_client.get(GREETINGS, headers=spoofed), 401)


@HELLO
def test_a_viewer_reads_but_cannot_write(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    developer: Member,
    member: MemberFactory,
) -> None:
    created = create(zt_client, developer, "Ada")
    viewer = member("viewer", project=developer.project)

    assert listed_ids(zt_client, viewer.headers) == [created["id"]]
    fetched = zt_client.get(f"{GREETINGS}/{created['id']}", headers=viewer.headers)
    assert fetched.status_code == 200 and fetched.json() == created

    body = {"project": viewer.project_id, "name": "Eve"}
    refused = assert_problem(zt_client.post(GREETINGS, json=body, headers=viewer.headers), 403)
    assert "hello.greeting.write" in refused["detail"]
    assert stored_names(zt_platform) == ["Ada"]
    assert events_seen(zt_platform) == {"hello.greeting.created": 1}


@HELLO
def test_a_member_of_another_project_sees_nothing_of_it(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    developer: Member,
    member: MemberFactory,
) -> None:
    """Another project's greetings are 404 by id, absent from lists, closed to writes."""
    theirs = create(zt_client, developer, "Ada")
    outsider = member("developer")  # a developer too, but of another project
    own = create(zt_client, outsider, "Bob")

    assert_problem(zt_client.get(f"{GREETINGS}/{theirs['id']}", headers=outsider.headers), 404)
    assert listed_ids(zt_client, outsider.headers) == [own["id"]]
    # Naming the other project in the query changes nothing: lists filter by membership.
    assert listed_ids(zt_client, outsider.headers, project=developer.project_id) == [own["id"]]

    body = {"project": developer.project_id, "name": "Eve"}
    into_theirs = zt_client.post(GREETINGS, json=body, headers=outsider.headers)
    unknown = zt_client.post(
        GREETINGS, json={"project": "01nosuchproject", "name": "Eve"}, headers=outsider.headers
    )
    # A project the caller cannot see looks exactly like one that does not exist.
    assert without_request_details(assert_problem(into_theirs, 404)) == without_request_details(
        assert_problem(unknown, 404)
    )
    assert stored_names(zt_platform) == ["Ada", "Bob"]
    assert listed_ids(zt_client, developer.headers) == [theirs["id"]]


@HELLO
def test_an_organization_role_reaches_every_project_of_the_organization(
    zt_client: TestClient[Litestar], zt_identity: ZtIdentity, member: MemberFactory
) -> None:
    org = zt_identity.org()
    a = create(zt_client, member("developer", project=zt_identity.project(org)), "Ada")
    b = create(zt_client, member("developer", project=zt_identity.project(org)), "Bob")
    create(zt_client, member("developer"), "Eve")  # another organization's
    org_viewer = zt_identity.user()
    zt_identity.member(org_viewer, org, "viewer")
    assert listed_ids(zt_client, zt_identity.headers(org_viewer)) == [a["id"], b["id"]]


@HELLO
def test_an_api_key_scoped_to_one_project_cannot_reach_another(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    zt_identity: ZtIdentity,
    member: MemberFactory,
) -> None:
    in_a = member("developer")
    in_b = member("developer", user=in_a.user)  # the key's owner is a developer of both
    ada = create(zt_client, in_a, "Ada")
    bob = create(zt_client, in_b, "Bob")
    key = zt_identity.headers(zt_identity.api_key(in_a.user, project=in_a.project))

    assert zt_client.get(f"{GREETINGS}/{ada['id']}", headers=key).json() == ada
    assert_problem(zt_client.get(f"{GREETINGS}/{bob['id']}", headers=key), 404)
    assert listed_ids(zt_client, key) == [ada["id"]]
    into_b = {"project": in_b.project_id, "name": "Eve"}
    assert_problem(zt_client.post(GREETINGS, json=into_b, headers=key), 404)
    assert stored_names(zt_platform) == ["Ada", "Bob"]

    assert create(zt_client, in_a, "Eve", project=in_a.project_id)["project"] == in_a.project_id
    # The owner's own token is not narrowed by the key.
    assert len(listed_ids(zt_client, in_a.headers)) == 3


@HELLO
def test_a_key_limited_to_reading_cannot_write(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    zt_identity: ZtIdentity,
    developer: Member,
) -> None:
    created = create(zt_client, developer, "Ada")
    key = zt_identity.headers(
        zt_identity.api_key(developer.user, permissions=["hello.greeting.read"])
    )
    assert listed_ids(zt_client, key) == [created["id"]]
    body = {"project": developer.project_id, "name": "Eve"}
    assert_problem(zt_client.post(GREETINGS, json=body, headers=key), 403)
    assert stored_names(zt_platform) == ["Ada"]


@HELLO
def test_writes_are_audited_with_their_project(
    zt_client: TestClient[Litestar],
    zt_platform: Platform,
    developer: Member,
    member: MemberFactory,
) -> None:
    """The app audits the POST; the route only names the action and the greeting."""
    created = create(zt_client, developer, "Ada")
    viewer = member("viewer", project=developer.project)
    zt_client.get(GREETINGS, headers=viewer.headers)  # reads are not audited
    body = {"project": developer.project_id, "name": "Eve"}
    assert zt_client.post(GREETINGS, json=body, headers=viewer.headers).status_code == 403

    with zt_platform.db.transaction() as session:
        rows = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.project_id == developer.project_id)
                .order_by(AuditEvent.id)
            )
        )
    assert [(r.actor_user_id, r.outcome) for r in rows] == [
        (developer.user.id, "success"),
        (viewer.user.id, "denied"),
    ]
    done = rows[0]
    assert (done.action, done.target_kind, done.target_id) == (
        "hello.greeting.create",
        "hello.greeting",
        created["id"],
    )


@HELLO
def test_deleting_a_project_deletes_its_greetings(
    zt_client: TestClient[Litestar], zt_platform: Platform, member: MemberFactory
) -> None:
    owner = member("owner")
    gone = create(zt_client, owner, "Ada")
    create(zt_client, member("developer"), "Bob")  # another project's stays
    if zt_platform.db.dialect == "sqlite":
        # The cascade is the database's: SQLite enforces foreign keys only when asked.
        with zt_platform.db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1

    deleted = zt_client.delete(f"/api/v1/projects/{owner.project_id}", headers=owner.headers)
    assert deleted.status_code == 204, deleted.text
    assert stored_names(zt_platform) == ["Bob"]
    assert_problem(zt_client.get(f"{GREETINGS}/{gone['id']}", headers=owner.headers), 404)


@HELLO
def test_a_greeting_cannot_point_at_a_missing_project(zt_platform: Platform) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), zt_platform.db.transaction() as session:
        create_greeting(session, "01nosuchproject", "Ada", "Hello, Ada!")
    assert stored_names(zt_platform) == []
    assert events_seen(zt_platform) == {}


# ---------------------------------------------------------------------------
# register_migrations: the hello_greetings table and its branch
# ---------------------------------------------------------------------------


@HELLO
def test_hook_register_migrations(zt_platform: Platform) -> None:
    """The hook's folder becomes the ``hello`` branch, applied on top of the core's."""
    assert zt_platform.migration_branches["hello"] == hello_plugin.MIGRATIONS
    migrations = zt_platform.migrations()
    script = migrations.script()
    revision = script.get_revision("hello@head")
    assert revision is not None and revision.revision == REVISION
    assert revision.branch_labels == {"hello"}
    assert CORE_REVISION in (revision.dependencies or ())

    assert "hello_greetings" in table_names(zt_platform)
    inspector = inspect(zt_platform.db.engine)
    foreign_keys = [
        (fk["constrained_columns"], fk["referred_table"], fk["options"].get("ondelete"))
        for fk in inspector.get_foreign_keys("hello_greetings")
    ]
    assert foreign_keys == [(["project_id"], "projects", "CASCADE")]
    indexed = [ix["column_names"] for ix in inspector.get_indexes("hello_greetings")]
    assert ["project_id"] in indexed  # the lists filter by project
    assert REVISION in migrations.current()
    assert migrations.pending() == []


@HELLO
def test_migration_matches_the_model(zt_platform: Platform) -> None:
    """Autogenerate finds nothing to add for the hello tables: migration and model agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from zhongtai.metadata.base import Base

    def hello_only(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
        return bool(table) and str(table).startswith("hello_")

    with zt_platform.db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": hello_only, "compare_type": True}
        )
        assert compare_metadata(context, Base.metadata) == []


@HELLO
def test_greeting_is_persisted(
    zt_client: TestClient[Litestar], zt_platform: Platform, developer: Member
) -> None:
    created = create(zt_client, developer, "Grace")
    with zt_platform.db.transaction() as session:
        row = session.get(Greeting, created["id"])
        assert row is not None
        assert (row.project_id, row.name, row.message) == (
            developer.project_id,
            "Grace",
            "Hello, Grace!",
        )
        assert row.created_at.utcoffset() is not None  # stored and read back as UTC-aware


@HELLO
def test_downgrading_the_branch_removes_only_its_tables(
    zt_client: TestClient[Litestar], zt_platform: Platform, developer: Member
) -> None:
    migrations = zt_platform.migrations()

    migrations.downgrade("hello@base")
    tables = table_names(zt_platform)
    assert "hello_greetings" not in tables
    assert {"lineage_edges", "projects"} <= tables  # the core's branch is left alone
    assert REVISION not in migrations.current()
    assert migrations.pending() == [REVISION]

    migrations.upgrade()
    assert "hello_greetings" in table_names(zt_platform)
    assert REVISION in migrations.current()
    assert create(zt_client, developer, "Ada")["message"] == "Hello, Ada!"


# ---------------------------------------------------------------------------
# on_event: delivered after commit, never after a rollback
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pinged(Event):
    name = "tests.pinged"


@HELLO
def test_hook_on_event(
    zt_client: TestClient[Litestar], zt_platform: Platform, developer: Member
) -> None:
    """Creating a greeting delivers hello.greeting.created to on_event once it commits."""
    assert events_seen(zt_platform).get("hello.greeting.created", 0) == 0
    create(zt_client, developer, "Ada")
    create(zt_client, developer, "Bob")
    assert events_seen(zt_platform)["hello.greeting.created"] == 2

    # Events of other plugins reach it too.
    with zt_platform.db.transaction() as session:
        emit(session, Pinged())
    stats = zt_client.get(STATS_URL, headers=developer.headers).json()
    assert stats["events"] == {"hello.greeting.created": 2, "tests.pinged": 1}


@HELLO
def test_event_is_not_delivered_when_the_transaction_rolls_back(
    zt_platform: Platform, zt_identity: ZtIdentity
) -> None:
    project_id = zt_identity.project().id
    with pytest.raises(RuntimeError), zt_platform.db.transaction() as session:
        create_greeting(session, project_id, "Ada", "Hello, Ada!")  # emits
        raise RuntimeError("something after the emit fails")
    assert events_seen(zt_platform) == {}
    assert stored_names(zt_platform) == []

    with zt_platform.db.transaction() as session:
        create_greeting(session, project_id, "Bob", "Hello, Bob!")
    assert events_seen(zt_platform) == {"hello.greeting.created": 1}
    assert stored_names(zt_platform) == ["Bob"]


class ValidatesAfterWriting:
    """A plugin whose public route writes a greeting into a project, then refuses the request."""

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        project_id = self.project_id

        # Public only because this test is about events, not access.
        @post("/greet-then-refuse", sync_to_thread=True, opt=public())
        def greet_then_refuse(platform: PlatformDep) -> None:
            with platform.db.transaction() as session:
                create_greeting(session, project_id, "Ada", "Hello, Ada!")
                raise ValidationException(
                    detail="refused", extra=[{"key": "name", "message": "refused late"}]
                )

        return [greet_then_refuse]


@HELLO
def test_request_failing_after_emit_delivers_no_event(
    zt_register_plugin: Callable[..., None],
    zt_client_factory: Callable[..., Any],
    developer: Member,
) -> None:
    zt_register_plugin(ValidatesAfterWriting(developer.project_id), name="refuser")
    with zt_client_factory() as client:
        platform = client.app.state["platform"]
        assert platform.plugins.get("refuser").error is None
        assert_problem(client.post("/api/v1/refuser/greet-then-refuse"), 400, "name")
        assert events_seen(platform) == {}
        assert listed_ids(client, developer.headers) == []


# ---------------------------------------------------------------------------
# startup / shutdown
# ---------------------------------------------------------------------------


@HELLO
def test_hook_startup(zt_app: Litestar, zt_identity: ZtIdentity) -> None:
    """startup (an async implementation) runs when the app starts and records the time."""
    platform: Platform = zt_app.state["platform"]
    assert STATS not in platform.stash  # building the app does not start it
    headers = zt_identity.headers(zt_identity.user())
    with TestClient(zt_app) as client:
        started = platform.stash[STATS].started_at
        assert started is not None and started.utcoffset() is not None
        stats = client.get(STATS_URL, headers=headers).json()
        assert stats["started_at"] == started.isoformat()


@HELLO
def test_hook_shutdown(zt_app: Litestar) -> None:
    """shutdown runs when the app stops and records the time."""
    platform: Platform = zt_app.state["platform"]
    with TestClient(zt_app):
        assert platform.stash[STATS].stopped_at is None
    stats = platform.stash[STATS]
    assert stats.stopped_at is not None and stats.started_at is not None
    assert stats.stopped_at >= stats.started_at


# ---------------------------------------------------------------------------
# register_settings: ZHONGTAI_HELLO__GREETING
# ---------------------------------------------------------------------------


@HELLO
def test_hook_register_settings(
    zt_app_factory: Callable[..., Litestar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's fields are read from ZHONGTAI_HELLO__* and used by the routes."""
    default = zt_app_factory().state["platform"].plugin_settings("hello")
    assert isinstance(default, HelloSettings) and default.greeting == "Hello"

    monkeypatch.setenv("ZHONGTAI_HELLO__GREETING", "Bonjour")
    app = zt_app_factory()
    settings = app.state["platform"].plugin_settings("hello")
    assert isinstance(settings, HelloSettings) and settings.greeting == "Bonjour"
    user, project = ZtIdentity(app.state["platform"]).project_with("developer")
    with TestClient(app) as client:
        body = {"project": project.id, "name": "Ada"}
        headers = ZtIdentity(app.state["platform"]).headers(user)
        response = client.post(GREETINGS, json=body, headers=headers)
        assert response.status_code == 201, response.text
        assert response.json()["message"] == "Bonjour, Ada!"


@HELLO
def test_setting_is_read_from_the_toml_file_and_the_environment_wins(
    zt_app_factory: Callable[..., Litestar], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    config = tmp_path / "zhongtai.toml"
    config.write_text('[hello]\ngreeting = "Hola"\n')
    monkeypatch.setenv("ZHONGTAI_CONFIG", str(config))
    assert zt_app_factory().state["platform"].plugin_settings("hello").greeting == "Hola"

    monkeypatch.setenv("ZHONGTAI_HELLO__GREETING", "Ciao")
    assert zt_app_factory().state["platform"].plugin_settings("hello").greeting == "Ciao"


@HELLO
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ZHONGTAI_HELLO__GREETING", ""),
        ("ZHONGTAI_HELLO__GREETING", "x" * 41),
        ("ZHONGTAI_HELLO__GRETING", "Hi"),  # a typo is refused, not ignored
    ],
    ids=["empty", "too-long", "typo"],
)
def test_bad_setting_stops_startup_naming_the_variable(
    zt_app_factory: Callable[..., Litestar],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        zt_app_factory()
    assert any(problem.startswith(f"{variable}:") for problem in info.value.problems)


# ---------------------------------------------------------------------------
# register_commands: zhongtai hello NAME [--save --project ID]
# ---------------------------------------------------------------------------


def test_hook_register_commands(invoke: CliInvoke, monkeypatch: pytest.MonkeyPatch) -> None:
    """``zhongtai hello`` is added to the CLI and prints the configured greeting."""
    listing = invoke("--help")
    assert listing.exit_code == 0
    assert "hello" in listing.stdout.split("Commands:")[1]

    result = invoke("hello", "Ada")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, Ada!\n"

    monkeypatch.setenv("ZHONGTAI_HELLO__GREETING", "Bonjour")
    result = invoke("hello", "Ada")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Bonjour, Ada!\n"


@HELLO
def test_cli_save_stores_the_greeting_in_the_project(
    invoke: CliInvoke, zt_client: TestClient[Litestar], zt_platform: Platform, developer: Member
) -> None:
    # zt_client's app has migrated the database (PostgreSQL is never migrated implicitly).
    result = invoke("hello", "Ada", "--save", "--project", developer.project_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, Ada!\n"
    assert "saved greeting" in result.stderr

    assert stored_names(zt_platform) == ["Ada"]
    items = zt_client.get(GREETINGS, headers=developer.headers).json()["items"]
    assert [(i["project"], i["name"], i["message"]) for i in items] == [
        (developer.project_id, "Ada", "Hello, Ada!")
    ]


def test_cli_save_needs_a_project(invoke: CliInvoke) -> None:
    result = invoke("hello", "Ada", "--save")
    assert result.exit_code == 2
    assert "Usage:" in result.stderr and "--save needs --project ID" in result.stderr
    assert result.stdout == ""


def test_cli_project_without_save_is_refused_not_ignored(invoke: CliInvoke) -> None:
    result = invoke("hello", "Ada", "--project", "01anyproject")
    assert result.exit_code == 2
    assert "--project is only used with --save" in result.stderr
    assert result.stdout == ""


@HELLO
def test_cli_save_refuses_an_unknown_project_naming_the_option(
    invoke: CliInvoke, zt_client: TestClient[Litestar], zt_platform: Platform
) -> None:
    result = invoke("hello", "Ada", "--save", "--project", "01nosuchproject")
    assert result.exit_code != 0
    assert "--project" in result.stderr and "01nosuchproject" in result.stderr
    assert "Traceback" not in result.output
    assert stored_names(zt_platform) == []
    assert events_seen(zt_platform) == {}


def test_cli_refuses_a_bad_name(invoke: CliInvoke) -> None:
    result = invoke("hello", "   ")
    assert result.exit_code == 2
    assert "NAME" in result.stderr and "1-100 characters" in result.stderr


def test_cli_reports_a_bad_setting_naming_the_variable(
    invoke: CliInvoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZHONGTAI_HELLO__GREETING", "")
    result = invoke("hello", "Ada")
    assert result.exit_code != 0
    assert "ZHONGTAI_HELLO__GREETING" in result.stderr


# ---------------------------------------------------------------------------
# Vanishes when not loaded
# ---------------------------------------------------------------------------


def test_without_the_plugin_its_urls_are_404(
    zt_client: TestClient[Litestar], zt_admin_headers: dict[str, str]
) -> None:
    for headers in ({}, zt_admin_headers):
        for path in (GREETINGS, f"{GREETINGS}/x", STATS_URL):
            assert_problem(zt_client.get(path, headers=headers), 404)
        body = {"project": "01anyproject", "name": "Ada"}
        assert_problem(zt_client.post(GREETINGS, json=body, headers=headers), 404)
    assert GREETINGS not in zt_client.get("/api/openapi.json").json()["paths"]


def test_without_the_plugin_its_table_is_not_created(zt_platform: Platform) -> None:
    assert "hello" not in zt_platform.migration_branches
    assert "lineage_edges" in table_names(zt_platform)
    assert not {t for t in table_names(zt_platform) if t.startswith("hello_")}
    assert REVISION not in {
        rev.revision for rev in zt_platform.migrations().script().walk_revisions()
    }


def test_plugins_listing_shows_hello_only_when_loaded(
    zt_client: TestClient[Litestar],
    zt_client_factory: Callable[..., Any],
    zt_admin_headers: dict[str, str],
) -> None:
    listing = zt_client.get("/api/v1/plugins", headers=zt_admin_headers).json()["items"]
    assert "hello" not in {p["name"] for p in listing}

    with zt_client_factory(plugins=["hello"]) as client:
        assert_problem(client.get("/api/v1/plugins"), 401)  # who is loaded is not public
        items = client.get("/api/v1/plugins", headers=zt_admin_headers).json()["items"]
    hello = {p["name"]: p for p in items}["hello"]
    assert hello["loaded"] is True and hello["error"] is None and hello["builtin"] is False
    assert hello["distribution"] == "zhongtai-hello"
    assert hello["version"] == "0.1.0"
    assert hello["module"] == "zhongtai_hello.plugin"
    assert hello["hooks"] == HOOKS


def test_disabled_plugin_adds_no_command(
    invoke: CliInvoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZHONGTAI_DISABLE_PLUGINS", "hello")
    listing = invoke("--help")
    assert listing.exit_code == 0
    assert "hello" not in listing.stdout.split("Commands:")[1]
    assert "unavailable" not in listing.stderr  # absent because disabled, not because broken

    result = invoke("hello", "Ada")
    assert result.exit_code == 2
    assert "No such command 'hello'" in result.stderr

    plugins = invoke("plugins")
    assert plugins.exit_code == 0
    assert "hello" not in plugins.stdout


def test_cli_plugins_lists_hello_when_installed(invoke: CliInvoke) -> None:
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("hello "))
    assert "zhongtai-hello 0.1.0" in line and line.rstrip().endswith("ok")


def test_database_outlives_the_plugin_being_unloaded(
    zt_app_factory: Callable[..., Litestar],
) -> None:
    """Data stays when the plugin is not loaded, and is there again when it comes back."""
    with_hello = zt_app_factory(plugins=["hello"])
    identity = ZtIdentity(with_hello.state["platform"])
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    with TestClient(with_hello) as client:
        response = client.post(
            GREETINGS, json={"project": project.id, "name": "Ada"}, headers=headers
        )
        assert response.status_code == 201, response.text
        created = response.json()

    without = zt_app_factory(plugins=[])
    with TestClient(without) as client:
        assert_problem(client.get(f"{GREETINGS}/{created['id']}", headers=headers), 404)
    platform: Platform = without.state["platform"]
    assert "hello_greetings" in table_names(platform)  # never dropped behind the user's back

    with TestClient(zt_app_factory(plugins=["hello"])) as client:
        assert client.get(f"{GREETINGS}/{created['id']}", headers=headers).json() == created
        with client.app.state["platform"].db.transaction() as session:
            assert session.scalar(select(func.count()).select_from(Greeting)) == 1

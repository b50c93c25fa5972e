"""The example plugin ``hello`` (examples/hello-plugin), end to end, on SQLite and PostgreSQL.

What a plugin adds must work when it is loaded and vanish when it is not. Tests named
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
from sqlalchemy import func, inspect, select

import zhongtai
from zhongtai.hooks.events import Event, emit
from zhongtai.settings import SettingsError
from zhongtai.web.params import PlatformDep
from zhongtai_hello import plugin as hello_plugin
from zhongtai_hello.models import Greeting, create_greeting
from zhongtai_hello.settings import HelloSettings
from zhongtai_hello.state import STATS

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Litestar

    from zhongtai.platform import Platform

    from .conftest import CliInvoke

HELLO = pytest.mark.zt_plugins("hello")
GREETINGS = "/api/v1/hello/greetings"
REVISION = "50c4ef9e0b66"  # the hello branch's first (and only) revision
CORE_REVISION = "c0e1a0000001"
HOOKS = [
    "on_event",
    "register_commands",
    "register_migrations",
    "register_routes",
    "register_settings",
    "shutdown",
    "startup",
]


def create(client: TestClient[Any], name: str) -> dict[str, Any]:
    response = client.post(GREETINGS, json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()


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


# ---------------------------------------------------------------------------
# register_routes: the greetings API
# ---------------------------------------------------------------------------


@HELLO
def test_hook_register_routes(zt_client: TestClient[Litestar]) -> None:
    """The controller is mounted under /api/v1/hello/ and creates and reads greetings."""
    created = create(zt_client, "  Ada  ")
    assert created["name"] == "Ada"  # surrounding whitespace is not part of a name
    assert created["message"] == "Hello, Ada!"
    assert created["created_at"].endswith("Z") or created["created_at"].endswith("+00:00")

    fetched = zt_client.get(f"{GREETINGS}/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created

    paths = zt_client.get("/api/openapi.json").json()["paths"]
    assert {GREETINGS, GREETINGS + "/{greeting_id}", "/api/v1/hello/stats"} <= set(paths)


@HELLO
def test_greetings_are_listed_page_by_page(zt_client: TestClient[Litestar]) -> None:
    ids = [create(zt_client, f"person {i}")["id"] for i in range(5)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = zt_client.get(GREETINGS, params=params)
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

    everything = zt_client.get(GREETINGS).json()
    assert [item["id"] for item in everything["items"]] == sorted(ids)
    assert everything["next_cursor"] is None


@HELLO
@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": "many"}, "limit"), ({"cursor": "!!"}, "cursor")],
)
def test_bad_page_parameters_are_refused_naming_them(
    zt_client: TestClient[Litestar], params: dict[str, Any], field: str
) -> None:
    assert_problem(zt_client.get(GREETINGS, params=params), 400, field)


@HELLO
def test_missing_greeting_is_a_404_problem(zt_client: TestClient[Litestar]) -> None:
    body = assert_problem(zt_client.get(f"{GREETINGS}/01nosuchgreeting"), 404)
    assert "01nosuchgreeting" in body["detail"]


@HELLO
@pytest.mark.parametrize(
    "body",
    [{"name": ""}, {"name": "   "}, {"name": "x" * 101}, {}, {"name": 5}, {"name": None}],
    ids=["empty", "blank", "too-long", "missing", "number", "null"],
)
def test_bad_name_is_refused_naming_the_field(
    zt_client: TestClient[Litestar], zt_platform: Platform, body: dict[str, Any]
) -> None:
    assert_problem(zt_client.post(GREETINGS, json=body), 400, "name")
    assert stored_names(zt_platform) == []


@HELLO
def test_unknown_field_is_refused_not_ignored(
    zt_client: TestClient[Litestar], zt_platform: Platform
) -> None:
    response = zt_client.post(GREETINGS, json={"name": "Ada", "admin": True})
    assert_problem(response, 400, "admin")
    assert stored_names(zt_platform) == []


@HELLO
def test_a_body_that_is_not_an_object_is_refused(zt_client: TestClient[Litestar]) -> None:
    assert_problem(zt_client.post(GREETINGS, json=["Ada"]), 400)
    assert_problem(
        zt_client.post(GREETINGS, content=b"{nope", headers={"content-type": "application/json"}),
        400,
    )


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
def test_greeting_is_persisted(zt_client: TestClient[Litestar], zt_platform: Platform) -> None:
    created = create(zt_client, "Grace")
    with zt_platform.db.transaction() as session:
        row = session.get(Greeting, created["id"])
        assert row is not None
        assert (row.name, row.message) == ("Grace", "Hello, Grace!")
        assert row.created_at.utcoffset() is not None  # stored and read back as UTC-aware


@HELLO
def test_downgrading_the_branch_removes_only_its_tables(
    zt_client: TestClient[Litestar], zt_platform: Platform
) -> None:
    migrations = zt_platform.migrations()

    migrations.downgrade("hello@base")
    tables = table_names(zt_platform)
    assert "hello_greetings" not in tables
    assert "lineage_edges" in tables  # the core's branch is left alone
    assert REVISION not in migrations.current()
    assert migrations.pending() == [REVISION]

    migrations.upgrade()
    assert "hello_greetings" in table_names(zt_platform)
    assert REVISION in migrations.current()
    assert create(zt_client, "Ada")["message"] == "Hello, Ada!"


# ---------------------------------------------------------------------------
# on_event: delivered after commit, never after a rollback
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pinged(Event):
    name = "tests.pinged"


@HELLO
def test_hook_on_event(zt_client: TestClient[Litestar], zt_platform: Platform) -> None:
    """Creating a greeting delivers hello.greeting.created to on_event once it commits."""
    assert events_seen(zt_platform).get("hello.greeting.created", 0) == 0
    create(zt_client, "Ada")
    create(zt_client, "Bob")
    assert events_seen(zt_platform)["hello.greeting.created"] == 2

    # Events of other plugins reach it too.
    with zt_platform.db.transaction() as session:
        emit(session, Pinged())
    stats = zt_client.get("/api/v1/hello/stats").json()
    assert stats["events"] == {"hello.greeting.created": 2, "tests.pinged": 1}


@HELLO
def test_event_is_not_delivered_when_the_transaction_rolls_back(zt_platform: Platform) -> None:
    with pytest.raises(RuntimeError), zt_platform.db.transaction() as session:
        create_greeting(session, "Ada", "Hello, Ada!")  # emits
        raise RuntimeError("something after the emit fails")
    assert events_seen(zt_platform) == {}
    assert stored_names(zt_platform) == []

    with zt_platform.db.transaction() as session:
        create_greeting(session, "Bob", "Hello, Bob!")
    assert events_seen(zt_platform) == {"hello.greeting.created": 1}
    assert stored_names(zt_platform) == ["Bob"]


class ValidatesAfterWriting:
    """A plugin whose route writes a greeting, then refuses the request."""

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        @post("/greet-then-refuse", sync_to_thread=True)
        def greet_then_refuse(platform: PlatformDep) -> None:
            with platform.db.transaction() as session:
                create_greeting(session, "Ada", "Hello, Ada!")
                raise ValidationException(
                    detail="refused", extra=[{"key": "name", "message": "refused late"}]
                )

        return [greet_then_refuse]


@HELLO
def test_request_failing_after_emit_delivers_no_event(
    zt_register_plugin: Callable[..., None], zt_client_factory: Callable[..., Any]
) -> None:
    zt_register_plugin(ValidatesAfterWriting(), name="refuser")
    with zt_client_factory() as client:
        platform = client.app.state["platform"]
        assert_problem(client.post("/api/v1/refuser/greet-then-refuse"), 400, "name")
        assert events_seen(platform) == {}
        assert client.get(GREETINGS).json()["items"] == []


# ---------------------------------------------------------------------------
# startup / shutdown
# ---------------------------------------------------------------------------


@HELLO
def test_hook_startup(zt_app: Litestar) -> None:
    """startup (an async implementation) runs when the app starts and records the time."""
    platform: Platform = zt_app.state["platform"]
    assert STATS not in platform.stash  # building the app does not start it
    with TestClient(zt_app) as client:
        started = platform.stash[STATS].started_at
        assert started is not None and started.utcoffset() is not None
        assert client.get("/api/v1/hello/stats").json()["started_at"] == started.isoformat()


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
    with TestClient(app) as client:
        assert create(client, "Ada")["message"] == "Bonjour, Ada!"


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
# register_commands: zhongtai hello NAME [--save]
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
def test_cli_save_stores_the_greeting(
    invoke: CliInvoke, zt_client: TestClient[Litestar], zt_platform: Platform
) -> None:
    # zt_client's app has migrated the database (PostgreSQL is never migrated implicitly).
    result = invoke("hello", "Ada", "--save")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, Ada!\n"
    assert "saved greeting" in result.stderr

    assert stored_names(zt_platform) == ["Ada"]
    items = zt_client.get(GREETINGS).json()["items"]
    assert [(i["name"], i["message"]) for i in items] == [("Ada", "Hello, Ada!")]


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


def test_without_the_plugin_its_urls_are_404(zt_client: TestClient[Litestar]) -> None:
    for path in (GREETINGS, f"{GREETINGS}/x", "/api/v1/hello/stats"):
        assert_problem(zt_client.get(path), 404)
    assert_problem(zt_client.post(GREETINGS, json={"name": "Ada"}), 404)
    assert "/api/v1/hello/greetings" not in zt_client.get("/api/openapi.json").json()["paths"]


def test_without_the_plugin_its_table_is_not_created(zt_platform: Platform) -> None:
    assert "hello" not in zt_platform.migration_branches
    assert "lineage_edges" in table_names(zt_platform)
    assert not {t for t in table_names(zt_platform) if t.startswith("hello_")}
    assert REVISION not in {
        rev.revision for rev in zt_platform.migrations().script().walk_revisions()
    }


def test_plugins_listing_shows_hello_only_when_loaded(
    zt_client: TestClient[Litestar], zt_client_factory: Callable[..., Any]
) -> None:
    names = {p["name"] for p in zt_client.get("/api/v1/plugins").json()["items"]}
    assert "hello" not in names

    with zt_client_factory(plugins=["hello"]) as client:
        listed = {p["name"]: p for p in client.get("/api/v1/plugins").json()["items"]}
    hello = listed["hello"]
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
    with TestClient(zt_app_factory(plugins=["hello"])) as client:
        created = create(client, "Ada")

    without = zt_app_factory(plugins=[])
    with TestClient(without) as client:
        assert_problem(client.get(f"{GREETINGS}/{created['id']}"), 404)
    platform: Platform = without.state["platform"]
    assert "hello_greetings" in table_names(platform)  # never dropped behind the user's back

    with TestClient(zt_app_factory(plugins=["hello"])) as client:
        assert client.get(f"{GREETINGS}/{created['id']}").json() == created
        with client.app.state["platform"].db.transaction() as session:
            assert session.scalar(select(func.count()).select_from(Greeting)) == 1

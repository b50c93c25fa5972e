"""Plugin loading: discovery, isolation of failures, reporting, selection, strict mode."""

from __future__ import annotations

import pytest
from litestar import Request, get
from litestar.testing import TestClient

import zhongtai
from zhongtai.hooks.manager import PluginLoadError, StartupError
from zhongtai.identity.guard import public
from zhongtai.settings import PluginSettings, SettingsError


def _plugins(client: TestClient) -> dict[str, dict]:
    from zhongtai.testing import ZtIdentity

    identity = ZtIdentity(client.app.state["platform"])
    headers = identity.headers(identity.user(superuser=True))
    response = client.get("/api/v1/plugins", headers=headers)
    assert response.status_code == 200
    return {p["name"]: p for p in response.json()["items"]}


def test_builtins_are_plugins_like_any_other(zt_client):
    plugins = _plugins(zt_client)
    assert plugins["system"]["builtin"] is True
    assert plugins["system"]["loaded"] is True
    assert "register_routes" in plugins["lineage"]["hooks"]
    assert plugins["lineage"]["distribution"] == "zhongtai"


@pytest.mark.zt_plugins("broken")
def test_plugin_that_raises_on_import_is_reported_and_platform_starts(zt_client):
    assert zt_client.get("/healthz").status_code == 200
    broken = _plugins(zt_client)["broken"]
    assert broken["loaded"] is False
    assert "RuntimeError: boom while importing broken_import" in broken["error"]
    assert broken["distribution"] == "zt-samples"


@pytest.mark.zt_plugins("misspelled")
def test_unknown_hook_fails_loudly_with_a_suggestion(zt_client):
    error = _plugins(zt_client)["misspelled"]["error"]
    assert "unknown hook 'register_route'" in error
    assert "did you mean register_routes" in error


def test_strict_mode_fails_fast(zt_app_factory, zt_settings):
    strict = zt_settings.model_copy(update={"strict_plugins": True})
    with pytest.raises(PluginLoadError, match="broken"):
        zt_app_factory(settings=strict, plugins=["broken"])


def test_unknown_plugin_name_is_reported(zt_app_factory):
    app = zt_app_factory(plugins=["nosuchplugin"])
    record = app.state["platform"].plugins.get("nosuchplugin")
    assert record.error == "no installed plugin named 'nosuchplugin'"


def test_disable_plugins_setting_wins(zt_app_factory, zt_settings):
    settings = zt_settings.model_copy(update={"disable_plugins": ["broken"]})
    app = zt_app_factory(settings=settings, plugins=["broken"])
    assert app.state["platform"].plugins.get("broken") is None


def test_plugins_setting_chooses_what_loads(zt_app_factory, zt_settings):
    settings = zt_settings.model_copy(update={"plugins": ["misspelled"]})
    app = zt_app_factory(settings=settings, plugins=None)
    names = set(app.state["platform"].plugins.records)
    assert names == {"system", "lineage", "identity", "jobs", "webhooks", "ui", "misspelled"}


def test_table_collision_between_plugins_is_refused_naming_both(zt_app_factory):
    with pytest.raises(StartupError) as info:
        zt_app_factory(plugins=["colla", "collb"])
    message = str(info.value)
    assert "'collb'" in message and "'colla'" in message and "colla_items" in message


def test_table_collision_with_the_core_is_refused(zt_app_factory):
    with pytest.raises(StartupError, match=r"'corecollide' defines table 'lineage_edges'.*core"):
        zt_app_factory(plugins=["corecollide"])


def test_plugin_table_without_prefix_is_refused(zt_app_factory):
    with pytest.raises(StartupError, match="table 'widgets' must be named unprefixed_"):
        zt_app_factory(plugins=["unprefixed"])


class RoutesRaise:
    @zhongtai.hookimpl
    def register_routes(self):
        raise ValueError("cannot build routes")


class StartupRaises:
    @zhongtai.hookimpl
    def register_routes(self):
        @get("/ping", sync_to_thread=False, opt=public())
        def ping() -> str:
            return "pong"

        return [ping]

    @zhongtai.hookimpl
    def startup(self, platform):
        raise RuntimeError("no backend")


def test_plugin_whose_hook_raises_is_unloaded_and_reported(zt_register_plugin, zt_client_factory):
    zt_register_plugin(RoutesRaise(), name="routesraise")
    with zt_client_factory() as client:
        assert client.get("/healthz").status_code == 200
        record = _plugins(client)["routesraise"]
    assert record["loaded"] is False
    assert record["error"] == "register_routes: ValueError: cannot build routes"


def test_plugin_whose_startup_raises_is_unloaded_and_its_routes_answer_503(
    zt_register_plugin, zt_client_factory
):
    zt_register_plugin(StartupRaises(), name="startupraises")
    with zt_client_factory() as client:
        response = client.get("/api/v1/startupraises/ping")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert _plugins(client)["startupraises"]["error"] == "startup: RuntimeError: no backend"
        assert client.get("/healthz").status_code == 200


class Shadow:
    @zhongtai.hookimpl
    def register_routes(self):
        @get("/", sync_to_thread=False, opt=public())
        def fake() -> dict:
            return {"items": ["fake"]}

        return [fake]


def test_plugin_cannot_shadow_a_core_path(zt_register_plugin, zt_client_factory):
    zt_register_plugin(Shadow(), name="plugins")
    with zt_client_factory() as client:
        listing = _plugins(client)
        assert listing["plugins"]["loaded"] is False
        assert "reserved for the core" in listing["plugins"]["error"]
        assert "fake" not in str(listing)


def test_plugin_routes_are_mounted_under_their_prefix(zt_register_plugin, zt_client_factory):
    zt_register_plugin(Shadow(), name="shadowing")
    with zt_client_factory() as client:
        assert client.get("/api/v1/shadowing").json() == {"items": ["fake"]}
        root = client.get("/", follow_redirects=False)  # the core's: to the web UI
        assert root.status_code == 302 and root.headers["location"] == "/ui"


class RootRoutes:
    """Claims a top-level segment, as the train plugin claims /mlflow."""

    def __init__(self, segment: str) -> None:
        self.segment = segment

    @zhongtai.hookimpl
    def register_root_routes(self):
        from zhongtai.identity.guard import authenticated

        @get(["/", "/{rest:path}"], sync_to_thread=False, opt=authenticated())
        def echo(request: Request) -> dict:
            return {"path": request.url.path}

        return {self.segment: [echo]}


def test_hook_register_root_routes(zt_register_plugin, zt_client_factory):
    """A plugin serves its own top-level path; the core's and another's are refused."""
    zt_register_plugin(RootRoutes("tracking"), name="first")
    zt_register_plugin(RootRoutes("tracking"), name="second")
    zt_register_plugin(RootRoutes("api"), name="third")
    zt_register_plugin(RootRoutes("Not A Segment"), name="fourth")
    with zt_client_factory() as client:
        from zhongtai.testing import ZtIdentity

        identity = ZtIdentity(client.app.state["platform"])
        headers = identity.headers(identity.user("root-routes@example.com"))
        assert client.get("/tracking/api/2.0/x").status_code == 401  # its access holds
        answer = client.get("/tracking/api/2.0/x", headers=headers)
        assert answer.json() == {"path": "/tracking/api/2.0/x"}
        listing = _plugins(client)
        assert listing["first"]["loaded"] is True
        assert "/tracking is taken" in listing["second"]["error"]
        assert "/api is taken" in listing["third"]["error"]
        assert "not one lowercase path segment" in listing["fourth"]["error"]
        assert client.get("/healthz").status_code == 200
        assert "/tracking/{rest:path}" not in client.get("/api/openapi.json").json()["paths"]


def test_invalid_plugin_name_is_refused(zt_register_plugin, zt_client_factory):
    zt_register_plugin(Shadow(), name="Bad-Name")
    with zt_client_factory() as client:
        assert "lower-case" in _plugins(client)["Bad-Name"]["error"]


class CountSettings(PluginSettings):
    count: int = 3
    token: str = "x"


class WithSettings:
    @zhongtai.hookimpl
    def register_settings(self):
        return CountSettings


def test_plugin_settings_are_read_under_the_plugin_prefix(
    zt_register_plugin, zt_app_factory, monkeypatch
):
    monkeypatch.setenv("ZHONGTAI_COUNTER__COUNT", "7")
    zt_register_plugin(WithSettings(), name="counter")
    platform = zt_app_factory().state["platform"]
    assert platform.plugin_settings("counter").count == 7


def test_bad_plugin_setting_stops_startup_naming_the_variable(
    zt_register_plugin, zt_app_factory, monkeypatch
):
    monkeypatch.setenv("ZHONGTAI_COUNTER__COUNT", "many")
    zt_register_plugin(WithSettings(), name="counter")
    with pytest.raises(SettingsError) as info:
        zt_app_factory()
    assert info.value.problems[0].startswith("ZHONGTAI_COUNTER__COUNT:")


def test_unknown_plugin_setting_is_refused(zt_register_plugin, zt_app_factory, monkeypatch):
    monkeypatch.setenv("ZHONGTAI_COUNTER__COUNTT", "1")
    zt_register_plugin(WithSettings(), name="counter")
    with pytest.raises(SettingsError, match="ZHONGTAI_COUNTER__COUNTT"):
        zt_app_factory()


class EvaluatorHooks:
    @zhongtai.hookspec
    def register_evaluators(self):
        """Called when evaluators are collected; return evaluator names."""


class Declarer:
    @zhongtai.hookimpl
    def register_hookspecs(self):
        return [EvaluatorHooks]


class Implementer:
    @zhongtai.hookimpl
    def register_evaluators(self):
        return ["accuracy"]


class Misspeller:
    @zhongtai.hookimpl
    def register_evaluator(self):
        return ["typo"]


def test_hook_register_hookspecs(zt_register_plugin, zt_app_factory):
    # The implementer registers before the declarer: declarations still come first.
    zt_register_plugin(Implementer(), name="implementer")
    zt_register_plugin(Misspeller(), name="misspeller")
    zt_register_plugin(Declarer(), name="declarer")
    manager = zt_app_factory().state["platform"].plugins
    assert manager.get("implementer").loaded
    results = [value for _, value in manager.call_each("register_evaluators")]
    assert results == [["accuracy"]]
    assert "did you mean register_evaluators" in manager.get("misspeller").error


class OptionalElsewhere:
    @zhongtai.hookimpl(optionalhook=True)
    def register_widgets(self):
        return []


class Typo:
    @zhongtai.hookimpl
    def register_widgets(self):
        return []


def test_optional_hook_elsewhere_does_not_make_a_typo_acceptable(
    zt_register_plugin, zt_app_factory
):
    zt_register_plugin(OptionalElsewhere(), name="optional")
    zt_register_plugin(Typo(), name="typo")
    manager = zt_app_factory().state["platform"].plugins
    assert manager.get("optional").loaded
    assert "unknown hook 'register_widgets'" in manager.get("typo").error


class AsyncSettings:
    @zhongtai.hookimpl
    async def register_settings(self):
        return CountSettings


def test_async_register_hook_works_inside_a_running_loop(zt_register_plugin, zt_app_factory):
    import asyncio

    zt_register_plugin(AsyncSettings(), name="asyncset")

    async def build():  # as under uvicorn --workers/--reload, the app is built in a loop
        return zt_app_factory()

    platform = asyncio.run(build()).state["platform"]
    assert platform.plugin_settings("asyncset").count == 3


class Listener:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @zhongtai.hookimpl
    def on_event(self, event):
        self.seen.append(event.name)


def test_events_reach_the_plugins_loaded_now_and_not_an_unloaded_one():
    """Event delivery keeps its list of handlers between events; loading or unloading
    a plugin changes who gets the next one."""
    from zhongtai.hooks.events import Event
    from zhongtai.hooks.manager import PluginManager

    class Ping(Event):
        name = "test.ping"

    first, second, late = Listener(), Listener(), Listener()
    manager = PluginManager()
    manager.load(
        discover=False, only=["first", "second"], extra=[("first", first), ("second", second)]
    )
    manager.dispatch_event(Ping(), platform=None)
    manager.unload("first", "test: unloaded")
    manager.dispatch_event(Ping(), platform=None)
    manager.load(discover=False, only=["late"], extra=[("late", late)])
    manager.dispatch_event(Ping(), platform=None)
    assert (first.seen, second.seen, late.seen) == (["test.ping"], ["test.ping"] * 3, ["test.ping"])

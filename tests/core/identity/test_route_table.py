"""Every route of the application states its access: the real route table, not OpenAPI.

The walk covers what Litestar really routes: each path's handlers per method,
including the OPTIONS handlers Litestar adds to every path, HEAD handlers, routes
left out of the OpenAPI document, and the routes of every installed plugin.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, Router, get, post, route
from litestar.testing import TestClient

import zhongtai
from zhongtai.hooks.manager import StartupError
from zhongtai.identity.guard import (
    ACCESS_OPT,
    AUTHENTICATED,
    PUBLIC,
    iter_route_handlers,
    public,
    requires,
    undeclared_routes,
)
from zhongtai.identity.roles import Permission, Role

# Public on purpose; anything else public must be added here deliberately.
PUBLIC_ROUTES = {
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/refresh",
    "POST /api/v1/auth/register",
    "POST /api/v1/auth/setup",
    "GET /setup",
    "POST /setup",
    # The API description and Swagger UI (Litestar's OpenAPI router).
    "GET /api",
    "GET /api/docs",
    "GET /api/openapi.json",
    "GET /api/oauth2-redirect.html",
    "GET /api/{path:str}",
    # The web UI: its sign-in form, the redirect to it, and the core's static files
    # (CSS, the UI's own script, htmx).
    "GET /",
    "GET /ui/login",
    "POST /ui/login",
    "GET /invite",  # an invitation's page (its token is the credential)
    "POST /invite",
    "GET /ui/static/core/{file_path:path}",
    "HEAD /ui/static/core/{file_path:path}",
}


def _table(app: Litestar) -> list[tuple[str, str, Any]]:
    return list(iter_route_handlers(app))


@pytest.mark.zt_plugins("hello")
def test_every_route_states_a_declared_permission_or_is_public(zt_app: Litestar) -> None:
    table = _table(zt_app)
    methods = {method for method, _path, _handler in table}
    assert {"GET", "POST", "OPTIONS"} <= methods
    assert any(path.startswith("/api/v1/hello/") for _m, path, _h in table)
    assert undeclared_routes(zt_app) == []

    registry = zt_app.state["platform"].permissions
    public_routes = set()
    for method, path, handler in table:
        spec = handler.opt.get(ACCESS_OPT)
        assert spec in (PUBLIC, AUTHENTICATED) or spec in registry, f"{method} {path}: {spec!r}"
        if spec == PUBLIC and method != "OPTIONS":
            public_routes.add(f"{method} {path}")
    assert public_routes <= PUBLIC_ROUTES, sorted(public_routes - PUBLIC_ROUTES)
    # The example plugin guards its routes with permissions it registers itself.
    hello = {h.opt[ACCESS_OPT] for _m, p, h in table if p.startswith("/api/v1/hello/greetings")}
    assert hello >= {"hello.greeting.read", "hello.greeting.write"}


def test_options_answers_without_credentials_and_reveals_only_methods(zt_client) -> None:
    response = zt_client.options("/api/v1/lineage/edges")
    assert response.status_code == 204
    # (Litestar 2 lists the methods known when the path was first registered.)
    allowed = set(response.headers["allow"].split(", "))
    assert "OPTIONS" in allowed and allowed <= {"GET", "POST", "OPTIONS"}
    assert response.content == b""


class Undeclared:
    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        @get("/ok", opt=public(), sync_to_thread=False)
        def ok() -> str:
            return "ok"

        @route("/head-only", http_method=["HEAD"], sync_to_thread=False)
        def head_only() -> None:
            return None

        return [ok, head_only]


class OwnBeforeRequest:
    """Litestar runs only the closest before_request: this one would replace the check."""

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        async def skip(request: Any) -> None:
            return None

        @get("/open", opt=public(), before_request=skip, sync_to_thread=False)
        def open_route() -> str:
            return "open"

        @get("/guarded", opt=requires("core.project.read"), sync_to_thread=False)
        def guarded() -> str:
            return "secret"

        return [Router("/", route_handlers=[open_route, guarded], before_request=skip)]


def test_a_plugin_setting_its_own_before_request_is_unloaded(
    zt_register_plugin, zt_client_factory
) -> None:
    zt_register_plugin(OwnBeforeRequest(), name="ownhook")
    with zt_client_factory() as client:
        error = client.app.state["platform"].plugins.get("ownhook").error
        assert "sets before_request" in error
        response = client.get("/api/v1/ownhook/guarded")
        assert response.status_code == 503
        assert "secret" not in response.text


class UnknownPermission:
    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        @post("/do", opt=requires("unknownperm.thing.write"), sync_to_thread=False)
        def do() -> str:
            return "done"

        return [do]


class Declared:
    @zhongtai.hookimpl
    def register_permissions(self) -> list[Permission]:
        return [Permission("declared.thing.read", "Read things", Role.viewer)]

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        @route(
            "/things",
            http_method=["GET", "HEAD"],
            opt=requires("declared.thing.read"),
            sync_to_thread=False,
        )
        def things() -> None:
            return None

        return [things]


def test_a_plugin_route_stating_nothing_unloads_the_plugin(
    zt_register_plugin, zt_client_factory, zt_admin_headers
) -> None:
    zt_register_plugin(Undeclared(), name="undeclared")
    zt_register_plugin(UnknownPermission(), name="unknownperm")
    zt_register_plugin(Declared(), name="declared")
    with zt_client_factory() as client:
        platform = client.app.state["platform"]
        undeclared = platform.plugins.get("undeclared")
        assert "HEAD /api/v1/undeclared/head-only" in undeclared.error
        assert "states no declared permission" in undeclared.error
        assert "POST /api/v1/unknownperm/do" in platform.plugins.get("unknownperm").error
        assert platform.plugins.get("declared").error is None
        # Its routes stay closed: even the one declared public answers 503.
        assert client.get("/api/v1/undeclared/ok").status_code == 503
        assert client.head(
            "/api/v1/undeclared/head-only", headers=zt_admin_headers
        ).status_code in (
            403,
            503,
        )
        listed = {
            p["name"]: p
            for p in client.get("/api/v1/plugins", headers=zt_admin_headers).json()["items"]
        }
        assert listed["undeclared"]["error"] == undeclared.error
        # HEAD of a declared route is guarded like its GET.
        assert client.head("/api/v1/declared/things").status_code == 401
        assert client.head("/api/v1/declared/things", headers=zt_admin_headers).status_code in (
            200,
            204,
        )


def test_a_route_whose_declaration_goes_missing_is_refused_not_opened(zt_app, zt_identity) -> None:
    headers = zt_identity.headers(zt_identity.user(superuser=True))
    for _method, path, handler in _table(zt_app):
        if path == "/api/v1/plugins":
            handler.opt.pop(ACCESS_OPT)
    with TestClient(zt_app) as client:
        response = client.get("/api/v1/plugins", headers=headers)
    assert response.status_code == 403
    assert "states no permission" in response.json()["detail"]


def test_a_core_route_stating_nothing_stops_start_up(
    zt_app_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zhongtai.web import system

    @get("/api/v1/forgotten", sync_to_thread=False)
    def forgotten() -> str:
        return "oops"

    original = system.register_routes

    def with_forgotten() -> list[Any]:
        return [*original(), forgotten]

    monkeypatch.setattr(system, "register_routes", zhongtai.hookimpl(with_forgotten))
    with pytest.raises(StartupError, match="GET /api/v1/forgotten"):
        zt_app_factory()

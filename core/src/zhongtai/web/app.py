"""The Litestar app, assembled from the routes that plugins (built-in ones first) return.

Core routes are mounted at the paths they declare; each other plugin's routes under
``/api/v1/<plugin>/``. A plugin whose prefix would shadow a core path, or whose
routes cannot be mounted, is unloaded and reported; the rest of the app starts.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from litestar import Litestar, Request, Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import ClientException, ServiceUnavailableException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler

import zhongtai
from zhongtai.hooks.manager import PluginRecord, StartupError
from zhongtai.identity.audit import AuditWriter, request_values, wants_audit
from zhongtai.identity.guard import (
    ACCESS_OPT,
    PUBLIC,
    check_access,
    iter_route_handlers,
    provide_access,
    undeclared_routes,
)
from zhongtai.platform import Platform, SchemaPolicy, bootstrap
from zhongtai.settings import Settings, load_settings
from zhongtai.web.errors import EXCEPTION_HANDLERS
from zhongtai.web.middleware import Metrics, handle_http

log = logging.getLogger("zhongtai.web")

API_PREFIX = "/api/v1"
PLUGIN_OPT = "zt_plugin"  # on each plugin's Router: which plugin the routes belong to
# Names the core uses or will use under /api/v1; no plugin may take them.
RESERVED_NAMES = frozenset(
    {
        "auth",
        "users",
        "orgs",
        "projects",
        "api_keys",
        "audit",
        "jobs",
        "plugins",
        "lineage",
        "settings",
        "events",
        "webhooks",
        "ui",
        "static",
        "setup",
        "admin",
        "core",
        "system",
        "login",
        "logout",
        "language",
        "keys",
        "dashboard",
    }
)


class PlatformRequest(Request[Any, Any, Any]):
    """Request with a bounded JSON decoder: over-deep nesting is a 400, not a crash."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException(
                detail="JSON body is nested too deeply",
                extra=[{"key": "body", "message": "nested too deeply", "source": "body"}],
            ) from None


class PlatformApp(Litestar):
    """Litestar with the platform's request id, metrics and access log around every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bound once: this runs for every request.
        self._litestar: Any = super().__call__

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._litestar(scope, receive, send)
            return
        await handle_http(
            self._litestar,
            scope,
            receive,
            send,
            metrics=self.state["metrics"],
            access_log=self.state["access_log"],
            after=self._audit,
        )

    async def _audit(self, scope: Any, status: int) -> None:
        """Append the audit row of a finished state-changing request (see identity.audit)."""
        if wants_audit(scope):
            writer: AuditWriter = self.state["audit_writer"]
            await writer.write(request_values(scope, status))


def create_app(
    settings: Settings | None = None,
    *,
    plugins: Sequence[str] | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
    discover: bool = True,
    schema: SchemaPolicy = "auto",
) -> Litestar:
    """Build the platform from ``settings`` (default: the environment) and its web app.

    Raises:
        SettingsError, StartupError, DatabaseUnavailable, DriverError: start-up must stop.
    """
    settings = settings if settings is not None else load_settings()
    platform = bootstrap(
        settings,
        plugins=plugins,
        extra_plugins=extra_plugins,
        discover=discover,
        schema=schema,
    )
    return build_app(platform)


def create_app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory`` (``zhongtai serve`` with several workers or reload)."""
    from zhongtai.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def build_app(platform: Platform) -> Litestar:
    """Assemble the Litestar app for an already bootstrapped platform."""
    settings = platform.settings
    manager = platform.plugins
    core: list[ControllerRouterHandler] = []
    contributed: list[tuple[PluginRecord, list[ControllerRouterHandler]]] = []
    for record, routes in manager.call_each("register_routes", platform=platform):
        routes = list(routes) if isinstance(routes, (list, tuple)) else [routes]
        if record.builtin:
            core.extend(routes)
        else:
            contributed.append((record, routes))

    core_paths = {p for item in core for p in _paths(item)}
    # One Router for all of the core's routes, so Litestar registers each path's
    # handlers together. Registered one by one at the app, a path's earlier
    # ``sync_to_thread`` handlers are wrapped again for every later one (and its
    # OPTIONS answer lists only the last method): litestar-org/litestar#4738.
    route_handlers: list[ControllerRouterHandler] = [Router(path="/", route_handlers=core)]
    for record, routes in contributed:
        router = _plugin_router(record, routes, core_paths, platform)
        if router is not None:
            route_handlers.append(router)
    route_handlers.extend(_root_routers(platform, core_paths))

    async def on_startup(app: Litestar) -> None:
        await manager.acall_each("startup", unload=True, platform=platform)

    async def on_shutdown(app: Litestar) -> None:
        await manager.acall_each("shutdown", unload=False, platform=platform)
        platform.close()

    app = PlatformApp(
        route_handlers=route_handlers,
        dependencies={
            "platform": Provide(lambda: platform, use_cache=True, sync_to_thread=False),
            "access": Provide(provide_access, sync_to_thread=False),
        },
        before_request=check_access,
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=PlatformRequest,
        request_max_body_size=settings.max_body_size,
        openapi_config=OpenAPIConfig(
            title="zhongtai",
            version=zhongtai.__version__,
            path="/api",
            render_plugins=[SwaggerRenderPlugin(path="/docs")],
            # "Authorize" in /api/docs takes an access token or an API key.
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An access token (from /api/v1/auth/login) or an API key.",
                    )
                }
            ),
            security=[{"bearer": []}],
        ),
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        debug=False,
        logging_config=None,  # zhongtai.logs configures logging once, for every library
    )
    app.state["platform"] = platform
    writer = AuditWriter(platform.db)
    platform.on_close(writer.close)  # before the database closes (callbacks run first)
    app.state["audit_writer"] = writer
    app.state["metrics"] = Metrics()
    app.state["access_log"] = settings.access_log
    _check_access_declared(app, platform)
    return app


def _check_access_declared(app: Litestar, platform: Platform) -> None:
    """Every route states its access; a plugin route that does not takes its plugin down.

    The OPTIONS handlers Litestar adds to each path are public on purpose: they
    answer CORS preflights, which never carry credentials, and reveal only the
    methods of a path.
    """
    for _method, _path, handler in iter_route_handlers(app):
        module = getattr(getattr(handler, "fn", None), "__module__", "")
        methods = getattr(handler, "http_methods", None)
        if module == "litestar.routes.http" and methods == {"OPTIONS"}:
            handler.opt[ACCESS_OPT] = PUBLIC
        elif module.startswith(("litestar.openapi", "litestar._openapi")):
            handler.opt[ACCESS_OPT] = PUBLIC  # the API's description and Swagger UI
    undeclared = set(undeclared_routes(app))
    core: list[str] = []
    for method, path, handler in iter_route_handlers(app):
        route = f"{method} {path}"
        # The access check is the app's before_request hook; Litestar runs only the
        # closest layer's, so a route with its own would skip the check.
        layers = [layer for layer in handler.ownership_layers if layer is not app]
        if route not in undeclared and not any(
            getattr(layer, "before_request", None) for layer in layers
        ):
            continue
        owners = (getattr(layer, "opt", None) or {} for layer in layers)
        owner = next((opt[PLUGIN_OPT] for opt in owners if PLUGIN_OPT in opt), None)
        if owner is None:
            core.append(route)
        elif platform.plugins.records[owner].error is None:
            platform.plugins.unload(
                owner,
                f"register_routes: {route} states no declared permission"
                " (opt=requires(...), authenticated() or public()) or sets before_request",
            )
    if core:
        raise StartupError(f"core routes state no declared permission: {', '.join(core)}")


def _plugin_router(
    record: PluginRecord,
    routes: list[ControllerRouterHandler],
    core_paths: set[str],
    platform: Platform,
) -> Router | None:
    prefix = f"{API_PREFIX}/{record.name}"
    if record.name in RESERVED_NAMES or any(
        p == prefix or p.startswith(prefix + "/") for p in core_paths
    ):
        platform.plugins.unload(record.name, f"register_routes: {prefix} is reserved for the core")
        return None
    try:
        return Router(
            path=prefix,
            route_handlers=routes,
            tags=[record.name],
            guards=[_plugin_available(record)],
            opt={PLUGIN_OPT: record.name},
        )
    except Exception as exc:
        platform.plugins.unload(record.name, f"register_routes: {type(exc).__name__}: {exc}", exc)
        return None


# Top-level path segments the core answers at or keeps for itself.
ROOT_RESERVED = frozenset({"api", "ui", "healthz", "readyz", "metrics", "docs", "static", "invite"})
_SEGMENT = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def _root_routers(platform: Platform, core_paths: set[str]) -> list[Router]:
    """The routers of ``register_root_routes``: one per claimed top-level segment."""
    manager = platform.plugins
    taken = ROOT_RESERVED | RESERVED_NAMES | {p.strip("/").split("/")[0] for p in core_paths}
    routers: list[Router] = []
    for record, claimed in manager.call_each("register_root_routes", platform=platform):
        if record.error is not None:
            continue
        mine: list[Router] = []
        try:
            for segment, routes in dict(claimed).items():
                if not isinstance(segment, str) or not _SEGMENT.match(segment):
                    raise ValueError(f"/{segment} is not one lowercase path segment")
                if segment in taken:
                    raise ValueError(f"/{segment} is taken by the core or another plugin")
                mine.append(
                    Router(
                        path=f"/{segment}",
                        route_handlers=list(routes),
                        include_in_schema=False,
                        guards=[_plugin_available(record)],
                        opt={PLUGIN_OPT: record.name},
                    )
                )
        except Exception as exc:
            manager.unload(record.name, f"register_root_routes: {type(exc).__name__}: {exc}", exc)
            continue
        taken = taken | {router.path.strip("/") for router in mine}
        routers.extend(mine)
    return routers


def _plugin_available(record: PluginRecord) -> Any:
    """A guard answering 503 once a plugin has been unloaded (e.g. its startup failed).

    A guard, not a check in the access hook: a plugin route that sets its own
    ``before_request`` replaces that hook (and is unloaded for it), but guards always
    run. Async, so that Litestar calls it in the event loop: a sync guard would cost a
    worker-thread hop on every request of every plugin route.
    """

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if record.error is not None:
            raise ServiceUnavailableException(f"plugin {record.name} is unavailable")

    return guard


def _paths(item: Any) -> set[str]:
    if isinstance(item, Router):
        return {item.path}
    if inspect.isclass(item):
        return {getattr(item, "path", "/")}
    return set(getattr(item, "paths", set()))

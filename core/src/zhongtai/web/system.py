"""The core's system routes, registered as a built-in plugin like any other.

``/healthz`` (the process answers), ``/readyz`` (database and object store
reachable), ``/metrics`` (Prometheus) and ``/api/v1/plugins``.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import zhongtai
from zhongtai.identity.guard import authenticated, public
from zhongtai.web.errors import problem
from zhongtai.web.params import PlatformDep


@get("/healthz", tags=["system"], media_type=MediaType.JSON, sync_to_thread=False, opt=public())
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@get("/readyz", tags=["system"], sync_to_thread=True, opt=public())
def readyz(platform: PlatformDep) -> Response[Any]:
    """Ready to serve: the database and the object store answer (503 naming which not)."""
    checks: dict[str, str] = {}
    try:
        platform.db.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = str(exc) or type(exc).__name__
    try:
        platform.storage.ping()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = str(exc) or type(exc).__name__
    failing = sorted(k for k, v in checks.items() if v != "ok")
    if failing:
        return problem(503, f"not ready: {', '.join(failing)} unavailable", checks=checks)
    return Response({"status": "ok", "checks": checks})


# Public like most Prometheus endpoints: counts per route template, no user data.
@get("/metrics", tags=["system"], sync_to_thread=False, opt=public())
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics of this process."""
    registry = request.app.state["metrics"].registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@get("/api/v1/plugins", tags=["system"], sync_to_thread=False, opt=authenticated())
def list_plugins(platform: PlatformDep) -> dict[str, Any]:
    """Every plugin: name, distribution, version, hooks implemented, load error if any."""
    return {"items": [r.to_dict() for r in platform.plugins.records.values()]}


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    return [healthz, readyz, metrics, list_plugins]

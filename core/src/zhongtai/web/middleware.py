"""What wraps every HTTP exchange: request id, metrics, access log, refused media types.

It runs outside Litestar's routing (see :class:`zhongtai.web.app.PlatformApp`), so
404s and 405s get an ``X-Request-ID`` and are counted too.

This runs for every request, so it is kept lean: one pass over the headers, metric
children looked up once per (route, method, status), and the access line written by
:func:`zhongtai.logs.log_access` without a ``LogRecord``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from zhongtai.logs import log_access, request_id_var
from zhongtai.metadata.ids import new_id

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
# Pickle runs code when loaded; no route accepts it, whatever the handler.
_REFUSED_MEDIA = re.compile(rb"pickle", re.IGNORECASE)


class Metrics:
    """Prometheus metrics of one app instance (its own registry, never the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "zhongtai_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zhongtai_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # ``.labels()`` validates, builds a key and takes the metric's lock on every
        # call; the children it returns never change, so each is looked up once.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


async def _refuse(send: Any, rid: str, status: int, detail: str) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Unsupported Media Type",
            "status": status,
            "detail": detail,
            "request_id": rid,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def handle_http(
    app: ASGIApp,
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    *,
    metrics: Metrics,
    access_log: bool,
    after: Callable[[dict[str, Any], int], Awaitable[None]] | None = None,
) -> None:
    """Run ``app`` for one HTTP request with the platform's cross-cutting behaviour.

    ``after(scope, status)`` runs once the response has been sent (the audit log).
    """
    incoming: bytes | None = None
    refused: bytes | None = None
    for key, value in scope["headers"]:  # one pass; names are lower case (ASGI)
        if key == b"x-request-id":
            if incoming is None:
                incoming = bytes(value)
        elif key == b"content-type" and refused is None and _REFUSED_MEDIA.search(value):
            refused = bytes(value)  # any content-type header naming pickle
    rid = incoming.decode() if incoming and _VALID_REQUEST_ID.match(incoming) else new_id()
    token = request_id_var.set(rid)
    scope.setdefault("state", {})["request_id"] = rid
    start = time.perf_counter()
    status = 500
    rid_header = (b"x-request-id", rid.encode())

    async def send_with_id(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            message["headers"] = [*message.get("headers", ()), rid_header]
        await send(message)

    try:
        if refused is not None:
            status = 415
            await _refuse(send, rid, 415, f"content type {refused.decode()!r} is refused")
            return
        await app(scope, receive, send_with_id)
        if after is not None:
            await after(scope, status)
    finally:
        elapsed = time.perf_counter() - start
        route = scope.get("path_template") or "<unmatched>"
        method = scope["method"]
        metrics.observe(route, method, status, elapsed)
        if access_log:  # milliseconds to 2 decimals (round(x, 2) costs more than this)
            duration_ms = int(elapsed * 100_000 + 0.5) / 100
            log_access(method, scope["path"], status, duration_ms, route, rid)
        request_id_var.reset(token)

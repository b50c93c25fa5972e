"""Where zhongtai's per-request time goes: a diagnostic, not a benchmark with a target.

In one process, no sockets: each piece of what wraps a zhongtai request is timed
on its own (microseconds per call, median of ``--repeat`` batches), then whole ASGI
calls of ``GET /healthz`` on zhongtai's app (access log on and off) and of ``GET /``
on the bare app. The access log writes to a file, the stream of the handler that
``zhongtai.logs.configure_logging`` installs (JSON, as when stderr is not a terminal),
through ``zhongtai.logs.log_access`` (the direct writer); the same line through an
ordinary ``logging`` call (what a changed logging set-up falls back to) is timed
for comparison.

Run: ``.venv/bin/python bench/profile_request.py [--repeat 7 --calls 5000]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import median, scratch_dir


def per_call_us(fn: Callable[[], Any], calls: int, repeat: int) -> float:
    """Median over ``repeat`` batches of the mean microseconds of one ``fn()``."""
    batches = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        batches.append((time.perf_counter() - t0) / calls * 1e6)
    return median(batches)


def asgi_get_us(app: Any, path: str, calls: int, repeat: int) -> float:
    """Median per-request microseconds of full ASGI ``GET path`` calls on ``app``."""
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"GET {path}: {message['status']}")

    async def run() -> float:
        batches = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(calls):
                await app(dict(scope_base), receive, send)
            batches.append((time.perf_counter() - t0) / calls * 1e6)
        return median(batches)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description="zhongtai per-request costs")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    n, r = args.calls, args.repeat

    with scratch_dir("zt-profile-req-") as work:
        os.environ["ZHONGTAI_HOME"] = str(work / "home")
        log_file = open(work / "stderr.log", "w")  # noqa: SIM115 - process-long
        real_stderr, sys.stderr = sys.stderr, log_file  # the handler binds sys.stderr

        import zhongtai.logs
        from zhongtai.logs import configure_logging, log_access, request_id_var
        from zhongtai.metadata.ids import new_id
        from zhongtai.settings import load_settings
        from zhongtai.web.app import create_app
        from zhongtai.web.middleware import Metrics

        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        sys.stderr = real_stderr
        app = create_app(settings)
        # bare_app.py's app, rebuilt here without Litestar's default logging config
        # (importing bare_app would add a root handler that echoes every access line).
        from litestar import Litestar, MediaType, get

        @get("/", media_type=MediaType.TEXT, sync_to_thread=False)
        def index() -> str:
            return "ok"

        bare = Litestar(route_handlers=[index], debug=False, logging_config=None)

        access = logging.getLogger("zhongtai.access")
        writer = zhongtai.logs._access_log
        assert writer is not None and writer.applies(), "the direct access writer is not in use"
        metrics = Metrics()
        rid = new_id()
        extra = {"method": "GET", "path": "/healthz", "status": 200, "duration_ms": 0.42}
        extra["route"] = "/healthz"
        token = request_id_var.set(rid)

        def direct() -> None:
            log_access("GET", "/healthz", 200, 0.42, "/healthz", rid)

        def through_logging() -> None:
            access.info("%s %s %s", "GET", "/healthz", 200, extra=extra)

        rows: list[tuple[str, float]] = [
            ("new_id() (request id)", per_call_us(new_id, n, r)),
            (
                "metrics.observe() (cached children)",
                per_call_us(lambda: metrics.observe("/healthz", "GET", 200, 0.0004), n, r),
            ),
            ("access log line: log_access() -> JSON -> file", per_call_us(direct, n, r)),
            (
                "  of which AccessLog.line() (shaping the JSON line)",
                per_call_us(
                    lambda: writer.line("GET", "/healthz", 200, 0.42, "/healthz", rid), n, r
                ),
            ),
            (
                "(for comparison) the same line through logging.info()",
                per_call_us(through_logging, n, r),
            ),
        ]
        request_id_var.reset(token)
        handler = next(h for h in logging.getLogger().handlers if getattr(h, "_zhongtai", False))
        record = logging.LogRecord(
            "zhongtai.access", logging.INFO, __file__, 1, "%s %s %s", ("GET", "/healthz", 200), None
        )
        for key, value in extra.items():
            setattr(record, key, value)
        record.request_id = rid
        rows.append(
            ("  of which JsonFormatter.format()", per_call_us(lambda: handler.format(record), n, r))
        )

        app.state["access_log"] = True
        on = asgi_get_us(app, "/healthz", n, r)
        app.state["access_log"] = False
        off = asgi_get_us(app, "/healthz", n, r)
        base = asgi_get_us(bare, "/", n, r)
        rows += [
            ("ASGI GET /healthz, zhongtai, access log on", on),
            ("ASGI GET /healthz, zhongtai, access log off", off),
            ("ASGI GET /, bare litestar", base),
        ]
        log_file.close()
        with open(work / "stderr.log", "rb") as fh:
            lines = sum(1 for _ in fh)

    print(f"per-call cost, median of {r} batches of {n} (µs); access log wrote {lines} lines")
    for name, us in rows:
        print(f"  {name:<52} {us:8.1f} µs")
    print(
        f"zhongtai ASGI overhead over bare: {on - base:.1f} µs with access log "
        f"({on / base:.2f}x), {off - base:.1f} µs without ({off / base:.2f}x)"
    )


if __name__ == "__main__":
    main()

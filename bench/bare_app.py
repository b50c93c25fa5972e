"""The baseline: a bare Litestar app with one route, served exactly as ``zhongtai serve`` is.

``GET /`` answers ``ok``. uvicorn runs it with the same options zhongtai uses
(uvloop, httptools, one worker, no log config, no uvicorn access log), so the
difference between the two is zhongtai's own cost: its imports, its bootstrap
(settings, plugins, database, object store) and its per-request middleware.

Run: ``.venv/bin/python bench/bare_app.py --port 8001``
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from litestar import Litestar, MediaType, get


@get("/", media_type=MediaType.TEXT, sync_to_thread=False)
def index() -> str:
    """The one route."""
    return "ok"


app = Litestar(route_handlers=[index], debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    serve(app, args.host, args.port)


def serve(asgi_app: Any, host: str, port: int) -> None:
    """Serve ``asgi_app`` with the options ``zhongtai serve`` uses."""
    uvicorn.run(
        asgi_app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

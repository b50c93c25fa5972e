"""The ASGI app of the platform's MLflow server: MLflow's own, with its start-up heap frozen.

The platform starts ``mlflow server --app-name zhongtai`` (this distribution's
``mlflow.app`` entry point, MLflow's documented way to serve a custom app). Each
uvicorn worker then loads MLflow's FastAPI app through :data:`app`, collects once and
calls :func:`gc.freeze`: the 325,000-odd objects that importing MLflow leaves behind
(modules, classes and functions of MLflow, SQLAlchemy, pandas, protobuf …) move to the
permanent generation, which the garbage collector no longer walks. They are still
freed as usual once nothing refers to them.

Why: a search of 1,000 runs allocates enough ORM objects that about every second call
sets off a full collection, and a full collection that walks the start-up heap takes
about 170 ms on our 2-core test machines: ``search_runs`` answered in either 140 or
330 ms. With the heap frozen a full collection walks only what requests created, and
every search answers in about 140 ms (``bench/tracking.py``). Nothing else changes:
the requests, the stores and the answers are MLflow's own.
"""

from __future__ import annotations

import gc
import importlib
from typing import Any

#: What MLflow's ``mlflow server`` serves under uvicorn when no ``--app-name`` is given.
MLFLOW_APP = "mlflow.server.fastapi_app"


class FrozenStartApp:
    """An ASGI app that loads MLflow's on its first call (the worker's lifespan start-up)
    and then freezes the heap.

    Loading lazily matters twice: ``mlflow server`` imports this module in its own
    process to look at :data:`app` (and would otherwise build MLflow's app there for
    nothing), and a worker freezes only once everything its start-up imports is in.
    A worker calls it from its one event loop, so the first call loads it alone.
    """

    def __init__(self) -> None:
        self._app: Any = None

    def load(self) -> Any:
        """MLflow's app, imported (once) and with the heap frozen after it."""
        if self._app is None:
            loaded = importlib.import_module(MLFLOW_APP).app
            gc.collect()
            gc.freeze()
            self._app = loaded
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await (self._app or self.load())(scope, receive, send)


app = FrozenStartApp()

"""A running platform with the train plugin and its MLflow server, shared by a module.

Starting MLflow's server on a new store runs MLflow's migrations (seconds), so the
tests of one module share one platform; each test makes its own users and projects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zhongtai.testing import (
    ZtIdentity,
    database_server_for_tests,
    serve_in_thread,
    throwaway_postgres,
)


@dataclass
class Tracked:
    """The shared platform: its URL, the platform object and a maker of identities."""

    url: str
    platform: Any
    identity: ZtIdentity

    @property
    def tracking_uri(self) -> str:
        return f"{self.url}/mlflow"

    def use(self, monkeypatch: pytest.MonkeyPatch, key: str, workspace: str | None = None) -> None:
        """Point the ``mlflow`` client of this test at the platform with ``key``."""
        import mlflow

        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.tracking_uri)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", key)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        if workspace is None:
            monkeypatch.delenv("MLFLOW_WORKSPACE", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_WORKSPACE", workspace)
        mlflow.set_tracking_uri(self.tracking_uri)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    from zhongtai.settings import load_settings
    from zhongtai.web.app import create_app
    from zhongtai_train.tracking import tracking

    home = tmp_path_factory.mktemp("train") / "home"
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith("ZHONGTAI_") and not k.startswith("ZHONGTAI_TEST_")
    }
    try:
        with _database(home.parent) as database_url:
            settings = load_settings(
                home=home, database_url=database_url, log_format="text", access_log=False
            )
            app = create_app(settings, plugins=["train"], schema="upgrade")
            platform = app.state["platform"]
            with serve_in_thread(app) as url:
                tracking(platform).ensure()
                yield Tracked(url, platform, ZtIdentity(platform))
            platform.close()
    finally:
        os.environ.update(saved)


def _database(folder: Path) -> Any:
    from contextlib import nullcontext

    server = database_server_for_tests()
    if server is None:
        return nullcontext(f"sqlite:///{folder / 'zhongtai.db'}")
    return throwaway_postgres(server)

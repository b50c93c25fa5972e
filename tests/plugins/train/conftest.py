"""A running platform with the train plugin and its MLflow server, shared by a module.

Starting MLflow's server on a new store runs MLflow's migrations (seconds), so the
tests of one module share one platform; each test makes its own users and projects.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import zhongtai
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
    events: list[Any]

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


@contextmanager
def tracked_platform(
    home: Path, plugins: tuple[str, ...] = ("train",), **overrides: Any
) -> Iterator[Tracked]:
    """A platform with the train plugin (and ``plugins``) served on a free port, its
    MLflow server up."""
    from zhongtai.settings import load_settings
    from zhongtai.web.app import create_app
    from zhongtai_train.tracking import tracking

    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith("ZHONGTAI_") and not k.startswith("ZHONGTAI_TEST_")
    }
    try:
        with _database(home.parent) as database_url:
            settings = load_settings(
                home=home,
                database_url=database_url,
                log_format="text",
                access_log=False,
                **overrides,
            )
            recorder = EventRecorder()
            app = create_app(
                settings,
                plugins=list(plugins),
                extra_plugins=[("eventrecorder", recorder)],
                schema="upgrade",
            )
            platform = app.state["platform"]
            try:
                with serve_in_thread(app) as url:
                    tracking(platform).ensure()
                    yield Tracked(url, platform, ZtIdentity(platform), recorder.events)
            finally:
                # The plugin's shutdown hook stops MLflow's server; if a broken change
                # unloaded the plugin, the hook never runs: stop it here all the same.
                tracking(platform).stop()
                platform.close()
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    with tracked_platform(tmp_path_factory.mktemp("train") / "home") as shared:
        yield shared


class EventRecorder:
    """A plugin that keeps every domain event the platform publishes."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    @zhongtai.hookimpl
    def on_event(self, event: Any) -> None:
        self.events.append(event)


def _database(folder: Path) -> Any:
    from contextlib import nullcontext

    server = database_server_for_tests()
    if server is None:
        return nullcontext(f"sqlite:///{folder / 'zhongtai.db'}")
    return throwaway_postgres(server)


@pytest.fixture(scope="session")
def start_tracked() -> Any:
    """:func:`tracked_platform`, for modules that need a platform set up differently."""
    return tracked_platform


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    ).stdout.strip()


def commit_code(folder: Path, files: dict[str, str]) -> tuple[str, str]:
    """A git repository in ``folder`` with ``files`` committed: (file:// URL, commit)."""
    _git(folder, "init", "--quiet")
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    _git(folder, "add", ".")
    _git(folder, "commit", "--quiet", "-m", "train")
    return f"file://{folder}", _git(folder, "rev-parse", "HEAD")


@pytest.fixture(scope="session")
def git_code() -> Any:
    """:func:`commit_code`: training code in a local git repository, for train.run jobs
    (their platform needs ``allow_file_git``)."""
    return commit_code

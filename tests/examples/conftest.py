"""Fixtures for the example plugin's tests: running the ``zhongtai`` CLI in-process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner, Result

from zhongtai.cli.main import cli

if TYPE_CHECKING:
    from zhongtai.settings import Settings

CliInvoke = Callable[..., Result]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, zt_settings: Settings) -> pytest.MonkeyPatch:
    """Point the CLI at this test's data directory and database; load only ``hello``.

    ``ZHONGTAI_PLUGINS=hello`` because the test suite also installs deliberately broken
    sample plugins (tests/support), which would otherwise load too.
    """
    monkeypatch.setenv("ZHONGTAI_HOME", str(zt_settings.home))
    monkeypatch.setenv("ZHONGTAI_DATABASE_URL", str(zt_settings.database_url))
    monkeypatch.setenv("ZHONGTAI_PLUGINS", "hello")
    # The CLI group caches plugin commands for the life of the process (one process is
    # one invocation in real use); each test must see its own environment's plugins.
    monkeypatch.setattr(cli, "_loaded", None)
    return monkeypatch


@pytest.fixture
def invoke(cli_env: pytest.MonkeyPatch) -> Iterator[CliInvoke]:
    """``invoke("hello", "Ada")`` runs ``zhongtai hello Ada`` and returns click's Result."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str) -> Result:
        # Reset per call: the first call may have been made before the test changed env.
        cli_env.setattr(cli, "_loaded", None)
        return CliRunner().invoke(cli, list(args), prog_name="zhongtai")

    yield run
    # Commands that bootstrap the platform configure logging for a process; put the
    # test process's logging back as it was.
    root.handlers[:] = handlers
    root.setLevel(level)

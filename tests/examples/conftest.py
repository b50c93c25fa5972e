"""Fixtures for the example plugin's tests: callers with a role in a project, and the CLI."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from zhongtai.cli.main import cli

if TYPE_CHECKING:
    from zhongtai.settings import Settings
    from zhongtai.testing import ZtIdentity

CliInvoke = Callable[..., Result]


@dataclasses.dataclass(frozen=True)
class Member:
    """A user holding a role in one project, and the ``Authorization`` header that acts as them."""

    user: Any
    project: Any
    headers: dict[str, str]

    @property
    def project_id(self) -> str:
        return str(self.project.id)


MemberFactory = Callable[..., Member]


@pytest.fixture
def member(zt_identity: ZtIdentity) -> MemberFactory:
    """``member("viewer", project=None, user=None)``: a user with that role in a project.

    Without ``project``, a new project in a new organization; without ``user``, a new
    user. The headers carry a fresh access token of the test's app.
    """

    def make(role: str = "developer", *, project: Any = None, user: Any = None) -> Member:
        user = user if user is not None else zt_identity.user()
        project = project if project is not None else zt_identity.project(zt_identity.org())
        zt_identity.member(user, project, role)
        return Member(user=user, project=project, headers=zt_identity.headers(user))

    return make


@pytest.fixture
def developer(member: MemberFactory) -> Member:
    """A developer of a project of their own: may read and create greetings there."""
    return member("developer")


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

"""Fixtures for the identity API tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from litestar.testing import TestClient

from zhongtai.testing import ZtIdentity


class IdentityApp:
    """A test app with its own identity settings, its client and its identity helper."""

    def __init__(self, app: Any, client: TestClient[Any]) -> None:
        self.app = app
        self.client = client
        self.platform = app.state["platform"]
        self.identity = ZtIdentity(self.platform)


@pytest.fixture
def identity_app(zt_app_factory: Callable[..., Any], zt_settings: Any) -> Callable[..., Any]:
    """``with identity_app(registration="open", login_max_failures=3) as ia:``.

    Builds an app whose ``[identity]`` settings are overridden by the keyword
    arguments; ``ia.client`` talks to it, ``ia.identity`` makes users in its database.
    """

    @contextmanager
    def make(**identity: Any) -> Iterator[IdentityApp]:
        settings = zt_settings.model_copy(
            update={"identity": zt_settings.identity.model_copy(update=identity)}
        )
        app = zt_app_factory(settings=settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield IdentityApp(app, client)

    return make

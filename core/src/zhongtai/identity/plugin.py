"""Identity as a built-in plugin: its routes go in through the same hook as any plugin's.

The core's permissions are declared in :mod:`zhongtai.identity.permissions` and added
to every registry first, so this plugin does not return them again. It also adds
``zhongtai users`` to the command line and, on a server with no user yet, prints the
first-run setup link at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zhongtai
from zhongtai.identity.api import audit, auth, keys, orgs, projects, users

if TYPE_CHECKING:
    import click

    from zhongtai.platform import Platform


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    return [
        *auth.ROUTES,
        *orgs.ROUTES,
        *projects.ROUTES,
        *keys.ROUTES,
        *users.ROUTES,
        *audit.ROUTES,
    ]


@zhongtai.hookimpl
def register_commands() -> list[click.Command]:
    """Add ``zhongtai users create|list``."""
    from zhongtai.identity.cli import users as users_group

    return [users_group]


@zhongtai.hookimpl
def startup(platform: Platform) -> None:
    """Print the setup link when no user exists (one query; a failure is only logged).

    A broken check must not unload identity, which every route relies on.
    """
    import logging

    try:
        auth.announce_setup(platform)
    except Exception:
        logging.getLogger("zhongtai.identity").exception("could not check for a first user")
    try:
        _purge_login_throttle(platform)
    except Exception:
        logging.getLogger("zhongtai.identity").exception("could not purge the login throttle")


@zhongtai.hookimpl
def shutdown(platform: Platform) -> None:
    """Give back the connection the identity cache reads its generation on."""
    from zhongtai.identity.cache import IDENTITY_CACHE

    if IDENTITY_CACHE in platform.stash:
        platform.stash[IDENTITY_CACHE].close()


def _purge_login_throttle(platform: Platform) -> None:
    """Forget failed-login counts whose window and lock are over (one DELETE)."""
    from datetime import timedelta

    from zhongtai.hooks.events import utcnow
    from zhongtai.identity import throttle

    window = timedelta(seconds=platform.settings.identity.login_window)
    with platform.db.transaction() as session:
        throttle.purge(session, now=utcnow(), window=window)

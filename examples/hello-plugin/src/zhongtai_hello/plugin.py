"""The hello plugin's hook implementations: the module the entry point names.

Each hook returns data (a settings model, routes, a folder, commands) and the core
does the wiring; ``startup``, ``shutdown`` and ``on_event`` react and record what
they saw on ``platform.stash``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import zhongtai
from zhongtai.hooks.events import utcnow

# Imported here, not lazily: the core checks the plugin's table names (and Alembic's
# autogenerate sees its models) as soon as this module is loaded.
from zhongtai_hello import models  # noqa: F401
from zhongtai_hello.permissions import PERMISSIONS
from zhongtai_hello.settings import HelloSettings
from zhongtai_hello.state import stats_of

if TYPE_CHECKING:
    import click
    from litestar.types import ControllerRouterHandler

    from zhongtai.hooks.events import Event
    from zhongtai.identity.roles import Permission
    from zhongtai.jobs import JobType
    from zhongtai.platform import Platform
    from zhongtai.ui import Panel

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


@zhongtai.hookimpl
def register_settings() -> type[HelloSettings]:
    """Declare ``ZHONGTAI_HELLO__GREETING`` (validated at start-up)."""
    return HelloSettings


@zhongtai.hookimpl
def register_routes() -> list[ControllerRouterHandler]:
    """Mount the greetings controller and the stats route under ``/api/v1/hello/``."""
    # The spec passes ``platform`` too; an implementation names only what it uses.
    from zhongtai_hello.routes import GreetingController, stats

    return [GreetingController, stats]


@zhongtai.hookimpl
def register_permissions() -> list[Permission]:
    """``hello.greeting.read`` (viewers and up) and ``hello.greeting.write`` (developers)."""
    return PERMISSIONS


@zhongtai.hookimpl
def register_job_types() -> list[JobType]:
    """``hello.echo`` (log a line some number of times) and ``hello.noop``."""
    from zhongtai_hello.jobs import ECHO, NOOP

    return [ECHO, NOOP]


@zhongtai.hookimpl
def register_panels() -> list[Panel]:
    """A greetings page under ``/ui/hello/greetings`` and a dashboard card."""
    from zhongtai_hello.panels import PANELS

    return list(PANELS)


@zhongtai.hookimpl
def register_migrations() -> Path:
    """The ``hello`` Alembic branch (it depends on the core's first revision)."""
    return MIGRATIONS


@zhongtai.hookimpl
def register_commands() -> list[click.Command]:
    """Add ``zhongtai hello NAME [--save]``."""
    from zhongtai_hello.cli import hello

    return [hello]


@zhongtai.hookimpl
async def startup(platform: Platform) -> None:
    """Record when the app started (an ``async`` implementation: the core awaits it)."""
    stats_of(platform).started_at = utcnow()


@zhongtai.hookimpl
def shutdown(platform: Platform) -> None:
    """Record when the app stopped."""
    stats_of(platform).stopped_at = utcnow()


@zhongtai.hookimpl
def on_event(event: Event, platform: Platform) -> None:
    """Count every committed event by name, this plugin's and other plugins' alike."""
    stats_of(platform).count(event.name)

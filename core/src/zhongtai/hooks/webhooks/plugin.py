"""Webhooks as a built-in plugin: routes, the delivery job type, and event fan-out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zhongtai
from zhongtai.hooks.webhooks import models  # noqa: F401 - the tables

if TYPE_CHECKING:
    from zhongtai.hooks.events import Event
    from zhongtai.jobs import JobType
    from zhongtai.platform import Platform


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    from zhongtai.hooks.webhooks.api import ROUTES

    return list(ROUTES)


@zhongtai.hookimpl
def register_job_types() -> list[JobType]:
    from zhongtai.hooks.webhooks.delivery import job_type

    return [job_type()]


@zhongtai.hookimpl
def on_event(event: Event, platform: Platform) -> None:
    """Queue a delivery to every webhook of the event's project that subscribes to it."""
    from zhongtai.hooks.webhooks.delivery import subscribe
    from zhongtai.jobs.engine import JOBS

    if JOBS in platform.stash:  # the engine runs (not a CLI command's platform)
        subscribe(event, platform)

"""Jobs as a built-in plugin: the API, the core's admission policy, and the engine's life.

The engine starts with the app (or ``zhongtai worker``) and stops with it; each
process that serves the API or runs jobs has one (see :mod:`zhongtai.jobs.engine`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zhongtai

if TYPE_CHECKING:
    from zhongtai.jobs.admission import Admission, AdmissionRequest
    from zhongtai.platform import Platform


@zhongtai.hookimpl
def register_routes(platform: Platform) -> list[Any]:
    from zhongtai.jobs.api import ROUTES, submission_routes

    return [*submission_routes(platform.settings.jobs.submissions_per_second), *ROUTES]


@zhongtai.hookimpl
def register_commands() -> list[Any]:
    """``zhongtai worker``: run jobs from Redis (queue driver rq)."""
    from zhongtai.jobs.cli import worker

    return [worker]


@zhongtai.hookimpl
def register_panels() -> list[Any]:
    from zhongtai.jobs.ui import PANELS

    return list(PANELS)


@zhongtai.hookimpl(trylast=True)
def admit_job(request: AdmissionRequest, platform: Platform) -> Admission:
    from zhongtai.jobs.admission import core_policy

    return core_policy(request, platform)


@zhongtai.hookimpl
def startup(platform: Platform) -> None:
    from zhongtai.jobs.engine import JOBS, JobEngine

    engine = JobEngine(platform)
    platform.stash[JOBS] = engine
    engine.start()
    # Where shutdown never ran (a start-up that failed later on), closing the platform
    # still stops the engine's threads before its database goes.
    platform.on_close(lambda: engine.stop(timeout=2.0))


@zhongtai.hookimpl
def shutdown(platform: Platform) -> None:
    from zhongtai.jobs.engine import JOBS

    if JOBS in platform.stash:
        platform.stash[JOBS].stop()

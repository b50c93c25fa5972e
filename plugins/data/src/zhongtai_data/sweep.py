"""``data.sweep``: abort resumable uploads that outlived ``upload_ttl``.

The job schedules its next run itself (``run_at``), so one chain of sweeps runs per
platform; the plugin's start-up queues the first when none is waiting.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from zhongtai.hooks.events import utcnow
from zhongtai.jobs import JobType

if TYPE_CHECKING:
    from zhongtai.jobs import JobContext
    from zhongtai.platform import Platform

__all__ = ["SWEEP", "schedule_sweep"]


class SweepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def run(ctx: JobContext, params: SweepParams) -> dict[str, Any]:
    from zhongtai_data.uploads import sweep

    aborted = sweep(ctx.platform)
    ctx.log(f"aborted {aborted} expired uploads")
    schedule_sweep(ctx.platform, project_id=ctx.project_id)
    return {"aborted": aborted}


def schedule_sweep(platform: Platform, *, project_id: str | None = None) -> None:
    """Queue the next sweep, unless one is already waiting. Jobs belong to a project:
    the sweep uses the first project (it cleans every project's uploads)."""
    from zhongtai.identity.models import Project
    from zhongtai.jobs.engine import JOBS
    from zhongtai.jobs.models import Job

    if JOBS not in platform.stash:
        return
    engine = platform.stash[JOBS]
    job_type = engine.types.get("data.sweep")
    if job_type is None:
        return
    settings = platform.plugin_settings("data")
    interval = getattr(settings, "sweep_interval", 3600)
    with platform.db.transaction() as session:
        waiting = session.scalar(
            select(Job.id)
            .where(Job.type == "data.sweep", Job.status.in_(["scheduled", "queued", "held"]))
            .limit(1)
        )
        if waiting:
            return
        project = project_id or session.scalar(select(Project.id).order_by(Project.id).limit(1))
        if project is None:
            return  # no project yet: nothing can have been uploaded
        job = engine.submit(
            session,
            job_type=job_type,
            project_id=project,
            principal=None,
            params=SweepParams(),
            run_at=utcnow() + timedelta(seconds=interval),
        )
    engine.dispatch([job])


SWEEP = JobType(
    "data.sweep",
    run,
    SweepParams,
    description="Abort resumable uploads that were not completed in time",
    timeout=600,
    queue="default",
)

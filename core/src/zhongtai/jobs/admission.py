"""Admission: whether a job may be queued or started now (the ``admit_job`` hook).

Policy plugins (quotas, GPU limits) implement ``admit_job`` and return an
:class:`Admission`; the first non-None answer wins. The core's own policy runs last:

- ``submit``: more than ``max_pending_per_project`` jobs waiting in the project →
  refuse (429); ``max_running_per_project`` jobs already running or queued → hold.
- ``release``: a held job is queued while running + queued stay under the limit.
- ``start``: a queued job starts while running jobs stay under the limit; otherwise
  it goes back to ``held`` and starts, in priority then submission order, when a
  job of the project finishes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.jobs.models import Job
    from zhongtai.jobs.types import JobType
    from zhongtai.platform import Platform

__all__ = ["Admission", "AdmissionRequest", "Phase"]

Phase = Literal["submit", "release", "start"]


@dataclasses.dataclass(frozen=True)
class Admission:
    """A policy's answer: ``admit``, ``hold`` (wait for capacity) or ``refuse`` (429)."""

    decision: Literal["admit", "hold", "refuse"]
    reason: str = ""

    @classmethod
    def admit(cls) -> Admission:
        return cls("admit")

    @classmethod
    def hold(cls, reason: str) -> Admission:
        return cls("hold", reason)

    @classmethod
    def refuse(cls, reason: str) -> Admission:
        return cls("refuse", reason)


@dataclasses.dataclass(frozen=True)
class AdmissionRequest:
    """What a policy sees: the job (already in the session), its type and the phase.

    ``session`` is the transaction deciding; read from it, never commit it.
    """

    job: Job
    job_type: JobType
    phase: Phase
    session: Session


def core_policy(request: AdmissionRequest, platform: Platform) -> Admission:
    """The core's per-project limits (the jobs built-in plugin calls it last)."""
    from zhongtai.jobs.models import Job, JobStatus

    settings = platform.settings.jobs
    job, session = request.job, request.session

    def count(limit: int, *statuses: JobStatus) -> int:
        """How many such jobs, counting no further than ``limit``: an index range scan
        that stops early, whatever the project's backlog."""
        matching = (
            select(Job.id)
            .where(
                Job.project_id == job.project_id,
                Job.status.in_([str(s) for s in statuses]),
                Job.id != job.id,
            )
            .limit(limit)
            .subquery()
        )
        return int(session.scalar(select(func.count()).select_from(matching)) or 0)

    pending_limit = settings.max_pending_per_project
    running_limit = settings.max_running_per_project
    if request.phase == "submit":
        waiting = count(pending_limit, JobStatus.queued, JobStatus.held, JobStatus.scheduled)
        if waiting >= pending_limit:
            return Admission.refuse(
                f"the project has {waiting} jobs waiting (limit {pending_limit})"
            )
    if request.phase in ("submit", "release"):
        busy = count(running_limit, JobStatus.running, JobStatus.queued)
    else:
        busy = count(running_limit, JobStatus.running)
    if busy >= running_limit:
        return Admission.hold(
            f"the project has {busy} jobs running or about to (limit {running_limit})"
        )
    return Admission.admit()


def decide(platform: Platform, request: AdmissionRequest) -> Admission:
    """Ask the ``admit_job`` hook; no answer at all admits."""
    answer = platform.plugins.hook.admit_job(request=request, platform=platform)
    return answer if isinstance(answer, Admission) else Admission.admit()

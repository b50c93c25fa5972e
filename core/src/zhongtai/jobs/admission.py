"""Admission: whether a job may be queued or started now (the ``admit_job`` hook).

Policy plugins (quotas, GPU limits) implement ``admit_job`` and return an
:class:`Admission`; the first non-None answer wins. The core's own policy runs last:

- ``submit``: more than ``max_pending_per_project`` jobs waiting in the project →
  refuse (429); ``max_running_per_project`` jobs already running or queued → hold.
  Far below a limit, a submission trusts this process's tally of the project instead
  of counting (see :class:`Tally`); near it, it counts.
- ``release``: a held job is queued while running + queued stay under the limit.
- ``start``: a queued job starts while running jobs stay under the limit; otherwise
  it goes back to ``held`` and starts, in priority then submission order, when a
  job of the project finishes.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import bindparam, func, literal, select

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.jobs.models import Job
    from zhongtai.jobs.types import JobType
    from zhongtai.platform import Platform

__all__ = ["Admission", "AdmissionRequest", "Phase", "Tally", "admits_only", "policy_job_types"]

Phase = Literal["submit", "release", "start"]
F = TypeVar("F", bound=Callable[..., Any])
_ADMITS = "zhongtai_admits"  # the attribute admits_only() sets on an implementation


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


def admits_only(*job_types: str) -> Callable[[F], F]:
    """Declare that an ``admit_job`` implementation decides jobs of these types only,
    and returns None for every other job.

    Jobs of other types then start without calling it: on PostgreSQL a worker claims
    such a job and checks the core's running limit in one statement, instead of a
    transaction of its own in which every policy is asked. An implementation without
    the declaration is asked about every job (and every claim takes the long way)::

        @zhongtai.hookimpl
        @admits_only("train.run", "train.evaluate")
        def admit_job(request, platform): ...
    """

    def declare(function: F) -> F:
        setattr(function, _ADMITS, frozenset(job_types))
        return function

    return declare


def policy_job_types(platform: Platform) -> frozenset[str] | None:
    """The job types some plugin's ``admit_job`` may decide (the core's own policy
    aside); None when an implementation does not declare its types (:func:`admits_only`)
    and so may decide any job."""
    from zhongtai.jobs.plugin import admit_job as core_admit_job

    types: set[str] = set()
    for impl in platform.plugins.hook.admit_job.get_hookimpls():
        if impl.function is core_admit_job:
            continue
        declared = getattr(impl.function, _ADMITS, None)
        if declared is None:
            return None
        types.update(declared)
    return frozenset(types)


class Tally:
    """A process's running estimate of a project's waiting and busy jobs at submit time.

    Counting a project's backlog on every submission costs as much as the backlog is
    long. A count is trusted for :attr:`FRESH` seconds, plus one for every job this
    process has submitted since, while that estimate stays under three quarters of
    the limit. Jobs that finished meanwhile only make it high, so it errs towards
    counting; what it cannot see is other processes' submissions within those
    seconds, and they would have to add a quarter of the limit to push a project
    past it. A refusal or a hold is always decided on a fresh count, and the limit on
    running jobs is exact where it matters, when a worker claims a job.
    """

    FRESH = 1.0  # seconds a count is trusted

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}

    def estimate(self, project_id: str, kind: str, limit: int) -> int | None:
        """The estimate (and one more job counted), or None when a count is due."""
        key = (project_id, kind)
        now = time.monotonic()
        with self._lock:
            entry = self._counts.get(key)
            if entry is None or now - entry[1] > self.FRESH or entry[0] * 4 >= limit * 3:
                return None
            self._counts[key] = (entry[0] + 1, entry[1])
            return entry[0]

    def counted(self, project_id: str, kind: str, count: int) -> None:
        """Record a fresh count (including the job being submitted)."""
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts.clear()
            self._counts[(project_id, kind)] = (count + 1, time.monotonic())


@functools.cache
def _count_statement(statuses: tuple[str, ...]) -> Any:
    """``SELECT count(*)`` of a project's jobs in ``statuses`` but one, up to a limit: an
    index range scan that stops early. Built once per set of statuses (in Core): a
    worker counts at every claim."""
    from zhongtai.jobs.models import Job

    jobs = Job.__table__.c
    matching = (
        select(jobs.id)
        .where(
            jobs.project_id == bindparam("project"),
            # The statuses as the statement's own parameters, not one list parameter:
            # an "expanding" list is rendered into the SQL again at every execution.
            jobs.status.in_([literal(status) for status in statuses]),
            jobs.id != bindparam("job"),
        )
        .limit(bindparam("limit"))
        .subquery()
    )
    return select(func.count()).select_from(matching)


# What the core's policy counts at submission (JobStatus values): jobs waiting, and jobs
# running or about to.
_WAITING = ("queued", "held", "scheduled")
_BUSY_OR_ABOUT_TO = ("running", "queued")


def admits_on_tally(tally: Tally, platform: Platform, project_id: str) -> bool:
    """Whether the core's policy admits a submission to ``project_id`` on the tally's
    estimates alone, as :func:`core_policy` would without a count: both fresh and far
    below their limits (each then counts the job). False when either is due a count;
    the caller then takes the way that asks every policy, which counts (an estimate
    taken here may count the job twice meanwhile, which errs towards counting)."""
    settings = platform.settings.jobs
    return (
        tally.estimate(project_id, ",".join(_WAITING), settings.max_pending_per_project) is not None
        and tally.estimate(
            project_id, ",".join(_BUSY_OR_ABOUT_TO), settings.max_running_per_project
        )
        is not None
    )


def core_policy(request: AdmissionRequest, platform: Platform) -> Admission:
    """The core's per-project limits (the jobs built-in plugin calls it last)."""
    from zhongtai.jobs.models import JobStatus

    settings = platform.settings.jobs
    job, session = request.job, request.session
    from zhongtai.jobs.engine import JOBS

    tally = platform.stash[JOBS].tally if JOBS in platform.stash else None

    def count(limit: int, *statuses: str) -> int:
        """How many such jobs, counting no further than ``limit``: an index range scan
        that stops early, whatever the project's backlog. At submission, the tally's
        estimate instead while it is far below the limit."""
        kind = ",".join(statuses)
        if tally is not None and request.phase == "submit":
            estimate = tally.estimate(job.project_id, kind, limit)
            if estimate is not None:
                return estimate
        statement = _count_statement(tuple(str(s) for s in statuses))
        found = int(
            session.scalar(statement, {"project": job.project_id, "job": job.id, "limit": limit})
            or 0
        )
        if tally is not None and request.phase == "submit":
            tally.counted(job.project_id, kind, found)
        return found

    pending_limit = settings.max_pending_per_project
    running_limit = settings.max_running_per_project
    if request.phase == "submit":
        waiting = count(pending_limit, *_WAITING)
        if waiting >= pending_limit:
            return Admission.refuse(
                f"the project has {waiting} jobs waiting (limit {pending_limit})"
            )
    if request.phase in ("submit", "release"):
        busy = count(running_limit, *_BUSY_OR_ABOUT_TO)
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

"""The work engine: submit, dispatch, run, finish, cancel, retry and reconcile jobs.

The ``jobs`` table is the source of truth. Every change of state is a conditional
``UPDATE`` in the database ("from running, attempt 3, on this worker, to
succeeded"), so two workers handed the same job, a reconciler and a late finisher
can never both win; the queue driver only carries job ids to workers. Delivery is
therefore **at least once**: a job whose worker dies is run again (if it has retries
left), so handlers must be idempotent (docs/jobs.md).

One engine lives in each process that serves the API or runs jobs (stashed on the
platform by the ``jobs`` built-in plugin). Its maintenance thread flushes live logs,
promotes due scheduled jobs, beats the heart of the jobs running here (and picks up
cancellations made elsewhere), and runs the reconciler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    Integer,
    Table,
    Text,
    bindparam,
    column,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, configure_mappers, make_transient_to_detached

from zhongtai.hooks.events import Event, emit, utcnow
from zhongtai.identity.models import AuditEvent
from zhongtai.jobs.admission import AdmissionRequest, Tally, decide
from zhongtai.jobs.context import FLUSH_SECONDS, JobCancelled, JobContext
from zhongtai.jobs.hub import LogHub
from zhongtai.jobs.models import FINISHED, Job, JobLog, JobStatus
from zhongtai.jobs.types import MAX_RESUMES
from zhongtai.metadata.ids import new_id
from zhongtai.platform import StashKey

if TYPE_CHECKING:
    from pydantic import BaseModel

    from zhongtai.identity.principal import Principal
    from zhongtai.jobs.queue.base import QueueDriver
    from zhongtai.jobs.types import JobType
    from zhongtai.platform import Platform

__all__ = [
    "JOBS",
    "JobConflict",
    "JobEngine",
    "JobFinished",
    "JobRefused",
    "JobStarted",
    "JobSubmitted",
    "jobs_engine",
]

log = logging.getLogger("zhongtai.jobs")

CANCEL_GRACE = 5.0  # seconds a cancelled or timed-out handler gets to stop
FINISH_PATIENCE = 120.0  # seconds a worker keeps trying to record an outcome
# A queued job younger than this may be on its way to the queue right now (committed,
# not yet dispatched); the reconciler leaves it alone.
QUEUED_GRACE = timedelta(seconds=2)


class JobRefused(Exception):
    """Admission refused the job (answered 429)."""


class JobConflict(Exception):
    """The job is not in a state that allows this (answered 409)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSubmitted(Event):
    name: ClassVar[str] = "job.submitted"
    job_id: str
    job_type: str
    status: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobStarted(Event):
    name: ClassVar[str] = "job.started"
    job_id: str
    job_type: str
    attempt: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobFinished(Event):
    """``job.succeeded``, ``job.failed`` or ``job.cancelled`` (see :meth:`named`)."""

    name: ClassVar[str] = "job.finished"
    job_id: str
    job_type: str
    status: str
    error: str | None = None

    @staticmethod
    def named(status: str, **fields: Any) -> JobFinished:
        cls = {"succeeded": JobSucceeded, "failed": JobFailed, "cancelled": JobCancelledEvent}
        return cls[status](status=status, **fields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSucceeded(JobFinished):
    name: ClassVar[str] = "job.succeeded"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobFailed(JobFinished):
    name: ClassVar[str] = "job.failed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobCancelledEvent(JobFinished):
    name: ClassVar[str] = "job.cancelled"


@dataclasses.dataclass
class _Running:
    """A job running in this process."""

    job_id: str
    attempt: int
    cancel: threading.Event
    context: JobContext


class JobEngine:
    """Submits and runs jobs for one process; see the module docstring."""

    def __init__(self, platform: Platform) -> None:
        from zhongtai.drivers import load_driver

        self.platform = platform
        self.settings = platform.settings.jobs
        self.types = platform.job_types
        self.hub = LogHub()
        self.tally = Tally()  # the core admission policy's estimates (see Tally)
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        # SQLite has one writer at a time: transitions of this process go one by one
        # (PostgreSQL uses a per-project advisory lock instead, across processes).
        self._transition_lock = threading.RLock()
        self._running: dict[str, _Running] = {}
        self._running_lock = threading.Lock()
        self._handlers = _HandlerThreads()
        self._stop = threading.Event()
        self._wake = threading.Event()  # cuts the maintenance thread's sleep short
        self._look_for_due = False  # …and has it look for due scheduled jobs (wake())
        self._flushing = False  # the maintenance thread wakes every FLUSH_SECONDS now
        self._maintenance: threading.Thread | None = None
        self._at_once_types: list[str] | None = None  # see _types_claimed_at_once()
        driver_cls = load_driver("zhongtai.queue", self.settings.queue)
        self.driver: QueueDriver = driver_cls(self)

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Reconcile once, start the driver's workers and the maintenance thread."""
        self._stop.clear()
        self._wake.clear()
        try:
            self.reconcile(startup=True)
        except Exception:
            log.exception("the start-up reconciliation failed; it runs again periodically")
        self.driver.start()
        self._maintenance = threading.Thread(
            target=self._maintain, name="zt-jobs-maintenance", daemon=True
        )
        self._maintenance.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones get ``timeout`` seconds, then are left to the
        reconciler of the next start (retried or failed with the reason). Stopping a
        stopped engine does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self.driver.stop(timeout)
        if self._maintenance is not None:
            self._maintenance.join(timeout)
        for running in self._snapshot_running():
            running.context.flush()

    # -- submitting ------------------------------------------------------------

    def submit(
        self,
        session: Session,
        *,
        job_type: JobType,
        project_id: str,
        principal: Principal | None,
        params: BaseModel,
        priority: int | None = None,
        run_at: datetime | None = None,
        parent_id: str | None = None,
    ) -> Job:
        """Add a job in the caller's transaction; :meth:`dispatch` it after the commit.

        Raises:
            InvalidParams: the job type's ``check`` refused the parameters.
            JobRefused: admission refused it (the transaction should roll back).
        """
        if job_type.check is not None:
            job_type.check(self.platform, session, project_id, params)
        values = self._new_row(job_type, project_id, principal, params, priority, run_at, parent_id)
        # The row goes in as one prebuilt Core INSERT, on the driver (the ORM's unit of
        # work for it, then SQLAlchemy's execution of it, were each a fifth of the API's
        # CPU per submitted job); the caller still gets a Job of its session, loaded as
        # if just read, whose later changes its flush writes.
        session.flush()  # what the caller added first (a row the job may refer to)
        self.platform.db.on_driver(session).first(_INSERT, values)
        job = Job(**values)
        make_transient_to_detached(job)
        session.add(job)
        # No project lock here: concurrent submissions may each see the count below the
        # limit and queue a few jobs too many; the limit on running jobs is exact where
        # it matters, when a worker claims a job (under the lock).
        decision = decide(self.platform, AdmissionRequest(job, job_type, "submit", session))
        if decision.decision == "refuse":
            raise JobRefused(decision.reason or "admission refused the job")
        if decision.decision == "hold" and job.run_at is None:
            job.status = str(JobStatus.held)
            job.progress_message = decision.reason[:500]
        emit(
            session,
            JobSubmitted(project=project_id, job_id=job.id, job_type=job.type, status=job.status),
        )
        return job

    def submit_at_once(
        self,
        session: Session,
        *,
        job_type: JobType,
        project_id: str,
        principal: Principal | None,
        params: BaseModel,
        priority: int | None = None,
        run_at: datetime | None = None,
        audit: dict[str, Any] | None = None,
    ) -> Job | None:
        """The common submission as one ``INSERT`` that commits by itself, in
        ``session`` (from :meth:`Database.autocommit`): no ``BEGIN`` and ``COMMIT``
        round trips, and no transaction of the ORM's, around the one write a plain
        submission makes. Only where nothing else could be decided or written with
        it: the type has no ``check`` and no plugin's admission policy, and the core's
        policy admits it on its tally alone (:func:`~zhongtai.jobs.admission.
        admits_on_tally`). Otherwise None, and nothing is written: the caller then
        uses :meth:`submit` in a transaction. The job is returned (not in the
        session); :meth:`dispatch` it.

        ``audit``: the request's audit row (:meth:`~zhongtai.identity.guard.Access.
        audit_row`), on PostgreSQL only (:attr:`audits_at_once`), written in the same
        statement with the job's id as its target: both rows commit, or neither.
        """
        from zhongtai.jobs.admission import admits_on_tally

        if job_type.check is not None or not self._undecided_by_policies(job_type):
            return None
        if not admits_on_tally(self.tally, self.platform, project_id):
            return None
        values = self._new_row(job_type, project_id, principal, params, priority, run_at, None)
        statements = self.platform.db.on_driver(session)
        if audit is None:
            statements.first(_INSERT, values)
        else:
            assert self.audits_at_once, "an audit row goes in with a job on PostgreSQL only"
            row = {**audit, "target_id": values["id"]}
            statements.first(_INSERT_AUDITED, {**values, **_audit_params(row)})
        job = _job_of(values)
        statements.emit(
            JobSubmitted(project=project_id, job_id=job.id, job_type=job.type, status=job.status)
        )
        return job

    @property
    def audits_at_once(self) -> bool:
        """Whether :meth:`submit_at_once` takes an audit row: on PostgreSQL, where one
        statement inserts both (SQLite has no ``INSERT`` in a ``WITH``)."""
        return not self.platform.db.is_embedded

    def _undecided_by_policies(self, job_type: JobType) -> bool:
        """Whether no plugin's ``admit_job`` decides jobs of this type (the core's
        own policy aside; see :func:`~zhongtai.jobs.admission.admits_only`)."""
        guarded = self._policy_types
        return guarded is not None and job_type.name not in guarded

    @functools.cached_property
    def _policy_types(self) -> frozenset[str] | None:
        """What :func:`~zhongtai.jobs.admission.policy_job_types` says, asked once: the
        plugins are loaded when the engine starts."""
        from zhongtai.jobs.admission import policy_job_types

        return policy_job_types(self.platform)

    def _new_row(
        self,
        job_type: JobType,
        project_id: str,
        principal: Principal | None,
        params: BaseModel,
        priority: int | None,
        run_at: datetime | None,
        parent_id: str | None,
    ) -> dict[str, Any]:
        """A new job's row, as :data:`_INSERT` takes it."""
        now = utcnow()
        run_at = run_at if run_at is not None and run_at > now else None
        return {
            "id": new_id(),
            "type": job_type.name,
            "project_id": project_id,
            "owner_id": principal.user_id if principal else None,
            "api_key_id": principal.api_key_id if principal else None,
            "parent_id": parent_id,
            "params": params.model_dump(mode="json"),
            "status": str(JobStatus.queued if run_at is None else JobStatus.scheduled),
            "queue": job_type.queue,
            "priority": job_type.priority if priority is None else priority,
            "attempts": 0,
            "max_attempts": 1 + job_type.retries,
            "interruptions": 0,
            "timeout": job_type.timeout,
            "progress": None,
            "progress_message": "",
            "result": None,
            "error": None,
            "worker": None,
            "cancel_requested": False,
            "log_lines": 0,
            "run_at": run_at,
            "created_at": now,
            "started_at": None,
            "heartbeat_at": None,
            "finished_at": None,
        }

    def dispatch(self, jobs: Sequence[Job]) -> None:
        """Hand committed queued jobs to the queue (a failure is left to the reconciler);
        for scheduled ones, wake the maintenance thread so that it learns when they are due."""
        for job in jobs:
            if job.status == JobStatus.scheduled:
                self.wake()
            if job.status != JobStatus.queued:
                continue
            try:
                self.driver.dispatch(job.id, job.queue, job.priority, job.timeout)
            except Exception as exc:
                log.warning(
                    "job %s could not be dispatched now (%s); the reconciler will", job.id, exc
                )

    # -- cancel and retry ------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Cancel a job: at once if it waits; a running one is asked to stop.

        Raises:
            JobConflict: the job already finished.
        """
        released_project = None
        with self._transition(), self.platform.db.transaction() as session:
            job = self._locked_job(session, job_id)
            if job is None:
                raise LookupError(job_id)
            if job.status in FINISHED:
                raise JobConflict(f"the job already {job.status}")
            if job.status == JobStatus.running:
                job.cancel_requested = True
                running = True
            else:
                running = False
                job.status = str(JobStatus.cancelled)
                job.finished_at = utcnow()
                job.error = "cancelled before it started"
                released_project = job.project_id
                emit(session, self._finished_event(job))
        if running:
            self.signal_cancel(job_id)
            self.driver.cancel_running(job_id)
        else:
            self.hub.publish(job_id, {"kind": "status", "status": "cancelled"})
        if released_project:
            self.release_held(released_project)

    def retry(self, job_id: str) -> None:
        """Queue a failed or cancelled job again, with its type's retries afresh.

        Raises:
            JobConflict: the job is not failed or cancelled.
        """
        with self._transition(), self.platform.db.transaction() as session:
            job = self._locked_job(session, job_id)
            if job is None:
                raise LookupError(job_id)
            if job.status not in (JobStatus.failed, JobStatus.cancelled):
                raise JobConflict(
                    f"only failed or cancelled jobs can be retried; this one is {job.status}"
                )
            job_type = self.types.get(job.type)
            if job_type is None:
                raise JobConflict(f"job type {job.type} is not installed")
            job.status = str(JobStatus.queued)
            job.max_attempts = job.attempts + 1 + job_type.retries
            job.cancel_requested = False
            job.finished_at = None
            job.result = None
            job.error = None
            job.progress = None
            job.progress_message = ""
            job.run_at = None
            session.flush()
            with self._project_lock(session, job.project_id):
                decision = decide(
                    self.platform, AdmissionRequest(job, job_type, "release", session)
                )
            if decision.decision != "admit":
                job.status = str(JobStatus.held)
                job.progress_message = decision.reason[:500]
        self.hub.publish(job_id, {"kind": "status", "status": job.status})
        self.dispatch([job])

    # -- running -----------------------------------------------------------------

    def run(self, job_id: str, worker: str) -> str | None:
        """Claim and run ``job_id`` here; return its final status, or None if skipped."""
        claimed = self._claim(job_id, worker)
        if claimed is None:
            return None
        job_type, job, params = claimed
        cancel = threading.Event()
        if job.cancel_requested:
            cancel.set()
        context = JobContext(
            self,
            job_id=job.id,
            job_type=job.type,
            project_id=job.project_id,
            owner_id=job.owner_id,
            attempt=job.attempts,
            params=params,
            first_seq=job.log_lines,
            cancel_event=cancel,
        )
        running = _Running(job.id, job.attempts, cancel, context)
        with self._running_lock:
            self._running[job.id] = running
        if not self._flushing:
            self._wake.set()  # its log lines are flushed from now on
        self.hub.publish(job.id, {"kind": "status", "status": "running", "attempt": job.attempts})
        try:
            status, result, error = self._execute(job_type, job, context, cancel)
        finally:
            with self._running_lock:
                self._running.pop(job.id, None)
        return self._finish(job_type, job, worker, status, result, error, context)

    def _claim(self, job_id: str, worker: str) -> tuple[JobType, Job, BaseModel] | None:
        """Claim ``job_id`` for ``worker``: its type, its row as claimed and its
        parameters, or None when it does not run here now (taken, cancelled, held,
        failed for a reason it records)."""
        types = self._types_claimed_at_once()
        if types:
            claimed = self._claim_at_once(job_id, worker, types)
            if claimed is not None:
                return claimed
        return self._claim_in_transaction(job_id, worker)

    def _types_claimed_at_once(self) -> list[str]:
        """The installed job types that :meth:`_claim_at_once` may claim: on PostgreSQL,
        those no plugin's admission policy decides (:func:`~zhongtai.jobs.admission.
        admits_only`), whose start the core's running limit alone decides."""
        if self._at_once_types is None:
            self._at_once_types = (
                []
                if self.platform.db.is_embedded
                else sorted(t.name for t in self.types if self._undecided_by_policies(t))
            )
        return self._at_once_types

    def _claim_at_once(
        self, job_id: str, worker: str, types: list[str]
    ) -> tuple[JobType, Job, BaseModel] | None:
        """The common claim in one statement (``zt_claim_job``, migrations 0008 and 0009): the
        row, the project's lock and the count of its running jobs under that lock, all
        in the function, committed by itself. No row back: anything but a plain start
        (not queued, the project at its limit), which the caller decides the long way."""
        with self.platform.db.driver_autocommit(kept=True) as statements:
            row = statements.first(
                _CLAIM_AT_ONCE,
                {
                    "c_id": job_id,
                    "c_worker": worker,
                    "c_now": utcnow(),
                    "c_limit": self.settings.max_running_per_project,
                    "c_types": types,
                },
            )
            if row is None:
                return None
            job = _job_of(zip(_COLUMNS, row, strict=True))
            job_type = self.types.get(job.type)
            assert job_type is not None  # the function claims the types named only
            params, failure = _params_of(job_type, job)
            if params is not None:
                statements.emit(_started_event(job))
                return job_type, job, params
        # Rare: the claim is committed, so this attempt is failed in a transaction of
        # its own, as the long way fails it (no attempt counted, no worker recorded).
        with self.platform.db.transaction() as session:
            if session.execute(_LOCK_ATTEMPT, _attempt(job, worker)).first() is not None:
                self._fail_now(session, job, failure)
        return None

    def _claim_in_transaction(
        self, job_id: str, worker: str
    ) -> tuple[JobType, Job, BaseModel] | None:
        """The claim with every policy asked, in one transaction under the project's
        lock: on SQLite, for types a plugin's policy decides, and where the project is
        at its limit."""

        now = utcnow()
        embedded = self.platform.db.is_embedded
        with self._transition(), self.platform.db.transaction(kept=True) as session:
            # Claimed in one statement (the row lock decides between two workers), which
            # on PostgreSQL also takes the project's lock; if admission says no, the same
            # transaction puts the job back, unseen. Run on the session's connection: the
            # session's own execute() adds the ORM's bookkeeping to a Core statement.
            connection = session.connection()
            row = connection.execute(
                _CLAIM if embedded else _CLAIM_LOCKING,
                {"claim_id": job_id, "claim_worker": worker, "claim_now": now},
            ).one_or_none()
            if row is None:
                return None  # cancelled, already taken, or a duplicate dispatch
            # The claimed row as a detached Job (the statement is Core: see _CLAIM).
            job = _job_of(zip(_COLUMNS, row, strict=False))
            job_type = self.types.get(job.type)
            if job_type is None:
                self._fail_now(session, job, f"job type {job.type} is not installed on {worker}")
                return None
            params, failure = _params_of(job_type, job)
            if params is None:
                self._fail_now(session, job, failure)
                return None
            # Under the project's lock: the claim took it (_CLAIM_LOCKING).
            decision = decide(self.platform, AdmissionRequest(job, job_type, "start", session))
            if decision.decision != "admit":
                held = self._claimed(session, job)
                held.status = str(JobStatus.held)
                held.progress_message = decision.reason[:500]
                self._unclaim(held)
                return None
            emit(session, _started_event(job))
        return job_type, job, params

    @staticmethod
    def _claimed(session: Session, job: Job) -> Job:
        """The session's own copy of a job claimed in it, to change (rare paths only)."""
        found = session.get(Job, job.id)
        assert found is not None  # the claim holds its row lock
        return found

    @staticmethod
    def _unclaim(job: Job) -> None:
        """Undo the claim's changes (but the status) on a job that does not run."""
        job.attempts -= 1
        job.worker = None
        job.started_at = None
        job.heartbeat_at = None

    def _execute(
        self, job_type: JobType, job: Job, context: JobContext, cancel: threading.Event
    ) -> tuple[str, Any, str | None]:
        """Run the handler in its own thread, watching its timeout and cancellation."""
        outcome: dict[str, Any] = {}
        done = threading.Event()
        task_box: dict[str, Any] = {}

        def target() -> None:
            try:
                if job_type.is_async:
                    outcome["result"] = asyncio.run(_run_async(job_type, context, task_box))
                else:
                    outcome["result"] = job_type.handler(context, context.params)
            except BaseException as exc:  # reported below, never lost
                outcome["error"] = exc
            finally:
                done.set()

        self._handlers.run(target)
        deadline = time.monotonic() + job.timeout
        timed_out = False
        grace_end: float | None = None
        while not done.wait(0.1):
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out = True
                cancel.set()
            if cancel.is_set() and grace_end is None:
                grace_end = now + CANCEL_GRACE
                _cancel_task(task_box)
            if grace_end is not None and now >= grace_end:
                break
        stopped = done.is_set()
        abandoned = (
            ""
            if stopped
            else f" (the handler did not stop within {CANCEL_GRACE:g} s and was abandoned)"
        )
        if timed_out:
            context.log(
                f"[zhongtai] attempt {job.attempts} timed out after {job.timeout} s{abandoned}"
            )
            return str(JobStatus.failed), None, f"timed out after {job.timeout} s{abandoned}"
        error = outcome.get("error")
        if cancel.is_set() and (not stopped or error is not None):
            # Asked to stop, and it stopped by raising (or not at all): cancelled. One
            # that returned normally finished its work anyway and counts as such.
            context.log(f"[zhongtai] cancelled{abandoned}")
            return str(JobStatus.cancelled), None, f"cancelled while running{abandoned}"
        if error is not None:
            if isinstance(error, JobCancelled):
                return str(JobStatus.cancelled), None, "cancelled while running"
            lines = traceback.format_exception(error)
            context.log("".join(lines).rstrip())
            summary = f"{type(error).__name__}: {error}".strip()
            return str(JobStatus.failed), None, summary[:2000]
        result = outcome.get("result")
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            return str(JobStatus.failed), None, f"the handler's result is not JSON: {exc}"
        return str(JobStatus.succeeded), result, None

    def _finish(
        self,
        job_type: JobType,
        job: Job,
        worker: str,
        status: str,
        result: Any,
        error: str | None,
        context: JobContext,
    ) -> str | None:
        """Write the last log lines and record the attempt's outcome, retrying while the
        database is unreachable.

        Giving up (after :data:`FINISH_PATIENCE` seconds, or at once on an integrity
        error, which no retry can mend) leaves the job ``running`` without heartbeats:
        the reconciler then runs it again, which at-least-once delivery allows; a
        recorded outcome is always preferred. Log lines that collide with stored ones
        are dropped rather than allowed to stop the outcome (:meth:`JobContext.flush`).
        """
        from sqlalchemy.exc import DBAPIError, IntegrityError

        delay, deadline = 0.2, time.monotonic() + FINISH_PATIENCE
        while True:
            try:
                context.flush()
                return self._settle(job_type, job, worker, status, result, error)
            except IntegrityError as exc:
                # A fault, not an outage: trying again cannot succeed. The job is left to
                # the reconciler, as when the database stays away.
                log.error("job %s: outcome %s not recorded: %s", job.id, status, exc.orig)
                return None
            except DBAPIError as exc:
                if time.monotonic() >= deadline:
                    log.error("job %s: outcome %s not recorded: %s", job.id, status, exc)
                    return None
                log.warning(
                    "job %s: the database is unavailable; recording %s again in %.1f s",
                    job.id,
                    status,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _settle(
        self,
        job_type: JobType,
        job: Job,
        worker: str,
        status: str,
        result: Any,
        error: str | None,
    ) -> str | None:
        now = utcnow()
        retry_in: float | None = None
        if status == JobStatus.failed and job.attempts < job.max_attempts:
            retry_in = job_type.retry_delay(job.attempts)
        line = None
        with self._transition():
            if retry_in is None:
                settled = self._record_outcome(job, worker, status, result, error, now)
            else:
                settled, line = self._schedule_retry(job, worker, error, now, retry_in)
        if settled is None:
            log.warning(
                "job %s attempt %s was settled elsewhere; %s dropped",
                job.id,
                job.attempts,
                status,
            )
            return None
        final = str(JobStatus.scheduled) if retry_in is not None else status
        if line is not None:
            self.hub.publish(job.id, line)
            self.wake()  # the retry is queued when its backoff is over
        self.hub.publish(job.id, {"kind": "status", "status": final, "error": error})
        if settled[0]:
            self.release_held(job.project_id)
        return final

    def _record_outcome(
        self, job: Job, worker: str, status: str, result: Any, error: str | None, now: datetime
    ) -> tuple[Any, ...] | None:
        """The attempt's final outcome: one statement, committed by itself and run on the
        driver (this runs for every job), with its ``job.<status>`` event; the
        statement's row (whether the project has held jobs), or None if the attempt
        was settled elsewhere."""
        succeeded = status == JobStatus.succeeded
        with self.platform.db.driver_autocommit(kept=True) as statements:
            settled = statements.first(
                _SUCCEEDED if succeeded else _ENDED,
                {
                    **_attempt(job, worker),
                    "o_now": now,
                    **({"o_result": result} if succeeded else {}),
                    **({} if succeeded else {"o_status": status, "o_error": error}),
                },
            )
            if settled is not None:
                statements.emit(
                    JobFinished.named(
                        status,
                        project=job.project_id,
                        job_id=job.id,
                        job_type=job.type,
                        error=error,
                    )
                )
        return settled

    def _schedule_retry(
        self, job: Job, worker: str, error: str | None, now: datetime, retry_in: float
    ) -> tuple[Any, dict[str, Any] | None]:
        """Schedule the next attempt of a failed one, with the log line that explains it,
        in one transaction: once it commits, any process may queue the retry, and the
        next attempt's lines number on from the count it then reads."""
        with self.platform.db.transaction() as session:
            settled = session.execute(
                update(_JOBS)
                .where(*_THIS_ATTEMPT)
                .values(
                    status=str(JobStatus.scheduled),
                    run_at=now + timedelta(seconds=retry_in),
                    error=error,
                    worker=None,
                    heartbeat_at=None,
                )
                .returning(_HELD),
                _attempt(job, worker),
            ).first()
            if settled is None:
                return None, None
            line = self._append_line(
                session,
                job.id,
                job.attempts,
                f"[zhongtai] attempt {job.attempts} failed: {error}; retrying in {retry_in:g} s",
            )
        return settled, line

    # -- held jobs -------------------------------------------------------------

    def release_held(self, project_id: str) -> None:
        """Queue the project's held jobs, best first, while admission admits them."""
        released: list[Job] = []
        with self._transition(), self.platform.db.transaction() as session:
            held = list(
                session.scalars(
                    select(Job)
                    .where(Job.project_id == project_id, Job.status == str(JobStatus.held))
                    .order_by(Job.priority.desc(), Job.id)
                    .limit(100)
                )
            )
            if not held:
                return
            with self._project_lock(session, project_id):
                for job in held:
                    job_type = self.types.get(job.type)
                    if job_type is None:
                        continue
                    decision = decide(
                        self.platform, AdmissionRequest(job, job_type, "release", session)
                    )
                    if decision.decision != "admit":
                        job.progress_message = decision.reason[:500]
                        break
                    job.status = str(JobStatus.queued)
                    job.progress_message = ""
                    session.flush()
                    released.append(job)
        self.dispatch(released)

    # -- maintenance -----------------------------------------------------------

    def wake(self) -> None:
        """Have the maintenance thread look for due jobs now: one was scheduled here (its
        ``run_at`` is then met on time, not at the next poll)."""
        self._look_for_due = True
        self._wake.set()

    def _maintain(self) -> None:
        """Flush live logs, promote due jobs, beat, reconcile; sleep in between.

        While jobs run here it wakes every :data:`~zhongtai.jobs.context.FLUSH_SECONDS`
        (their buffered log lines and progress). It looks for due scheduled jobs (a
        database read) when the next one it knows of is due, every ``poll_interval``
        (jobs other processes scheduled) and when :meth:`wake` asks, not at every
        wake-up: under load a job starts here every few milliseconds. Idle, it sleeps
        until the next of those or the next reconciliation, so an idle server wakes
        rarely.
        """
        next_beat = next_reconcile = next_poll = 0.0
        due_at: float | None = None  # monotonic time the next known scheduled job is due
        self._look_for_due = True
        while not self._stop.is_set():
            now = time.monotonic()
            running = self._snapshot_running()
            self._flushing = bool(running)
            asked, self._look_for_due = self._look_for_due, False
            try:
                for item in running:
                    item.context.flush()
                if asked or now >= next_poll or (due_at is not None and now >= due_at):
                    upcoming = self.promote_due()
                    now = time.monotonic()
                    next_poll = now + self.settings.poll_interval
                    due_at = None if upcoming is None else now + upcoming
                if now >= next_beat:
                    next_beat = now + self.settings.heartbeat_interval
                    self.heartbeat()
                if now >= next_reconcile:
                    every = self.settings.reconcile_interval
                    next_reconcile = now + every
                    # Once per interval among all the processes sharing the queue.
                    if self.driver.take_turn("reconcile", every):
                        self.reconcile()
            except Exception:
                log.exception("jobs maintenance failed; trying again")
                next_poll = time.monotonic() + self.settings.poll_interval
                self._look_for_due = self._look_for_due or asked
            wake_at = min(next_poll, next_reconcile, math.inf if due_at is None else due_at)
            if running:
                wake_at = min(wake_at, now + FLUSH_SECONDS)
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()

    def promote_due(self) -> float | None:
        """Queue scheduled jobs whose time has come.

        Returns in how many seconds the next scheduled job is due (0: some are due
        already, beyond the 500 queued at a time), or None when none is scheduled.
        """
        # Mostly nothing is due: one indexed read, outside any transaction, says so.
        with self.platform.db.engine.connect() as connection:
            upcoming = connection.execute(_NEXT_DUE).scalar()
        now = utcnow()
        if upcoming is None or upcoming > now:
            return None if upcoming is None else (upcoming - now).total_seconds()
        with self._transition(), self.platform.db.transaction() as session:
            due = list(
                session.scalars(
                    select(Job)
                    .where(Job.status == str(JobStatus.scheduled), Job.run_at <= now)
                    .order_by(Job.run_at)
                    .limit(500)
                )
            )
            for job in due:
                job.status = str(JobStatus.queued)
                job.run_at = None
            session.flush()
            upcoming = session.scalar(_NEXT_DUE)
        self.dispatch(due)
        if upcoming is None:
            return None
        return max(0.0, (upcoming - now).total_seconds())

    def heartbeat(self) -> None:
        """Mark the jobs running here alive; pick up cancellations made elsewhere."""
        running = self._snapshot_running()
        if not running:
            return
        ids = [r.job_id for r in running]
        with self.platform.db.engine.begin() as connection:
            connection.execute(
                update(Job)
                .where(Job.id.in_(ids), Job.status == str(JobStatus.running))
                .values(heartbeat_at=utcnow())
            )
            cancelled = set(
                connection.scalars(select(Job.id).where(Job.id.in_(ids), Job.cancel_requested))
            )
        for item in running:
            if item.job_id in cancelled:
                item.cancel.set()

    def reconcile(self, *, startup: bool = False) -> dict[str, int]:
        """Repair what a crash or an outage left: returns counts of what it did.

        - ``running`` jobs whose worker stopped beating (``stale_after``), or that
          this host's previous server process was running (on a start-up of the
          embedded queue), are retried or failed with the reason;
        - ``queued`` jobs the queue does not hold are dispatched again;
        - ``held`` jobs are offered to admission again.
        """
        now = utcnow()
        stale_before = now - timedelta(seconds=self.settings.stale_after)
        counts = {"abandoned": 0, "redispatched": 0}
        with self.platform.db.transaction() as session:
            stuck = list(
                session.scalars(
                    select(Job).where(
                        Job.status == str(JobStatus.running),
                        func.coalesce(Job.heartbeat_at, Job.started_at) < stale_before,
                    )
                )
            )
            if startup and self.driver.runs_in_process:
                prefix = f"{self.driver.name}:{socket.gethostname()}:"
                mine = f"{self.driver.name}:{self.node}:"
                stuck += list(
                    session.scalars(
                        select(Job).where(
                            Job.status == str(JobStatus.running),
                            Job.worker.startswith(prefix, autoescape=True),
                            ~Job.worker.startswith(mine, autoescape=True),
                        )
                    )
                )
            session.expunge_all()
        seen: set[str] = set()
        for job in stuck:
            if job.id in seen:
                continue
            seen.add(job.id)
            last = job.heartbeat_at or job.started_at
            if (
                job.worker
                and job.worker.startswith(f"{self.driver.name}:{socket.gethostname()}:")
                and startup
            ):
                reason = f"interrupted: the server running it ({job.worker}) stopped"
            else:
                beat = last.isoformat() if last else "never"
                reason = (
                    f"abandoned: worker {job.worker} stopped responding (last heartbeat {beat})"
                )
            if self._abandon(job, reason):
                counts["abandoned"] += 1
        with self.platform.db.transaction() as session:
            queued = list(
                session.execute(
                    select(Job.id, Job.queue, Job.priority, Job.timeout, Job.created_at).where(
                        Job.status == str(JobStatus.queued)
                    )
                )
            )
            projects = set(
                session.scalars(
                    select(Job.project_id).where(Job.status == str(JobStatus.held)).distinct()
                )
            )
        candidates = [row for row in queued if startup or row.created_at < now - QUEUED_GRACE]
        if candidates:
            missing = self.driver.missing([row.id for row in candidates])
            for row in candidates:
                if row.id in missing:
                    try:
                        self.driver.dispatch(row.id, row.queue, row.priority, row.timeout)
                        counts["redispatched"] += 1
                    except Exception as exc:
                        log.warning("reconcile: job %s not dispatched: %s", row.id, exc)
        for project_id in projects:
            self.release_held(project_id)
        if any(counts.values()):
            log.info("jobs reconciled: %s", counts)
        return counts

    def _abandon(self, job: Job, reason: str) -> bool:
        """Settle a running attempt whose worker is gone: resume it (a type with
        ``resume_interrupted``: at once, without spending a retry), retry it, or fail it."""
        job_type = self.types.get(job.type)
        now = utcnow()
        resume = (
            job_type is not None and job_type.resume_interrupted and job.interruptions < MAX_RESUMES
        )
        retry = job_type is not None and (resume or job.attempts < job.max_attempts)
        with self._transition(), self.platform.db.transaction() as session:
            values: dict[str, Any] = {"error": reason, "worker": None, "heartbeat_at": None}
            if resume:
                values.update(
                    status=str(JobStatus.scheduled),
                    run_at=now,
                    interruptions=job.interruptions + 1,
                    max_attempts=job.max_attempts + 1,
                )
            elif retry:
                assert job_type is not None
                values.update(
                    status=str(JobStatus.scheduled),
                    run_at=now + timedelta(seconds=job_type.retry_delay(job.attempts)),
                )
            else:
                values.update(status=str(JobStatus.failed), finished_at=now)
            changed = session.execute(
                update(_JOBS).where(*_THIS_ATTEMPT).values(**values), _attempt(job, job.worker)
            ).rowcount  # type: ignore[attr-defined]
            what = "resuming" if resume else "retrying" if retry else "failed"
            line = (
                self._append_line(
                    session,
                    job.id,
                    job.attempts,
                    f"[zhongtai] attempt {job.attempts} {reason}; {what}",
                )
                if changed
                else None
            )
            if changed and not retry:
                emit(
                    session,
                    JobFinished.named(
                        "failed",
                        project=job.project_id,
                        job_id=job.id,
                        job_type=job.type,
                        error=reason,
                    ),
                )
        if line is not None:
            self.hub.publish(job.id, line)
            self.hub.publish(
                job.id, {"kind": "status", "status": values["status"], "error": reason}
            )
            log.warning("job %s: %s (%s)", job.id, reason, what)
            if retry:
                self.wake()
            else:
                self.release_held(job.project_id)
        return bool(changed)

    # -- helpers -----------------------------------------------------------------

    def _snapshot_running(self) -> list[_Running]:
        with self._running_lock:
            return list(self._running.values())

    def signal_cancel(self, job_id: str) -> None:
        with self._running_lock:
            running = self._running.get(job_id)
        if running is not None:
            running.cancel.set()

    def _locked_job(self, session: Session, job_id: str) -> Job | None:
        query = select(Job).where(Job.id == job_id)
        if not self.platform.db.is_embedded:
            query = query.with_for_update()
        return session.scalar(query)

    @contextmanager
    def _transition(self) -> Iterator[None]:
        if self.platform.db.is_embedded:
            with self._transition_lock:
                yield
        else:
            yield

    @contextmanager
    def _project_lock(self, session: Session, project_id: str) -> Iterator[None]:
        """Admission decisions of one project, one at a time (across processes on PostgreSQL;
        a claim takes the same lock in its own statement, :data:`_CLAIM_LOCKING`)."""
        if not self.platform.db.is_embedded:
            session.execute(_LOCK_PROJECT, {"lock_project": project_id})
        yield

    def _fail_now(self, session: Session, job: Job, reason: str) -> None:
        job = self._claimed(session, job)
        self._unclaim(job)
        job.status = str(JobStatus.failed)
        job.error = reason
        job.finished_at = utcnow()
        emit(session, self._finished_event(job))
        log.error("job %s failed before it ran: %s", job.id, reason)

    def _finished_event(self, job: Job) -> JobFinished:
        return JobFinished.named(
            job.status, project=job.project_id, job_id=job.id, job_type=job.type, error=job.error
        )

    def _append_line(
        self, session: Session, job_id: str, attempt: int, line: str
    ) -> dict[str, Any]:
        """Add one line of the engine's own to the job's log, in ``session``'s transaction
        (with the change of state it explains); returns the live message to publish once
        that commits."""
        from sqlalchemy import insert

        seq = session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(log_lines=Job.log_lines + 1)
            .returning(Job.log_lines)
            .execution_options(synchronize_session=False)
        ).scalar_one()
        at = utcnow()
        session.execute(
            insert(JobLog),
            [{"job_id": job_id, "seq": seq, "at": at, "attempt": attempt, "line": line}],
        )
        return {"kind": "line", "seq": seq, "at": at.isoformat(), "attempt": attempt, "line": line}


class _HandlerThreads:
    """Threads that run handlers, kept for the next job: starting a thread per job
    costs about a millisecond on a busy machine. A thread whose handler was abandoned
    (it did not stop when asked) comes back only if the handler ever returns; an idle
    one ends after :attr:`IDLE_FOR` seconds."""

    IDLE_FOR = 60.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_HandlerThread] = []

    def run(self, target: Callable[[], None]) -> None:
        with self.lock:
            thread = self.idle.pop() if self.idle else None
        if thread is None:
            thread = _HandlerThread(self)
            thread.start()
        thread.inbox.put(target)


class _HandlerThread(threading.Thread):
    def __init__(self, pool: _HandlerThreads) -> None:
        super().__init__(name="zt-job-handler", daemon=True)
        self.pool = pool
        self.inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            try:
                target = self.inbox.get(timeout=self.pool.IDLE_FOR)
            except queue.Empty:
                with self.pool.lock:
                    if self in self.pool.idle:  # else it was just handed a job
                        self.pool.idle.remove(self)
                        return
                continue
            target()  # never raises: the engine's target keeps every outcome
            with self.pool.lock:
                self.pool.idle.append(self)


def _params_of(job_type: JobType, job: Job) -> tuple[BaseModel, str] | tuple[None, str]:
    """The job's stored parameters validated, or None and why they no longer fit."""
    from pydantic import ValidationError

    try:
        return job_type.params.model_validate(job.params), ""
    except ValidationError as exc:
        return None, f"stored parameters no longer valid: {exc}"


def _job_of(values: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> Job:
    """A Job holding ``values`` (column name → value), in no session, to read: a
    claimed job, a job submitted in one statement. Filled as the ORM fills a row it
    loads, without the instrumented ``__init__`` and its event per attribute, which
    took several times as long (25 µs against 3.5 per job). Add it to no session:
    :meth:`JobEngine._claimed` gets the session's own copy to change."""
    job = _new_job()()
    job.__dict__.update(values)
    return job


@functools.cache
def _new_job() -> Callable[[], Job]:
    """An empty Job's maker, once the mappers are configured (a worker may claim before
    it has run any ORM query, and an unconfigured attribute cannot be read)."""
    configure_mappers()
    new: Callable[[], Job] = Job.__mapper__.class_manager.new_instance
    return new


def _started_event(job: Job) -> JobStarted:
    return JobStarted(
        project=job.project_id, job_id=job.id, job_type=job.type, attempt=job.attempts
    )


async def _run_async(job_type: JobType, context: JobContext, box: dict[str, Any]) -> Any:
    task = asyncio.ensure_future(job_type.handler(context, context.params))
    box["loop"], box["task"] = asyncio.get_running_loop(), task
    return await task


def _cancel_task(box: dict[str, Any]) -> None:
    loop, task = box.get("loop"), box.get("task")
    if loop is not None and task is not None:
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)


# When the next scheduled job is due (built once: the maintenance loop asks it often).
_NEXT_DUE = select(func.min(Job.run_at)).where(Job.status == str(JobStatus.scheduled))


# The statements every job runs, built once and in SQLAlchemy Core: building an ORM
# UPDATE per call (its compile state and cache key) was a fifth of a worker's CPU.
_JOBS: Table = Job.__table__  # type: ignore[assignment]  # a Table: declarative, no inheritance
_AT = _JOBS.c.started_at.type
_INSERT = insert(_JOBS)
# A job's row and its submission's audit row in one statement (PostgreSQL): the job's
# INSERT in a WITH, which PostgreSQL runs whether or not the outer statement reads it.
# The audit row's parameters are prefixed: both tables have an id and a project_id.
_AUDIT: Table = AuditEvent.__table__  # type: ignore[assignment]  # declarative: a Table
_INSERT_AUDITED = (
    insert(_AUDIT)
    .values({c.name: bindparam(f"audit_{c.name}", type_=c.type) for c in _AUDIT.c})
    .add_cte(insert(_JOBS).cte("new_job"))
)


def _audit_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row's values as :data:`_INSERT_AUDITED`'s parameters."""
    return {f"audit_{c.name}": row.get(c.name) for c in _AUDIT.c}


_CLAIM = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("claim_id"), _JOBS.c.status == str(JobStatus.queued))
    .values(
        status=str(JobStatus.running),
        attempts=_JOBS.c.attempts + 1,
        worker=bindparam("claim_worker"),
        started_at=bindparam("claim_now", type_=_AT),
        heartbeat_at=bindparam("claim_now", type_=_AT),
        error=None,
    )
    .returning(*_JOBS.c)
)


def _project_lock_of(project: Any) -> Any:
    """Take ``project``'s admission lock (PostgreSQL; held until the transaction ends).
    Every taker uses this one expression, so they all lock the same key."""
    return func.pg_advisory_xact_lock(func.hashtext(project))


_LOCK_PROJECT = select(_project_lock_of(bindparam("lock_project", type_=_JOBS.c.project_id.type)))
# On PostgreSQL the claim also takes the project's admission lock (see _project_lock),
# once it has the row: one round trip fewer for every job. The lock comes after the row
# lock, as it always did, and the admission count that follows is a statement of its
# own, so its snapshot sees every claim committed before the lock was granted.
_CLAIM_LOCKING = _CLAIM.returning(_project_lock_of(_JOBS.c.project_id).label("project_locked"))
_COLUMNS = tuple(_JOBS.c.keys())
# The claim in one statement (PostgreSQL; see _claim_at_once). Its columns named, in
# the model's order: the table's own order is the order migrations added them in.
_CLAIMED_AT_ONCE = func.zt_claim_job(
    bindparam("c_id", type_=Text()),
    bindparam("c_worker", type_=Text()),
    bindparam("c_now", type_=_AT),
    bindparam("c_limit", type_=Integer()),
    bindparam("c_types", type_=ARRAY(Text())),
).table_valued(*(column(name, _JOBS.c[name].type) for name in _COLUMNS))
_CLAIM_AT_ONCE = select(*_CLAIMED_AT_ONCE.c)


# Where one attempt's row is still running with the worker that claimed it: a change
# of its state made elsewhere (the reconciler, another worker) wins. See _attempt().
_THIS_ATTEMPT = (
    _JOBS.c.id == bindparam("a_id"),
    _JOBS.c.status == str(JobStatus.running),
    _JOBS.c.attempts == bindparam("a_attempts"),
    _JOBS.c.worker.is_not_distinct_from(bindparam("a_worker", type_=_JOBS.c.worker.type)),
)
# That attempt's row, locked (to fail an attempt claimed at once: see _claim_at_once).
_LOCK_ATTEMPT = select(_JOBS.c.id).where(*_THIS_ATTEMPT).with_for_update()
# Returned by an outcome's UPDATE: whether the attempt's project has held jobs that the
# freed capacity may release (almost never, so no query of its own).
_HELD = (
    select(_JOBS.c.id)
    .where(_JOBS.c.project_id == bindparam("a_project"), _JOBS.c.status == str(JobStatus.held))
    .exists()
)


def _attempt(job: Job, worker: str | None) -> dict[str, Any]:
    """The parameters of :data:`_THIS_ATTEMPT` and :data:`_HELD` for ``job``'s attempt."""
    return {
        "a_id": job.id,
        "a_attempts": job.attempts,
        "a_worker": worker,
        "a_project": job.project_id,
    }


def _outcome(succeeded: bool) -> Any:
    """The UPDATE that records a final outcome (and returns :data:`_HELD`)."""
    values: dict[str, Any] = {
        "finished_at": bindparam("o_now", type_=_AT),
        "heartbeat_at": None,
    }
    if succeeded:
        values["status"] = str(JobStatus.succeeded)
        values["progress"] = 1.0
        values["result"] = bindparam("o_result", type_=JSON(none_as_null=True))
        values["error"] = None
    else:
        values["status"] = bindparam("o_status")
        values["result"] = None
        values["error"] = bindparam("o_error")
    return update(_JOBS).where(*_THIS_ATTEMPT).values(**values).returning(_HELD)


_SUCCEEDED, _ENDED = _outcome(True), _outcome(False)

JOBS: StashKey[JobEngine] = StashKey()


def jobs_engine(platform: Platform) -> JobEngine:
    """The process's job engine (created by the ``jobs`` plugin's start-up)."""
    if JOBS not in platform.stash:
        raise RuntimeError("the jobs engine is not running (the jobs plugin did not start)")
    return platform.stash[JOBS]

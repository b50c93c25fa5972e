"""The ``rq`` queue driver: Redis + RQ, with ``zhongtai worker`` on any number of machines.

- **Queues and priorities.** Each job type's queue becomes three RQ queues,
  ``<prefix>:<queue>:high|normal|low`` (priority > 0, = 0, < 0); workers take from
  them in that order.
- **What runs.** An RQ job carries one argument, the platform job's id, and always
  the same function, :func:`execute`; payloads are JSON (RQ's ``JSONSerializer``,
  never pickle), and :class:`PlatformWorker` refuses any RQ job that names another
  function. The job's type, parameters and state come from the database, so only
  registered job types run.
- **Delays and retries** (``run_at``, backoff) are kept in the database as
  ``scheduled`` jobs and queued when due by the engine's maintenance thread, so a
  Redis restart loses none of them.
- **Timeouts and cancellation.** The engine watches each job's timeout; RQ's own
  timeout is a backstop a minute later. Cancelling a running job sends RQ's
  ``stop-job`` command; the worker turns it into the job's cancellation.
- **Redis outages.** A job is committed to the database before it is enqueued;
  while Redis is unreachable ``POST /api/v1/jobs`` answers 503, and jobs that were
  committed but not enqueued are enqueued by the reconciler once Redis is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rq.worker import SimpleWorker

from zhongtai.jobs.queue.base import QueueDriver, QueueUnavailable

if TYPE_CHECKING:
    from redis import Redis

    from zhongtai.jobs.engine import JobEngine

__all__ = ["BANDS", "PlatformWorker", "RQQueue", "execute", "set_engine"]

log = logging.getLogger("zhongtai.jobs")
#: Job statuses read per Redis round trip when the reconciler looks for lost jobs.
_MISSING_BATCH = 500

BANDS = ("high", "normal", "low")
EXECUTE = "zhongtai.jobs.queue.rq.execute"
RQ_TIMEOUT_MARGIN = 60  # seconds RQ waits beyond the job's own timeout
RESULT_TTL = 3600  # the database keeps results; RQ's copy is only for its tooling
CHECK_FRESH = 1.0  # seconds a successful contact with Redis vouches for it
#: Seconds within which :class:`PlatformWorker` does not repeat RQ's worker heartbeat.
HEARTBEAT_EVERY = 1.0
#: The last time a chore was done, on Redis's clock (so machines' clocks may differ):
#: a caller takes its turn unless it was done less than ``every`` seconds ago.
_TAKE_TURN = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = redis.call('GET', KEYS[1])
if last and now_ms - tonumber(last) < tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], now_ms, 'PX', ARGV[2])
return 1
"""

_engine: JobEngine | None = None  # the worker process's engine (set by `zhongtai worker`)


def band(priority: int) -> str:
    return "high" if priority > 0 else "low" if priority < 0 else "normal"


def execute(job_id: str) -> str | None:
    """What every RQ job runs: claim and run one platform job in this worker."""
    if _engine is None:
        raise RuntimeError("no job engine in this process: start workers with `zhongtai worker`")
    from rq import get_current_job

    current = get_current_job()
    worker = (current.worker_name if current is not None else None) or "rq"
    return _engine.run(job_id, f"rq:{_engine.node}:{worker}")


class _Waiting:
    """One item handed to :class:`_Together`, and what became of its round."""

    __slots__ = ("error", "item", "sent", "wake")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.wake = threading.Event()
        self.sent = False
        self.error: BaseException | None = None


class _Together:
    """Items that threads send at the same moment go in one call of ``send`` (group
    commit). A thread alone sends at once, waiting for no one; one that arrives while
    a round is in flight waits for it, then its own round goes with everything that
    arrived meanwhile, sent by the first of them. No thread sends another round after
    its own, so none is kept sending for the others under load. ``send`` gets a
    round's items; what it raises is what each of them gets back."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: list[_Waiting] = []
        self._busy = False  # a round is being sent

    def send(self, item: Any) -> BaseException | None:
        """Send ``item`` (with whatever else is waiting); the error its round raised."""
        waiting = _Waiting(item)
        with self._lock:
            self._pending.append(waiting)
            lead = not self._busy
            self._busy = True
        if not lead:
            waiting.wake.wait()  # its round was sent, or it is to send the next one
        if not waiting.sent:
            self._round()
        return waiting.error

    def _round(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        error: BaseException | None = None
        try:
            self._send([w.item for w in batch])
        except BaseException as exc:  # handed to every item of the round
            error = exc
        with self._lock:
            following = self._pending[0] if self._pending else None
            self._busy = following is not None
        for waiting in batch:
            waiting.error, waiting.sent = error, True
            waiting.wake.set()
        if following is not None:
            following.wake.set()  # not sent: it sends the next round


class RQQueue(QueueDriver):
    name: ClassVar[str] = "rq"
    runs_in_process: ClassVar[bool] = False

    def __init__(self, engine: JobEngine) -> None:
        super().__init__(engine)
        from redis import Redis

        settings = engine.settings
        self.prefix = settings.queue_prefix
        self.redis: Redis = Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        self._queues: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last_ok = 0.0  # monotonic time Redis last answered
        self._turn: Any = None  # the take_turn script, registered at first use
        self._together = _Together(self._enqueue)
        from zhongtai.jobs.hub import Relay

        # Live log lines cross processes through Redis pub/sub (the database has them all).
        engine.hub.relay = Relay(engine.hub, self.redis, self.prefix, engine.node)

    # -- queues ------------------------------------------------------------------

    def queue_name(self, queue: str, priority_band: str) -> str:
        return f"{self.prefix}:{queue}:{priority_band}"

    def queue_names(self, queues: Sequence[str]) -> list[str]:
        """Every RQ queue for these job queues, highest band first."""
        return [self.queue_name(q, b) for b in BANDS for q in queues]

    def rq_queue(self, name: str) -> Any:
        from rq import Queue
        from rq.serializers import JSONSerializer

        with self._lock:
            if name not in self._queues:
                self._queues[name] = Queue(name, connection=self.redis, serializer=JSONSerializer)
            return self._queues[name]

    # -- the driver interface ------------------------------------------------------

    def dispatch(self, job_id: str, queue: str, priority: int, timeout: int) -> None:
        """Enqueue the job's RQ job. Dispatches made at once by several threads (the
        server's requests) go to Redis together: see :class:`_Together`."""
        from redis.exceptions import RedisError
        from rq import Queue

        data = Queue.prepare_data(
            EXECUTE,
            args=(job_id,),
            job_id=job_id,
            timeout=int(timeout) + RQ_TIMEOUT_MARGIN,
            result_ttl=RESULT_TTL,
            failure_ttl=RESULT_TTL,
            description=f"platform job {job_id}",
        )
        error = self._together.send((self.queue_name(queue, band(priority)), data))
        if isinstance(error, RedisError):
            self._last_ok = 0.0
            raise QueueUnavailable(f"Redis at {self._where()}: {error}") from error
        if error is not None:
            raise RuntimeError(f"job {job_id} not enqueued: {error!r}") from error
        self._last_ok = time.monotonic()

    def _enqueue(self, batch: list[tuple[str, Any]]) -> None:
        """Enqueue ``(RQ queue name, RQ's job data)`` pairs in one MULTI/EXEC: each
        queue's jobs with ``enqueue_many`` (one round trip; ``enqueue_call`` takes two,
        for a job of its own). A job dispatched twice in the batch (a request and the
        reconciler, say) is enqueued once."""
        by_queue: dict[str, list[Any]] = {}
        seen: set[str] = set()
        for name, data in batch:
            if data.job_id not in seen:
                seen.add(data.job_id)
                by_queue.setdefault(name, []).append(data)
        with self.redis.pipeline() as pipe:
            for name, datas in by_queue.items():
                self.rq_queue(name).enqueue_many(datas, pipeline=pipe)
            pipe.execute()

    def missing(self, job_ids: Sequence[str]) -> set[str]:
        from redis.exceptions import RedisError
        from rq.job import Job as RQJob
        from rq.job import JobStatus as RQStatus

        alive = {
            str(status.value)
            for status in (RQStatus.QUEUED, RQStatus.STARTED, RQStatus.SCHEDULED, RQStatus.DEFERRED)
        }
        gone: set[str] = set()
        try:
            # Only each job's status field, many jobs per round trip: a backlog of
            # thousands of queued jobs is checked in a few requests, not one per job.
            for start in range(0, len(job_ids), _MISSING_BATCH):
                batch = list(job_ids[start : start + _MISSING_BATCH])
                with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in batch:
                        pipe.hget(RQJob.key_for(job_id), "status")
                    statuses = pipe.execute()
                for job_id, status in zip(batch, statuses, strict=True):
                    value = status.decode() if isinstance(status, bytes) else status
                    if value not in alive:  # no such job, a hash left half-written, or ended
                        gone.add(job_id)
        except RedisError as exc:
            log.warning("reconcile: Redis at %s unreachable: %s", self._where(), exc)
            return set()  # nothing can be dispatched now anyway
        return gone

    def take_turn(self, chore: str, every: float) -> bool:
        """Yes unless a process on this Redis did ``chore`` less than ``every`` seconds
        ago (nine tenths of it, so that the process whose turn it was, waking up a
        little early, takes the next one). Processes configured with different
        intervals each compare with their own, so the shortest one sets the pace."""
        from redis.exceptions import RedisError

        if self._turn is None:
            self._turn = self.redis.register_script(_TAKE_TURN)
        try:
            since_ms = int(every * 900)
            keep_ms = max(since_ms * 10, 3_600_000)  # longer than any process's interval
            return bool(self._turn(keys=[f"{self.prefix}:turn:{chore}"], args=[since_ms, keep_ms]))
        except RedisError:
            return True  # the chore itself copes with Redis being away

    def cancel_running(self, job_id: str) -> None:
        from rq.command import send_stop_job_command
        from rq.serializers import JSONSerializer

        try:
            send_stop_job_command(self.redis, job_id, serializer=JSONSerializer)
        except Exception as exc:  # not started yet, or Redis away: the heartbeat catches it
            log.info(
                "stop-job for %s not sent (%s); workers see the flag at their heartbeat",
                job_id,
                exc,
            )

    def check(self) -> None:
        """Ping Redis, unless it answered in the last second (a submit must not pay a
        round trip for this); a failed enqueue forgets that answer at once."""
        from redis.exceptions import RedisError

        if time.monotonic() - self._last_ok < CHECK_FRESH:
            return
        try:
            self.redis.ping()
        except RedisError as exc:
            raise QueueUnavailable(f"Redis at {self._where()}: {exc}") from exc
        self._last_ok = time.monotonic()

    def worker_redis(self) -> Redis:
        """A Redis client for this process's RQ worker. RQ waits for the next job for up
        to its dequeue timeout (minutes) and raises its client's socket timeout above
        that, which holds only for connections opened afterwards. On the driver's own
        client (5 s, opened already) each wait failed after 5 s as a lost connection,
        and RQ slept 1, 2, 4… up to 60 s before waiting again: a job submitted to an
        idle worker could wait that long."""
        from redis import Redis

        return Redis.from_url(self.engine.settings.redis_url, socket_connect_timeout=2)

    def types_key(self) -> str:
        return f"{self.prefix}:job-types"

    def missing_plugins(self) -> dict[str, str]:
        """``{job type: plugin}`` that servers or workers registered and this process lacks."""
        known = self.redis.hgetall(self.types_key())
        mine = {t.name for t in self.engine.types}
        result = {}
        for job_type, plugin in known.items():
            name = job_type.decode() if isinstance(job_type, bytes) else job_type
            if name not in mine:
                result[name] = plugin.decode() if isinstance(plugin, bytes) else plugin
        return result

    def start(self) -> None:
        """Record this process's job types; warn about a Redis that may evict jobs."""
        types = {t.name: self.engine.types.owner(t.name) or "" for t in self.engine.types}
        try:
            if types:
                self.redis.hset(self.types_key(), mapping=types)
        except Exception as exc:
            log.warning("could not record job types in Redis at %s: %s", self._where(), exc)
        try:
            policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except Exception as exc:
            log.warning("could not read Redis maxmemory-policy at %s: %s", self._where(), exc)
            return
        if policy and policy != "noeviction":
            log.warning(
                "Redis at %s has maxmemory-policy=%s: under memory pressure it may evict "
                "queued jobs (the reconciler re-queues them, late). Set it to noeviction.",
                self._where(),
                policy,
            )

    def stop(self, timeout: float) -> None:
        if self.engine.hub.relay is not None:
            self.engine.hub.relay.stop()

    def _where(self) -> str:
        from zhongtai.settings import mask_url_password

        return mask_url_password(self.engine.settings.redis_url)


class PlatformWorker(SimpleWorker):
    """An RQ worker that runs platform jobs in its own process and nothing else.

    Jobs run in this process (no fork per job): the engine's threads watch each
    job's timeout, cancellation and heartbeat, and RQ's ``stop-job`` command becomes
    a cancellation.

    RQ's worker heartbeat (the worker's key, its time to live and ``last_heartbeat``)
    is sent by RQ's loop five times per job, three of them as commands of their own:
    after the job, and before and after each wait for the next. This worker does not
    repeat one of those three when the last heartbeat, less than
    :data:`HEARTBEAT_EVERY` ago, set the same time to live (RQ's heartbeat at a job's
    start sets the job's own, shorter one), so the key expires when RQ's loop would
    have it expire and ``last_heartbeat`` is at most that stale; one that goes on its
    own sends its three commands in one round trip. Nor does it write the worker's
    state again when it has just written the same (RQ sets ``idle`` after each job and
    again before the wait).

    After a job, RQ's loop writes ``idle`` and a heartbeat, each on its own, and at
    once checks whether workers are suspended, in a pipeline with a heartbeat of its
    own. Here those two writes go in that pipeline (:attr:`_settling`): the state and
    the heartbeat restoring the key's usual expiry arrive as RQ would send them, one
    round trip later. Nor does it write the job's ``last_heartbeat`` on its own when
    the job succeeded: RQ saves the whole job, that field included, in the same
    transaction that records the success. A job that succeeds takes 45 commands
    instead of 57 and 8 round trips instead of 20 with RQ's ``SimpleWorker``.
    """

    # The database has each job's outcome and result; RQ's line about how long it keeps
    # its own copy of the result says nothing an operator needs.
    log_result_lifespan = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from rq.serializers import JSONSerializer
        from rq.timeouts import TimerDeathPenalty

        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("log_job_description", False)  # "platform job <id>": the id again
        super().__init__(*args, **kwargs)
        self.log = cast(logging.Logger, _PerJobLinesAtDebug(self.log))  # a Logger's interface
        if threading.current_thread() is not threading.main_thread():
            # RQ's default (SIGALRM) needs the main thread; the timer costs a thread
            # per job, so only where it must.
            self.death_penalty_class = TimerDeathPenalty
        # When RQ's heartbeat last set the worker key's usual time to live (None: the
        # last one set another, for a job).
        self._usual_beat_at: float | None = None
        self._state_sent: str | None = None  # what set_state last wrote on its own
        # A job has just ended: RQ's loop checks for suspension next, in a pipeline
        # with a heartbeat, which then carries the state and heartbeat written meanwhile.
        self._settling = False
        self._state_due: str | None = None  # the state it is to carry

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's, but for writing on its own the state it just wrote (RQ's loop sets
        ``idle`` after each job and again before its wait for the next), and for the
        state after a job, which waits for the next pipelined heartbeat (RQ's
        suspension check) or the worker's death."""
        if pipeline is None and (self._settling or state == self._state_sent):
            self._state = state
            if self._settling:
                self._state_due = state
            return
        super().set_state(state, pipeline)
        self._state_sent = state if pipeline is None else None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, but for one sent on its own (not in a pipeline) that the
        last heartbeat already made: the usual time to live, less than
        :data:`HEARTBEAT_EVERY` ago. One sent on its own goes in a pipeline."""
        usual = (timeout or self.worker_ttl + 60) == self.worker_ttl + 60
        if pipeline is None and (
            self._settling
            or (
                usual
                and self._usual_beat_at is not None
                and time.monotonic() - self._usual_beat_at < HEARTBEAT_EVERY
            )
        ):
            return
        if pipeline is not None:
            if self._state_due is not None:  # RQ's suspension check, after a job
                super().set_state(self._state_due, pipeline)
                self._state_sent, self._state_due = self._state_due, None
            self._settling = False
            super().heartbeat(timeout, pipeline)
        else:  # its three commands in one round trip, not three
            with self.connection.pipeline(transaction=False) as own:
                super().heartbeat(timeout, own)
                own.execute()
        self._usual_beat_at = time.monotonic() if usual else None

    def execute_job(self, job: Any, queue: Any) -> Any:
        if job.func_name != EXECUTE:
            log.error("refusing RQ job %s: it names %r, not a platform job", job.id, job.func_name)
            job.delete()
            return None
        return super().execute_job(job, queue)

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        try:
            return bool(super().perform_job(job, queue, execution))
        finally:
            self._settling = True  # RQ's loop checks for suspension next

    def handle_execution_ended(self, job: Any, queue: Any, heartbeat_ttl: int) -> None:
        """RQ's, but for the job's ``last_heartbeat`` written on its own when the job
        succeeded (RQ marks a failed one before this): the transaction recording the
        success saves the whole job, that field included."""
        from rq.job import JobStatus as RQStatus
        from rq.utils import now

        if job.get_status(refresh=False) == RQStatus.FAILED:
            super().handle_execution_ended(job, queue, heartbeat_ttl)
            return
        job.ended_at = now()
        job.last_heartbeat = job.ended_at

    def register_death(self) -> None:
        """RQ's, after the state that a job's end left for the suspension check, where
        the loop stopped before it (a stop requested during the job, ``max_jobs``)."""
        if self._state_due is not None:
            state, self._state_due, self._settling = self._state_due, None, False
            super().set_state(state)
        super().register_death()  # type: ignore[no-untyped-call]  # RQ leaves it unannotated

    def kill_horse(self, sig: Any = None) -> None:
        """RQ's ``stop-job`` command: cancel the platform job running here."""
        job_id = self.get_current_job_id()
        if job_id and _engine is not None:
            _engine.signal_cancel(job_id)


class _PerJobLinesAtDebug:
    """A platform worker's RQ logger: the lines RQ writes at INFO for every job that
    succeeds (taken from a queue, "Successfully completed", "Job OK") at DEBUG instead,
    as the platform records every job, its worker and its times itself; RQ's other
    lines (start, shutdown, failures) unchanged. Writing those three lines was a
    twentieth of a worker's CPU at full load."""

    PER_JOB = frozenset(
        {
            "Worker %s: %s: %s",
            "Worker %s: %s: %s (%s)",
            "Successfully completed job %s in %ss on worker %s",
            "Successfully completed %s job in %ss on worker %s",
        }
    )

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg in self.PER_JOB:
            self._logger.debug(msg, *args, **kwargs)
        else:
            self._logger.info(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def set_engine(engine: JobEngine | None) -> None:
    """Make ``engine`` the one :func:`execute` runs jobs with (``zhongtai worker``)."""
    global _engine
    _engine = engine

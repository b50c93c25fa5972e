"""``zhongtai worker`` processes on real Redis: the CLI, and a worker killed mid-job.

Runs where Redis is (``ZHONGTAI_TEST_REDIS_URL``: the PostgreSQL + Redis run), against
the test's own database — SQLite or PostgreSQL — and queue names of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from litestar.testing import TestClient
from redis import Redis
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from zhongtai.testing import ZtIdentity, process_env, redis_for_tests

pytestmark = pytest.mark.zt_plugins("hello")
needs_redis = pytest.mark.skipif(
    redis_for_tests() is None, reason="needs Redis (ZHONGTAI_TEST_REDIS_URL)"
)

JOBS = "/api/v1/jobs"
FAST = {"heartbeat_interval": 0.3, "stale_after": 2.0, "reconcile_interval": 0.3}


@pytest.fixture
def fast_settings(zt_settings: Any) -> Any:
    return zt_settings.model_copy(
        update={"jobs": zt_settings.jobs.model_copy(update=FAST), "plugins": ["hello"]}
    )


@pytest.fixture
def spawn_worker(
    fast_settings: Any, tmp_path: Any
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> subprocess.Popen[str]:
        env = process_env(
            fast_settings,
            ZHONGTAI_PLUGINS="hello",
            ZHONGTAI_JOBS__HEARTBEAT_INTERVAL=str(FAST["heartbeat_interval"]),
        )
        log = open(tmp_path / f"worker{len(started)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "zhongtai", "worker", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@contextmanager
def server(
    zt_app_factory: Callable[..., Any], settings: Any
) -> Iterator[tuple[TestClient[Any], ZtIdentity]]:
    app = zt_app_factory(settings=settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, ZtIdentity(app.state["platform"])


def wait_for(
    client: Any, headers: Any, job_id: str, statuses: set[str], seconds: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.get(f"{JOBS}/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job['status']}")


@needs_redis
def test_a_worker_process_runs_jobs(zt_app_factory, fast_settings, spawn_worker, tmp_path):
    with server(zt_app_factory, fast_settings) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        worker = spawn_worker()
        ids = [
            client.post(
                JOBS,
                json={
                    "type": "hello.echo",
                    "project": project.id,
                    "params": {"text": f"n{i}", "repeat": 2},
                },
                headers=headers,
            ).json()["id"]
            for i in range(5)
        ]
        for job_id in ids:
            job = wait_for(client, headers, job_id, {"succeeded", "failed"})
            assert job["status"] == "succeeded" and job["worker"].startswith("rq:")
        assert worker.poll() is None
    # RQ's own lines stay; its lines for every job are DEBUG (the platform records jobs).
    output = (tmp_path / "worker0.log").read_text()
    assert "started with PID" in output, output
    for per_job in ("Job OK", "Successfully completed", "result is kept", *ids):
        assert per_job not in output, output


@needs_redis
def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes(
    zt_app_factory, fast_settings, spawn_worker
):
    with server(zt_app_factory, fast_settings) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        first = spawn_worker()
        job = client.post(
            JOBS,
            json={
                "type": "hello.echo",
                "project": project.id,
                "params": {"text": "slow", "repeat": 6, "delay": 0.5},
            },
            headers=headers,
        ).json()
        running = wait_for(client, headers, job["id"], {"running"})
        assert running["attempts"] == 1
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        spawn_worker()
        done = wait_for(client, headers, job["id"], {"succeeded", "failed"}, seconds=60)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        lines = client.get(
            f"{JOBS}/{job['id']}/logs", headers=headers, params={"limit": 1000}
        ).json()
        assert any("abandoned: worker rq:" in item["line"] for item in lines["items"])
        # Redis agrees with the database: the platform job's RQ job finished.
        redis = Redis.from_url(fast_settings.jobs.redis_url)
        rq_job = RQJob.fetch(job["id"], connection=redis, serializer=JSONSerializer)
        assert rq_job.get_status() == "finished"


@needs_redis
def test_worker_refuses_to_start_without_a_plugin_the_servers_run(
    zt_app_factory, fast_settings, spawn_worker
):
    with server(zt_app_factory, fast_settings):
        redis = Redis.from_url(fast_settings.jobs.redis_url)
        redis.hset(f"{fast_settings.jobs.queue_prefix}:job-types", "data.import", "data")
        worker = spawn_worker()
        assert worker.wait(60) == 1


def test_worker_explains_the_embedded_queue(zt_settings):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")},
        "ZHONGTAI_HOME": str(zt_settings.home),
        "ZHONGTAI_JOBS__QUEUE": "embedded",
    }
    result = subprocess.run(
        [sys.executable, "-m", "zhongtai", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ZHONGTAI_JOBS__QUEUE=rq" in result.stderr


@needs_redis
def test_the_reconciler_finds_lost_jobs_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RQQueue.missing`` reads only each job's status, a batch per round trip: a job
    still queued or running is alive; an ended job, one never enqueued and one whose
    hash was left half-written are lost (the reconciler dispatches those again)."""
    import secrets
    from types import SimpleNamespace

    from rq import Queue
    from rq.job import JobStatus

    from zhongtai.jobs.queue import rq as rq_driver

    url = redis_for_tests()
    assert url is not None
    redis = Redis.from_url(url)
    queue = Queue(f"zt-test-{secrets.token_hex(4)}", connection=redis, serializer=JSONSerializer)
    queued = [queue.enqueue_call("os.getcwd") for _ in range(3)]
    running, ended = queue.enqueue_call("os.getcwd"), queue.enqueue_call("os.getcwd")
    running.set_status(JobStatus.STARTED)
    ended.set_status(JobStatus.FINISHED)
    half = secrets.token_hex(8)
    redis.hset(RQJob.key_for(half), "origin", queue.name)  # no status: written halfway
    absent = secrets.token_hex(8)
    try:
        monkeypatch.setattr(rq_driver, "_MISSING_BATCH", 2)
        rounds: list[int] = []
        real = redis.pipeline

        def counted(*args: Any, **kwargs: Any) -> Any:
            rounds.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(redis, "pipeline", counted)
        ids = [j.id for j in queued] + [running.id, ended.id, half, absent]
        gone = rq_driver.RQQueue.missing(SimpleNamespace(redis=redis), ids)  # type: ignore[arg-type]
        assert gone == {ended.id, half, absent}
        assert len(rounds) == 4  # 8 jobs, 2 a round trip
    finally:
        queue.delete(delete_jobs=True)
        redis.delete(RQJob.key_for(half))


@needs_redis
def test_the_reconciler_runs_once_per_interval_among_processes_sharing_redis() -> None:
    """Every server and worker reconciles each ``reconcile_interval``; on one Redis, the
    first to ask in an interval does it and the others skip (a backlog is read once,
    not once per process). A process configured with a shorter interval still gets
    its turn at its own pace, and a Redis that cannot answer never stops a chore."""
    import secrets
    from types import SimpleNamespace

    from zhongtai.jobs.queue import rq as rq_driver

    url = redis_for_tests()
    assert url is not None
    redis = Redis.from_url(url)
    prefix = f"zt-test-{secrets.token_hex(4)}"

    def process(connection: Any = redis) -> Any:
        return SimpleNamespace(redis=connection, prefix=prefix, _turn=None)

    def turn(driver: Any, every: float) -> bool:
        return rq_driver.RQQueue.take_turn(driver, "reconcile", every)

    server, worker_a, worker_b = process(), process(), process()
    try:
        assert turn(server, 0.5)
        assert not turn(worker_a, 0.5)
        assert not turn(worker_b, 0.5)
        time.sleep(0.5)
        assert turn(worker_b, 0.5)  # the interval passed: whoever asks first
        assert not turn(server, 0.5)
        assert not turn(worker_a, 30.0)  # a slower process finds it done recently
        time.sleep(0.5)
        assert not turn(worker_a, 30.0)
        assert turn(server, 0.5)  # ... and does not hold back a faster one
        unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
        assert turn(process(unreachable), 0.5)
    finally:
        redis.delete(f"{prefix}:turn:reconcile")


def _driver(redis_url: str) -> Any:
    """An rq driver of its own (queue names of its own) on ``redis_url``, for the driver
    alone: no engine runs."""
    import secrets
    from types import SimpleNamespace

    from zhongtai.jobs.hub import LogHub
    from zhongtai.jobs.queue.rq import RQQueue

    settings = SimpleNamespace(queue_prefix=f"zt-test-{secrets.token_hex(4)}", redis_url=redis_url)
    engine = SimpleNamespace(settings=settings, hub=LogHub(), node="test", types=[])
    return RQQueue(engine)  # type: ignore[arg-type]


def _all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released together; what each returned or raised."""
    import threading

    start = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@needs_redis
def test_dispatches_made_at_once_go_to_redis_together() -> None:
    """Requests that dispatch at the same moment share a round trip: those that arrive
    while one is in flight go in the next, all queues in one MULTI/EXEC. Each job is
    then in its priority's queue once, a job dispatched twice in one round too."""
    from rq import Queue

    url = redis_for_tests()
    assert url is not None
    driver = _driver(url)
    rounds: list[list[str]] = []
    send = driver._together._send

    def slow_first_round(batch: list[Any]) -> None:
        rounds.append([data.job_id for _name, data in batch])
        if len(rounds) == 1:
            time.sleep(0.3)  # the others arrive meanwhile
        send(batch)

    driver._together._send = slow_first_round
    ids = [f"together-{i}" for i in range(16)]
    calls = [
        (lambda job_id=job_id, i=i: driver.dispatch(job_id, "default", 1 if i % 4 == 0 else 0, 30))
        for i, job_id in enumerate(ids)
    ]
    calls.append(lambda: driver.dispatch(ids[5], "default", 0, 30))  # dispatched twice
    try:
        assert _all_at_once(calls) == [None] * len(calls)
        assert sorted(j for r in rounds for j in r) == sorted([*ids, ids[5]])
        assert 2 <= len(rounds) < len(calls) and max(len(r) for r in rounds) > 1, rounds
        high = driver.rq_queue(driver.queue_name("default", "high"))
        normal = driver.rq_queue(driver.queue_name("default", "normal"))
        assert sorted(high.job_ids) == sorted(ids[0::4])
        assert set(normal.job_ids) == {j for i, j in enumerate(ids) if i % 4}
        # Twice in one round, enqueued once; in two rounds, twice, as any job dispatched
        # again is (its claim runs it once).
        shared = any(r.count(ids[5]) == 2 for r in rounds)
        assert normal.job_ids.count(ids[5]) == (1 if shared else 2)
        assert len(normal.job_ids) == len(ids) - len(ids[0::4]) + (0 if shared else 1)
        job = high.fetch_job(ids[4])
        assert job is not None and job.args == [ids[4]] and job.timeout == 30 + 60
        # Alone, a dispatch is sent at once, in a round of its own.
        rounds.clear()
        driver.dispatch("alone", "default", 0, 30)
        assert rounds == [["alone"]] and "alone" in normal.job_ids
    finally:
        for queue in (
            Queue(driver.queue_name("default", b), connection=driver.redis)
            for b in ("high", "normal")
        ):
            queue.delete(delete_jobs=True)


def test_a_round_that_fails_fails_every_dispatch_in_it() -> None:
    """Redis unreachable: each of the requests that dispatched together gets 503's
    QueueUnavailable (the jobs stay queued in the database for the reconciler), and
    the next dispatch tries Redis again."""
    from zhongtai.jobs.queue.base import QueueUnavailable

    driver = _driver("redis://127.0.0.1:1/0")  # nothing listens there
    tried: list[int] = []
    send = driver._together._send

    def counted(batch: list[Any]) -> None:
        tried.append(len(batch))
        send(batch)

    driver._together._send = counted
    outcomes = _all_at_once(
        [(lambda i=i: driver.dispatch(f"down-{i}", "default", 0, 30)) for i in range(6)]
    )
    assert all(isinstance(o, QueueUnavailable) for o in outcomes), outcomes
    assert all("127.0.0.1:1" in str(o) for o in outcomes)
    assert sum(tried) == 6
    with pytest.raises(QueueUnavailable):
        driver.dispatch("down-again", "default", 0, 30)
    assert sum(tried) == 7


@needs_redis
def test_a_worker_waits_for_jobs_longer_than_the_drivers_socket_timeout() -> None:
    """RQ waits for the next job up to its dequeue timeout and can lengthen only the
    socket timeout of connections not yet opened: the worker's client is its own, so
    every connection its wait can take outlasts the wait (on the driver's client, opened
    with 5 s, an idle worker's wait failed every 5 s and RQ backed off up to a minute)."""
    from zhongtai.jobs.queue.rq import PlatformWorker

    url = redis_for_tests()
    assert url is not None
    driver = _driver(url)
    driver.redis.ping()  # as at start-up: the driver's client has a connection open
    assert driver.redis.connection_pool.connection_kwargs["socket_timeout"] == 5
    worker = PlatformWorker(
        [driver.queue_name("default", "normal")], connection=driver.worker_redis()
    )
    worker.connection.ping()
    pool = worker.connection.connection_pool
    opened = [*pool._available_connections, *pool._in_use_connections]
    assert opened, "the worker's ping opened no connection"
    assert all(c.socket_timeout > worker.dequeue_timeout for c in opened), [
        (c.socket_timeout, worker.dequeue_timeout) for c in opened
    ]
    # The driver's client keeps its short timeout: a server's request never hangs.
    assert all(c.socket_timeout == 5 for c in driver.redis.connection_pool._available_connections)


@contextmanager
def _registered_worker() -> Iterator[Any]:
    """A platform worker on queues of its own, registered in Redis for the block."""
    from zhongtai.jobs.queue.rq import PlatformWorker

    url = redis_for_tests()
    assert url is not None
    driver = _driver(url)
    worker = PlatformWorker(
        [driver.queue_name("default", "normal")], connection=driver.worker_redis()
    )
    worker.register_birth()
    try:
        yield worker
    finally:
        worker.register_death()
        worker.connection.delete(worker.key)


@needs_redis
def test_a_worker_repeats_rqs_heartbeat_only_when_it_is_due_or_its_expiry_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RQ's loop sends the worker heartbeat five times per job; the platform's worker
    skips a repeat within ``HEARTBEAT_EVERY``, but never one that restores the key's
    expiry after RQ shortened it for a job (else an idle worker would drop out of RQ's
    registry after a job's 90 s, while it waits up to the dequeue timeout)."""
    from zhongtai.jobs.queue import rq as driver_module

    monkeypatch.setattr(driver_module, "HEARTBEAT_EVERY", 30.0)  # a slow machine's pauses
    with _registered_worker() as worker:
        redis = worker.connection
        full = worker.worker_ttl + 60

        def stamp() -> bytes | None:
            return redis.hget(worker.key, "last_heartbeat")  # type: ignore[return-value]

        worker.heartbeat()
        first = stamp()
        assert first is not None and redis.ttl(worker.key) > full - 5
        time.sleep(0.01)  # RQ's stamp has microseconds: a sent heartbeat changes it
        worker.heartbeat()
        worker.heartbeat()
        assert stamp() == first, "a repeat within HEARTBEAT_EVERY went to Redis"
        # RQ's suspension check sends one in its pipeline, with the usual time to live:
        # it counts as the last heartbeat.
        with redis.pipeline() as pipe:
            worker.heartbeat(pipeline=pipe)
            pipe.execute()
        second = stamp()
        assert second != first
        time.sleep(0.01)
        worker.heartbeat()
        assert stamp() == second

        # A job's start: RQ's heartbeat in its pipeline, with the job's time to live.
        with redis.pipeline() as pipe:
            worker.heartbeat(90, pipeline=pipe)
            pipe.execute()
        assert redis.ttl(worker.key) <= 90
        worker.heartbeat()  # the one after the job: sent, whatever its age
        assert redis.ttl(worker.key) > full - 5

        # Due again: sent.
        monkeypatch.setattr(driver_module, "HEARTBEAT_EVERY", 0.05)
        before = stamp()
        time.sleep(0.06)
        worker.heartbeat()
        assert stamp() != before


@needs_redis
def test_a_worker_writes_its_state_again_only_when_it_changed() -> None:
    """RQ sets ``idle`` after each job and again before waiting for the next: the
    platform's worker writes it once; ``busy`` (in RQ's pipeline at a job's start) and
    the ``idle`` after it are written."""
    with _registered_worker() as worker:
        redis = worker.connection

        def state() -> bytes | None:
            return redis.hget(worker.key, "state")  # type: ignore[return-value]

        worker.set_state("idle")
        assert state() == b"idle"
        redis.hset(worker.key, "state", "marker")  # shows whether the next one writes
        worker.set_state("idle")
        assert state() == b"marker" and worker.get_state() == "idle"
        with redis.pipeline() as pipe:
            worker.set_state("busy", pipeline=pipe)
            pipe.execute()
        assert state() == b"busy"
        worker.set_state("idle")
        assert state() == b"idle" and worker.get_state() == "idle"


@needs_redis
def test_the_relay_carries_every_jobs_messages_in_order_to_other_processes() -> None:
    """Hub messages published in one process (a worker) reach the followers of the
    same jobs in another (a server), each job's in the order published, batched into
    one Redis message per 50 ms; a process never gets its own messages back."""
    import asyncio
    import secrets

    from zhongtai.jobs.hub import LogHub, Relay

    url = redis_for_tests()
    assert url is not None
    redis = Redis.from_url(url)
    prefix = f"zt-test-relay-{secrets.token_hex(4)}"
    worker, server = LogHub(), LogHub()
    worker.relay = Relay(worker, redis, prefix, "worker-node")
    server.relay = Relay(server, redis, prefix, "server-node")

    async def follow() -> None:
        with server.follow("job-a") as a, server.follow("job-b") as b:
            deadline = time.monotonic() + 5
            while not any(n for _c, n in redis.pubsub_numsub(f"{prefix}:log")):
                assert time.monotonic() < deadline, "the server's relay never subscribed"
                await asyncio.sleep(0.01)
            for seq in range(300):
                worker.publish("job-a", {"kind": "line", "seq": seq})
                if seq % 3 == 0:
                    worker.publish_many("job-b", [{"kind": "line", "seq": seq}])
                worker.publish("job-c", {"kind": "line", "seq": seq})  # followed nowhere
                if seq % 100 == 0:
                    await asyncio.sleep(0.06)  # across several of the relay's batches

            async def seqs(follower: Any, count: int) -> list[int]:
                return [
                    (await asyncio.wait_for(follower.queue.get(), 5))["seq"] for _ in range(count)
                ]

            assert await seqs(a, 300) == list(range(300))
            assert await seqs(b, 100) == list(range(0, 300, 3))
            # The server's own message is delivered here at once, and never again
            # from Redis.
            server.publish("job-a", {"kind": "status", "seq": -1})
            assert await seqs(a, 1) == [-1]
            await asyncio.sleep(0.3)
            assert a.queue.empty() and b.queue.empty()
            assert not a.overflowed and not b.overflowed

    try:
        asyncio.run(follow())
    finally:
        worker.relay.stop()
        server.relay.stop()


def _round_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], int]:
    """Count what each Redis client sends: one round trip per packed send (a
    pipeline's commands go in one). Gives a function of a client: its count."""
    from redis.connection import AbstractConnection

    sent: dict[int, int] = {}
    original = AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent[id(self)] = sent.get(id(self), 0) + 1
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def of(client: Any) -> int:
        pool = client.connection_pool
        return sum(
            sent.get(id(c), 0) for c in {*pool._available_connections, *pool._in_use_connections}
        )

    return of


@contextmanager
def _burst_workers(
    monkeypatch: pytest.MonkeyPatch, outcome: str
) -> Iterator[Callable[..., tuple[int, list[dict[bytes, bytes]], bytes | None]]]:
    """Run platform jobs (a handler that ``outcome``s) in burst mode on a queue of their
    own: a function of a worker class, a job count and ``max_jobs`` giving the worker's
    round trips, what Redis holds of each job, and the worker's state as it stopped."""
    import secrets
    import signal as signals
    from types import SimpleNamespace

    from redis import Redis as Client
    from rq import Queue

    from zhongtai.jobs.queue import rq as driver_module
    from zhongtai.jobs.queue.rq import EXECUTE

    def handler(job_id: str, worker: str) -> None:
        if outcome == "fails":
            raise RuntimeError("the handler raised")

    monkeypatch.setattr(driver_module, "_engine", SimpleNamespace(run=handler, node="test"))
    monkeypatch.setattr(driver_module, "HEARTBEAT_EVERY", 30.0)  # a slow machine's pauses
    url = redis_for_tests()
    assert url is not None
    driver = _driver(url)
    round_trips = _round_trips(monkeypatch)

    def run(
        worker_class: type, jobs: int, max_jobs: int | None = None
    ) -> tuple[int, list[dict[bytes, bytes]], bytes | None]:
        name = driver.queue_name(secrets.token_hex(3), "normal")
        connection = Client.from_url(url)
        queue = Queue(name, connection=connection, serializer=JSONSerializer)
        ids = [
            queue.enqueue(EXECUTE, f"job-{i}", result_ttl=60, failure_ttl=60).id
            for i in range(jobs)
        ]
        worker = worker_class(
            [queue], connection=connection, serializer=JSONSerializer, name=f"{name}-w"
        )
        before = round_trips(connection)
        worker.work(burst=True, max_jobs=max_jobs)
        spent = round_trips(connection) - before
        fields = [connection.hgetall(RQJob.key_for(job_id)) for job_id in ids]
        state = connection.hget(worker.key, "state")
        connection.delete(worker.key, *(RQJob.key_for(job_id) for job_id in ids))
        return spent, fields, state  # type: ignore[return-value]

    handlers = {s: signals.getsignal(s) for s in (signals.SIGINT, signals.SIGTERM)}
    try:
        yield run
    finally:  # RQ's work() installs its own
        for number, previous in handlers.items():
            signals.signal(number, previous)


@needs_redis
@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_a_platform_worker_records_jobs_as_rqs_worker_does_in_fewer_round_trips(
    monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """Platform jobs run by RQ's ``SimpleWorker`` and by the platform's worker leave
    the same record in Redis (each job's status, times and ``last_heartbeat``; the
    worker's state), the platform's in fewer round trips per job: its state and
    heartbeat after a job ride on RQ's suspension check, and a job's ``last_heartbeat``
    on the save of its success. Per job: the difference between runs of three jobs
    and of one, which cost a worker's start and end alike."""
    from rq import SimpleWorker

    from zhongtai.jobs.queue.rq import PlatformWorker

    per_job: dict[type, float] = {}
    with _burst_workers(monkeypatch, outcome) as burst:
        for worker_class in (SimpleWorker, PlatformWorker):
            one, _, _ = burst(worker_class, 1)
            three, fields, state = burst(worker_class, 3)
            per_job[worker_class] = (three - one) / 2
            assert state == b"idle"
            for job in fields:
                assert job[b"status"] == (b"finished" if outcome == "succeeds" else b"failed")
                assert job[b"ended_at"] and job[b"last_heartbeat"] >= job[b"started_at"]
                if worker_class is PlatformWorker and outcome == "succeeds":
                    assert job[b"last_heartbeat"] == job[b"ended_at"]  # saved with the success
    # RQ 3.0: 20 and 8 for a job that succeeds; 21 and 10 for one that fails.
    saved = {"succeeds": 12, "fails": 11}[outcome]
    assert per_job[PlatformWorker] <= per_job[SimpleWorker] - saved, per_job


@needs_redis
def test_a_platform_worker_stopping_after_a_job_leaves_its_state_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``max_jobs`` (or a stop requested during a job) RQ's loop ends before the
    suspension check that carries the worker's state after a job: it is written as
    the worker stops, as RQ's own worker leaves it."""
    from zhongtai.jobs.queue.rq import PlatformWorker

    with _burst_workers(monkeypatch, "succeeds") as burst:
        _, fields, state = burst(PlatformWorker, 2, max_jobs=1)
    assert state == b"idle"
    assert [job[b"status"] for job in fields] == [b"finished", b"queued"]

"""The jobs engine: throughput against plain RQ, submit-to-running latency, log followers.

Every figure is taken against a baseline measured in the same run (the machine is
shared and noisy). Processes are started the way an operator starts them, over a
data directory and database seeded here (one user, developer in one project per
scenario, an API key):

* **plain RQ** — the baseline: two ``rq worker -w rq.worker.SimpleWorker
  --serializer rq.serializers.JSONSerializer`` processes (the worker class and
  serializer ``zhongtai worker`` uses) run ``_noop.noop`` (bench/_noop.py, does
  nothing); the bench enqueues N jobs one at a time, with the call
  (``enqueue_many`` of one job) and the arguments the platform's driver uses for a
  job dispatched alone. Time: first enqueue → the last job's
  ``ended_at`` in Redis.
* **rq** — ``zhongtai serve`` (``ZHONGTAI_JOBS__QUEUE=rq``) and two ``zhongtai
  worker`` processes on the same Redis (database 13 by default, names of the run's
  own, removed afterwards).
* **embedded** — ``zhongtai serve`` with ``ZHONGTAI_JOBS__WORKERS=2`` worker threads.

Each driver gets a fresh database (PostgreSQL when reachable: a throwaway
``zt_bench_<random>`` dropped afterwards; else SQLite; ``--database`` forces one) and
admission limits raised and the per-caller submission rate limit off, so that nothing
is held or refused.

1. **Throughput.** N ``hello.noop`` jobs submitted through ``POST /api/v1/jobs`` by
   ``--concurrency`` (32) keep-alive clients (raw asyncio sockets, so the client costs
   little on a small machine) until all are ``succeeded``, read from the ``jobs``
   table directly. Time: first submit → the last job's ``finished_at``. Target: rq ÷
   plain RQ ≥ 0.6; embedded ÷ plain RQ is reported without a target. The pair is
   measured ``--rounds`` (3) times, plain RQ and the platform back to back with fresh
   processes and databases, the order alternating (round 2 starts with the platform);
   the ratio is the median of the rounds' ratios, every round is printed. On a shared
   machine one pair's ratio moves by ±0.05 or more from one run to the next, as the
   machine's speed changes between the two halves. Diagnostics:
   how long the submissions took, the worker cycle (consecutive ``started_at`` of
   one worker) split into the job itself (``started_at`` → ``finished_at``) and what
   lies between jobs, and CPU seconds per 1000 jobs of each process.
2. **Latency.** On an idle system, ``--latency-samples`` (50) ``hello.noop`` jobs one
   after the other (each waits for the previous one to finish, then 50 ms); the
   figure is ``started_at - created_at`` of each job's row (both written by the
   platform: ``created_at`` when the API builds the row, ``started_at`` when a
   worker claims it), p50. Targets: embedded ≤ 50 ms, rq ≤ 100 ms. Reported too:
   ``finished_at - created_at``, the client's ``POST`` round trip, and the time from
   the client sending the request to ``started_at`` (which adds the request's
   parsing and authentication before the row is built).
3. **Log followers.** ``--followers`` (100) concurrent ``GET …/logs/stream`` of one
   ``hello.echo`` job with ``repeat`` = ``--lines`` (10,000). The job is submitted
   with ``run_at`` a few seconds ahead and the followers connect at once, so all of
   them are attached (their first event, ``status: scheduled``, arrived) before it
   runs and the figures are live delivery, not replay from the database (the output
   says how many were attached in time). Checked: every follower received seq
   1..N exactly once, in order, and the final ``status`` event. Reported: p50/p99
   (and max) of receipt time minus the line's ``at``, over every line of every
   follower. The followers run in this process (raw sockets; lines are picked out
   with one regular expression per read, timestamps parsed afterwards) and its CPU
   time is printed, since on a small machine it competes with the server.

4. **Drain** (a diagnostic, only with ``--scenarios …,drain``; rq driver only). The
   workers alone: N jobs are queued while the workers are stopped (SIGSTOP), then
   they are let go (SIGCONT) and the time runs from then to the last job's end, the
   same for plain RQ. On a small machine the throughput figure above includes the
   server's and PostgreSQL's share of the cores; this one shows what the workers'
   own path costs against RQ's, which is what bounds throughput where the server
   and the database have cores of their own.

5. **Floor** (a diagnostic, only with ``--scenarios …,floor``; PostgreSQL). The
   platform's skeleton with everything else taken out (bench/_floor.py): a bare
   Litestar route that inserts the job's row and enqueues it, plain RQ workers that
   claim the row and record the outcome, three raw statements per job. Timed as the
   throughput, against the same plain RQ run. What lies between its figure and the
   rq driver's is the cost of the platform's own work per job (authentication,
   validation, admission, events, logs, SQLAlchemy), not of the design's shape.

Order: plain RQ, the floor, then each driver (latency on the idle system first, then
throughput, then followers), then the further throughput rounds, one set of
processes at a time. CPU seconds per
process come from /proc (``postgres + redis``: this run's PostgreSQL backends and
redis-server).

Exits 0 whatever the verdicts. Time: the platform's own rate sets it; on 2 cores
the defaults take about 5 minutes, ``--scenarios throughput --drivers rq`` about 3,
``--quick`` (1000 jobs, 10 followers, 1000 lines, 20 latency samples, one round)
about 1.
``--scenarios`` and ``--drivers`` run a part.

Run: ``.venv/bin/python bench/jobs.py [--quick] [--jobs 10000] [--database
sqlite|postgres] [--followers 100 --lines 10000] [--no-rq-followers] [--rounds 3]
[--scenarios throughput,latency,followers,drain,floor] [--drivers rq,embedded]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH,
    HOST,
    PYTHON,
    RESULTS,
    VENV_BIN,
    ZHONGTAI,
    Server,
    child_env,
    enqueue_as_platform,
    free_port,
    machine,
    median,
    percentile,
    process_cpu_seconds,
    scratch_dir,
    verdict,
    zhongtai_server,
)

TARGET_THROUGHPUT = 0.6  # rq ÷ plain RQ
TARGET_LATENCY_MS = {"embedded": 50.0, "rq": 100.0}
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
WORKERS = 2
FINISHED = ("succeeded", "failed", "cancelled")
RQ_TIMEOUT = 60 + 60  # what the platform passes for hello.noop: its timeout + RQ's margin
RQ_RESULT_TTL = 3600
ERROR_LINE = re.compile(r'^Traceback|"level":\s*"(?:error|critical)"', re.M | re.I)
RQ_SHARED_KEYS = "rq:clean*"  # RQ's own bookkeeping, shared by every queue of a Redis


# --------------------------------------------------------------------------- processes


def rq_worker(name: str, argv: list[str], env: dict[str, str], log: Path) -> Server:
    """A worker process (no HTTP: ``Server`` is used for start, stop and its log)."""
    return Server(name, argv, 0, "", env, log)


@contextlib.contextmanager
def running(*procs: Server) -> Iterator[None]:
    """Start ``procs``; stop every one of them on the way out, whatever happened."""
    with contextlib.ExitStack() as stack:
        for proc in procs:
            stack.callback(proc.stop)
            proc.start()
        yield


@contextlib.contextmanager
def paused(procs: list[Server]) -> Iterator[None]:
    """Stop ``procs`` (SIGSTOP) for the block and let them go on (SIGCONT) after it,
    whatever happened: workers that take nothing while a backlog is queued."""
    pids = [proc.proc.pid for proc in procs if proc.proc is not None]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def timed_from(
    meter: CpuMeter, clock: dict[str, float], drain: list[Server] | None
) -> Iterator[None]:
    """Around the submissions of a throughput run: the clock (``clock["t0"]``) and the
    meter start before them, or, with ``drain`` (the workers, stopped meanwhile), as
    the workers are let go after them. ``clock["submitted"]``: how long they took.
    Both sides of the comparison take their time this one way."""
    with paused(drain) if drain else contextlib.nullcontext():
        if not drain:
            meter.start()
        clock["t0"] = time.time()
        yield
        clock["submitted"] = time.time() - clock["t0"]
        if drain:
            meter.start()
            clock["t0"] = time.time()


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of ``pids``; a process that is gone counts nothing."""
    return sum(v for v in map(process_cpu_seconds, pids) if v == v)


def backends_of(database: str | None) -> list[int]:
    """PostgreSQL backends connected to ``database`` (their title names it), and
    redis-server: the services' share of the work, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = bool(database) and cmdline.startswith("postgres: ") and f" {database} " in cmdline
        if ours or cmdline.startswith("redis-server"):
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds used by named groups of processes between ``start`` and ``stop``.

    The services (PostgreSQL backends, redis-server) come and go during a run: a
    backend opened for a pool's overflow connection may exit before the end. They are
    read every :attr:`SAMPLE` seconds, and each one counts up to its last reading, so
    one that exited loses at most that long of its CPU."""

    SAMPLE = 0.5  # seconds between readings of the services

    def __init__(self, groups: dict[str, list[int]], database: str | None) -> None:
        self.groups = dict(groups)
        self.groups["bench client"] = [os.getpid()]
        self.database = database
        self.before: dict[str, float] = {}
        self.services_before: dict[int, float] = {}
        self.services_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        self.before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self.services_before = {p: process_cpu_seconds(p) for p in backends_of(self.database)}
        self.services_last = dict(self.services_before)
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE):
            self._read_services()

    def _read_services(self) -> None:
        for pid in backends_of(self.database):
            now = process_cpu_seconds(pid)
            if now == now:  # NaN: it exited meanwhile
                self.services_last[pid] = now

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        used = {name: cpu_seconds(pids) - self.before[name] for name, pids in self.groups.items()}
        self._read_services()
        # Backends that connected after start count from zero.
        used["postgres + redis"] = sum(
            last - self.services_before.get(pid, 0.0) for pid, last in self.services_last.items()
        )
        return used


# --------------------------------------------------------------------------- databases


def postgres_reachable() -> bool:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@dataclass
class Databases:
    """Fresh databases for the run; every one is dropped (or deleted) in ``drop_all``."""

    kind: str  # postgres | sqlite
    work: Path
    created: list[str] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # label -> URL

    def new(self, label: str) -> tuple[str, str | None]:
        """A new empty database: (URL, PostgreSQL database name or None)."""
        if self.kind == "sqlite":
            self.urls[label] = f"sqlite:///{self.work / label / 'zhongtai.db'}"
            return self.urls[label], None
        import psycopg

        name = f"zt_bench_{secrets.token_hex(5)}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        self.urls[label] = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        return self.urls[label], name

    def drop_all(self) -> None:
        if not self.created:
            return
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@dataclass
class Site:
    """One driver's seeded data directory and database."""

    home: Path
    url: str
    database: str | None  # the PostgreSQL database's name
    key: str
    projects: dict[str, str]  # scenario -> project id


SCENARIOS = ("latency", "throughput", "logs", "drain")


def seed(home: Path, url: str, database: str | None, secret: str) -> Site:
    """Create the schema (core + hello) and a developer with an API key in one project
    per scenario."""
    from zhongtai.identity.apikeys import create_api_key
    from zhongtai.identity.models import Organization, Project, ProjectMember, User
    from zhongtai.identity.roles import Role
    from zhongtai.platform import bootstrap
    from zhongtai.settings import load_settings

    settings = load_settings(home=home, database_url=url, secret_key=secret, plugins=["hello"])
    platform = bootstrap(settings, schema="upgrade")
    try:
        with platform.db.transaction() as session:
            user = User(email="bench@example.com")
            org = Organization(slug="bench", name="Bench")
            session.add_all([user, org])
            session.flush()
            projects = {}
            for name in SCENARIOS:
                project = Project(org_id=org.id, slug=name, name=name)
                session.add(project)
                session.flush()
                session.add(
                    ProjectMember(project_id=project.id, user_id=user.id, role=int(Role.developer))
                )
                projects[name] = project.id
            _row, key = create_api_key(
                session, user_id=user.id, name="bench", secret=platform.secret_key
            )
    finally:
        platform.close()
    return Site(home, url, database, key, projects)


def platform_env(site: Site, secret: str, driver: str, prefix: str, redis_url: str) -> dict:
    """What the server and the workers share (as docs/jobs.md asks)."""
    env = {
        "ZHONGTAI_HOME": str(site.home),
        "ZHONGTAI_DATABASE_URL": site.url,
        "ZHONGTAI_SECRET_KEY": secret,
        "ZHONGTAI_PLUGINS": "hello",
        "ZHONGTAI_JOBS__QUEUE": driver,
        "ZHONGTAI_JOBS__WORKERS": str(WORKERS),
        "ZHONGTAI_JOBS__MAX_RUNNING_PER_PROJECT": "100000",
        "ZHONGTAI_JOBS__MAX_PENDING_PER_PROJECT": "1000000",
        "ZHONGTAI_JOBS__SUBMISSIONS_PER_SECOND": "0",
    }
    if driver == "rq":
        env["ZHONGTAI_JOBS__REDIS_URL"] = redis_url
        env["ZHONGTAI_JOBS__QUEUE_PREFIX"] = prefix
    return env


class JobsTable:
    """Reads the ``jobs`` table directly (no API in the way)."""

    def __init__(self, url: str) -> None:
        from zhongtai.metadata.database import Database

        self.db = Database(url)

    def done(self, project: str) -> int:
        from sqlalchemy import func, select

        from zhongtai.jobs.models import Job

        with self.db.engine.connect() as conn:
            query = select(func.count()).where(Job.project_id == project, Job.status.in_(FINISHED))
            return int(conn.scalar(query) or 0)

    def rows(self, project: str | None = None, job_id: str | None = None) -> list[Any]:
        from sqlalchemy import select

        from zhongtai.jobs.models import Job

        query = select(
            Job.id, Job.status, Job.worker, Job.created_at, Job.started_at, Job.finished_at
        )
        if project is not None:
            query = query.where(Job.project_id == project)
        if job_id is not None:
            query = query.where(Job.id == job_id)
        with self.db.engine.connect() as conn:
            return list(conn.execute(query))

    def close(self) -> None:
        self.db.engine.dispose()


# --------------------------------------------------------------------------- raw HTTP (asyncio)


class Client:
    """One keep-alive HTTP/1.1 connection for JSON requests (Content-Length framed)."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {key}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                return await self._request(method, path, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def noop_job(project: str) -> dict[str, Any]:
    return {"type": "hello.noop", "project": project, "params": {}}


async def submit_many(
    port: int, key: str, body: dict[str, Any], count: int, concurrency: int
) -> dict[str, Any]:
    """POST ``body`` ``count`` times from ``concurrency`` connections; retry 429/503."""
    remaining = count
    statuses: dict[int, int] = {}

    async def one_client() -> None:
        nonlocal remaining
        client = Client(port, key)
        try:
            while remaining > 0:
                remaining -= 1
                while True:
                    status, text = await client.request("POST", "/api/v1/jobs", body)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 201:
                        break
                    if status not in (429, 503):
                        raise RuntimeError(f"POST /api/v1/jobs answered {status}: {text[:300]!r}")
                    await asyncio.sleep(0.05)
        finally:
            await client.close()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return {str(k): v for k, v in sorted(statuses.items())}


# --------------------------------------------------------------------------- 1. throughput


def worker_cycles(rows: list[tuple[str, float, float]]) -> dict[str, float]:
    """From (worker, started, finished) epochs: the median time between consecutive
    starts on one worker, and its two parts (in the job / between jobs), in ms."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for worker, started, finished in rows:
        by_worker.setdefault(worker, []).append((started, finished))
    cycles, inside, between = [], [], []
    for runs in by_worker.values():
        runs.sort()
        for (s0, f0), (s1, _f1) in itertools.pairwise(runs):
            cycles.append(s1 - s0)
            inside.append(f0 - s0)
            between.append(s1 - f0)
    if not cycles:
        return {}
    return {
        "workers": len(by_worker),
        "cycle_ms_p50": median(cycles) * 1e3,
        "in_job_ms_p50": median(inside) * 1e3,
        "between_jobs_ms_p50": median(between) * 1e3,
    }


def per_1000(cpu: dict[str, float], jobs: int) -> dict[str, float]:
    return {name: round(seconds / max(jobs, 1) * 1000, 3) for name, seconds in cpu.items()}


def platform_throughput(
    port: int,
    site: Site,
    table: JobsTable,
    meter: CpuMeter,
    jobs: int,
    concurrency: int,
    *,
    drain: list[Server] | None = None,
) -> dict[str, Any]:
    """N no-op jobs through the API until all succeeded. With ``drain`` (the worker
    processes), the workers are stopped while the jobs are submitted, and the time
    (and CPU) starts when they are let go: the workers' side alone."""
    project = site.projects["drain" if drain else "throughput"]
    clock: dict[str, float] = {}
    with timed_from(meter, clock, drain):
        answers = asyncio.run(submit_many(port, site.key, noop_job(project), jobs, concurrency))
    t0, submitted = clock["t0"], clock["submitted"]
    deadline = time.monotonic() + max(300.0, jobs * 0.2)
    while table.done(project) < jobs and time.monotonic() < deadline:
        time.sleep(0.1)
    cpu = meter.stop()
    rows = table.rows(project=project)
    finished = [r for r in rows if r.finished_at is not None]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    end = max((r.finished_at.timestamp() for r in finished), default=time.time())
    elapsed = end - t0
    ran = [r for r in finished if r.started_at is not None]
    waits = sorted((r.started_at - r.created_at).total_seconds() for r in ran)
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": statuses.get("succeeded", 0) / elapsed,
        "complete": statuses.get("succeeded", 0) == jobs,
        "statuses": statuses,
        "http_statuses": answers,
        "submit_seconds": submitted,
        "submit_per_s": jobs / submitted,
        "queue_wait_ms_p50": percentile(waits, 50) * 1e3,
        "queue_wait_ms_max": (waits[-1] if waits else float("nan")) * 1e3,
        "worker": worker_cycles(
            [(r.worker, r.started_at.timestamp(), r.finished_at.timestamp()) for r in ran]
        ),
        "cpu_s_per_1000_jobs": per_1000(cpu, jobs),
    }


def plain_rq_throughput(
    redis_url: str, prefix: str, jobs: int, work: Path, *, drain: bool = False
) -> dict[str, Any]:
    """The baseline: plain RQ workers running ``_noop.noop``. With ``drain``, the
    workers are stopped while the jobs are enqueued, and the time (and CPU) starts
    when they are let go."""
    from redis import Redis
    from rq import Queue
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer

    redis = Redis.from_url(redis_url)
    name = f"{prefix}-plain{'-drain' if drain else ''}"
    queue = Queue(name, connection=redis, serializer=JSONSerializer)
    argv = plain_rq_argv(redis_url)
    env = child_env(bytecode_cache=True)
    workers = [
        rq_worker(
            f"rq worker {i}",
            [*argv, "--name", f"{name}-w{i}", name],
            env,
            work / f"plain-rq-{i}.log",
        )
        for i in range(WORKERS)
    ]
    with running(*workers):
        wait_for_rq_workers(redis, name, workers)
        meter = CpuMeter({"workers": [w.proc.pid for w in workers if w.proc]}, None)
        ids = [f"{name}-{i}" for i in range(jobs)]
        clock: dict[str, float] = {}
        with timed_from(meter, clock, workers if drain else None):
            for job_id in ids:
                enqueue_as_platform(queue, "_noop.noop", job_id, RQ_TIMEOUT, RQ_RESULT_TTL)
        t0, submitted = clock["t0"], clock["submitted"]
        deadline = time.monotonic() + max(300.0, jobs * 0.2)
        finished_registry, failed_registry = queue.finished_job_registry, queue.failed_job_registry
        while time.monotonic() < deadline:
            if finished_registry.count + failed_registry.count >= jobs:
                break
            time.sleep(0.1)
        cpu = meter.stop()
        done = [j for j in RQJob.fetch_many(ids, connection=redis, serializer=JSONSerializer) if j]
    ok = [j for j in done if j.get_status(refresh=False) == "finished" and j.ended_at]

    def epoch(value: datetime) -> float:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

    end = max((epoch(j.ended_at) for j in ok), default=time.time())
    elapsed = end - t0
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": len(ok) / elapsed,
        "complete": len(ok) == jobs,
        "finished": len(ok),
        "submit_seconds": submitted,
        "submit_per_s": jobs / submitted,
        "worker": worker_cycles(
            [
                (j.worker_name or "?", epoch(j.started_at), epoch(j.ended_at))
                for j in ok
                if j.started_at
            ]
        ),
        "cpu_s_per_1000_jobs": per_1000(cpu, jobs),
    }


def floor_throughput(
    redis_url: str, prefix: str, dbs: Databases, work: Path, jobs: int, concurrency: int
) -> dict[str, Any]:
    """The floor (bench/_floor.py): the platform's skeleton alone (an HTTP submission,
    three statements, RQ), timed as the platform's throughput is."""
    import psycopg
    from _floor import SCHEMA

    url, database = dbs.new("floor")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    queue_name = f"{prefix}-floor"
    env = child_env(
        bytecode_cache=True,
        extra={
            "ZT_FLOOR_DATABASE_URL": url,
            "ZT_FLOOR_REDIS_URL": redis_url,
            "ZT_FLOOR_QUEUE": queue_name,
            "ZT_FLOOR_RQ_TIMEOUT": str(RQ_TIMEOUT),
            "ZT_FLOOR_TTL": str(RQ_RESULT_TTL),
        },
    )
    port = free_port()
    server = Server(
        "floor server",
        [str(PYTHON), str(BENCH / "_floor.py"), "--port", str(port)],
        port,
        "/ready",
        env,
        work / "floor-server.log",
    )
    workers = [
        rq_worker(
            f"floor worker {i}",
            [*plain_rq_argv(redis_url), "--name", f"{queue_name}-w{i}", queue_name],
            env,
            work / f"floor-worker-{i}.log",
        )
        for i in range(WORKERS)
    ]
    from redis import Redis

    with running(server, *workers), psycopg.connect(url, autocommit=True) as conn:
        server.wait_ready()
        wait_for_rq_workers(Redis.from_url(redis_url), queue_name, workers)
        groups = {"server": [server.proc.pid] if server.proc else []}
        groups["workers"] = [w.proc.pid for w in workers if w.proc]
        meter = CpuMeter(groups, database)
        clock: dict[str, float] = {}
        body = noop_job("floor")
        with timed_from(meter, clock, None):
            answers = asyncio.run(submit_many(port, "none", body, jobs, concurrency))
        deadline = time.monotonic() + max(300.0, jobs * 0.2)
        count = "SELECT count(*) FROM floor_jobs WHERE status = 'succeeded'"
        while time.monotonic() < deadline:
            row = conn.execute(count).fetchone()
            if row is not None and row[0] >= jobs:
                break
            time.sleep(0.1)
        cpu = meter.stop()
        rows = conn.execute(
            "SELECT worker, extract(epoch FROM started_at), extract(epoch FROM finished_at) "
            "FROM floor_jobs WHERE status = 'succeeded'"
        ).fetchall()
    t0 = clock["t0"]
    end = max((float(r[2]) for r in rows), default=time.time())
    return {
        "jobs": jobs,
        "seconds": end - t0,
        "jobs_per_s": len(rows) / (end - t0),
        "complete": len(rows) == jobs,
        "http_statuses": answers,
        "submit_seconds": clock["submitted"],
        "submit_per_s": jobs / clock["submitted"],
        "worker": worker_cycles([(r[0], float(r[1]), float(r[2])) for r in rows]),
        "cpu_s_per_1000_jobs": per_1000(cpu, jobs),
    }


def plain_rq_argv(redis_url: str) -> list[str]:
    """``rq worker`` as the baseline runs it (and the floor): the worker class and
    serializer ``zhongtai worker`` uses, job functions from bench/."""
    return [
        str(VENV_BIN / "rq"),
        "worker",
        "-w",
        "rq.worker.SimpleWorker",
        "--url",
        redis_url,
        "--serializer",
        "rq.serializers.JSONSerializer",
        "-P",
        str(BENCH),
    ]


def wait_for_rq_workers(redis: Any, queue_name: str, procs: list[Server]) -> None:
    """Block until ``procs`` are registered with RQ as listening on ``queue_name``."""
    from rq import Queue, Worker

    queue = Queue(queue_name, connection=redis)
    deadline = time.monotonic() + 120
    while Worker.count(connection=redis, queue=queue) < len(procs):
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not registered on {queue_name} after 120 s")
        time.sleep(0.05)


# --------------------------------------------------------------------------- 2. latency


def latency(port: int, site: Site, table: JobsTable, samples: int) -> dict[str, Any]:
    """Sequential no-op jobs on an idle system; figures from each job's row."""
    project = site.projects["latency"]

    async def run() -> list[tuple[float, float, str]]:
        client = Client(port, site.key)
        out = []
        try:
            for _ in range(samples + 3):  # the first 3 warm up, unmeasured
                sent = time.time()
                t = time.perf_counter()
                status, body = await client.request("POST", "/api/v1/jobs", noop_job(project))
                rtt = time.perf_counter() - t
                if status != 201:
                    raise RuntimeError(f"POST /api/v1/jobs answered {status}: {body[:300]!r}")
                job_id = json.loads(body)["id"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    row = table.rows(job_id=job_id)[0]
                    if row.status in FINISHED:
                        break
                    await asyncio.sleep(0.005)
                out.append((sent, rtt, job_id))
                await asyncio.sleep(0.05)  # idle again before the next one
        finally:
            await client.close()
        return out[3:]

    measured = asyncio.run(run())
    to_running, to_done, rtts, from_send = [], [], [], []
    for sent, rtt, job_id in measured:
        row = table.rows(job_id=job_id)[0]
        rtts.append(rtt * 1e3)
        if row.started_at is not None:
            to_running.append((row.started_at - row.created_at).total_seconds() * 1e3)
            from_send.append((row.started_at.timestamp() - sent) * 1e3)
        if row.finished_at is not None:
            to_done.append((row.finished_at - row.created_at).total_seconds() * 1e3)
    for values in (to_running, to_done, rtts, from_send):
        values.sort()
    return {
        "samples": len(measured),
        "started": len(to_running),
        "submit_to_running_ms_p50": percentile(to_running, 50),
        "submit_to_running_ms_p90": percentile(to_running, 90),
        "submit_to_running_ms_max": to_running[-1] if to_running else float("nan"),
        "submit_to_succeeded_ms_p50": percentile(to_done, 50),
        "post_round_trip_ms_p50": percentile(rtts, 50),
        "client_send_to_running_ms_p50": percentile(from_send, 50),
    }


# --------------------------------------------------------------------------- 3. log followers

LINE_EVENT = re.compile(rb'id: (\d+)\r\nevent: line\r\ndata: \{"seq": \d+, "at": "([^"]+)"')
STATUS_EVENT = re.compile(rb"event: status\r\ndata: (\{[^\r\n]*\})")


class Dechunker:
    """Undo HTTP/1.1 chunked transfer coding, fed whatever the socket gives."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.left = 0  # bytes of the current chunk still to come; -1: its CRLF
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf
        buf += data
        out = bytearray()
        pos = 0
        while not self.finished:
            if self.left > 0:
                take = min(self.left, len(buf) - pos)
                out += buf[pos : pos + take]
                pos += take
                self.left -= take
                if self.left:
                    break
                self.left = -1
            if self.left == -1:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.left = 0
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                self.finished = True
            self.left = size
        del buf[:pos]
        return bytes(out)


@dataclass
class Follower:
    """What one stream received: line seqs with their ``at`` and receipt time."""

    seqs: list[int] = field(default_factory=list)
    ats: list[bytes] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    line_events: int = 0
    first_event: float | None = None
    final: dict[str, Any] | None = None
    error: str | None = None


async def follow(port: int, key: str, job_id: str, out: Follower) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        writer.write(
            (
                f"GET /api/v1/jobs/{job_id}/logs/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            out.error = f"HTTP {status}: {(await reader.read(300))!r}"
            return
        dechunker = Dechunker() if b"chunked" in head.lower() else None
        pending = b""
        while True:
            data = await reader.read(1 << 18)
            now = time.time()
            if not data:
                break
            text = pending + (dechunker.feed(data) if dechunker else data)
            end = text.rfind(b"\r\n\r\n")
            if end < 0:
                pending = text
                continue
            block, pending = text[: end + 4], text[end + 4 :]
            if out.first_event is None:
                out.first_event = now
            for match in LINE_EVENT.finditer(block):
                out.seqs.append(int(match[1]))
                out.ats.append(match[2])
                out.received.append(now)
            out.line_events += block.count(b"event: line")
            for match in STATUS_EVENT.finditer(block):
                out.final = json.loads(match[1])
            if dechunker is not None and dechunker.finished:
                break
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def missing_ranges(seqs: list[int], lines: int, most: int = 3) -> str:
    """``"1000-1117, 4200"``: the first few runs of 1..lines absent from ``seqs``."""
    have = set(seqs)
    runs: list[str] = []
    start = None
    for seq in range(1, lines + 2):
        if seq <= lines and seq not in have:
            start = seq if start is None else start
        elif start is not None:
            runs.append(f"{start}-{seq - 1}" if seq - 1 > start else str(start))
            start = None
    more = f" (+{len(runs) - most} more)" if len(runs) > most else ""
    return (", ".join(runs[:most]) + more) or "none"


def log_followers(
    port: int, site: Site, table: JobsTable, followers: int, lines: int
) -> dict[str, Any]:
    project = site.projects["logs"]
    lead = 2.0 + 0.02 * followers  # seconds for every follower to attach before it runs
    run_at = (datetime.now(UTC) + timedelta(seconds=lead)).isoformat()
    body = {
        "type": "hello.echo",
        "project": project,
        "params": {"text": "a line of the benchmark's log", "repeat": lines},
        "run_at": run_at,
    }
    results = [Follower() for _ in range(followers)]
    timeout = max(120.0, lines * followers * 2e-4)

    async def run() -> tuple[str, float]:
        client = Client(port, site.key)
        try:
            status, text = await client.request("POST", "/api/v1/jobs", body)
        finally:
            await client.close()
        if status != 201:
            raise RuntimeError(f"POST /api/v1/jobs answered {status}: {text[:300]!r}")
        job_id = json.loads(text)["id"]
        cpu0 = time.process_time()
        tasks = [asyncio.create_task(follow(port, site.key, job_id, r)) for r in results]
        _done, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        for task, result in zip(tasks, results, strict=True):
            if task in late:
                result.error = f"still streaming after {timeout:g} s"
            elif task.exception() is not None:
                result.error = repr(task.exception())
        return job_id, time.process_time() - cpu0

    job_id, client_cpu = asyncio.run(run())
    row = table.rows(job_id=job_id)[0]
    started = row.started_at.timestamp() if row.started_at else float("inf")
    expected = list(range(1, lines + 1))
    parsed: dict[bytes, float] = {}
    delays: list[float] = []
    worst_p99 = 0.0
    complete = 0
    problems: list[str] = []
    last_receipt = 0.0
    for n, r in enumerate(results):
        ok = r.seqs == expected and r.line_events == len(r.seqs)
        ok = ok and r.final is not None and r.final.get("status") == "succeeded"
        complete += ok
        if not ok and len(problems) < 5:
            final = r.final.get("status") if r.final else None
            problems.append(
                f"follower {n}: {len(r.seqs)} lines ({len(set(r.seqs))} distinct, "
                f"{r.line_events} line events), in order: "
                f"{r.seqs == sorted(r.seqs)}, missing {missing_ranges(r.seqs, lines)}, "
                f"final status: {final}" + (f", error: {r.error}" if r.error else "")
            )
        mine = []
        for at, received in zip(r.ats, r.received, strict=True):
            when = parsed.get(at)
            if when is None:
                when = parsed[at] = datetime.fromisoformat(at.decode()).timestamp()
            mine.append(received - when)
        if r.received:
            last_receipt = max(last_receipt, r.received[-1])
        mine.sort()
        worst_p99 = max(worst_p99, percentile(mine, 99))
        delays.extend(mine)
    delays.sort()
    finished = row.finished_at.timestamp() if row.finished_at else float("nan")
    return {
        "followers": followers,
        "lines": lines,
        "job_status": row.status,
        "complete_followers": complete,
        "all_complete": complete == followers,
        "problems": problems,
        "attached_before_start": sum(
            1 for r in results if r.first_event is not None and r.first_event < started
        ),
        "delay_ms_p50": percentile(delays, 50) * 1e3,
        "delay_ms_p99": percentile(delays, 99) * 1e3,
        "delay_ms_max": (delays[-1] if delays else float("nan")) * 1e3,
        "worst_follower_p99_ms": worst_p99 * 1e3,
        "job_seconds": finished - started,
        "last_line_after_finish_s": last_receipt - finished,
        "client_cpu_s": client_cpu,
    }


# --------------------------------------------------------------------------- drivers


def run_platform(
    driver: str,
    dbs: Databases,
    work: Path,
    secret: str,
    redis_url: str,
    prefix: str,
    args: argparse.Namespace,
    scenarios: set[str],
    label: str | None = None,
) -> dict[str, Any]:
    """Seed a fresh database, start the server (and workers), run ``scenarios``.
    ``label`` names the database, data directory and logs (default: the driver's name)."""
    label = label or driver
    url, database = dbs.new(label)
    home = work / label
    site = seed(home, url, database, secret)
    env = platform_env(site, secret, driver, prefix, redis_url)
    server = zhongtai_server(home, work / f"{label}-server.log", bytecode_cache=True, env=env)
    workers = []
    if driver == "rq":
        worker_env = child_env(bytecode_cache=True, extra=env)
        workers = [
            rq_worker(
                f"zhongtai worker {i}",
                [str(ZHONGTAI), "worker", "--name", f"{prefix}-w{i}"],
                worker_env,
                work / f"{label}-worker-{i}.log",
            )
            for i in range(WORKERS)
        ]
    table = JobsTable(url)
    out: dict[str, Any] = {}
    try:
        with running(server, *workers):
            server.wait_ready()
            if workers:
                from redis import Redis

                wait_for_rq_workers(Redis.from_url(redis_url), f"{prefix}:default:normal", workers)
            groups = {"server": [server.proc.pid]} if server.proc else {}
            if workers:
                groups["workers"] = [w.proc.pid for w in workers if w.proc]
            meter = CpuMeter(groups, database)
            if "latency" in scenarios:
                print(f"  [{driver}] latency, {args.latency_samples} sequential jobs …", flush=True)
                out["latency"] = latency(server.port, site, table, args.latency_samples)
            if "throughput" in scenarios:
                print(f"  [{driver}] throughput, {args.jobs} jobs …", flush=True)
                out["throughput"] = platform_throughput(
                    server.port, site, table, meter, args.jobs, args.concurrency
                )
            if "drain" in scenarios and workers:
                print(f"  [{driver}] drain, {args.jobs} jobs …", flush=True)
                out["drain"] = platform_throughput(
                    server.port, site, table, meter, args.jobs, args.concurrency, drain=workers
                )
            if "followers" in scenarios:
                print(
                    f"  [{driver}] {args.followers} log followers, {args.lines} lines …",
                    flush=True,
                )
                out["followers"] = log_followers(
                    server.port, site, table, args.followers, args.lines
                )
            out["error_lines_in_logs"] = sum(
                len(ERROR_LINE.findall(proc.log_path.read_text(errors="replace")))
                for proc in (server, *workers)
            )
    finally:
        table.close()
    return out


def rq_shared_keys(redis_url: str) -> set[bytes]:
    from redis import Redis

    return set(Redis.from_url(redis_url).scan_iter(match=RQ_SHARED_KEYS, count=1000))


def forget_redis_keys(
    redis_url: str, prefix: str, job_ids: list[str], shared_before: set[bytes]
) -> int:
    """Delete what the run left in Redis: every key naming ``prefix``, the platform
    jobs' RQ hashes and results, RQ's shared keys that were not there before, and the
    run's names in RQ's sets. Returns how many keys were deleted."""
    from redis import Redis

    redis = Redis.from_url(redis_url)
    deleted = 0
    keys = list(redis.scan_iter(match=f"*{prefix}*", count=1000))
    keys += [k for k in redis.scan_iter(match=RQ_SHARED_KEYS) if k not in shared_before]
    for i in range(0, len(job_ids), 1000):
        for job_id in job_ids[i : i + 1000]:
            keys += [f"rq:job:{job_id}", f"rq:results:{job_id}"]
    for i in range(0, len(keys), 1000):
        deleted += int(redis.delete(*keys[i : i + 1000]))
    for key in ("rq:queues", "rq:workers"):
        members = [m for m in redis.smembers(key) if prefix.encode() in m]
        if members:
            redis.srem(key, *members)
    return deleted


def platform_job_ids(url: str | None) -> list[str]:
    """Every job id in the rq driver's database (their RQ keys are named by id)."""
    if url is None:
        return []
    from sqlalchemy import select

    from zhongtai.jobs.models import Job

    table = JobsTable(url)
    try:
        with table.db.engine.connect() as conn:
            return list(conn.scalars(select(Job.id)))
    except Exception:  # never created, or not seeded: nothing of it reached Redis
        return []
    finally:
        table.close()


# --------------------------------------------------------------------------- report


def ms(value: float) -> str:
    return f"{value:7.1f} ms"


def describe_throughput(name: str, result: dict[str, Any]) -> None:
    worker = result.get("worker", {})
    print(
        f"{name:<10} {result['jobs_per_s']:7.0f} jobs/s  ({result['jobs']} in "
        f"{result['seconds']:.1f} s; submitted in {result['submit_seconds']:.1f} s = "
        f"{result['submit_per_s']:.0f}/s)" + ("" if result["complete"] else "  INCOMPLETE")
    )
    if "queue_wait_ms_p50" in result:
        wait, longest = result["queue_wait_ms_p50"] / 1e3, result["queue_wait_ms_max"] / 1e3
        print(
            f"{'':<10} waited to start (started_at - created_at): p50 {wait:.1f} s, "
            f"max {longest:.1f} s"
        )
    if worker:
        print(
            f"{'':<10} per worker: a job every {worker['cycle_ms_p50']:.2f} ms (p50) = "
            f"{worker['in_job_ms_p50']:.2f} in the job + {worker['between_jobs_ms_p50']:.2f} "
            "between jobs"
        )
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_s_per_1000_jobs"].items())
    print(f"{'':<10} CPU s per 1000 jobs: {cpu}")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every process started here is stopped."""
    raise KeyboardInterrupt


SCENARIO_NAMES = ("throughput", "latency", "followers", "drain", "floor")
DEFAULT_SCENARIOS = ("throughput", "latency", "followers")  # drain, floor: diagnostics
DRIVERS = ("rq", "embedded")


def names(value: str, allowed: tuple[str, ...]) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    for name in chosen:
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"{name!r}: choose among {', '.join(allowed)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="for the throughput")
    parser.add_argument("--concurrency", type=int, default=32, help="submitting clients")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--lines", type=int, default=10_000, help="the followed job's lines")
    parser.add_argument("--database", choices=("auto", "sqlite", "postgres"), default="auto")
    parser.add_argument("--redis-url", default=REDIS_URL, help="not database 0: keys are removed")
    parser.add_argument(
        "--scenarios",
        type=lambda v: names(v, SCENARIO_NAMES),
        default=list(DEFAULT_SCENARIOS),
        help="comma-separated: throughput,latency,followers,drain,floor "
        "(default: all but drain and floor)",
    )
    parser.add_argument(
        "--drivers",
        type=lambda v: names(v, DRIVERS),
        default=list(DRIVERS),
        help="comma-separated: rq,embedded (default: both)",
    )
    parser.add_argument(
        "--no-rq-followers", action="store_true", help="log followers on embedded only"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="throughput rounds: plain RQ and each driver back to back, in alternating "
        "order; the ratio is the median of the rounds' (default 3)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--jobs 1000 --followers 10 --lines 1000 --rounds 1",
    )
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.followers, args.lines, args.rounds = 1000, 10, 1000, 1
        args.latency_samples = min(args.latency_samples, 20)
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    scenarios = set(args.scenarios)
    for name in [k for k in os.environ if k.startswith("ZHONGTAI_")]:
        del os.environ[name]  # the seeding below reads settings; the shell must not leak in
    signal.signal(signal.SIGTERM, _interrupt)

    kind = args.database
    if kind == "auto":
        kind = "postgres" if postgres_reachable() else "sqlite"
    elif kind == "postgres" and not postgres_reachable():
        raise SystemExit(f"PostgreSQL not reachable at {POSTGRES_ADMIN}")
    from redis import Redis

    Redis.from_url(args.redis_url).ping()
    shared_before = rq_shared_keys(args.redis_url)
    prefix = f"ztbench-{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(48)
    print(
        f"database: {kind}; Redis: {args.redis_url} (prefix {prefix}); {WORKERS} workers; "
        f"{machine()}",
        flush=True,
    )
    summary: dict[str, Any] = {
        "machine": machine(),
        "database": kind,
        "jobs": args.jobs,
        "workers": WORKERS,
        "concurrency": args.concurrency,
    }
    started = time.monotonic()
    with scratch_dir("zt-bench-jobs-") as work:
        dbs = Databases(kind, work)
        try:
            if scenarios & {"throughput", "floor"}:
                print(f"plain RQ (baseline), {args.jobs} jobs …", flush=True)
                summary["plain_rq"] = plain_rq_throughput(args.redis_url, prefix, args.jobs, work)
            if "drain" in scenarios and "rq" in args.drivers:
                print(f"plain RQ drain (baseline), {args.jobs} jobs …", flush=True)
                summary["plain_rq_drain"] = plain_rq_throughput(
                    args.redis_url, prefix, args.jobs, work, drain=True
                )
            if "floor" in scenarios and kind != "postgres":
                print("the floor: skipped (it needs PostgreSQL)", flush=True)
            elif "floor" in scenarios:
                print(f"the floor (bench/_floor.py), {args.jobs} jobs …", flush=True)
                summary["floor"] = floor_throughput(
                    args.redis_url, prefix, dbs, work, args.jobs, args.concurrency
                )
            for driver in args.drivers:
                mine = set(scenarios) - {"floor"}
                if driver == "rq" and args.no_rq_followers:
                    mine.discard("followers")
                if not mine:  # nothing of its own to run: no server and workers to start
                    summary[driver] = {}
                    continue
                print(f"zhongtai, {driver} driver …", flush=True)
                summary[driver] = run_platform(
                    driver, dbs, work, secret, args.redis_url, prefix, args, mine
                )
            if "throughput" in scenarios:
                summary["rounds"] = throughput_rounds(summary, args, dbs, work, secret, prefix)
        finally:
            try:
                ids = [
                    job_id
                    for label, url in dbs.urls.items()
                    if label.split("-")[0] == "rq"
                    for job_id in platform_job_ids(url)
                ]
                removed = forget_redis_keys(args.redis_url, prefix, ids, shared_before)
                print(f"cleaned up: {removed} Redis keys, the databases and the data directories")
            finally:
                dbs.drop_all()
    summary["seconds"] = time.monotonic() - started
    for driver in args.drivers:
        ratios = [r[f"ratio_{driver}"] for r in summary.get("rounds", []) if f"ratio_{driver}" in r]
        if ratios:
            summary[f"ratio_{driver}"] = statistics.median(ratios)
    if "plain_rq" in summary and "floor" in summary:
        summary["ratio_floor"] = summary["floor"]["jobs_per_s"] / summary["plain_rq"]["jobs_per_s"]
    if "plain_rq_drain" in summary and "drain" in summary.get("rq", {}):
        base = summary["plain_rq_drain"]["jobs_per_s"]
        summary["drain_ratio_rq"] = summary["rq"]["drain"]["jobs_per_s"] / base
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jobs.json").write_text(json.dumps(summary, indent=2, default=str))
    report(summary, args.drivers)


def throughput_rounds(
    summary: dict[str, Any],
    args: argparse.Namespace,
    dbs: Databases,
    work: Path,
    secret: str,
    prefix: str,
) -> list[dict[str, Any]]:
    """The first round's throughputs (from the run so far) and ``--rounds`` - 1 more,
    each plain RQ and every driver back to back, with fresh processes, databases and
    queue names. The order alternates (round 2 starts with the platform, round 3 with
    plain RQ, …), so that neither side is always the one measured after the other."""

    def ratios(entry: dict[str, Any]) -> dict[str, Any]:
        base = entry["plain_rq"]["jobs_per_s"]
        for driver in args.drivers:
            if driver in entry:
                entry[f"ratio_{driver}"] = entry[driver]["jobs_per_s"] / base
        return entry

    first = {"plain_rq": summary["plain_rq"]}
    for driver in args.drivers:
        if "throughput" in summary.get(driver, {}):
            first[driver] = summary[driver]["throughput"]
    rounds = [ratios(first)]
    for number in range(2, args.rounds + 1):
        entry: dict[str, Any] = {}
        mark = f"{prefix}r{number}"  # the run's prefix in it: cleaned up with the rest
        order = ("platform", "plain") if number % 2 == 0 else ("plain", "platform")
        for side in order:
            if side == "plain":
                print(f"round {number}: plain RQ …", flush=True)
                entry["plain_rq"] = plain_rq_throughput(args.redis_url, mark, args.jobs, work)
                continue
            for driver in args.drivers:
                print(f"round {number}: zhongtai, {driver} driver …", flush=True)
                entry[driver] = run_platform(
                    driver,
                    dbs,
                    work,
                    secret,
                    args.redis_url,
                    mark,
                    args,
                    {"throughput"},
                    label=f"{driver}-r{number}",
                )["throughput"]
        rounds.append(ratios(entry))
    return rounds


def report(summary: dict[str, Any], drivers: list[str]) -> None:
    """The figures, then the verdict lines."""
    print()
    print(
        f"== jobs ({summary['machine']}; {summary['database']}; {WORKERS} workers; "
        f"{summary['seconds']:.0f} s in all) =="
    )
    if "plain_rq" in summary:
        describe_throughput("plain RQ", summary["plain_rq"])
    if "floor" in summary:
        describe_throughput("floor", summary["floor"])
    for driver in drivers:
        if "throughput" in summary[driver]:
            describe_throughput(driver, summary[driver]["throughput"])
    if "plain_rq_drain" in summary:
        describe_throughput("plain RQ, drain", summary["plain_rq_drain"])
    for driver in drivers:
        if "drain" in summary[driver]:
            describe_throughput(f"{driver}, drain", summary[driver]["drain"])
    for driver in drivers:
        lat = summary[driver].get("latency")
        if lat is None:
            continue
        print(
            f"{driver:<10} submit→running p50 {ms(lat['submit_to_running_ms_p50'])} "
            f"(p90 {lat['submit_to_running_ms_p90']:.1f}, max "
            f"{lat['submit_to_running_ms_max']:.1f}); submit→succeeded p50 "
            f"{lat['submit_to_succeeded_ms_p50']:.1f} ms; POST round trip p50 "
            f"{lat['post_round_trip_ms_p50']:.1f} ms; client's send → started_at p50 "
            f"{lat['client_send_to_running_ms_p50']:.1f} ms"
        )
    for driver in drivers:
        fol = summary[driver].get("followers")
        if fol is None:
            continue
        print(
            f"{driver:<10} {fol['followers']} followers x {fol['lines']} lines: "
            f"{fol['attached_before_start']} attached before the job started; job ran "
            f"{fol['job_seconds']:.1f} s, the last line arrived "
            f"{fol['last_line_after_finish_s']:.1f} s after it finished; "
            f"client CPU {fol['client_cpu_s']:.1f} s"
        )
        for problem in fol["problems"]:
            print(f"{'':<10} {problem}")
    for driver in drivers:
        if summary[driver].get("error_lines_in_logs"):
            print(f"WARNING: {summary[driver]['error_lines_in_logs']} error lines in {driver} logs")
    rounds = summary.get("rounds", [])
    for number, entry in enumerate(rounds[1:], start=2):
        rates = [f"plain RQ {entry['plain_rq']['jobs_per_s']:.0f}"] + [
            f"{d} {entry[d]['jobs_per_s']:.0f}" for d in drivers if d in entry
        ]
        print(f"round {number:<4} jobs/s: {', '.join(rates)}")
    print()
    if "ratio_rq" in summary:
        value = summary["ratio_rq"]
        each = ", ".join(f"{r['ratio_rq']:.2f}" for r in rounds if "ratio_rq" in r)
        print(
            f"throughput, rq driver ÷ plain RQ: {value:.2f} (target ≥ {TARGET_THROUGHPUT}) "
            f"{verdict(value >= TARGET_THROUGHPUT)}"
            + (f"; the median of {len(rounds)} rounds: {each}" if len(rounds) > 1 else "")
        )
    if "ratio_floor" in summary:
        print(
            f"throughput, floor ÷ plain RQ: {summary['ratio_floor']:.2f} (a diagnostic: the "
            "platform's skeleton alone, bench/_floor.py)"
        )
    if "drain_ratio_rq" in summary:
        print(
            f"drain (workers let go on a queued backlog), rq driver ÷ plain RQ: "
            f"{summary['drain_ratio_rq']:.2f} (a diagnostic: no target)"
        )
    if "ratio_embedded" in summary:
        rate = summary["embedded"]["throughput"]["jobs_per_s"]
        each = ", ".join(f"{r['ratio_embedded']:.2f}" for r in rounds if "ratio_embedded" in r)
        print(
            f"throughput, embedded driver ÷ plain RQ: {summary['ratio_embedded']:.2f} "
            f"({rate:.0f} jobs/s in round 1; no target)"
            + (f"; the median of {len(rounds)} rounds: {each}" if len(rounds) > 1 else "")
        )
    for driver in drivers:
        if "latency" not in summary[driver]:
            continue
        p50 = summary[driver]["latency"]["submit_to_running_ms_p50"]
        target = TARGET_LATENCY_MS[driver]
        print(
            f"submit→running p50, {driver} driver: {p50:.1f} ms (target ≤ {target:g} ms) "
            f"{verdict(p50 <= target)}"
        )
    for driver in drivers:
        fol = summary[driver].get("followers")
        if fol is None:
            continue
        print(
            f"log followers, {driver} driver: {fol['complete_followers']}/{fol['followers']} "
            f"received seq 1..{fol['lines']} once, in order {verdict(fol['all_complete'])}"
        )
        print(
            f"log delay (line's at → receipt), {driver} driver: p50 "
            f"{fol['delay_ms_p50']:.1f} ms, p99 {fol['delay_ms_p99']:.1f} ms, max "
            f"{fol['delay_ms_max']:.1f} ms (no target)"
        )


if __name__ == "__main__":
    main()

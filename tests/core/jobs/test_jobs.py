"""Jobs on the embedded queue, through the API: submit, run, fail, retry, cancel, follow."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from litestar.testing import TestClient
from pydantic import BaseModel, Field
from sqlalchemy import select

import zhongtai
from zhongtai.jobs import Admission, JobContext, JobType
from zhongtai.jobs.models import Job
from zhongtai.testing import ZtIdentity, redis_for_tests, rq_worker_thread

JOBS = "/api/v1/jobs"
FINAL = {"succeeded", "failed", "cancelled"}


class AddParams(BaseModel):
    a: int
    b: int = Field(ge=0)
    lines: int = Field(default=0, ge=0, le=20_000)
    sleep: float = Field(default=0.0, ge=0)
    fail_times: int = 0


ATTEMPTS: dict[str, int] = {}


def add(ctx: JobContext, params: AddParams) -> dict[str, int]:
    for i in range(params.lines):
        ctx.log(f"line {i + 1} password=hunter2")
    if params.sleep:
        ctx.wait(params.sleep)
        ctx.check_cancelled()
    ATTEMPTS[ctx.job_id] = ATTEMPTS.get(ctx.job_id, 0) + 1
    if ATTEMPTS[ctx.job_id] <= params.fail_times:
        raise ValueError(f"attempt {ctx.attempt} went wrong")
    ctx.progress(1.0, "done")
    return {"sum": params.a + params.b}


async def add_async(ctx: JobContext, params: AddParams) -> dict[str, int]:
    import asyncio

    ctx.log("async start")
    await asyncio.sleep(params.sleep)
    return {"sum": params.a + params.b}


def collide(ctx: JobContext, params: AddParams) -> dict[str, int]:
    """Logs a line, then finds the next line's number taken by a row written elsewhere."""
    from sqlalchemy import func

    from zhongtai.hooks.events import utcnow
    from zhongtai.jobs.models import JobLog

    ctx.log("stored")
    ctx.flush()
    with ctx.platform.db.transaction() as session:
        last = session.scalar(select(func.max(JobLog.seq)).where(JobLog.job_id == ctx.job_id))
        session.add(
            JobLog(
                job_id=ctx.job_id, seq=last + 1, at=utcnow(), attempt=ctx.attempt, line="intruder"
            )
        )
    ctx.log("collides")
    return {"sum": params.a + params.b}


def stubborn(ctx: JobContext, params: AddParams) -> None:
    time.sleep(params.sleep)  # ignores cancellation


class DemoJobs:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.hold_all = False

    @zhongtai.hookimpl
    def register_job_types(self) -> list[JobType]:
        return [
            JobType("demo.add", add, AddParams, retries=2, backoff=0.0, timeout=30),
            JobType("demo.add_async", add_async, AddParams, timeout=1),
            JobType("demo.stubborn", stubborn, AddParams, timeout=1),
            JobType("demo.once", add, AddParams, retries=0),
            JobType("demo.collide", collide, AddParams, retries=0),
            JobType("demo.resumable", add, AddParams, retries=0, resume_interrupted=True),
        ]

    @zhongtai.hookimpl
    def on_event(self, event: Any) -> None:
        if event.name.startswith("job."):
            self.events.append((event.name, event.job_id))

    @zhongtai.hookimpl
    def admit_job(self, request: Any) -> Admission | None:
        if request.job.params.get("a") == 666:
            return Admission.refuse("the number of the beast")
        if self.hold_all and request.phase == "start":
            return Admission.hold("held by the test policy")
        return None


@pytest.fixture
def demo(zt_register_plugin: Callable[..., None]) -> DemoJobs:
    plugin = DemoJobs()
    zt_register_plugin(plugin, name="demo")
    return plugin


@pytest.fixture(params=["every policy asked", "demo policy declared"])
def claim_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, demo: DemoJobs
) -> list[str]:
    """Both ways a worker claims a job, and the ids the long way (a transaction in which
    every policy is asked) claimed. Declared (``admits_only``) to decide ``demo.once``
    alone, the demo policy leaves ``demo.add`` jobs to the claim in one statement on
    PostgreSQL; undeclared, it is asked about every job."""
    from zhongtai.jobs.engine import JobEngine

    if request.param == "demo policy declared":
        monkeypatch.setattr(
            DemoJobs.admit_job, "zhongtai_admits", frozenset({"demo.once"}), raising=False
        )
    long_way: list[str] = []
    claim = JobEngine._claim_in_transaction

    def counted(self: JobEngine, job_id: str, worker: str) -> Any:
        long_way.append(job_id)
        return claim(self, job_id, worker)

    monkeypatch.setattr(JobEngine, "_claim_in_transaction", counted)
    return long_way


@pytest.fixture
def jobs_app(
    demo: DemoJobs, zt_app_factory: Callable[..., Any], zt_settings: Any
) -> Callable[..., Any]:
    @contextmanager
    def make(rq_workers: int = 2, **jobs: Any) -> Iterator[tuple[TestClient[Any], ZtIdentity]]:
        workers = rq_workers
        settings = zt_settings.model_copy(update={"jobs": zt_settings.jobs.model_copy(update=jobs)})
        app = zt_app_factory(settings=settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            platform = app.state["platform"]
            # The rq driver (PostgreSQL + Redis run) needs workers; embedded runs its own.
            with rq_worker_thread(platform, count=workers):
                yield client, ZtIdentity(platform)

    return make


@pytest.fixture
def env(jobs_app: Callable[..., Any]) -> Iterator[tuple[TestClient[Any], ZtIdentity]]:
    with jobs_app() as pair:
        yield pair


def submit(client: TestClient[Any], headers: dict[str, str], **body: Any) -> Any:
    return client.post(JOBS, json=body, headers=headers)


def parked(
    client: TestClient[Any], headers: dict[str, str], project_id: str, **params: int
) -> dict[str, Any]:
    """A ``demo.add`` job scheduled for 2099: it waits until the test moves it."""
    response = submit(
        client,
        headers,
        type="demo.add",
        project=project_id,
        params=params,
        run_at="2099-01-01T00:00:00Z",
    )
    assert response.status_code == 201, response.text
    return cast(dict[str, Any], response.json())


def wait_for(
    client: TestClient[Any], headers: dict[str, str], job_id: str, statuses: set[str] = FINAL
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = client.get(f"{JOBS}/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job['status']}")


def delivered(demo: DemoJobs, name: str, job_id: str, within: float = 5.0) -> bool:
    """Whether ``demo`` got the event. A job's outcome event is delivered after its
    commit, by the worker that wrote it: a reader can see the job finished a moment
    before the event arrives."""
    deadline = time.monotonic() + within
    while (name, job_id) not in demo.events:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_hook_register_job_types(env, demo):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    types = client.get(f"{JOBS}/types", headers=headers).json()["items"]
    add_type = next(t for t in types if t["name"] == "demo.add")
    assert add_type["retries"] == 2
    assert add_type["params_schema"]["properties"]["b"]["minimum"] == 0
    response = submit(client, headers, type="demo.add", project=project.id, params={"a": 2, "b": 3})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "queued" and created["owner"] == user.id
    job = wait_for(client, headers, created["id"])
    assert job["status"] == "succeeded", job
    assert job["result"] == {"sum": 5}
    assert job["progress"] == 1.0 and job["attempts"] == 1
    assert job["started_at"] and job["finished_at"]
    assert ("job.submitted", job["id"]) in demo.events
    assert delivered(demo, "job.succeeded", job["id"]), demo.events


def test_async_handlers_run_and_time_out(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    ok = submit(client, headers, type="demo.add_async", project=project.id, params={"a": 1, "b": 1})
    slow = submit(
        client,
        headers,
        type="demo.add_async",
        project=project.id,
        params={"a": 1, "b": 1, "sleep": 5},
    )
    assert wait_for(client, headers, ok.json()["id"])["result"] == {"sum": 2}
    timed_out = wait_for(client, headers, slow.json()["id"])
    assert timed_out["status"] == "failed"
    assert timed_out["error"].startswith("timed out after 1 s")


def test_bad_submissions_name_the_field(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    unknown = submit(client, headers, type="demo.nope", project=project.id)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "type"
    bad = submit(client, headers, type="demo.add", project=project.id, params={"a": 1, "b": -1})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "params.b"
    missing = submit(client, headers, type="demo.add", project=project.id, params={"b": 1})
    assert missing.json()["errors"][0]["field"] == "params.a"
    naive = submit(
        client,
        headers,
        type="demo.add",
        project=project.id,
        params={"a": 1, "b": 1},
        run_at="2030-01-01T00:00:00",
    )
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "run_at"
    priority = submit(
        client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1}, priority=1000
    )
    assert priority.status_code == 400 or priority.status_code == 422
    extra = submit(client, headers, type="demo.add", project=project.id, params={}, owner="x")
    assert extra.status_code in (400, 422)


def test_shell_metacharacters_are_just_data(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    response = submit(
        client, headers, type="demo.add", project=project.id, params={"a": "$(id)", "b": 1}
    )
    assert response.status_code == 422  # an int field refuses it; nothing ran
    assert response.json()["errors"][0]["field"] == "params.a"


def test_a_failing_handler_fails_with_a_summary_and_a_logged_traceback(env, demo):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    created = submit(
        client,
        headers,
        type="demo.once",
        project=project.id,
        params={"a": 1, "b": 1, "fail_times": 5},
    ).json()
    job = wait_for(client, headers, created["id"])
    assert job["status"] == "failed"
    assert job["error"] == "ValueError: attempt 1 went wrong"
    assert "Traceback" not in job["error"]
    lines = client.get(f"{JOBS}/{job['id']}/logs", headers=headers).json()["items"]
    text = "\n".join(item["line"] for item in lines)
    assert "Traceback (most recent call last)" in text and "went wrong" in text
    assert delivered(demo, "job.failed", job["id"]), demo.events


def test_retries_until_it_succeeds(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    created = submit(
        client,
        headers,
        type="demo.add",
        project=project.id,
        params={"a": 1, "b": 2, "fail_times": 2},
    ).json()
    job = wait_for(client, headers, created["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 3 and job["error"] is None
    lines = client.get(f"{JOBS}/{job['id']}/logs", headers=headers).json()["items"]
    assert sum("failed: ValueError" in item["line"] for item in lines) == 2


def test_log_lines_that_collide_never_keep_the_outcome_from_being_recorded(env):
    """Lines numbered like stored ones cannot be written by any retry: they are dropped
    and the job still ends, at once (it used to be retried as an outage for two
    minutes, then left running for the reconciler)."""
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    created = submit(
        client, headers, type="demo.collide", project=project.id, params={"a": 1, "b": 2}
    ).json()
    job = wait_for(client, headers, created["id"])
    assert job["status"] == "succeeded" and job["result"] == {"sum": 3}
    lines = client.get(f"{JOBS}/{job['id']}/logs", headers=headers).json()["items"]
    assert [item["line"] for item in lines] == ["stored", "intruder"]


def test_delayed_jobs_and_retries_start_on_time_though_the_engine_rarely_polls(jobs_app):
    """The engine that schedules a job (a delay, a retry's backoff) queues it when it is
    due; the slow poll is only for jobs other processes scheduled."""
    from datetime import datetime, timedelta

    from zhongtai.hooks.events import utcnow

    with jobs_app(poll_interval=30.0, reconcile_interval=30.0) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        due = utcnow() + timedelta(seconds=1)
        delayed = submit(
            client,
            headers,
            type="demo.add",
            project=project.id,
            params={"a": 1, "b": 2},
            run_at=due.isoformat(),
        ).json()
        assert delayed["status"] == "scheduled"
        job = wait_for(client, headers, delayed["id"])
        started = datetime.fromisoformat(job["started_at"])
        assert job["status"] == "succeeded"
        assert due <= started < due + timedelta(seconds=5), (due, started)
        # Fails once, after the engine last looked at the schedule while it ran.
        retried = submit(
            client,
            headers,
            type="demo.add",
            project=project.id,
            params={"a": 1, "b": 2, "fail_times": 1, "sleep": 0.6},
        ).json()
        job = wait_for(client, headers, retried["id"])
        assert job["status"] == "succeeded" and job["attempts"] == 2


def test_a_job_another_process_scheduled_is_found_by_the_poll(jobs_app):
    from zhongtai.hooks.events import utcnow

    with jobs_app(poll_interval=0.5, reconcile_interval=30.0) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        job = parked(client, headers, project.id, a=2, b=2)
        # What another server's engine would write: this one was never told.
        with platform.db.transaction() as session:
            session.get(Job, job["id"]).run_at = utcnow()
        done = wait_for(client, headers, job["id"])
        assert done["status"] == "succeeded" and done["result"] == {"sum": 4}


def test_a_job_that_cannot_run_here_fails_at_its_claim_with_the_reason(jobs_app, claim_path):
    """A worker without the job's type, or with a schema its stored parameters no longer
    fit, fails the job when it claims it: no attempt counted, no worker recorded (either
    way it claims)."""
    from zhongtai.hooks.events import utcnow

    with jobs_app(poll_interval=0.5) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        gone = parked(client, headers, project.id, a=1, b=1)
        stale = parked(client, headers, project.id, a=1, b=1)
        with platform.db.transaction() as session:
            session.get(Job, gone["id"]).type = "demo.uninstalled"
            session.get(Job, stale["id"]).params = {"a": "one", "b": 1}
            for job_id in (gone["id"], stale["id"]):
                session.get(Job, job_id).run_at = utcnow()
        for job, reason in (
            (gone, "job type demo.uninstalled is not installed on "),
            (stale, "stored parameters no longer valid: "),
        ):
            done = wait_for(client, headers, job["id"])
            assert done["status"] == "failed" and done["error"].startswith(reason), done
            assert done["attempts"] == 0 and done["started_at"] is None, done
            with platform.db.transaction() as session:
                assert session.get(Job, job["id"]).worker is None


@pytest.fixture
def schedule_reads(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When the engines of the test looked for due scheduled jobs (a database read)."""
    from zhongtai.jobs.engine import JobEngine

    calls: list[float] = []
    promote = JobEngine.promote_due

    def counted(self: JobEngine) -> float | None:
        calls.append(time.monotonic())
        return promote(self)

    monkeypatch.setattr(JobEngine, "promote_due", counted)
    return calls


def test_an_idle_engine_sleeps_between_polls(jobs_app, schedule_reads):
    """Idle, the maintenance thread wakes for the poll and the reconciler only, not
    several times a second: on a server nobody uses, each wake-up is a transaction."""
    calls = schedule_reads
    with jobs_app(poll_interval=1.0, reconcile_interval=30.0):
        time.sleep(0.5)  # start-up
        calls.clear()
        time.sleep(2.5)
    assert 1 <= len(calls) <= 4, calls


def test_a_busy_engine_does_not_look_for_due_jobs_at_every_job(jobs_app, schedule_reads):
    """Jobs starting here make the maintenance thread flush their logs, not read the
    schedule: under load that read came once per job (or four times a second)."""
    calls = schedule_reads
    with jobs_app(poll_interval=30.0, reconcile_interval=30.0) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        time.sleep(0.5)  # start-up
        calls.clear()
        jobs = [
            submit(
                client,
                headers,
                type="demo.add",
                project=project.id,
                params={"a": n, "b": 1, "sleep": 0.05},
            ).json()
            for n in range(20)
        ]
        for n, job in enumerate(jobs):
            done = wait_for(client, headers, job["id"])
            assert done["status"] == "succeeded" and done["result"] == {"sum": n + 1}
    assert len(calls) <= 1, calls


def test_cancel_waiting_running_and_finished_jobs(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    later = parked(client, headers, project.id, a=1, b=1)
    assert later["status"] == "scheduled"
    cancelled = client.post(f"{JOBS}/{later['id']}/cancel", headers=headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"{JOBS}/{later['id']}/cancel", headers=headers)
    assert again.status_code == 409
    running = submit(
        client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1, "sleep": 30}
    ).json()
    wait_for(client, headers, running["id"], {"running"})
    assert client.post(f"{JOBS}/{running['id']}/cancel", headers=headers).status_code == 202
    job = wait_for(client, headers, running["id"])
    assert job["status"] == "cancelled" and job["error"] == "cancelled while running"
    retried = client.post(f"{JOBS}/{running['id']}/retry", headers=headers)
    assert retried.status_code == 202
    # sleep 30 again: cancel once more so the test ends quickly
    wait_for(client, headers, running["id"], {"running"})
    client.post(f"{JOBS}/{running['id']}/cancel", headers=headers)
    assert wait_for(client, headers, running["id"])["attempts"] == 2


def test_a_handler_that_ignores_cancellation_is_abandoned_on_timeout(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    created = submit(
        client,
        headers,
        type="demo.stubborn",
        project=project.id,
        params={"a": 0, "b": 0, "sleep": 30},
    ).json()
    job = wait_for(client, headers, created["id"])
    assert job["status"] == "failed"
    assert "did not stop" in job["error"]


def test_only_failed_or_cancelled_jobs_can_be_retried(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    done = submit(
        client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1}
    ).json()
    wait_for(client, headers, done["id"])
    assert client.post(f"{JOBS}/{done['id']}/retry", headers=headers).status_code == 409


def test_idempotency_key(env):
    client, identity = env
    user, project = identity.project_with("developer")
    other = identity.user()
    identity.member(other, project, "developer")
    body = {"type": "demo.add", "project": project.id, "params": {"a": 1, "b": 1}}
    first = client.post(
        JOBS, json=body, headers={**identity.headers(user), "Idempotency-Key": "k1"}
    )
    assert first.status_code == 201
    repeat = client.post(
        JOBS, json=body, headers={**identity.headers(user), "Idempotency-Key": "k1"}
    )
    assert repeat.status_code == 200 and repeat.json()["id"] == first.json()["id"]
    changed = client.post(
        JOBS,
        json={**body, "params": {"a": 2, "b": 1}},
        headers={**identity.headers(user), "Idempotency-Key": "k1"},
    )
    assert changed.status_code == 422
    theirs = client.post(
        JOBS, json=body, headers={**identity.headers(other), "Idempotency-Key": "k1"}
    )
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


def test_other_projects_jobs_do_not_exist(env):
    client, identity = env
    alice, alices = identity.project_with("developer")
    bob, _bobs = identity.project_with("developer")
    viewer = identity.user()
    identity.member(viewer, alices, "viewer")
    job = submit(
        client, identity.headers(alice), type="demo.add", project=alices.id, params={"a": 1, "b": 1}
    ).json()
    for method, path in [
        ("get", f"{JOBS}/{job['id']}"),
        ("get", f"{JOBS}/{job['id']}/logs"),
        ("get", f"{JOBS}/{job['id']}/logs/stream"),
        ("post", f"{JOBS}/{job['id']}/cancel"),
        ("post", f"{JOBS}/{job['id']}/retry"),
    ]:
        response = getattr(client, method)(path, headers=identity.headers(bob))
        assert response.status_code == 404, (method, path, response.text)
    assert client.get(JOBS, headers=identity.headers(bob)).json()["items"] == []
    listed = client.get(
        JOBS, headers=identity.headers(viewer), params={"project": alices.id}
    ).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    into_other = submit(
        client, identity.headers(bob), type="demo.add", project=alices.id, params={"a": 1, "b": 1}
    )
    assert into_other.status_code == 404
    as_viewer = submit(
        client,
        identity.headers(viewer),
        type="demo.add",
        project=alices.id,
        params={"a": 1, "b": 1},
    )
    assert as_viewer.status_code == 403
    assert client.get(JOBS).status_code == 401


def test_hook_admit_job(jobs_app, demo):
    with jobs_app(max_running_per_project=1) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        refused = submit(
            client, headers, type="demo.add", project=project.id, params={"a": 666, "b": 1}
        )
        assert refused.status_code == 429 and "beast" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        first = submit(
            client,
            headers,
            type="demo.add",
            project=project.id,
            params={"a": 1, "b": 1, "sleep": 0.5},
        ).json()
        wait_for(client, headers, first["id"], {"running"})
        low = submit(
            client, headers, type="demo.add", project=project.id, params={"a": 2, "b": 0}
        ).json()
        high = submit(
            client,
            headers,
            type="demo.add",
            project=project.id,
            params={"a": 3, "b": 0},
            priority=50,
        ).json()
        assert low["status"] == "held" and high["status"] == "held"
        assert "limit 1" in low["progress_message"]
        done = [wait_for(client, headers, j["id"]) for j in (first, low, high)]
        assert all(j["status"] == "succeeded" for j in done)
        # Held jobs start by priority, then in submission order.
        assert done[2]["started_at"] < done[1]["started_at"]


def test_claims_racing_in_one_project_start_no_more_jobs_than_its_limit(jobs_app, claim_path):
    """Workers claiming jobs of one project at the same moment (threads with their own
    connections, as processes have): the project's lock lets exactly ``limit`` run;
    the others go back to held, unrun (and are queued again as those end). The same
    whether the claims are transactions or, on PostgreSQL, single statements."""
    import threading

    from zhongtai.jobs.engine import jobs_engine

    with jobs_app(max_running_per_project=2) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        engine = jobs_engine(platform)
        jobs = [parked(client, headers, project.id, a=i, b=0, sleep=0.5) for i in range(8)]
        with platform.db.transaction() as session:
            for job in jobs:  # queued, yet never dispatched: only the threads below run them
                stored = session.get(Job, job["id"])
                stored.status, stored.run_at = "queued", None
        start = threading.Barrier(len(jobs))
        outcomes: dict[str, str | None] = {}

        def claim(job_id: str, n: int) -> None:
            start.wait()
            outcomes[job_id] = engine.run(job_id, f"racer-{n}")

        threads = [
            threading.Thread(target=claim, args=(job["id"], n)) for n, job in enumerate(jobs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        ran = [job_id for job_id, outcome in outcomes.items() if outcome is not None]
        assert len(outcomes) == len(jobs) and len(ran) == 2, outcomes
        assert all(outcomes[job_id] == "succeeded" for job_id in ran)


def test_on_postgresql_a_job_no_plugin_policy_decides_is_claimed_in_one_statement(
    jobs_app, demo, claim_path
):
    """With every plugin policy declaring the job types it decides, a job of another type
    is claimed without asking them (``zt_claim_job``): the row is claimed as the long way
    claims it, and its ``job.started`` event is delivered after the claim commits. A job
    of a declared type is claimed the long way, its policy asked."""
    with jobs_app() as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        plain = submit(
            client, headers, type="demo.add", project=project.id, params={"a": 2, "b": 0}
        )
        guarded = submit(
            client, headers, type="demo.once", project=project.id, params={"a": 3, "b": 0}
        )
        assert plain.status_code == guarded.status_code == 201, (plain.text, guarded.text)
        done = [wait_for(client, headers, r.json()["id"]) for r in (plain, guarded)]
        assert [d["status"] for d in done] == ["succeeded", "succeeded"], done
        for job in done:
            assert job["attempts"] == 1 and job["worker"] and job["error"] is None, job
            assert job["started_at"] is not None and job["started_at"] <= job["finished_at"]
            assert ("job.started", job["id"]) in demo.events
        declared = getattr(DemoJobs.admit_job, "zhongtai_admits", None) is not None
        at_once = declared and not platform.db.is_embedded
        assert (done[0]["id"] in claim_path) is not at_once, claim_path
        assert done[1]["id"] in claim_path


@pytest.mark.postgres_only
def test_on_postgresql_a_claim_alone_commits_without_waiting_for_the_disk(jobs_app):
    """``zt_claim_job`` turns ``synchronous_commit`` off for its own transaction (a lost
    claim is recovered: see the next test); the setting ends with it, so the attempt's
    outcome, on the same connection, waits for the flush as every other write does."""
    from sqlalchemy import text

    with jobs_app(reconcile_interval=3600) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        job = parked(client, headers, project.id, a=1, b=1)
        with platform.db.transaction() as session:  # queued, never dispatched
            row = session.get(Job, job["id"])
            row.status, row.run_at = "queued", None
        claim = text("SELECT id FROM zt_claim_job(:id, 'test-worker', now(), 10, :types)")
        with platform.db.engine.connect() as conn:

            def setting() -> str | None:
                return conn.scalar(text("SHOW synchronous_commit"))

            with conn.begin():
                before = setting()
            with conn.begin():
                claimed = conn.execute(claim, {"id": job["id"], "types": ["demo.add"]}).all()
                assert [r.id for r in claimed] == [job["id"]]
                assert setting() == "off"
            with conn.begin():
                assert setting() == before
            with conn.begin():  # nothing claimed (no longer queued): nothing changed
                assert conn.execute(claim, {"id": job["id"], "types": ["demo.add"]}).all() == []
                assert setting() == before
        with platform.db.transaction() as session:
            row = session.get(Job, job["id"])
            assert (row.status, row.attempts, row.worker) == ("running", 1, "test-worker")


def test_a_claim_lost_after_it_was_made_runs_the_job_again(jobs_app):
    """What a PostgreSQL crash can do to a claim that had not reached the disk: the row
    is as it was submitted, while its handler runs. The attempt's outcome finds no
    running attempt and is dropped, and the reconciler queues the job again, which
    then runs (at least once) and succeeds with one attempt counted."""
    from zhongtai.jobs.engine import QUEUED_GRACE, jobs_engine

    with jobs_app(reconcile_interval=3600) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        job = submit(
            client,
            headers,
            type="demo.add",
            project=project.id,
            params={"a": 4, "b": 5, "sleep": 0.5},
        ).json()
        wait_for(client, headers, job["id"], {"running"})
        with platform.db.transaction() as session:
            row = session.get(Job, job["id"])
            row.status, row.attempts, row.worker = "queued", 0, None
            row.started_at = row.heartbeat_at = None
            row.created_at -= QUEUED_GRACE  # past the time the reconciler leaves it be
        deadline = time.monotonic() + 10
        while ATTEMPTS.get(job["id"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ATTEMPTS.get(job["id"]) == 1
        time.sleep(0.3)  # its outcome is written, or dropped, by now
        lost = client.get(f"{JOBS}/{job['id']}", headers=headers).json()
        assert (lost["status"], lost["attempts"], lost["result"]) == ("queued", 0, None), lost
        assert jobs_engine(platform).reconcile()["redispatched"] == 1
        done = wait_for(client, headers, job["id"])
        assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"sum": 9})
        assert ATTEMPTS[job["id"]] == 2


def test_policy_job_types_are_what_plugins_declare(jobs_app, monkeypatch):
    """The job types plugin policies decide, as they declare them (``admits_only``): the
    train plugin's GPU quota its counted types; one policy that declares nothing makes
    it every type (None), and the core's own policy is never counted."""
    from zhongtai.jobs.admission import admits_only, policy_job_types

    @admits_only("demo.a", "demo.b")
    def declared() -> None: ...

    assert declared.zhongtai_admits == frozenset({"demo.a", "demo.b"})  # type: ignore[attr-defined]
    with jobs_app() as (client, _identity):
        platform = client.app.state["platform"]
        assert policy_job_types(platform) is None  # the demo policy declares nothing
        monkeypatch.setattr(
            DemoJobs.admit_job, "zhongtai_admits", frozenset({"demo.once"}), raising=False
        )
        expected = {"demo.once"}
        if platform.plugins.get("train") is not None:
            from zhongtai_train.models import GPU_COUNTED_TYPES

            expected |= set(GPU_COUNTED_TYPES)
        assert policy_job_types(platform) == expected


def test_a_policy_can_hold_a_job_at_start(jobs_app, demo):
    demo.hold_all = True
    with jobs_app() as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        job = submit(
            client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1}
        ).json()
        held = wait_for(client, headers, job["id"], {"held"})
        assert held["progress_message"] == "held by the test policy"
        demo.hold_all = False
        platform = client.app.state["platform"]
        from zhongtai.jobs.engine import jobs_engine

        jobs_engine(platform).release_held(project.id)
        assert wait_for(client, headers, job["id"])["status"] == "succeeded"


def read_events(
    client: TestClient[Any], url: str, headers: dict[str, str]
) -> list[tuple[str, Any, Any]]:
    events = []
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        event: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line:
                if event:
                    events.append((event.get("event"), event.get("id"), json.loads(event["data"])))
                event = {}
                continue
            name, _, value = line.partition(": ")
            event[name] = value
    return events


def test_log_stream_sends_every_line_in_order_and_resumes(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    job = submit(
        client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1, "lines": 3000}
    ).json()
    events = read_events(client, f"{JOBS}/{job['id']}/logs/stream", headers)
    lines = [data for kind, _id, data in events if kind == "line"]
    assert [item["seq"] for item in lines] == list(range(1, 3001))
    assert lines[0]["line"] == "line 1 password=********"  # secrets masked
    assert events[-1][0] == "status" and events[-1][2]["status"] == "succeeded"
    resumed = read_events(
        client, f"{JOBS}/{job['id']}/logs/stream", {**headers, "Last-Event-ID": "2990"}
    )
    assert [d["seq"] for k, _i, d in resumed if k == "line"] == list(range(2991, 3001))
    paged = client.get(
        f"{JOBS}/{job['id']}/logs", headers=headers, params={"after": 10, "limit": 5}
    ).json()
    assert [item["seq"] for item in paged["items"]] == [11, 12, 13, 14, 15]
    assert paged["next_after"] == 15


def test_live_stream_follows_a_running_job(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    job = submit(
        client,
        headers,
        type="demo.add",
        project=project.id,
        params={"a": 1, "b": 1, "sleep": 1, "lines": 5},
    ).json()
    events = read_events(client, f"{JOBS}/{job['id']}/logs/stream", headers)
    assert [d["seq"] for k, _i, d in events if k == "line"] == [1, 2, 3, 4, 5]
    assert events[-1][2]["status"] == "succeeded"


@pytest.fixture
def long_way(monkeypatch: pytest.MonkeyPatch, demo: DemoJobs) -> list[str]:
    """Submissions in one autocommit INSERT (``submit_at_once``) and the long way: the
    demo policy declares (``admits_only``) that it decides ``demo.once`` alone, so
    other demo types may go at once; returns the ids the long way (``submit`` in a
    transaction) wrote."""
    from zhongtai.jobs.admission import Tally
    from zhongtai.jobs.engine import JobEngine

    monkeypatch.setattr(
        DemoJobs.admit_job, "zhongtai_admits", frozenset({"demo.once"}), raising=False
    )
    # A count is trusted for a second; a stall that long on a loaded machine must not
    # send a plain submission the long way.
    monkeypatch.setattr(Tally, "FRESH", 60.0)
    ids: list[str] = []
    submit_in_transaction = JobEngine.submit

    def counted(self: JobEngine, session: Any, **kwargs: Any) -> Any:
        job = submit_in_transaction(self, session, **kwargs)
        ids.append(job.id)
        return job

    monkeypatch.setattr(JobEngine, "submit", counted)
    return ids


def test_a_plain_submission_is_one_insert_and_the_rest_take_the_long_way(jobs_app, demo, long_way):
    """A submission with nothing but the row to write (no Idempotency-Key, no parent, no
    ``check``, no plugin policy for its type, a project the core's tally knows to be far
    below its limits) is one INSERT committing by itself; the first in a project (the
    tally has not counted yet), a declared type's, one with a key and one with a parent
    take the long way. Each is a 201, a row, an audit entry and a ``job.submitted``
    event, and runs."""
    from zhongtai.identity.models import AuditEvent

    with jobs_app() as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]

        def post(job_type: str = "demo.add", extra: dict[str, str] | None = None, **body: Any):
            answer = client.post(
                JOBS,
                json={"type": job_type, "project": project.id, "params": {"a": 1, "b": 1}, **body},
                headers={**headers, **(extra or {})},
            )
            assert answer.status_code == 201, answer.text
            return answer.json()["id"]

        first = post()
        at_once = [post(), post()]
        declared = post("demo.once")
        keyed = post(extra={"Idempotency-Key": "k-1"})
        child = post(parent=first)
        assert long_way == [first, declared, keyed, child]
        every = [first, *at_once, declared, keyed, child]
        done = [wait_for(client, headers, job_id) for job_id in every]
        assert {d["status"] for d in done} == {"succeeded"}, done
        assert [d["result"] for d in done] == [{"sum": 2}] * len(every)
        for job_id in every:
            assert ("job.submitted", job_id) in demo.events
        with platform.db.transaction() as session:
            stored = session.scalars(select(Job).where(Job.id.in_(at_once))).all()
            assert {j.owner_id for j in stored} == {user.id} and len(stored) == 2
            audited = session.scalars(
                select(AuditEvent).where(AuditEvent.target_id.in_(every))
            ).all()
        # One row each, alike whichever way it went (on PostgreSQL the short way writes
        # it in the job's statement, the long way after the response).
        assert sorted(row.target_id for row in audited) == sorted(every)
        for row in audited:
            assert (row.action, row.target_kind, row.project_id) == (
                "job.submit",
                "job",
                project.id,
            )
            assert (row.actor_user_id, row.outcome) == (user.id, "success")
            assert row.client_addr is not None
            assert row.detail == {"method": "POST", "path": JOBS, "status": 201}
        # The same key again: the first job, the long way (it looks the key up).
        repeat = client.post(
            JOBS,
            json={"type": "demo.add", "project": project.id, "params": {"a": 1, "b": 1}},
            headers={**headers, "Idempotency-Key": "k-1"},
        )
        assert repeat.status_code == 200 and repeat.json()["id"] == keyed


def test_submit_at_once_writes_nothing_where_something_else_must_decide(env, long_way):
    """``submit_at_once`` answers None, having written nothing, for a type with a
    ``check``, a type a plugin's policy decides, and a project the tally has not
    counted (or counts near a limit); then the long way decides and writes."""
    from zhongtai.identity.principal import Principal
    from zhongtai.jobs.engine import jobs_engine

    client, identity = env
    user, project = identity.project_with("developer")
    platform = client.app.state["platform"]
    engine = jobs_engine(platform)
    checked = JobType("demo.checked", add, AddParams, check=lambda *args: None)

    def at_once(job_type: JobType, project_id: str = project.id) -> Any:
        with platform.db.autocommit() as session:
            return engine.submit_at_once(
                session,
                job_type=job_type,
                project_id=project_id,
                principal=Principal(user.id),
                params=AddParams(a=1, b=1),
            )

    add_type = engine.types["demo.add"]
    assert at_once(add_type) is None  # not counted yet
    engine.tally.counted(project.id, "queued,held,scheduled", 0)
    engine.tally.counted(project.id, "running,queued", 0)
    assert at_once(checked) is None
    assert at_once(engine.types["demo.once"]) is None
    job = at_once(add_type)
    assert job is not None and job.status == "queued" and job.project_id == project.id
    # Near the limit the tally asks for a count: the long way decides.
    limit = platform.settings.jobs.max_running_per_project
    engine.tally.counted(project.id, "running,queued", limit)
    assert at_once(add_type) is None
    with platform.db.transaction() as session:
        assert session.scalars(select(Job.id)).all() == [job.id]
    assert long_way == []


def test_a_job_and_its_audit_row_commit_together_or_not_at_all(env, long_way):
    """On PostgreSQL the short way writes the request's audit row in the job's own
    statement: a row the database refuses takes the job with it, and a good one
    names the job."""
    from sqlalchemy.exc import IntegrityError

    from zhongtai.hooks.events import utcnow
    from zhongtai.identity.models import AuditEvent
    from zhongtai.identity.principal import Principal
    from zhongtai.jobs.engine import jobs_engine
    from zhongtai.metadata.ids import new_id

    client, identity = env
    user, project = identity.project_with("developer")
    platform = client.app.state["platform"]
    engine = jobs_engine(platform)
    if not engine.audits_at_once:
        pytest.skip("SQLite: the app writes the row after the response")
    engine.tally.counted(project.id, "queued,held,scheduled", 0)
    engine.tally.counted(project.id, "running,queued", 0)

    def at_once(audit: dict[str, Any]) -> Any:
        with platform.db.autocommit() as session:
            return engine.submit_at_once(
                session,
                job_type=engine.types["demo.add"],
                project_id=project.id,
                principal=Principal(user.id),
                params=AddParams(a=1, b=1),
                audit=audit,
            )

    row = {
        "id": new_id(),
        "occurred_at": utcnow(),
        "actor_user_id": user.id,
        "actor_key_id": None,
        "action": "job.submit",
        "target_kind": "job",
        "target_id": None,  # the job's id, which the engine fills in
        "project_id": project.id,
        "org_id": None,
        "client_addr": "192.0.2.7",
        "outcome": "success",
        "detail": {"status": 201},
    }
    with pytest.raises(IntegrityError):
        at_once({**row, "outcome": None})  # NOT NULL: the database refuses the audit row
    with platform.db.transaction() as session:
        assert session.scalars(select(Job.id)).all() == []
        assert session.scalars(select(AuditEvent.id).where(AuditEvent.id == row["id"])).all() == []
    job = at_once(row)
    with platform.db.transaction() as session:
        assert session.scalars(select(Job.id)).all() == [job.id]
        stored = session.get(AuditEvent, row["id"])
        assert stored is not None
        assert (stored.target_id, stored.client_addr) == (job.id, "192.0.2.7")
    assert long_way == []


def test_a_rolled_back_submission_never_runs(env):
    client, identity = env
    user, project = identity.project_with("developer")
    platform = client.app.state["platform"]
    from zhongtai.identity.principal import Principal
    from zhongtai.jobs.engine import jobs_engine

    engine = jobs_engine(platform)
    with pytest.raises(RuntimeError), platform.db.transaction() as session:
        engine.submit(
            session,
            job_type=engine.types.get("demo.add"),
            project_id=project.id,
            principal=Principal(user.id),
            params=AddParams(a=1, b=1),
        )
        raise RuntimeError("abandon")
    assert engine.reconcile(startup=True)["redispatched"] == 0
    with platform.db.transaction() as session:
        assert session.scalars(select(Job)).all() == []


def test_a_submitted_job_is_the_callers_to_change_in_its_transaction(env):
    """``submit`` inserts the row itself, yet hands back a Job of the caller's session
    with every column loaded (nothing read back lazily) whose changes the commit writes."""
    from datetime import timedelta

    from sqlalchemy import inspect

    from zhongtai.hooks.events import utcnow
    from zhongtai.identity.principal import Principal
    from zhongtai.jobs.engine import jobs_engine

    client, identity = env
    user, project = identity.project_with("developer")
    platform = client.app.state["platform"]
    engine = jobs_engine(platform)
    with platform.db.transaction() as session:
        job = engine.submit(
            session,
            job_type=engine.types.get("demo.add"),
            project_id=project.id,
            principal=Principal(user.id),
            params=AddParams(a=1, b=2),
            run_at=utcnow() + timedelta(days=1),  # parked: no worker takes it meanwhile
        )
        state = inspect(job)
        assert state.persistent and state.session is session
        assert not state.unloaded and not state.expired_attributes
        assert (job.status, job.params["b"], job.attempts) == ("scheduled", 2, 0)
        job.progress_message = "noted by the caller"
        job_id = job.id
    with platform.db.transaction() as session:
        stored = session.get(Job, job_id)
        assert stored is not None
        assert (stored.status, stored.progress_message) == ("scheduled", "noted by the caller")
        assert stored.owner_id == user.id and stored.created_at is not None


@pytest.mark.skipif(redis_for_tests() is not None, reason="the embedded queue's restart")
def test_restart_resumes_queued_jobs_and_settles_interrupted_ones(jobs_app):
    import socket

    from zhongtai.hooks.events import utcnow

    with jobs_app(workers=1, rq_workers=0) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        from zhongtai.jobs.engine import jobs_engine

        jobs_engine(platform).driver.stop(5)  # no worker takes anything from now on
        queued = submit(
            client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1}
        ).json()
        interrupted = submit(
            client, headers, type="demo.once", project=project.id, params={"a": 1, "b": 1}
        ).json()
        with platform.db.transaction() as session:
            job = session.get(Job, interrupted["id"])
            job.status, job.attempts, job.started_at = "running", 1, utcnow()
            job.worker = f"embedded:{socket.gethostname()}:1:w0"  # a process that is gone
            job.heartbeat_at = utcnow()
    with jobs_app(workers=1) as (client, identity):
        assert wait_for(client, headers, queued["id"])["status"] == "succeeded"
        settled = wait_for(client, headers, interrupted["id"])
        assert settled["status"] == "failed"
        assert settled["error"].startswith("interrupted: the server running it")


def test_an_interrupted_attempt_of_a_resumable_type_runs_again_without_spending_a_retry(
    jobs_app,
):
    from datetime import timedelta

    from zhongtai.hooks.events import utcnow
    from zhongtai.jobs.types import MAX_RESUMES

    with jobs_app(stale_after=1.0, reconcile_interval=0.2) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        body = {
            "type": "demo.resumable",
            "project": project.id,
            "params": {"a": 2, "b": 3},
            "run_at": "2099-01-01T00:00:00Z",
        }
        resumed = submit(client, headers, **body).json()
        worn_out = submit(client, headers, **body).json()
        with platform.db.transaction() as session:
            for job_id, attempts, interruptions in (
                (resumed["id"], 1, 0),
                (worn_out["id"], 4, MAX_RESUMES),
            ):
                row = session.get(Job, job_id)
                row.status, row.attempts, row.worker = "running", attempts, "rq:elsewhere:42:w"
                row.interruptions, row.max_attempts = interruptions, attempts
                row.started_at = row.heartbeat_at = utcnow() - timedelta(seconds=30)
        done = wait_for(client, headers, resumed["id"])
        # Resumed at once, and its one attempt of a type without retries was not spent.
        assert done["status"] == "succeeded", done
        assert done["result"] == {"sum": 5}
        assert (done["attempts"], done["max_attempts"], done["interruptions"]) == (2, 2, 1)
        lines = client.get(f"{JOBS}/{resumed['id']}/logs", headers=headers).json()["items"]
        assert any(
            "stopped responding" in item["line"] and "resuming" in item["line"] for item in lines
        )
        # A job interrupted MAX_RESUMES times already is settled as any other type's.
        settled = wait_for(client, headers, worn_out["id"])
        assert settled["status"] == "failed"
        assert settled["error"].startswith("abandoned: worker rq:elsewhere:42:w")
        assert settled["interruptions"] == MAX_RESUMES


def test_a_dead_worker_is_noticed_by_its_missing_heartbeat(jobs_app):
    from datetime import timedelta

    from zhongtai.hooks.events import utcnow

    with jobs_app(stale_after=1.0, reconcile_interval=0.2) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        job = parked(client, headers, project.id, a=1, b=1)
        with platform.db.transaction() as session:
            row = session.get(Job, job["id"])
            row.status, row.attempts, row.worker = "running", 1, "rq:elsewhere:42:w"
            row.started_at = row.heartbeat_at = utcnow() - timedelta(seconds=30)
        settled = wait_for(client, headers, job["id"])
        # demo.add has retries left: the abandoned attempt is retried and succeeds.
        assert settled["status"] == "succeeded" and settled["attempts"] == 2
        lines = client.get(f"{JOBS}/{job['id']}/logs", headers=headers).json()["items"]
        assert any(
            "abandoned: worker rq:elsewhere:42:w stopped responding" in i["line"] for i in lines
        )


def test_concurrent_submissions_over_the_limit_get_429(jobs_app):
    with jobs_app(max_pending_per_project=20, workers=1, rq_workers=0) as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        platform = client.app.state["platform"]
        from zhongtai.jobs.engine import jobs_engine

        jobs_engine(platform).driver.stop(5)
        codes: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            response = submit(
                client, headers, type="demo.add", project=project.id, params={"a": 1, "b": 1}
            )
            with lock:
                codes.append(response.status_code)

        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Exact on SQLite (one writer); on PostgreSQL concurrent submissions may each
        # see room for one more, so a few may get in past the limit.
        accepted = codes.count(201)
        assert 20 <= accepted <= 30 and codes.count(429) == 40 - accepted
        assert client.get("/healthz").status_code == 200


def test_closing_a_platform_stops_its_engine_where_shutdown_never_ran(zt_platform):
    """A start-up that fails after the jobs engine started never runs the shutdown hooks:
    closing the platform still stops the engine's threads before its database goes."""
    from zhongtai.jobs.engine import jobs_engine
    from zhongtai.jobs.plugin import startup

    startup(zt_platform)
    engine = jobs_engine(zt_platform)
    maintenance = engine._maintenance
    assert maintenance is not None and maintenance.is_alive()
    zt_platform.close()
    maintenance.join(5)
    assert not maintenance.is_alive()
    engine.stop()  # a stopped engine stops again without complaint

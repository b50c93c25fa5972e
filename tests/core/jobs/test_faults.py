"""Faults the engine must survive: a crash between commit and dispatch, a Redis outage,
and parameters that look like shell commands."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from pydantic import BaseModel, Field

import zhongtai
from zhongtai.jobs import JobContext, JobType
from zhongtai.testing import ZtIdentity, redis_for_tests, rq_worker_thread

JOBS = "/api/v1/jobs"
RUNS: dict[str, int] = {}


class Noop(BaseModel):
    pass


def count_runs(ctx: JobContext, params: Noop) -> None:
    RUNS[ctx.job_id] = RUNS.get(ctx.job_id, 0) + 1


class ArgParams(BaseModel):
    value: str = Field(max_length=200)


def echo_argument(ctx: JobContext, params: ArgParams) -> str:
    """Starts a process the right way: an argument list, no shell."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.argv[1])", params.value],
        capture_output=True,
        text=True,
        check=True,
    )
    ctx.log(result.stdout.rstrip("\n"))
    return result.stdout.rstrip("\n")


class FaultJobs:
    @zhongtai.hookimpl
    def register_job_types(self) -> list[JobType]:
        return [
            JobType("faults.count", count_runs, Noop),
            JobType("faults.arg", echo_argument, ArgParams),
        ]


FAST = {"reconcile_interval": 0.3, "heartbeat_interval": 0.3}


@pytest.fixture
def fault_app(
    zt_register_plugin: Callable[..., None], zt_app_factory: Callable[..., Any], zt_settings: Any
) -> Callable[..., Any]:
    zt_register_plugin(FaultJobs(), name="faults")

    @contextmanager
    def make(
        workers: int = 2, database_url: str | None = None, **jobs: Any
    ) -> Iterator[tuple[TestClient[Any], ZtIdentity]]:
        update: dict[str, Any] = {"jobs": zt_settings.jobs.model_copy(update={**FAST, **jobs})}
        if database_url is not None:
            update["database_url"] = database_url
        settings = zt_settings.model_copy(update=update)
        app = zt_app_factory(settings=settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            platform = app.state["platform"]
            with rq_worker_thread(platform, count=workers):
                yield client, ZtIdentity(platform)

    return make


def wait_for(client: Any, headers: Any, job_id: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.get(f"{JOBS}/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job['status']}")


def test_shell_text_in_params_is_an_argument_not_a_command(fault_app, tmp_path):
    marker = tmp_path / "pwned"
    with fault_app() as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        for value in [f"0.1; touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]:
            job = client.post(
                JOBS,
                json={"type": "faults.arg", "project": project.id, "params": {"value": value}},
                headers=headers,
            ).json()
            done = wait_for(client, headers, job["id"])
            assert done["status"] == "succeeded" and done["result"] == value
        assert not marker.exists()


def test_a_crash_between_commit_and_dispatch_is_repaired_once(fault_app, monkeypatch):
    with fault_app() as (client, identity):
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        from zhongtai.jobs.engine import JobEngine

        lost: list[str] = []

        def crash(self: JobEngine, jobs: Any) -> None:  # the process "dies" after commit
            lost.extend(job.id for job in jobs)

        with monkeypatch.context() as patch:
            patch.setattr(JobEngine, "dispatch", crash)
            ids = [
                client.post(
                    JOBS, json={"type": "faults.count", "project": project.id}, headers=headers
                ).json()["id"]
                for _ in range(5)
            ]
        assert lost == ids
        for job_id in ids:
            assert client.get(f"{JOBS}/{job_id}", headers=headers).json()["status"] == "queued"
        # The reconciler finds them (older than the grace period) and dispatches them.
        for job_id in ids:
            assert wait_for(client, headers, job_id)["status"] == "succeeded"
        time.sleep(1.0)  # more reconciler rounds: nothing runs twice
        assert [RUNS[job_id] for job_id in ids] == [1] * 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, to kill and restart (never the shared one)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


@pytest.mark.skipif(
    redis_for_tests() is None or shutil.which("redis-server") is None,
    reason="needs Redis and redis-server (the PostgreSQL + Redis run)",
)
def test_redis_killed_after_acknowledged_submissions_loses_none(fault_app, zt_settings, tmp_path):
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        with fault_app(workers=0, redis_url=redis.url, max_running_per_project=100) as (
            client,
            identity,
        ):
            user, project = identity.project_with("developer")
            headers = identity.headers(user)
            ids = [
                client.post(
                    JOBS, json={"type": "faults.count", "project": project.id}, headers=headers
                ).json()["id"]
                for _ in range(20)
            ]
            redis.kill()  # everything queued in Redis is gone
            # A contact less than a second old still vouches for Redis: wait that out.
            time.sleep(1.2)
            down = client.post(
                JOBS, json={"type": "faults.count", "project": project.id}, headers=headers
            )
            assert down.status_code == 503 and down.headers["retry-after"]
            assert client.get(JOBS, headers=headers).status_code == 200  # reads still work
            redis.start()  # empty: no persistence
            platform = client.app.state["platform"]
            with rq_worker_thread(platform, count=2):
                for job_id in ids:
                    assert wait_for(client, headers, job_id)["status"] == "succeeded"
                time.sleep(1.0)
        assert [RUNS[job_id] for job_id in ids] == [1] * len(ids)
    finally:
        if redis.process and redis.process.poll() is None:
            redis.kill()


def _initdb() -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return str(found[-1]) if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own on a free port, to stop and start at will.

    Run as the ``postgres`` system user (PostgreSQL refuses to run as root).
    """

    def __init__(self) -> None:
        import os
        import tempfile

        initdb = _initdb()
        assert initdb is not None
        self.bin = Path(initdb).parent
        # Not under pytest's tmp_path: its folders are private to root.
        self.folder = Path(tempfile.mkdtemp(prefix="zt-pg-"))
        os.chmod(self.folder, 0o755)
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.data.mkdir()
        shutil.chown(self.data, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres"
        )

    def _as_postgres(self, *argv: str) -> None:
        command = [*argv] if _whoami() == "postgres" else ["runuser", "-u", "postgres", "--", *argv]
        # No pipes: the server would inherit them and keep pg_ctl's output open.
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )


def _whoami() -> str:
    import os
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _can_run_private_postgres() -> bool:
    if _initdb() is None:
        return False
    if _whoami() == "postgres":
        return True
    return _whoami() == "root" and shutil.which("runuser") is not None


@pytest.mark.skipif(
    redis_for_tests() is None or not _can_run_private_postgres(),
    reason="needs the PostgreSQL + Redis run and PostgreSQL's initdb",
)
def test_postgres_restarted_under_load_answers_503_and_loses_no_job(
    fault_app, zt_settings, tmp_path
):
    import threading

    database = PrivatePostgres()
    database.start()
    try:
        with fault_app(database_url=database.url) as (client, identity):
            user, project = identity.project_with("developer")
            headers = identity.headers(user)
            accepted: list[str] = []
            statuses: list[int] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    response = client.post(
                        JOBS, json={"type": "faults.count", "project": project.id}, headers=headers
                    )
                    statuses.append(response.status_code)
                    assert time.monotonic() - started < 15, "a request hung during the outage"
                    if response.status_code == 201:
                        accepted.append(response.json()["id"])
                    time.sleep(0.02)

            submitter = threading.Thread(target=load)
            submitter.start()
            time.sleep(1.0)
            database.stop()
            time.sleep(2.0)
            database.start()
            time.sleep(2.0)
            stop.set()
            submitter.join(30)
            assert 503 in statuses, "the outage was not answered with 503"
            assert 500 not in statuses
            assert statuses[-1] == 201, "no automatic reconnection"
            for job_id in accepted:
                assert wait_for(client, headers, job_id, seconds=60)["status"] == "succeeded"
        assert all(RUNS[job_id] >= 1 for job_id in accepted)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            database.stop()
        shutil.rmtree(database.folder, ignore_errors=True)

"""pytest fixtures for testing zhongtai and its plugins (registered as a ``pytest11`` plugin).

Each test gets a throwaway data directory and database, and an app built with
exactly the plugins it names::

    import pytest

    @pytest.mark.zt_plugins("hello")           # installed plugins to load
    def test_hello(zt_client):
        assert zt_client.get("/api/v1/hello/greetings").status_code == 200

    def test_inline(zt_register_plugin, zt_client_factory):
        class Plugin:
            @zhongtai.hookimpl
            def register_routes(self): ...
        zt_register_plugin(Plugin(), name="inline")
        with zt_client_factory() as client: ...

Databases: SQLite in the test's temporary folder by default. With
``ZHONGTAI_TEST_DATABASE_URL=postgresql://127.0.0.1:5432/postgres`` each test gets
its own PostgreSQL database, created before the test and dropped after it.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import TestClient

    from zhongtai.platform import Platform
    from zhongtai.settings import Settings

TEST_DATABASE_ENV = "ZHONGTAI_TEST_DATABASE_URL"
TEST_REDIS_ENV = "ZHONGTAI_TEST_REDIS_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "zt_plugins(*names): installed zhongtai plugins the test's app loads"
    )


def database_server_for_tests() -> str | None:
    """The PostgreSQL server URL tests run against, or None for SQLite."""
    return os.environ.get(TEST_DATABASE_ENV) or None


@contextmanager
def throwaway_postgres(server_url: str) -> Iterator[str]:
    """Create a uniquely named database on ``server_url``; drop it afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"zt_test_{secrets.token_hex(6)}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def zt_database_url(tmp_path: Path) -> Iterator[str]:
    """A database of the test's own: SQLite under ``tmp_path`` or a fresh PostgreSQL one."""
    server = database_server_for_tests()
    if server is None:
        yield f"sqlite:///{tmp_path / 'zhongtai.db'}"
        return
    with throwaway_postgres(server) as url:
        yield url


@pytest.fixture
def zt_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove ``ZHONGTAI_*`` variables (but the test ones) so the shell cannot leak in."""
    for key in list(os.environ):
        if key.startswith("ZHONGTAI_") and not key.startswith("ZHONGTAI_TEST_"):
            monkeypatch.delenv(key)


def redis_for_tests() -> str | None:
    """The Redis URL the rq queue driver is tested against, or None for the embedded queue."""
    return os.environ.get(TEST_REDIS_ENV) or None


@pytest.fixture
def zt_settings(tmp_path: Path, zt_database_url: str, zt_clean_env: None) -> Iterator[Settings]:
    """Settings for one test: a temporary data directory and the test's database.

    With ``ZHONGTAI_TEST_REDIS_URL`` set, jobs go through the ``rq`` driver on that
    Redis, under queue names of the test's own (removed afterwards); a test that runs
    jobs starts workers with :func:`rq_worker_thread`.
    """
    from zhongtai.settings import load_settings

    settings = load_settings(
        home=tmp_path / "home",
        database_url=zt_database_url,
        log_format="text",
        access_log=False,
    )
    redis_url = redis_for_tests()
    if redis_url is None:
        yield settings
        return
    prefix = f"zt-test-{secrets.token_hex(5)}"
    jobs = settings.jobs.model_copy(
        update={"queue": "rq", "redis_url": redis_url, "queue_prefix": prefix}
    )
    yield settings.model_copy(update={"jobs": jobs})
    _forget_redis_keys(redis_url, prefix)


def _forget_redis_keys(redis_url: str, prefix: str) -> None:
    from redis import Redis

    client = Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def rq_worker_thread(platform: Platform, *, count: int = 1) -> Iterator[list[Any]]:
    """Run ``count`` rq workers in threads of this process for the ``with`` block.

    They use the app's own engine (heartbeats, timeouts, cancellation), take from
    every queue of the installed job types, and stop when the block ends. Does nothing
    (yields ``[]``) when the platform uses another queue driver.
    """
    import threading

    from zhongtai.jobs.engine import jobs_engine
    from zhongtai.jobs.queue.rq import PlatformWorker, RQQueue, set_engine

    engine = jobs_engine(platform)
    driver = engine.driver
    if not isinstance(driver, RQQueue):
        yield []
        return

    class ThreadWorker(PlatformWorker):
        def _install_signal_handlers(self) -> None:  # signals belong to the main thread
            pass

    stop = threading.Event()
    names = driver.queue_names(sorted({t.queue for t in engine.types}))
    workers: list[Any] = []

    def loop(index: int) -> None:
        while not stop.is_set():
            # A fresh worker per burst: RQ registers one on start and removes it on exit.
            worker = ThreadWorker(names, connection=driver.redis)
            workers.append(worker)
            worker.work(burst=True)
            stop.wait(0.02)

    set_engine(engine)
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield workers
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        set_engine(None)


@pytest.fixture
def zt_plugins(request: pytest.FixtureRequest) -> list[str]:
    """Installed plugins the app loads: from ``@pytest.mark.zt_plugins(...)``, else none."""
    marker = request.node.get_closest_marker("zt_plugins")
    return list(marker.args) if marker else []


@pytest.fixture
def zt_extra_plugins() -> list[tuple[str, object]]:
    return []


@pytest.fixture
def zt_register_plugin(
    zt_extra_plugins: list[tuple[str, object]],
) -> Callable[..., None]:
    """Register a plugin object (module, class instance…) for this test's app only."""

    def register(obj: object, *, name: str) -> None:
        zt_extra_plugins.append((name, obj))

    return register


@pytest.fixture
def zt_app_factory(
    zt_settings: Settings,
    zt_plugins: list[str],
    zt_extra_plugins: list[tuple[str, object]],
) -> Iterator[Callable[..., Litestar]]:
    """Build apps for this test: ``zt_app_factory(settings=None, plugins=None)``."""
    from zhongtai.web.app import create_app

    built: list[Litestar] = []

    def factory(settings: Settings | None = None, **kwargs: Any) -> Litestar:
        kwargs.setdefault("plugins", zt_plugins)
        kwargs.setdefault("extra_plugins", zt_extra_plugins)
        kwargs.setdefault("schema", "upgrade")
        app = create_app(settings or zt_settings, **kwargs)
        built.append(app)
        return app

    yield factory
    for app in built:
        app.state["platform"].close()


@pytest.fixture
def zt_app(zt_app_factory: Callable[..., Litestar]) -> Litestar:
    """The app with the built-in plugins and those the test names."""
    return zt_app_factory()


@pytest.fixture
def zt_platform(zt_app: Litestar) -> Platform:
    platform: Platform = zt_app.state["platform"]
    return platform


@pytest.fixture
def zt_client(zt_app: Litestar) -> Iterator[TestClient[Litestar]]:
    """An HTTP client against ``zt_app`` (startup and shutdown hooks run around it)."""
    from litestar.testing import TestClient

    with TestClient(zt_app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def zt_client_factory(
    zt_app_factory: Callable[..., Litestar],
) -> Callable[..., Any]:
    """``with zt_client_factory(**app_kwargs) as client:`` for tests that build their own app."""
    from litestar.testing import TestClient

    def factory(**kwargs: Any) -> TestClient[Litestar]:
        return TestClient(zt_app_factory(**kwargs), raise_server_exceptions=False)

    return factory


@contextmanager
def serve_in_thread(app: Litestar) -> Iterator[str]:
    """``app`` under uvicorn on a free port of 127.0.0.1, in a thread (its start-up and
    shutdown hooks run); yields the base URL. For tests that need a real HTTP server:
    concurrency, a browser."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def process_env(settings: Settings, **variables: str) -> dict[str, str]:
    """The environment for a ``zhongtai`` command a test runs as a process of its own
    (``serve``, ``worker``): the test's data directory, database, secret key and queue,
    none of the ``ZHONGTAI_*`` variables around the test run, and ``variables`` on top
    (``ZHONGTAI_PLUGINS="hello"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZHONGTAI_")}
    env.update(
        ZHONGTAI_HOME=str(settings.home),
        ZHONGTAI_DATABASE_URL=settings.effective_database_url,
        ZHONGTAI_SECRET_KEY=settings.resolved_secret_key(),
        ZHONGTAI_LOG_FORMAT=settings.log_format,
        ZHONGTAI_ACCESS_LOG=str(settings.access_log).lower(),
        ZHONGTAI_JOBS__QUEUE=settings.jobs.queue,
    )
    if settings.jobs.queue == "rq":
        env.update(
            ZHONGTAI_JOBS__REDIS_URL=settings.jobs.redis_url,
            ZHONGTAI_JOBS__QUEUE_PREFIX=settings.jobs.queue_prefix,
        )
    env.update(variables)
    return env


@contextmanager
def serve_in_process(
    settings: Settings, **variables: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``zhongtai serve`` on a free port of 127.0.0.1, as a process of its own (see
    :func:`process_env` for its environment), until it answers ``/readyz``; yields the
    base URL and the process, and stops it afterwards. For tests that kill the server,
    or whose timings must not share an interpreter with the test. On PostgreSQL the
    schema must be there first (``bootstrap(settings, schema="upgrade")``)."""
    import socket
    import tempfile
    import time

    import httpx

    # Its output goes to a file, not a pipe nobody reads while the test runs: a full
    # pipe would stall the server at its next log line.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(  # noqa: S603 (our own command, an argument list)
        [sys.executable, "-m", "zhongtai", "serve", "--port", str(port)],
        env=process_env(settings, **variables),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"the server exited ({proc.returncode}): {output}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 60 s")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@functools.cache
def _default_hash() -> str:
    """One argon2 hash of the default password, shared by every test user (~50 ms each)."""
    from zhongtai.identity.passwords import hash_password

    return hash_password(ZtIdentity.DEFAULT_PASSWORD)


class ZtIdentity:
    """Make users, organizations, projects, memberships and credentials in a test's platform.

    ``zt_identity.headers(user)`` gives ``{"Authorization": "Bearer <access token>"}``;
    ``zt_identity.api_key(user, project=...)`` a real key. Everything is written
    through the same functions the API uses, in the test's own database.
    """

    DEFAULT_PASSWORD = "correct horse battery staple"  # noqa: S105 (tests only)

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._n = 0

    def _next(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def user(
        self,
        email: str | None = None,
        *,
        password: str | None = None,
        superuser: bool = False,
        active: bool = True,
        display_name: str = "",
    ) -> Any:
        from zhongtai.identity.models import User
        from zhongtai.identity.passwords import hash_password

        with self.platform.db.transaction() as session:
            user = User(
                email=(email or f"{self._next('user')}@example.com").lower(),
                display_name=display_name,
                password_hash=hash_password(password) if password else _default_hash(),
                is_superuser=superuser,
                is_active=active,
            )
            session.add(user)
            session.flush()
            session.expunge(user)
            return user

    def org(self, slug: str | None = None, *, owner: Any = None, name: str | None = None) -> Any:
        from zhongtai.identity.models import Organization, OrgMember
        from zhongtai.identity.roles import Role

        slug = slug or self._next("org")
        with self.platform.db.transaction() as session:
            org = Organization(slug=slug, name=name or slug)
            session.add(org)
            session.flush()
            if owner is not None:
                session.add(OrgMember(org_id=org.id, user_id=owner.id, role=int(Role.owner)))
            session.flush()
            session.expunge(org)
            return org

    def project(self, org: Any = None, slug: str | None = None, *, name: str | None = None) -> Any:
        from zhongtai.identity.models import Project

        org = org if org is not None else self.org()
        slug = slug or self._next("project")
        with self.platform.db.transaction() as session:
            project = Project(org_id=org.id, slug=slug, name=name or slug)
            session.add(project)
            session.flush()
            session.expunge(project)
            return project

    def member(self, user: Any, target: Any, role: str = "viewer") -> None:
        """Give ``user`` ``role`` in an organization or a project."""
        from zhongtai.identity.models import Organization, OrgMember, ProjectMember
        from zhongtai.identity.roles import Role

        value = int(Role.parse(role))
        with self.platform.db.transaction() as session:
            if isinstance(target, Organization):
                session.add(OrgMember(org_id=target.id, user_id=user.id, role=value))
            else:
                session.add(ProjectMember(project_id=target.id, user_id=user.id, role=value))

    def token(self, user: Any, *, ttl_seconds: int = 900) -> str:
        from datetime import timedelta

        from zhongtai.identity.tokens import issue_access_token

        return issue_access_token(
            user.id, secret=self.platform.secret_key, ttl=timedelta(seconds=ttl_seconds)
        )

    def api_key(
        self,
        user: Any,
        *,
        project: Any = None,
        permissions: list[str] | None = None,
        name: str = "test key",
    ) -> str:
        from zhongtai.identity.apikeys import create_api_key

        with self.platform.db.transaction() as session:
            _row, key = create_api_key(
                session,
                user_id=user.id,
                name=name,
                project_id=project.id if project is not None else None,
                permissions=permissions,
                secret=self.platform.secret_key,
            )
            return key

    def headers(self, who: Any) -> dict[str, str]:
        """``Authorization`` for a user (a fresh access token) or a key string."""
        credential = who if isinstance(who, str) else self.token(who)
        return {"Authorization": f"Bearer {credential}"}

    def project_with(self, role: str = "owner", *, user: Any = None) -> tuple[Any, Any]:
        """A new user (or ``user``) holding ``role`` in a new project of a new organization."""
        user = user if user is not None else self.user()
        project = self.project(self.org())
        self.member(user, project, role)
        return user, project


@pytest.fixture
def zt_identity(zt_platform: Platform) -> ZtIdentity:
    """Users, organizations, projects and credentials for this test's app."""
    return ZtIdentity(zt_platform)


@pytest.fixture
def zt_admin_headers(zt_identity: ZtIdentity) -> dict[str, str]:
    """``Authorization`` of a fresh superuser of this test's app."""
    return zt_identity.headers(zt_identity.user(superuser=True))

"""The identity cache: fast repeated answers that are never staler than the database.

"Another process" below is a second SQLAlchemy engine on the test's database, writing
plain SQL: what another server worker, the ``zhongtai users`` command or an operator's
``psql`` session does. The app never hears of those writes except through the
identity generation the database's triggers keep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from zhongtai.hooks.events import utcnow
from zhongtai.identity import cache as cache_module
from zhongtai.identity import guard
from zhongtai.identity.cache import IDENTITY_CACHE, IdentityCache, identity_cache
from zhongtai.metadata.ids import new_id

PROJECTS = "/api/v1/projects"
ME = "/api/v1/auth/me"


@pytest.fixture
def other_process(zt_platform: Any) -> Iterator[Any]:
    """A separate engine on the app's database, autocommitting each statement."""
    engine = create_engine(zt_platform.db.url, isolation_level="AUTOCOMMIT")

    def run(sql: str, **params: Any) -> None:
        with engine.connect() as connection:
            connection.execute(text(sql), params)

    yield run
    engine.dispose()


def generation(platform: Any) -> int:
    with platform.db.engine.connect() as connection:
        return int(connection.execute(text("SELECT value FROM identity_generation")).scalar_one())


def slugs(client: Any, headers: dict[str, str], **params: Any) -> list[str]:
    response = client.get(PROJECTS, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return [item["slug"] for item in response.json()["items"]]


def test_a_membership_added_elsewhere_shows_in_the_next_list(
    zt_client, zt_identity, zt_platform, other_process
):
    user, first = zt_identity.project_with("viewer")
    second = zt_identity.project(slug="second")
    headers = zt_identity.headers(zt_identity.api_key(user))
    assert slugs(zt_client, headers) == [first.slug]
    assert slugs(zt_client, headers) == [first.slug]  # now answered from memory
    other_process(
        "INSERT INTO project_members (id, project_id, user_id, role, created_at) "
        "VALUES (:id, :project, :user, 10, :now)",
        id=new_id(),
        project=second.id,
        user=user.id,
        now=utcnow(),
    )
    assert slugs(zt_client, headers) == sorted([first.slug, second.slug])
    other_process("DELETE FROM project_members WHERE project_id = :p", p=first.id)
    assert slugs(zt_client, headers) == [second.slug]


def test_renaming_a_project_elsewhere_shows_in_the_next_list(zt_client, zt_identity, other_process):
    user, project = zt_identity.project_with("viewer")
    headers = zt_identity.headers(user)
    assert zt_client.get(PROJECTS, headers=headers).json()["items"][0]["name"] == project.name
    other_process("UPDATE projects SET name = 'Renamed' WHERE id = :id", id=project.id)
    assert zt_client.get(PROJECTS, headers=headers).json()["items"][0]["name"] == "Renamed"


def test_revoking_a_key_elsewhere_refuses_it_on_the_next_request(
    zt_client, zt_identity, other_process
):
    user, _project = zt_identity.project_with("viewer")
    key = zt_identity.api_key(user)
    assert zt_client.get(PROJECTS, headers=zt_identity.headers(key)).status_code == 200
    other_process(
        "UPDATE api_keys SET revoked_at = :now WHERE user_id = :user", now=utcnow(), user=user.id
    )
    assert zt_client.get(PROJECTS, headers=zt_identity.headers(key)).status_code == 401


@pytest.mark.parametrize("credential", ["api_key", "token"])
def test_deactivating_a_user_elsewhere_refuses_their_credentials(
    zt_client, zt_identity, other_process, credential
):
    user, _project = zt_identity.project_with("viewer")
    headers = zt_identity.headers(getattr(zt_identity, credential)(user))
    assert zt_client.get(ME, headers=headers).status_code == 200
    assert zt_client.get(PROJECTS, headers=headers).status_code == 200
    other_process("UPDATE users SET is_active = false WHERE id = :id", id=user.id)
    assert zt_client.get(PROJECTS, headers=headers).status_code == 401


def test_superuser_flag_granted_elsewhere_applies_at_once(zt_client, zt_identity, other_process):
    user = zt_identity.user()
    headers = zt_identity.headers(zt_identity.token(user))
    assert zt_client.get("/api/v1/users", headers=headers).status_code == 403
    other_process("UPDATE users SET is_superuser = true WHERE id = :id", id=user.id)
    assert zt_client.get("/api/v1/users", headers=headers).status_code == 200


def test_a_cached_key_still_expires_on_time(zt_client, zt_identity, zt_platform, monkeypatch):
    from zhongtai.identity.apikeys import create_api_key

    user, _project = zt_identity.project_with("viewer")
    with zt_platform.db.transaction() as session:
        _row, key = create_api_key(
            session,
            user_id=user.id,
            name="short-lived",
            expires_at=utcnow() + timedelta(hours=1),
            secret=zt_platform.secret_key,
        )
    headers = zt_identity.headers(key)
    assert zt_client.get(PROJECTS, headers=headers).status_code == 200
    later = utcnow() + timedelta(hours=2)
    monkeypatch.setattr(guard, "utcnow", lambda: later)
    assert zt_client.get(PROJECTS, headers=headers).status_code == 401


def test_each_caller_gets_their_own_list(zt_client, zt_identity):
    alice, alices = zt_identity.project_with("viewer")
    bob, bobs = zt_identity.project_with("viewer")
    key = zt_identity.api_key(alice)
    scoped = zt_identity.api_key(alice, project=alices)
    for _ in range(2):
        assert slugs(zt_client, zt_identity.headers(alice)) == [alices.slug]
        assert slugs(zt_client, zt_identity.headers(bob)) == [bobs.slug]
        assert slugs(zt_client, zt_identity.headers(key)) == [alices.slug]
        assert slugs(zt_client, zt_identity.headers(scoped)) == [alices.slug]
    # Filters are part of what is kept: another query is another answer.
    assert slugs(zt_client, zt_identity.headers(alice), q="no-such-project") == []
    assert slugs(zt_client, zt_identity.headers(alice)) == [alices.slug]


def test_routine_writes_leave_the_generation_alone(zt_client, zt_identity, zt_platform):
    """A key's last use, a profile edit or a login must not empty every server's cache."""
    user, _project = zt_identity.project_with("viewer")
    key = zt_identity.api_key(user)
    before = generation(zt_platform)
    assert zt_client.get(PROJECTS, headers=zt_identity.headers(key)).status_code == 200
    response = zt_client.patch(
        ME, headers=zt_identity.headers(user), json={"display_name": "Someone Else"}
    )
    assert response.status_code == 200, response.text
    assert generation(zt_platform) == before
    zt_identity.project()
    assert generation(zt_platform) > before


def test_a_rolled_back_write_moves_nothing(zt_identity, zt_platform):
    from zhongtai.identity.models import Project

    org = zt_identity.org()
    before = generation(zt_platform)
    with pytest.raises(RuntimeError), zt_platform.db.transaction() as session:
        session.add(Project(org_id=org.id, slug="doomed", name="Doomed"))
        session.flush()
        raise RuntimeError("abandon")
    assert generation(zt_platform) == before


def test_an_unreadable_generation_means_no_cache(zt_client, zt_identity, zt_platform, monkeypatch):
    user, first = zt_identity.project_with("viewer")
    headers = zt_identity.headers(zt_identity.api_key(user))
    assert slugs(zt_client, headers) == [first.slug]

    def broken(self: IdentityCache) -> int:
        raise RuntimeError("database went away")

    async def broken_from_the_loop(self: Any) -> int:
        raise RuntimeError("database went away")

    monkeypatch.setattr(IdentityCache, "_read", broken)
    monkeypatch.setattr(cache_module._LoopReader, "_read_once", broken_from_the_loop)
    second = zt_identity.project(slug="second")
    zt_identity.member(user, second, "viewer")
    # Nothing kept is trusted without the counter; every answer comes from the database.
    assert slugs(zt_client, headers) == sorted([first.slug, second.slug])
    assert len(identity_cache(zt_platform)._maps["result"]) == 0


def test_the_cache_can_be_turned_off(zt_settings, zt_app_factory):
    from litestar.testing import TestClient

    from zhongtai.testing import ZtIdentity

    settings = zt_settings.model_copy(
        update={"identity": zt_settings.identity.model_copy(update={"cache": False})}
    )
    app = zt_app_factory(settings=settings)
    with TestClient(app) as client:
        platform = app.state["platform"]
        identity = ZtIdentity(platform)
        user, project = identity.project_with("viewer")
        headers = identity.headers(identity.api_key(user))
        assert slugs(client, headers) == [project.slug]
        assert slugs(client, headers) == [project.slug]
        cache = platform.stash[IDENTITY_CACHE]
        assert cache.generation() is None
        assert len(cache._maps["principal"]) == len(cache._maps["result"]) == 0


def _loop_reads(zt_platform: Any, monkeypatch: Any) -> list[int]:
    """Values the counter had at each read the cache sent from an event loop."""
    if zt_platform.db.dialect != "postgresql":
        pytest.skip("PostgreSQL only: on SQLite the counter is read in place")
    sent: list[int] = []
    original = cache_module._LoopReader._read_once

    async def counted(self: Any) -> int:
        value = await original(self)
        sent.append(value)
        return value

    monkeypatch.setattr(cache_module._LoopReader, "_read_once", counted)
    return sent


def test_requests_at_once_share_reads_of_the_counter(zt_platform, monkeypatch):
    sent = _loop_reads(zt_platform, monkeypatch)
    cache = identity_cache(zt_platform)

    async def burst() -> tuple[int | None, list[int | None]]:
        first = await cache.generation_async()
        return first, list(await asyncio.gather(*(cache.generation_async() for _ in range(50))))

    first, burst_values = asyncio.run(burst())
    cache.close()
    assert first == generation(zt_platform) and burst_values == [first] * 50
    assert len(sent) == 2  # one for the first, one shared by the 50


def test_a_read_asked_for_while_one_is_under_way_sees_writes_committed_before(
    zt_identity, zt_platform, other_process, monkeypatch
):
    """The read in flight may have left before the write: a request that arrives after
    the commit must not take its answer, or a key revoked a moment ago would still work."""
    sent = _loop_reads(zt_platform, monkeypatch)
    user = zt_identity.user()
    cache = identity_cache(zt_platform)
    counted = cache_module._LoopReader._read_once

    async def scenario() -> tuple[int | None, int | None]:
        answered, release = asyncio.Event(), asyncio.Event()

        async def slow(self: Any) -> int:
            value = await counted(self)
            if len(sent) == 1:  # the first read: its answer is back, its caller not yet
                answered.set()
                await release.wait()
            return value

        monkeypatch.setattr(cache_module._LoopReader, "_read_once", slow)
        early = asyncio.ensure_future(cache.generation_async())
        await answered.wait()
        other_process("UPDATE users SET is_superuser = true WHERE id = :id", id=user.id)
        late = asyncio.ensure_future(cache.generation_async())
        await asyncio.sleep(0)
        release.set()
        return await early, await late

    early, late = asyncio.run(scenario())
    cache.close()
    assert early is not None and late is not None and late > early

"""Reads that depend only on identity, kept in memory until the identity generation moves.

Who a credential stands for and which projects a caller sees are asked on nearly
every request and change rarely. Re-reading them costs more than everything else a
request does (the projects list's SQL alone takes longer than a whole ``/healthz``),
so each server process keeps the answers, tagged with the **identity generation**:
a counter in the ``identity_generation`` table that database triggers bump in the
same transaction as any write to users' active and superuser flags, organizations,
projects, memberships or API keys (migration ``c0e1a0000003``), and to webhooks
(``c0e1a0000005``: which projects have one is asked on every event).

Every request reads the counter (one primary-key read on a connection the cache
holds: microseconds on SQLite, one round trip on PostgreSQL) before it trusts
anything cached. On PostgreSQL the request's own read is made from the event loop
(:meth:`IdentityCache.generation_async`, on an asyncio connection of the loop's
own), so a request whose answer is cached never waits for a worker thread; reads
asked for while one is under way share the next one, which starts after they
were asked. A write in any process — another server worker, the ``zhongtai
users`` command, an operator's SQL — is therefore seen by the next request
everywhere: revoking a key, deactivating a user or removing a member takes effect
at once, exactly as without the cache. Time-based limits (a key's ``expires_at``, a
token's ``exp``) are re-checked on every hit. When the counter cannot be read, the
cache is bypassed and emptied, never trusted.

``ZHONGTAI_IDENTITY__CACHE=false`` turns it off (every request reads the database).
What is cached is bounded (oldest entries go first) and never includes a refusal:
an unknown or wrong credential always reaches the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from zhongtai.platform import StashKey

if TYPE_CHECKING:
    from zhongtai.metadata.database import Database
    from zhongtai.platform import Platform

__all__ = ["IDENTITY_CACHE", "BoundedMap", "IdentityCache", "identity_cache"]

log = logging.getLogger("zhongtai.identity")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_READ_GENERATION = "SELECT value FROM identity_generation WHERE id = 1"


class BoundedMap(Generic[K, V]):
    """A dict that forgets its oldest entries beyond ``size``; safe across threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data.pop(key, None)
            while len(self._data) >= self.size:
                del self._data[next(iter(self._data))]
            self._data[key] = value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class IdentityCache:
    """Per-process answers that stay right while the identity generation stands still.

    Use :meth:`generation` once per request, then :meth:`get` and :meth:`put` with
    the value it returned (``None`` means "do not cache": the counter was unreadable).
    """

    def __init__(
        self, db: Database, *, enabled: bool = True, principals: int = 4096, results: int = 512
    ) -> None:
        self._db = db
        self.enabled = enabled
        self._lock = threading.Lock()
        self._connection: Any = None  # a pooled DBAPI connection held for the counter
        self._generation: int | None = None
        self._read_at = 0.0  # monotonic time of the last successful read
        self._maps: dict[str, BoundedMap[Any, Any]] = {
            "principal": BoundedMap(principals),
            "result": BoundedMap(results),
        }
        # Verified access tokens: a signature does not depend on the database, so
        # these outlive generations (expiry is checked on each use).
        self.tokens: BoundedMap[str, Any] = BoundedMap(principals)
        # The PostgreSQL connections generation_async reads on, one per event loop.
        self._loop_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopReader] = (
            weakref.WeakKeyDictionary()
        )

    async def generation_async(self) -> int | None:
        """:meth:`generation` for code on an event loop (the access guard).

        On PostgreSQL the counter is read on an asyncio connection held for the
        running loop; elsewhere (SQLite: a local read of microseconds) this is
        :meth:`generation`. ``None``: bypass the cache (the counter was unreadable).
        """
        if not self.enabled:
            return None
        if self._db.dialect != "postgresql":
            return self.generation()
        loop = asyncio.get_running_loop()
        reader = self._loop_readers.get(loop)
        if reader is None:
            reader = _LoopReader(self._db)
            self._loop_readers[loop] = reader
            weakref.finalize(loop, reader.close)  # a loop that is gone leaves no connection
        try:
            value = await reader.read()
        except Exception as exc:
            with self._lock:
                self._unreadable(exc)
            return None
        with self._lock:
            return self._observe(value)

    def generation(self, within: float = 0.0) -> int | None:
        """Read the counter; empty the caches when it moved. ``None``: bypass the cache.

        ``within``: a value read less than that many seconds ago will do (for answers
        that may lag other processes' writes that long; a request always reads).
        """
        if not self.enabled:
            return None
        with self._lock:
            if (
                within > 0
                and self._generation is not None
                and time.monotonic() - self._read_at < within
            ):
                return self._generation
            try:
                value = self._read()
            except Exception as exc:
                self._drop_connection()
                self._unreadable(exc)
                return None
            return self._observe(value)

    def _observe(self, value: int) -> int:
        """Take ``value`` as the counter just read (lock held): a new one empties the caches."""
        if value != self._generation:
            self._reset(value)
        self._read_at = time.monotonic()
        return value

    def _unreadable(self, exc: Exception) -> None:
        """The counter could not be read (lock held): caches off until it can."""
        if self._generation is not None:
            log.warning("identity cache off until the counter can be read: %s", exc)
        self._reset(None)

    def get(self, kind: str, key: Hashable, generation: int | None) -> Any:
        """The value kept for ``key`` under ``generation``, or None."""
        if generation is None or generation != self._generation:
            return None
        return self._maps[kind].get(key)

    def put(self, kind: str, key: Hashable, generation: int | None, value: Any) -> None:
        """Keep ``value`` if ``generation`` is still current.

        ``generation`` must have been read before the value was: then a write that
        lands in between moves the counter and the next request drops the value.
        """
        if generation is None:
            return
        with self._lock:
            if generation == self._generation:
                self._maps[kind].put(key, value)

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
            self._reset(None)
        for reader in list(self._loop_readers.values()):
            reader.close()
        self._loop_readers.clear()

    def _reset(self, generation: int | None) -> None:
        self._generation = generation
        for entries in self._maps.values():
            entries.clear()

    def _read(self) -> int:
        if self._connection is None:
            connection = self._db.engine.raw_connection()
            if self._db.dialect == "postgresql":
                # No transaction left open between reads: each read sees the last commit.
                connection.driver_connection.autocommit = True  # type: ignore[union-attr]
            self._connection = connection
        cursor = self._connection.driver_connection.execute(_READ_GENERATION)
        rows = cursor.fetchall()  # to the end: SQLite holds a read snapshot until then
        if not rows:
            raise LookupError("identity_generation has no row")
        return int(rows[0][0])

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                # Closed, not returned: the pool must not hand out its autocommit mode.
                self._connection.invalidate()
            except Exception:
                log.debug("closing the identity cache's connection failed", exc_info=True)
            self._connection = None


class _LoopReader:
    """Reads the counter on PostgreSQL from one event loop, over an asyncio connection.

    A read asked for while another is under way waits for the next one rather than
    sharing the one in flight: that one may have been sent before a write the caller
    has seen committed. All who wait for the next read share it, so a burst of
    requests costs a few round trips, not one each.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: Any = None  # psycopg.AsyncConnection
        self._next: asyncio.Future[int] | None = None  # the read not yet sent
        self._task: asyncio.Task[None] | None = None  # the reading task, while it runs

    async def read(self) -> int:
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            if self._task is None:
                self._task = loop.create_task(self._run())
        return await asyncio.shield(self._next)

    async def _run(self) -> None:
        try:
            while self._next is not None:
                waiting, self._next = self._next, None
                try:
                    value = await self._read_once()
                except BaseException as exc:
                    waiting.set_exception(exc)
                    waiting.exception()  # retrieved: no "never retrieved" warning if unwaited
                    if not isinstance(exc, Exception):
                        raise
                else:
                    waiting.set_result(value)
        finally:
            self._task = None

    async def _read_once(self) -> int:
        import psycopg

        if self._connection is None or self._connection.closed:
            args, kwargs = self._db.engine.dialect.create_connect_args(self._db.engine.url)
            kwargs.setdefault("connect_timeout", 5)
            self._connection = await psycopg.AsyncConnection.connect(
                *args, **kwargs, autocommit=True
            )
        try:
            cursor = await self._connection.execute(_READ_GENERATION)
            row = await cursor.fetchone()
        except Exception:
            self.close()
            raise
        if row is None:
            raise LookupError("identity_generation has no row")
        return int(row[0])

    def close(self) -> None:
        """Close the connection from any thread (its loop may be gone already)."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            try:
                connection.pgconn.finish()
            except Exception:
                log.debug("closing the identity cache's loop connection failed", exc_info=True)


IDENTITY_CACHE: StashKey[IdentityCache] = StashKey()


def identity_cache(platform: Platform) -> IdentityCache:
    """The platform's identity cache, created on first use."""
    if IDENTITY_CACHE not in platform.stash:
        enabled = platform.settings.identity.cache
        platform.stash[IDENTITY_CACHE] = IdentityCache(platform.db, enabled=enabled)
    return platform.stash[IDENTITY_CACHE]

"""The database: one SQLAlchemy engine per platform, sync sessions, events after commit.

The access path is synchronous SQLAlchemy on purpose: measured here, one
primary-key lookup through aiosqlite had a p99 of 76-174 ms under load against
9-13 ms for plain sqlite3. Route handlers that touch the database are sync and run
in Litestar's thread pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from zhongtai.hooks.events import Event, take_pending

log = logging.getLogger("zhongtai.db")

EventSink = Callable[[Event], None]


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message is one line fit for an operator."""


def normalize_url(url: str) -> URL:
    """Parse ``url``, choosing psycopg 3 for PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A writer waits this long for the one write lock: under a burst of requests on a
    # busy machine, five seconds proved too short (errors/503s for no real fault).
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_before_savepoint(connection: Any, _name: str) -> None:
    """Open the transaction a ``SAVEPOINT`` is meant to be nested in.

    The sqlite3 module sends ``BEGIN`` only before the first write, so a transaction
    that has only read is not one yet for SQLite, and a ``SAVEPOINT`` there starts a
    transaction of its own, which its ``RELEASE`` commits: ``begin_nested`` would
    commit its rows at once, whatever the transaction around it does afterwards.
    ``BEGIN`` first (deferred, as the module's own) makes the savepoint nested, and
    the session's commit or rollback decides for it. Autocommit connections are left
    alone."""
    raw = connection.connection.dbapi_connection
    if raw.isolation_level is not None and not raw.in_transaction:
        raw.execute("BEGIN")


class Database:
    """Engine and session factory. Domain events go to ``event_sink`` after commit."""

    def __init__(self, url: str, *, event_sink: EventSink | None = None) -> None:
        self.url = normalize_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            if self.url.database and self.url.database != ":memory:":
                from pathlib import Path

                folder = Path(self.url.database).parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DatabaseUnavailable(
                        f"cannot create the database folder {folder}: {exc.strerror}"
                    ) from None
            kwargs["connect_args"] = {"check_same_thread": False}
            # Enough pooled connections for the worker threads: an overflow connection
            # is opened and closed per use, paying the pragmas and a cold page cache.
            # No pre-ping: a local file does not drop connections.
            kwargs.update(pool_size=40, max_overflow=10)
        else:
            # No pre-ping (a round trip per checkout, several per job): a connection the
            # server dropped fails its statement, SQLAlchemy then discards the whole
            # pool, the request answers 503 and the next one reconnects.
            kwargs.update(pool_size=10, max_overflow=20, pool_timeout=10, pool_pre_ping=False)
            kwargs["connect_args"] = {"connect_timeout": 5}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "savepoint", _sqlite_begin_before_savepoint)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # The same pool, each statement committing by itself (see autocommit()).
        self._autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.event_sink = event_sink
        event.listen(self.sessionmaker, "after_commit", self._after_commit)
        event.listen(self.sessionmaker, "after_soft_rollback", self._after_rollback)

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def is_embedded(self) -> bool:
        return self.dialect == "sqlite"

    def _after_commit(self, session: Session) -> None:
        pending = take_pending(session)
        if self.event_sink is None:
            return
        for item in pending:
            self.event_sink(item)

    def _after_rollback(self, session: Session, _previous: Any) -> None:
        take_pending(session)  # a rolled-back transaction delivers nothing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back if it raises."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Session]:
        """A session whose statements each commit by themselves, for work that is one
        statement: no ``BEGIN`` and ``COMMIT`` round trips around it (two of three on
        PostgreSQL). Events emitted in it are delivered when the block ends without an
        error; a statement that ran before an error stays committed."""
        with self.sessionmaker(bind=self._autocommit_engine) as session, session.begin():
            yield session

    def session(self) -> Session:
        """A plain session; the caller commits."""
        return self.sessionmaker()

    def ping(self) -> None:
        """Run ``SELECT 1``; raise :class:`DatabaseUnavailable` with one readable line."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database at {self.display_url}: {_first_line(exc.orig)}"
            ) from None

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines() if exc else []
    return lines[0] if lines else type(exc).__name__

"""The database: one SQLAlchemy engine per platform, sync sessions, events after commit.

The access path is synchronous SQLAlchemy on purpose: measured here, one
primary-key lookup through aiosqlite had a p99 of 76-174 ms under load against
9-13 ms for plain sqlite3. Route handlers that touch the database are sync and run
in Litestar's thread pool.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import Executable

from zhongtai.hooks.events import Event, emit, take_pending

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


class _Kept(threading.local):
    """One thread's kept connections (see :meth:`Database.keeping`), by autocommit."""

    def __init__(self) -> None:
        self.depth = 0  # keeping() blocks open in this thread
        self.connections: dict[bool, Connection] = {}
        self.busy: set[bool] = set()


class _Compiled:
    """A Core statement compiled once for the DBAPI driver: its SQL, and SQLAlchemy's
    own bind and result processors, so values go in and come out as they do through
    a session."""

    __slots__ = ("binds", "columns", "compiled", "positions", "results", "sql")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.compiled = compiled
        self.sql: str = compiled.string
        self.positions: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positional else None
        )
        escaped = compiled.escaped_bind_names
        self.binds = {
            escaped.get(name, name): processor
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        returned = getattr(statement, "exported_columns", None)
        self.columns = list(returned) if returned else None  # None: the statement returns no rows
        self.results: list[Any] | None = None  # at the first row: see row()

    def parameters(self, params: Mapping[str, Any]) -> Any:
        """``params`` with the statement's literal values added, processed, in the
        driver's style."""
        values = self.compiled.construct_params(params)  # a new dict: params untouched
        for name, processor in self.binds.items():
            values[name] = processor(values[name])
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)

    def row(self, row: Any, cursor: Any, dialect: Dialect) -> tuple[Any, ...]:
        """``row`` as SQLAlchemy's result gives it. Result processors may depend on the
        driver's type codes (PostgreSQL's numeric types), so they are built from the
        first cursor's description."""
        results = self.results
        if results is None:
            assert self.columns is not None
            results = self.results = [
                column.type.dialect_impl(dialect).result_processor(dialect, described[1])
                for column, described in zip(self.columns, cursor.description, strict=True)
            ]
        return tuple(
            value if processor is None else processor(value)
            for processor, value in zip(results, row, strict=True)
        )


class DriverStatements:
    """Core statements run straight on the DBAPI connection under a SQLAlchemy
    connection: each committing by itself (:meth:`Database.driver_autocommit`), or in
    a session's transaction (:meth:`Database.on_driver`)."""

    def __init__(
        self, db: Database, connection: Connection, session: Session | None = None
    ) -> None:
        self._db = db
        self._connection = connection
        self._session = session
        self.events: list[Event] = []

    def first(self, statement: Executable, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run ``statement`` (built once, at import: it is compiled once and kept);
        its first row, processed as SQLAlchemy's result would be, or None (always for
        a statement that returns no rows)."""
        compiled = self._db._compiled(statement)
        values = compiled.parameters(params)
        dialect = self._db.engine.dialect
        raw = self._connection.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(compiled.sql, values)
            row = cursor.fetchone() if compiled.columns is not None else None
            if row is not None:
                row = compiled.row(row, cursor, dialect)
        except dialect.loaded_dbapi.Error as exc:
            # As SQLAlchemy's own execution does: a dropped connection is invalidated
            # (the pool opens a fresh one) and the error is raised as its DBAPIError.
            invalidated = dialect.is_disconnect(exc, raw, cursor)
            if invalidated:
                self._connection.invalidate(exc)
            raise DBAPIError.instance(
                compiled.sql,
                values,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        return row

    def emit(self, event: Event) -> None:
        """Record ``event`` to be delivered when the block ends without an error; on a
        session's transaction, when it commits (as :func:`~zhongtai.hooks.events.emit`)."""
        if self._session is not None:
            emit(self._session, event)
        else:
            self.events.append(event)


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
        self._kept = _Kept()
        self._driver_sql: dict[Executable, _Compiled] = {}  # see driver_autocommit()

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def is_embedded(self) -> bool:
        return self.dialect == "sqlite"

    def _after_commit(self, session: Session) -> None:
        self._deliver(take_pending(session))

    def _deliver(self, pending: list[Event]) -> None:
        if self.event_sink is None:
            return
        for item in pending:
            self.event_sink(item)

    def _compiled(self, statement: Executable) -> _Compiled:
        compiled = self._driver_sql.get(statement)
        if compiled is None:
            compiled = self._driver_sql[statement] = _Compiled(statement, self.engine.dialect)
        return compiled

    def _after_rollback(self, session: Session, _previous: Any) -> None:
        take_pending(session)  # a rolled-back transaction delivers nothing

    @contextlib.contextmanager
    def transaction(self, *, kept: bool = False) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back if it raises.

        ``kept``: on this thread's kept connection when it is inside :meth:`keeping`
        (and that connection is not in use by an enclosing block); the session is then
        joined to the connection's transaction, so commit it only by leaving the block.
        """
        with self._session(autocommit=False, kept=kept) as session:
            yield session

    @contextlib.contextmanager
    def autocommit(self, *, kept: bool = False) -> Iterator[Session]:
        """A session whose statements each commit by themselves, for work that is one
        statement: no ``BEGIN`` and ``COMMIT`` round trips around it (two of three on
        PostgreSQL). Events emitted in it are delivered when the block ends without an
        error; a statement that ran before an error stays committed. ``kept``: as for
        :meth:`transaction`."""
        with self._session(autocommit=True, kept=kept) as session:
            yield session

    @contextlib.contextmanager
    def driver_autocommit(self, *, kept: bool = False) -> Iterator[DriverStatements]:
        """Like :meth:`autocommit`, for the few statements on every job's path: Core
        statements run straight on the DBAPI connection, without a session or
        SQLAlchemy's execution of each statement, which cost several times what the
        statement itself costs the client (docs/benchmarks.md). Values are processed
        by the statements' own types and errors raised as SQLAlchemy's, as through a
        session; no ORM and no engine events. Events emitted on it are delivered when
        the block ends without an error. ``kept``: as for :meth:`transaction`."""
        conn = self._take_kept(autocommit=True) if kept else None
        pooled = conn is None
        if conn is None:
            conn = self._autocommit_engine.connect()
        statements = DriverStatements(self, conn)
        done = False
        try:
            yield statements
            done = True
        finally:
            if pooled:
                conn.close()
            else:
                self._give_back_kept(True, ok=done)
        self._deliver(statements.events)

    def on_driver(self, session: Session) -> DriverStatements:
        """Core statements run straight on the driver in ``session``'s transaction (see
        :meth:`driver_autocommit`), for a statement on every request's path. The
        session does not see what they write: add or refresh the objects yourself."""
        return DriverStatements(self, session.connection(), session)

    @contextlib.contextmanager
    def _session(self, *, autocommit: bool, kept: bool) -> Iterator[Session]:
        """What :meth:`transaction` and :meth:`autocommit` yield: a session on this
        thread's kept connection of that kind when it may, else on a pooled one."""
        conn = self._take_kept(autocommit=autocommit) if kept else None
        if conn is not None:
            with self._on_kept(conn, autocommit=autocommit) as session:
                yield session
            return
        bind = self._autocommit_engine if autocommit else self.engine
        with self.sessionmaker(bind=bind) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        """Within this block, this thread keeps the connections its ``kept=True``
        sessions use between one block and the next, instead of taking one from the
        pool each time: a checkout and its return cost about as much CPU as a
        statement, and a job worker runs a few short statements per job. At most two
        (one of each kind), closed when the outermost ``keeping`` block ends; a kept
        connection whose block raised is closed at once (its state is unknown) and the
        next block takes a fresh one. For a thread that lives as long as the block and
        does little else, such as ``zhongtai worker``'s, one per process: every thread
        that keeps holds two of the pool's connections while it does."""
        kept = self._kept
        kept.depth += 1
        try:
            yield
        finally:
            kept.depth -= 1
            if kept.depth == 0:
                for autocommit in list(kept.connections):
                    self._drop_kept(autocommit)

    def _take_kept(self, *, autocommit: bool) -> Connection | None:
        """This thread's kept connection of that kind, marked busy; None outside
        :meth:`keeping` or while an enclosing block uses it."""
        kept = self._kept
        if kept.depth == 0 or autocommit in kept.busy:
            return None
        conn = kept.connections.get(autocommit)
        if conn is None or conn.closed or conn.invalidated:
            engine = self._autocommit_engine if autocommit else self.engine
            conn = kept.connections[autocommit] = engine.connect()
        kept.busy.add(autocommit)
        return conn

    def _give_back_kept(self, autocommit: bool, *, ok: bool) -> None:
        """End a block on this thread's kept connection of that kind: free for the
        next block, or closed if the block raised (its state is unknown)."""
        self._kept.busy.discard(autocommit)
        if not ok:
            self._drop_kept(autocommit)

    def _drop_kept(self, autocommit: bool) -> None:
        conn = self._kept.connections.pop(autocommit, None)
        if conn is not None:
            with contextlib.suppress(Exception):  # a dropped server connection, say
                conn.close()

    @contextlib.contextmanager
    def _on_kept(self, conn: Connection, *, autocommit: bool) -> Iterator[Session]:
        """A session joined to a transaction on ``conn`` (a kept connection), committed
        when the block ends; its events are delivered after that commit."""
        session = Session(bind=conn, expire_on_commit=False)
        committed = False
        try:
            with conn.begin():
                yield session
                session.flush()
            committed = True
        finally:
            pending = take_pending(session)
            session.close()
            self._give_back_kept(autocommit, ok=committed)
        self._deliver(pending)

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

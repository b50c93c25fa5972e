"""The database wrapper: transactions and single self-committing statements, with the
domain events of each delivered only once what they describe is committed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
)

from zhongtai.hooks.events import Event, emit
from zhongtai.metadata.base import UTCDateTime
from zhongtai.metadata.database import Database


@dataclasses.dataclass(frozen=True, kw_only=True)
class Noted(Event):
    name = "test.noted"
    note: str


@pytest.fixture
def db(zt_database_url: str) -> Iterator[tuple[Database, list[Event]]]:
    delivered: list[Event] = []
    database = Database(zt_database_url, event_sink=delivered.append)
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    yield database, delivered
    database.dispose()


def bodies(database: Database) -> list[str]:
    """What another connection sees committed."""
    with database.engine.connect() as connection:
        return list(connection.scalars(text("SELECT body FROM notes ORDER BY id")))


def test_each_statement_of_an_autocommit_block_is_committed_as_it_runs(db) -> None:
    database, delivered = db
    with database.autocommit() as session:
        session.execute(text("INSERT INTO notes VALUES (1, 'one')"))
        assert bodies(database) == ["one"]  # visible before the block ends
        emit(session, Noted(note="one"))
        assert delivered == []
    assert [event.note for event in delivered] == ["one"]


def test_an_error_after_a_statement_keeps_it_and_delivers_no_event(db) -> None:
    database, delivered = db
    with pytest.raises(RuntimeError), database.autocommit() as session:
        session.execute(text("INSERT INTO notes VALUES (1, 'kept')"))
        emit(session, Noted(note="kept"))
        raise RuntimeError("boom")
    assert bodies(database) == ["kept"]
    assert delivered == []


def test_a_transaction_still_commits_all_or_nothing_after_autocommit_use(db) -> None:
    database, delivered = db
    with database.autocommit() as session:  # the pooled connection goes back to normal
        session.execute(text("INSERT INTO notes VALUES (1, 'one')"))
    with pytest.raises(RuntimeError), database.transaction() as session:
        session.execute(text("INSERT INTO notes VALUES (2, 'two')"))
        assert bodies(database) == ["one"]  # not yet visible to others
        emit(session, Noted(note="two"))
        raise RuntimeError("boom")
    assert bodies(database) == ["one"]
    assert delivered == []


def test_a_savepoint_is_undone_with_the_transaction_around_it(db) -> None:
    """``begin_nested`` (a unique clash caught without losing the transaction) commits
    nothing by itself, even when nothing was written before it: on SQLite a
    ``SAVEPOINT`` outside a transaction starts one, and releasing it would commit."""
    database, _delivered = db
    with pytest.raises(RuntimeError), database.transaction() as session:
        assert session.scalar(text("SELECT count(*) FROM notes")) == 0  # a read only
        with session.begin_nested():
            session.execute(text("INSERT INTO notes VALUES (1, 'nested')"))
        assert bodies(database) == []  # released, yet not committed
        session.execute(text("INSERT INTO notes VALUES (2, 'after')"))
        raise RuntimeError("boom")
    assert bodies(database) == []
    with database.transaction() as session:  # and the connection is fine afterwards
        with session.begin_nested():
            session.execute(text("INSERT INTO notes VALUES (3, 'kept')"))
        session.execute(text("INSERT INTO notes VALUES (4, 'also')"))
    assert bodies(database) == ["kept", "also"]


def test_a_savepoint_rolled_back_keeps_the_transaction_usable(db) -> None:
    database, _delivered = db
    with database.transaction() as session:
        session.execute(text("INSERT INTO notes VALUES (1, 'one')"))
        with pytest.raises(RuntimeError), session.begin_nested():
            session.execute(text("INSERT INTO notes VALUES (2, 'taken back')"))
            raise RuntimeError("refused")
        session.execute(text("INSERT INTO notes VALUES (3, 'three')"))
    assert bodies(database) == ["one", "three"]


def dbapi_of(session: Any) -> Any:
    """The driver's connection under ``session``."""
    return session.connection().connection.dbapi_connection


def test_a_keeping_thread_reuses_one_connection_per_kind_and_gives_them_back(db) -> None:
    """A worker's claim and outcome run on connections its thread keeps between jobs:
    no pool checkout each time; the pool has them back when the thread stops keeping."""
    database, delivered = db
    pool = database.engine.pool
    with database.keeping():
        seen = set()
        for n in range(3):
            with database.transaction(kept=True) as session:
                session.execute(text(f"INSERT INTO notes VALUES ({2 * n}, 'tx{n}')"))
                emit(session, Noted(note=f"tx{n}"))
                seen.add(id(dbapi_of(session)))
                assert len(delivered) == n  # not before the commit
                assert bodies(database) == [v for i in range(n) for v in (f"tx{i}", f"ac{i}")]
            assert [event.note for event in delivered][-1] == f"tx{n}"  # after it
            with database.autocommit(kept=True) as session:
                session.execute(text(f"INSERT INTO notes VALUES ({2 * n + 1}, 'ac{n}')"))
                assert bodies(database)[-1] == f"ac{n}"  # committed as it ran
                seen.add(id(dbapi_of(session)))
        assert len(seen) == 2  # one of each kind, the same every time
        assert pool.checkedout() == 2  # kept between blocks
    assert pool.checkedout() == 0
    with database.transaction(kept=True) as session:  # outside keeping: the pool's
        session.execute(text("INSERT INTO notes VALUES (99, 'pooled')"))
        assert pool.checkedout() == 1
    assert pool.checkedout() == 0 and bodies(database)[-1] == "pooled"


def test_a_kept_block_that_raises_is_undone_and_its_connection_replaced(db) -> None:
    database, delivered = db
    with database.keeping():
        with pytest.raises(RuntimeError), database.transaction(kept=True) as session:
            session.execute(text("INSERT INTO notes VALUES (1, 'undone')"))
            emit(session, Noted(note="undone"))
            first = session.connection()
            raise RuntimeError("boom")
        assert bodies(database) == [] and delivered == []
        assert first.closed  # its state was unknown: given back to the pool, not kept
        with database.transaction(kept=True) as session:
            session.execute(text("INSERT INTO notes VALUES (2, 'after')"))
            emit(session, Noted(note="after"))
            assert session.connection() is not first
        assert database.engine.pool.checkedout() == 1
    assert bodies(database) == ["after"]
    assert [event.note for event in delivered] == ["after"]


def test_a_kept_block_inside_another_takes_a_connection_of_its_own(db) -> None:
    """The kept connection is busy while its block runs: a block opened inside it is a
    transaction of its own, committed on its own."""
    database, _delivered = db
    with database.keeping(), database.transaction(kept=True) as outer:
        assert outer.scalar(text("SELECT count(*) FROM notes")) == 0
        with database.transaction(kept=True) as inner:
            assert dbapi_of(inner) is not dbapi_of(outer)
            inner.execute(text("INSERT INTO notes VALUES (1, 'inner')"))
        assert bodies(database) == ["inner"]
        outer.execute(text("INSERT INTO notes VALUES (2, 'outer')"))
        assert bodies(database) == ["inner"]  # the outer one is not committed yet
    assert bodies(database) == ["inner", "outer"]


def test_a_keeping_thread_recovers_when_the_server_drops_its_connection(db) -> None:
    """PostgreSQL restarted or an idle connection killed: the next job's block fails
    once, as it would on a pooled connection, and the one after runs on a fresh one."""
    database, _delivered = db
    if database.is_embedded:
        pytest.skip("a server-side disconnect needs PostgreSQL")
    from sqlalchemy.exc import DBAPIError

    with database.keeping():
        with database.transaction(kept=True) as session:
            pid = session.scalar(text("SELECT pg_backend_pid()"))
        with database.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError), database.transaction(kept=True) as session:
            session.execute(text("INSERT INTO notes VALUES (1, 'lost')"))
        with database.transaction(kept=True) as session:
            session.execute(text("INSERT INTO notes VALUES (2, 'next')"))
            assert session.scalar(text("SELECT pg_backend_pid()")) != pid
    assert bodies(database) == ["next"]


# -- statements straight on the driver (driver_autocommit) ---------------------------

_TYPED = Table(
    "typed",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime()),
    Column("doc", JSON(none_as_null=True)),
    Column("share", Float),
    Column("done", Boolean),
    Column("label", String(20)),
)
# Literal values in the statement (done=True, a computed share) become parameters of
# its own that the caller does not pass.
_ADD_TYPED = (
    insert(_TYPED)
    .values(
        id=bindparam("t_id"),
        at=bindparam("t_at", type_=UTCDateTime()),
        doc=bindparam("t_doc", type_=JSON(none_as_null=True)),
        share=bindparam("t_share", type_=Float()) * 2,
        done=True,
        label=bindparam("t_label"),
    )
    .returning(*_TYPED.c)
)
_NOTE_ONCE = text("INSERT INTO notes VALUES (1, 'once')")


@pytest.fixture
def typed(db) -> Iterator[tuple[Database, list[Event]]]:
    database, delivered = db
    _TYPED.create(database.engine)
    yield database, delivered


def test_a_statement_on_the_driver_comes_back_as_through_a_session(typed) -> None:
    """The worker's claim and outcome run on the driver: the values a row gives must be
    those SQLAlchemy gives (UTC-aware datetimes, JSON as objects, booleans), and the
    values sent must be stored as a session stores them."""
    database, delivered = typed
    at = datetime(2026, 12, 5, 16, 30, 1, 250_000, tzinfo=timezone(timedelta(hours=8)))
    params = {"t_at": at, "t_doc": {"a": [1, "二"]}, "t_share": 0.25, "t_label": "x"}
    with database.driver_autocommit() as statements:
        first = statements.first(_ADD_TYPED, {"t_id": 1, **params})
        statements.emit(Noted(note="added"))
        assert delivered == []
    assert [event.note for event in delivered] == ["added"]
    with database.driver_autocommit() as statements:  # None stays NULL, not JSON null
        second = statements.first(_ADD_TYPED, {**params, "t_id": 2, "t_doc": None})
    with database.transaction() as session:
        stored = [tuple(row) for row in session.execute(select(_TYPED).order_by(_TYPED.c.id))]
        through_session = tuple(
            session.execute(
                select(_TYPED.c.id).where(_TYPED.c.doc.is_(None), _TYPED.c.at == at)
            ).scalars()
        )
    assert first == stored[0] and second == stored[1]
    assert first == (1, at, {"a": [1, "二"]}, 0.5, True, "x")
    assert first[1].tzinfo == UTC
    assert through_session == (2,)


def test_a_driver_error_is_sqlalchemys_and_undoes_nothing_else(typed) -> None:
    """A failed statement raises SQLAlchemy's exception of its kind (the engine retries
    on DBAPIError and gives up on IntegrityError); what ran before it in the block
    stays committed, its events are not delivered, and a kept connection is replaced."""
    from sqlalchemy.exc import IntegrityError

    database, delivered = typed
    with database.keeping():
        with database.driver_autocommit(kept=True) as statements:
            statements.first(_NOTE_ONCE, {})
            kept = connection_of(statements)
        with pytest.raises(IntegrityError), database.driver_autocommit(kept=True) as statements:
            assert connection_of(statements) is kept  # the thread's own
            statements.emit(Noted(note="lost"))
            statements.first(_NOTE_ONCE, {})
        assert bodies(database) == ["once"] and delivered == []
        assert kept.closed  # its state was unknown: given back to the pool, not kept
        with database.driver_autocommit(kept=True) as statements:
            assert connection_of(statements) is not kept
        assert database.engine.pool.checkedout() == 1
    assert database.engine.pool.checkedout() == 0


def connection_of(statements: Any) -> Any:
    """The SQLAlchemy connection ``statements`` run on."""
    return statements._connection


def test_the_driver_recovers_when_the_server_drops_its_connection(typed) -> None:
    """PostgreSQL restarted: the statement fails as SQLAlchemy's would (DBAPIError, the
    connection invalidated) and the next block runs on a fresh connection."""
    database, _delivered = typed
    if database.is_embedded:
        pytest.skip("a server-side disconnect needs PostgreSQL")
    from sqlalchemy.exc import DBAPIError

    pid_of = select(func.pg_backend_pid())
    with database.keeping():
        with database.driver_autocommit(kept=True) as statements:
            pid = statements.first(pid_of, {})
        with database.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid[0]})
        with pytest.raises(DBAPIError) as raised, database.driver_autocommit(kept=True) as s:
            s.first(_NOTE_ONCE, {})
        assert raised.value.connection_invalidated
        with database.driver_autocommit(kept=True) as statements:
            statements.first(_NOTE_ONCE, {})
            assert statements.first(pid_of, {}) != pid
    assert bodies(database) == ["once"]


def test_driver_statements_in_a_session_commit_and_deliver_with_it(typed) -> None:
    """``on_driver``: the statement is part of the session's transaction, and so are
    its events: both go if the transaction rolls back."""
    database, delivered = typed
    with pytest.raises(RuntimeError), database.transaction() as session:
        statements = database.on_driver(session)
        statements.first(_NOTE_ONCE, {})
        statements.emit(Noted(note="undone"))
        assert bodies(database) == []  # not committed yet
        raise RuntimeError("boom")
    assert bodies(database) == [] and delivered == []
    with database.transaction() as session:
        statements = database.on_driver(session)
        statements.first(_NOTE_ONCE, {})
        statements.emit(Noted(note="once"))
        assert delivered == []
    assert bodies(database) == ["once"]
    assert [event.note for event in delivered] == ["once"]

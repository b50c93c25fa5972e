"""The database wrapper: transactions and single self-committing statements, with the
domain events of each delivered only once what they describe is committed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from zhongtai.hooks.events import Event, emit
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

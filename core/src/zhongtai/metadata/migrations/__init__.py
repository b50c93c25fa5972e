"""Schema migrations: Alembic with the core's branch plus one branch per plugin.

All branches share one ``alembic_version`` table (Alembic's "multiple bases"). The
core's branch label is ``core``; each plugin's label is its name and its folder
comes from the ``register_migrations`` hook. Every command runs inside a single
transaction, so on PostgreSQL a failing migration leaves the schema as it was.

A plugin that was installed and then removed leaves its revision in
``alembic_version``; Alembic cannot locate it and would refuse to run. Such rows are
parked in ``alembic_version_parked`` (the plugin's tables stay untouched) and put
back when the plugin returns. Because a plugin's revision stands in for the core
revision it depends on, the applied head of every branch is also recorded in
``alembic_branch_heads`` after each command, so parking can restore what the
removed row implied.

Importing Alembic and building its revision map costs about 0.3 s, on every start,
even when there is nothing to do. So each command also records, in the same
transaction, a fingerprint of what it left behind in ``alembic_schema_fingerprint``
(one row): a hash of every file of every version folder (with its branch and name)
and of the rows of ``alembic_version`` — but only when the schema is then at every
head, and the row is deleted otherwise (after a downgrade, a partial upgrade, a new
revision). :meth:`Migrations.is_current` recomputes it with plain SQL and file
reads; when it matches, nothing is pending and nothing needs parking, exactly as
when it was recorded, and start-up leaves Alembic alone. Any change — a plugin added
or removed, a revision file added, removed or edited, a version row changed by other
means — gives another hash, and start-up takes the full path.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import Table
    from sqlalchemy.engine import Connection

    from zhongtai.metadata.database import Database

log = logging.getLogger("zhongtai.migrations")

CORE_BRANCH = "core"
HERE = Path(__file__).parent
VERSION_TABLE = "alembic_version"
PARKED_TABLE = "alembic_version_parked"
HEADS_TABLE = "alembic_branch_heads"
FINGERPRINT_TABLE = "alembic_schema_fingerprint"
_FINGERPRINT_SCHEME = b"zhongtai schema fingerprint v1"


class MigrationError(Exception):
    """A migration command failed; the transaction was rolled back."""


class Migrations:
    """Runs Alembic over the core's and the loaded plugins' version folders."""

    def __init__(self, db: Database, branches: Mapping[str, Path]) -> None:
        self.db = db
        self.branches = {CORE_BRANCH: HERE / "versions", **branches}

    def _config(self, connection: Connection | None = None, branch: str | None = None) -> Config:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(HERE))
        cfg.set_main_option("path_separator", "os")
        cfg.set_main_option(
            "version_locations", _pathsep().join(str(p) for p in self.branches.values())
        )
        cfg.attributes["connection"] = connection
        if branch is not None:
            cfg.attributes["table_prefix"] = _table_filter(branch)
        return cfg

    def script(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._config())

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.db.engine.begin() as conn:
            self._park_unknown(conn)
            yield conn
            at_heads = self._record_heads(conn)
            self._record_fingerprint(conn, at_heads=at_heads)

    def _tables(self) -> tuple[Table, Table, Table]:
        from sqlalchemy import Column, MetaData, String, Table

        meta = MetaData()
        return (
            Table(VERSION_TABLE, meta, Column("version_num", String(32))),
            Table(PARKED_TABLE, meta, Column("version_num", String(32), primary_key=True)),
            Table(
                HEADS_TABLE,
                meta,
                Column("branch", String(64), primary_key=True),
                Column("version_num", String(32), nullable=False),
            ),
        )

    def _fingerprint_table(self) -> Table:
        from sqlalchemy import Column, MetaData, String, Table

        return Table(
            FINGERPRINT_TABLE, MetaData(), Column("fingerprint", String(64), primary_key=True)
        )

    def fingerprint(self, version_rows: Iterable[str]) -> str:
        """Hash of every version folder's files (branch, name, bytes) and ``version_rows``.

        Sub-folders (``__pycache__``) are left out: Alembic reads only the folder itself.
        """
        digest = hashlib.sha256(_FINGERPRINT_SCHEME)

        def part(data: bytes) -> None:  # length-prefixed, so no two inputs run together
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)

        for branch in sorted(self.branches):
            folder = self.branches[branch]
            files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            part(b"branch")
            part(branch.encode())
            part(str(len(files)).encode())
            for path in files:
                part(path.name.encode("utf-8", "surrogateescape"))
                part(path.read_bytes())
        rows = sorted(version_rows)
        part(b"versions")
        part(str(len(rows)).encode())
        for row in rows:
            part(row.encode())
        return digest.hexdigest()

    def is_current(self) -> bool:
        """True when the last command left the schema at every head of these very files.

        Plain SQL and file reads: Alembic is not imported. True means that an upgrade
        would apply nothing and park nothing; False means only "not known".
        """
        from sqlalchemy import inspect, select
        from sqlalchemy.exc import DBAPIError

        version = self._tables()[0]
        table = self._fingerprint_table()
        try:
            with self.db.engine.connect() as conn:
                if not inspect(conn).has_table(FINGERPRINT_TABLE):
                    return False
                stored = list(conn.execute(select(table.c.fingerprint)).scalars())
                if len(stored) != 1:
                    return False
                rows = list(conn.execute(select(version.c.version_num)).scalars())
        except DBAPIError:  # e.g. no alembic_version table: let Alembic sort it out
            return False
        return bool(rows) and stored[0] == self.fingerprint(rows)

    def _record_fingerprint(self, conn: Connection, *, at_heads: bool) -> None:
        """Record the fingerprint when nothing is pending; forget it otherwise."""
        from sqlalchemy import inspect, select

        table = self._fingerprint_table()
        if not at_heads:
            if inspect(conn).has_table(FINGERPRINT_TABLE):
                conn.execute(table.delete())
            return
        version = self._tables()[0]
        rows = list(conn.execute(select(version.c.version_num)).scalars())
        table.create(conn, checkfirst=True)
        conn.execute(table.delete())
        conn.execute(table.insert().values(fingerprint=self.fingerprint(rows)))

    def _ancestors(self, script: ScriptDirectory, revs: set[str]) -> set[str]:
        if not revs:
            return set()
        return {rev.revision for rev in script.iterate_revisions(tuple(revs), "base")}

    def _reconcile(
        self, conn: Connection, script: ScriptDirectory
    ) -> tuple[set[str], set[str], set[str], set[str]]:
        """Compute, without writing: (recorded rows, rows to keep, rows to park, rows back)."""
        from sqlalchemy import inspect

        tables = set(inspect(conn).get_table_names())
        if VERSION_TABLE not in tables:
            return set(), set(), set(), set()
        version, parked, heads = self._tables()
        known = {rev.revision for rev in script.walk_revisions()}
        original = {r for (r,) in conn.execute(version.select())}
        unknown = original - known
        rows = original - unknown
        if unknown and HEADS_TABLE in tables:  # what the parked rows stood in for
            rows |= {r for (_, r) in conn.execute(heads.select()) if r in known}
        back: set[str] = set()
        if PARKED_TABLE in tables:
            back = {r for (r,) in conn.execute(parked.select())} & known
            rows |= back
        # Keep only rows no other row implies, as Alembic itself does.
        rows = {r for r in rows if r not in self._ancestors(script, rows - {r})}
        return original, rows, unknown, back

    def _park_unknown(self, conn: Connection) -> None:
        version, parked, _ = self._tables()
        original, rows, unknown, back = self._reconcile(conn, self.script())
        if unknown:
            parked.create(conn, checkfirst=True)
        for rev in sorted(unknown):
            log.warning(
                "revision %s belongs to no installed plugin; its tables are left as they are", rev
            )
            conn.execute(parked.insert().values(version_num=rev))
        for rev in back:
            conn.execute(parked.delete().where(parked.c.version_num == rev))
        if rows != original:
            conn.execute(version.delete())
            for rev in sorted(rows):
                conn.execute(version.insert().values(version_num=rev))

    def _record_heads(self, conn: Connection) -> bool:
        """Record each branch's applied head; return True when every revision is applied."""
        from alembic.runtime.migration import MigrationContext

        _, _, heads = self._tables()
        heads.create(conn, checkfirst=True)
        script = self.script()
        applied = self._ancestors(script, set(MigrationContext.configure(conn).get_current_heads()))
        conn.execute(heads.delete())
        revisions = list(script.walk_revisions())  # newest first
        for branch in self.branches:
            for rev in revisions:
                if branch in rev.branch_labels and rev.revision in applied:
                    conn.execute(heads.insert().values(branch=branch, version_num=rev.revision))
                    break
        return all(rev.revision in applied for rev in revisions)

    def _run(self, fn: Callable[[Config], Any], branch: str | None = None) -> str:
        out = io.StringIO()
        try:
            with self._connection() as conn, redirect_stdout(out):
                cfg = self._config(conn, branch)
                cfg.stdout = out
                fn(cfg)
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"{type(exc).__name__}: {exc}") from exc
        return out.getvalue()

    # -- commands ------------------------------------------------------------

    def upgrade(self, target: str = "heads") -> None:
        """Apply every pending revision of every branch (or up to ``target``)."""
        from alembic import command

        self._run(lambda cfg: command.upgrade(cfg, target))

    def downgrade(self, target: str) -> None:
        """Revert to ``target`` (``-1``, ``hello@base``, a revision id)."""
        from alembic import command

        self._run(lambda cfg: command.downgrade(cfg, target))

    def current(self) -> set[str]:
        """The revisions applied, as the next command will see them (parking included)."""
        with self.db.engine.connect() as conn:
            _, rows, _, _ = self._reconcile(conn, self.script())
        return rows

    def heads(self) -> set[str]:
        return set(self.script().get_heads())

    def pending(self) -> list[str]:
        """Revisions not yet applied (empty when the schema is current)."""
        applied = self._applied()
        return [
            rev.revision
            for rev in reversed(list(self.script().walk_revisions()))
            if rev.revision not in applied
        ]

    def history(self) -> list[str]:
        """One line per revision, newest first: ``id (branch) [applied|pending] message``."""
        lines = []
        applied = self._applied()
        for rev in self.script().walk_revisions():
            labels = ",".join(sorted(rev.branch_labels)) or "-"
            mark = "applied" if rev.revision in applied else "pending"
            doc = (rev.doc or "").strip().splitlines()[0] if rev.doc else ""
            lines.append(f"{rev.revision} ({labels}) [{mark}] {doc}")
        return lines

    def _applied(self) -> set[str]:
        """Every revision at or below the recorded heads, dependencies included."""
        current = tuple(self.current())
        if not current:
            return set()
        return {rev.revision for rev in self.script().iterate_revisions(current, "base")}

    def revision(self, branch: str, message: str, *, autogenerate: bool) -> str:
        """Write a new revision file on ``branch``; return its path."""
        from alembic import command

        if branch not in self.branches:
            raise MigrationError(f"unknown branch {branch!r}; known: {', '.join(self.branches)}")
        script = self.script()
        head = f"{branch}@head" if _branch_has_revisions(script, branch) else "base"
        kwargs: dict[str, Any] = {
            "message": message,
            "autogenerate": autogenerate,
            "head": head,
            "version_path": str(self.branches[branch]),
        }
        if head == "base":
            kwargs["branch_label"] = branch
            if branch != CORE_BRANCH:
                kwargs["depends_on"] = sorted(
                    rev.revision for rev in script.get_revisions(f"{CORE_BRANCH}@head") if rev
                )[0]
        result: list[Any] = []
        self._run(lambda cfg: result.append(command.revision(cfg, **kwargs)), branch)
        scripts = result[0] if isinstance(result[0], list) else [result[0]]
        return str(scripts[0].path)


def _branch_has_revisions(script: ScriptDirectory, branch: str) -> bool:
    return any(branch in rev.branch_labels for rev in script.walk_revisions())


def _table_filter(branch: str) -> Callable[[str], bool]:
    if branch == CORE_BRANCH:
        from zhongtai.metadata.base import table_owners

        def core(name: str) -> bool:
            return table_owners().get(name, "").startswith("zhongtai.")

        return core
    prefix = f"{branch}_"
    return lambda name: name.startswith(prefix)


def _pathsep() -> str:
    import os

    return os.pathsep

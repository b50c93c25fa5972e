"""The audit log: one append-only row per state-changing request, login and key event.

Rows are written by the application, not by each route: after every request with a
mutating method (POST, PUT, PATCH, DELETE) that reached a route, the app's
:class:`AuditWriter` appends who (user, API key), what (action, target), where
(project, organization), when, from where (client address) and how it ended
(``success``, ``denied``, ``failure``). A plugin's routes are audited without any code
of its own. A route can name the action and target better with
:meth:`zhongtai.identity.guard.Access.audit`, and
:meth:`~zhongtai.identity.guard.Access.require` records the project or organization it
checked. Code outside a request (the CLI) calls :func:`record`.

The API offers no way to change or delete a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from zhongtai.hooks.events import utcnow
from zhongtai.identity.guard import (
    AUDIT_CONTEXT_KEY,
    AUDIT_SCOPE_KEY,
    NO_AUDIT_SCOPE_KEY,
    PRINCIPAL_SCOPE_KEY,
)
from zhongtai.identity.models import AuditEvent
from zhongtai.identity.principal import Principal
from zhongtai.metadata.ids import new_id

if TYPE_CHECKING:
    from zhongtai.metadata.database import Database

log = logging.getLogger("zhongtai.audit")

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SUCCESS, DENIED, FAILURE = "success", "denied", "failure"
# Keys in an audit ``detail`` whose values are never stored.
_SECRET_KEYS = ("password", "token", "secret", "key", "authorization")


def outcome_of(status: int) -> str:
    """``success`` below 400, ``denied`` for 401 and 403 (and 429), ``failure`` otherwise."""
    if status < 400:
        return SUCCESS
    if status in (401, 403, 429):
        return DENIED
    return FAILURE


def _clean(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not detail:
        return None
    return {
        key: ("********" if any(s in key.lower() for s in _SECRET_KEYS) else value)
        for key, value in detail.items()
    }


def record(
    session: Session,
    *,
    action: str,
    outcome: str = SUCCESS,
    principal: Principal | None = None,
    actor_user_id: str | None = None,
    target_kind: str | None = None,
    target_id: str | None = None,
    project_id: str | None = None,
    org_id: str | None = None,
    client_addr: str | None = None,
    detail: Mapping[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> AuditEvent:
    """Append one audit row in the caller's transaction."""
    row = AuditEvent(
        **_values(
            action=action,
            outcome=outcome,
            principal=principal,
            actor_user_id=actor_user_id,
            target_kind=target_kind,
            target_id=target_id,
            project_id=project_id,
            org_id=org_id,
            client_addr=client_addr,
            detail=detail,
            occurred_at=occurred_at,
        )
    )
    session.add(row)
    return row


def _values(
    *,
    action: str,
    outcome: str,
    principal: Principal | None,
    actor_user_id: str | None,
    target_kind: str | None,
    target_id: str | None,
    project_id: str | None,
    org_id: str | None,
    client_addr: str | None,
    detail: Mapping[str, Any] | None,
    occurred_at: datetime | None,
) -> dict[str, Any]:
    """An audit row's columns, cut to their sizes and with secrets masked."""
    return {
        "id": new_id(),  # here, not the column's default: a row may go in on the driver
        "occurred_at": occurred_at or utcnow(),
        "actor_user_id": principal.user_id if principal else actor_user_id,
        "actor_key_id": principal.api_key_id if principal else None,
        "action": action[:128],
        "target_kind": target_kind,
        "target_id": target_id[:128] if target_id else None,
        "project_id": project_id,
        "org_id": org_id,
        "client_addr": client_addr[:64] if client_addr else None,
        "outcome": outcome,
        "detail": _clean(detail),
    }


def wants_audit(scope: Mapping[str, Any]) -> bool:
    """Whether this request gets an audit row (mutating and routed, or asked for; never
    one a rate limit refused)."""
    if NO_AUDIT_SCOPE_KEY in scope:
        return False
    if AUDIT_SCOPE_KEY in scope:
        return True
    return scope.get("method") in MUTATING_METHODS and scope.get("route_handler") is not None


def request_values(scope: Mapping[str, Any], status: int) -> dict[str, Any]:
    """The audit row of one finished request, from what its handling left in ``scope``."""
    entry: dict[str, Any] = {
        **(scope.get(AUDIT_CONTEXT_KEY) or {}),
        **(scope.get(AUDIT_SCOPE_KEY) or {}),
    }
    principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
    method = str(scope.get("method", ""))
    template = scope.get("path_template") or scope.get("path", "")
    action = entry.pop("action", None) or f"{method} {template}"
    if "target_id" not in entry:
        params = scope.get("path_params") or {}
        if params:
            kind, value = list(params.items())[-1]
            entry.setdefault("target_kind", str(kind))
            entry["target_id"] = str(value)
    client = scope.get("client")
    detail = entry.pop("detail", None) or {}
    detail = {**detail, "method": method, "path": scope.get("path"), "status": status}
    fields = {k: entry.get(k) for k in _FIELDS}
    return _values(
        action=action,
        outcome=entry.pop("outcome", None) or outcome_of(status),
        principal=principal,
        actor_user_id=entry.pop("actor_user_id", None),
        client_addr=str(client[0]) if client else None,
        detail=detail,
        occurred_at=None,
        **fields,
    )


_FIELDS = ("target_kind", "target_id", "project_id", "org_id")
_TABLE: Table = AuditEvent.__table__  # type: ignore[assignment]  # declarative: a Table
_INSERT = insert(_TABLE)  # Core, not ORM: no compile state of the ORM's per row


class AuditWriter:
    """Writes the audit rows of finished requests from one thread, many per ``INSERT``.

    A request still waits for its row to be committed (its task does; the response has
    been sent), so whoever reads the log once a request has ended finds its row. What
    requests share is the round trip: rows that arrive while one ``INSERT`` runs go
    together in the next, in one transaction. A batch that fails is written again row
    by row, so one bad row never takes the others with it; a row that cannot be
    written is logged, never raised. :meth:`close` writes what is left.
    """

    #: Rows written in one statement at most.
    BATCH = 500

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cond = threading.Condition()
        self._pending: list[tuple[dict[str, Any], asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._pending = []
        self._thread: threading.Thread | None = None
        self._closed = False

    async def write(self, values: dict[str, Any]) -> None:
        """Append one row; return once it is committed (or its failure logged)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if not self._closed:
                self._pending.append((values, loop, done))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="zt-audit-writer", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
                queued = True
            else:
                queued = False
        if queued:
            await done
        else:  # the app is shutting down: no writer thread any more
            await anyio.to_thread.run_sync(self._insert, [values])

    def close(self, timeout: float = 10.0) -> None:
        """Write the rows still waiting and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                batch = self._pending[: self.BATCH]
                del self._pending[: self.BATCH]
            if not batch:
                return  # closed, and nothing left to write
            try:
                self._insert([values for values, _, _ in batch])
            finally:  # whatever happened, no request waits for ever
                waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
                for _, loop, done in batch:
                    waiting.setdefault(loop, []).append(done)
                for loop, futures in waiting.items():
                    with contextlib.suppress(RuntimeError):  # that loop has closed
                        loop.call_soon_threadsafe(_resolve, futures)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        # Core, not the ORM: no unit of work per row. One row (the common case) commits
        # by itself, run on the driver (no BEGIN and COMMIT round trips, and none of
        # SQLAlchemy's execution, which cost more than the INSERT); several share one
        # transaction.
        try:
            if len(rows) == 1:
                with self._db.driver_autocommit() as statements:
                    statements.first(_INSERT, rows[0])
            else:
                with self._db.transaction() as session:
                    session.execute(_INSERT, rows)
            return
        except Exception:
            if len(rows) == 1:
                log.exception("could not write the audit row of %s", rows[0].get("action"))
                return
        for row in rows:  # the batch failed: find the row that cannot be written
            self._insert([row])


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for done in futures:
        if not done.done():
            done.set_result(None)

"""What a job handler gets: its parameters, a log, progress, cancellation, lineage."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError

from zhongtai.hooks.events import utcnow
from zhongtai.logs import mask_secrets

if TYPE_CHECKING:
    from zhongtai.jobs.engine import JobEngine
    from zhongtai.metadata.lineage import EntityRef
    from zhongtai.platform import Platform

__all__ = ["JobCancelled", "JobContext"]

log = logging.getLogger("zhongtai.jobs")

FLUSH_LINES = 500  # buffered lines written in one INSERT
FLUSH_SECONDS = 0.25  # …or after this long
MAX_LINE = 16_384  # longer lines are cut (and say so)
PROGRESS_PUBLISH = 0.05  # seconds between live progress messages


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.check_cancelled`; the job ends ``cancelled``."""


class JobContext:
    """Handed to a job's handler as its first argument.

    ``log`` and ``progress`` are cheap (buffered, written in batches, streamed live);
    call them as often as is useful. A handler that runs long should call
    :meth:`check_cancelled` (or read :attr:`cancelled`) between steps: cancellation
    and timeouts ask, they cannot stop a Python thread from the outside.
    """

    def __init__(
        self,
        engine: JobEngine,
        *,
        job_id: str,
        job_type: str,
        project_id: str,
        owner_id: str | None,
        attempt: int,
        params: BaseModel,
        first_seq: int,
        cancel_event: threading.Event,
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.job_type = job_type
        self.project_id = project_id
        self.owner_id = owner_id
        self.attempt = attempt
        self.params = params
        self._cancel = cancel_event
        self._seq = first_seq
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._progress: tuple[float | None, str] | None = None
        self._last_progress_write = 0.0
        self._last_progress_publish = 0.0

    @property
    def platform(self) -> Platform:
        return self.engine.platform

    # -- logs ------------------------------------------------------------------

    def log(self, message: str) -> None:
        """Append ``message`` (one or more lines) to the job's log; secrets are masked."""
        text = mask_secrets(str(message))
        now = utcnow()
        published = []
        with self._lock:
            for line in text.splitlines() or [""]:
                if len(line) > MAX_LINE:
                    line = line[:MAX_LINE] + f" … [{len(line) - MAX_LINE} characters cut]"
                self._seq += 1
                row = {
                    "job_id": self.job_id,
                    "seq": self._seq,
                    "at": now,
                    "attempt": self.attempt,
                    "line": line,
                }
                self._buffer.append(row)
                published.append(_line_message(row))
            due = (
                len(self._buffer) >= FLUSH_LINES
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS
            )
        self.engine.hub.publish_many(self.job_id, published)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered lines and the latest progress to the database now.

        One flush at a time (the handler's thread and the engine's maintenance thread
        both flush): batches commit in sequence order, so the stored log is always a
        prefix of the log — a follower reading it never sees line 3,651 before 3,536.
        """
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            rows, self._buffer = self._buffer, []
            progress, self._progress = self._progress, None
            self._last_flush = time.monotonic()
            last_seq = self._seq
        if not rows and progress is None:
            return
        from zhongtai.jobs.models import Job, JobLog

        values: dict[str, Any] = {}
        if rows:
            values["log_lines"] = last_seq  # flushes run one at a time, in order
        if progress is not None:
            values["progress"], values["progress_message"] = progress
        try:
            with self.engine.platform.db.engine.begin() as connection:
                if rows:
                    connection.execute(insert(JobLog), rows)
                connection.execute(update(Job).where(Job.id == self.job_id).values(**values))
        except IntegrityError as exc:
            # Lines numbered like lines already stored: a fault, not an outage, and
            # writing them again can never succeed. They are dropped (they were streamed
            # live), so that the job's outcome can still be recorded.
            log.error("job %s: %d log lines not stored (%s)", self.job_id, len(rows), exc.orig)
            with self._lock:
                if self._progress is None:
                    self._progress = progress
        except Exception:
            # Keep them for the next flush (the database may be back by then).
            with self._lock:
                self._buffer[:0] = rows
                if self._progress is None:
                    self._progress = progress
            raise

    # -- progress --------------------------------------------------------------

    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report how far the job is (0.0-1.0, or None when unknown) and what it does."""
        if fraction is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
        message = mask_secrets(str(message))[:500]
        now = time.monotonic()
        with self._lock:
            self._progress = (fraction, message)
            due = now - self._last_progress_write >= FLUSH_SECONDS
            if due:
                self._last_progress_write = now
            # Followers get at most ~20 updates a second (the stored value is exact).
            live = now - self._last_progress_publish >= PROGRESS_PUBLISH or fraction == 1.0
            if live:
                self._last_progress_publish = now
        if live:
            self.engine.hub.publish(
                self.job_id, {"kind": "progress", "progress": fraction, "message": message}
            )
        if due:
            self.flush()

    # -- cancellation ----------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or ran past its timeout."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled or timed out."""
        if self._cancel.is_set():
            raise JobCancelled()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancellation; True if cancelled."""
        return self._cancel.wait(seconds)

    # -- lineage ---------------------------------------------------------------

    def record_lineage(self, source: EntityRef, target: EntityRef, relation: str) -> None:
        """Record ``source -[relation]-> target`` in the job's project, committed now."""
        from zhongtai.metadata.lineage import record_edge

        with self.engine.platform.db.transaction() as session:
            record_edge(session, source, target, relation, project_id=self.project_id)


def _line_message(row: dict[str, Any]) -> dict[str, Any]:
    at: datetime = row["at"]
    return {
        "kind": "line",
        "seq": row["seq"],
        "at": at.isoformat(),
        "attempt": row["attempt"],
        "line": row["line"],
    }

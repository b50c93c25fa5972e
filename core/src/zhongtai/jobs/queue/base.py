"""The queue driver interface (stevedore namespace ``zhongtai.queue``).

A driver only carries job ids from the engine to workers: the ``jobs`` table holds
every state, and a worker runs a job by calling :meth:`JobEngine.run`, which claims
it with a conditional update. So a driver may deliver a job twice (the second claim
does nothing) but must not need to be right about state.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from zhongtai.jobs.engine import JobEngine

__all__ = ["QueueDriver", "QueueUnavailable"]


class QueueUnavailable(Exception):
    """The queue's backing service cannot be reached (the API answers 503)."""


class QueueDriver(abc.ABC):
    """Carries job ids to workers."""

    name: ClassVar[str]
    runs_in_process: ClassVar[bool] = False  # workers are threads of this process

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine

    @abc.abstractmethod
    def dispatch(self, job_id: str, queue: str, priority: int, timeout: int) -> None:
        """Make ``job_id`` available to a worker (priority: higher first; ``timeout``:
        the job's own, in seconds, for drivers that enforce one of their own).

        Raises:
            QueueUnavailable: the queue cannot take it now (the reconciler retries).
        """

    def missing(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these queued jobs the queue does not hold (to dispatch again)."""
        return set()

    def take_turn(self, chore: str, every: float) -> bool:
        """Whether this process should do ``chore`` now, a task every process runs each
        ``every`` seconds though one run among them all is enough (the reconciler).

        A driver whose processes share a service answers yes to the first to ask in
        each ``every`` seconds, so the chore is done once per interval however many
        servers and workers there are. The default, for a driver with nothing to
        share, is always yes.
        """
        return True

    def cancel_running(self, job_id: str) -> None:  # noqa: B027 - optional
        """Ask whichever worker runs ``job_id`` to stop it (the database flag is set)."""

    def check(self) -> None:  # noqa: B027 - optional
        """Raise :class:`QueueUnavailable` if the queue cannot take jobs now."""

    def start(self) -> None:  # noqa: B027 - optional
        """Start this process's workers, if the driver runs any here."""

    def stop(self, timeout: float) -> None:  # noqa: B027 - optional
        """Stop this process's workers; running jobs get ``timeout`` seconds."""

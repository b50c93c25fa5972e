"""The embedded queue: worker threads inside the server process (the default).

Queued ids wait in an in-memory priority queue; at start the engine's reconciler
queues every job the database says is queued, so nothing waits forever after a
restart, and jobs that were running when the process stopped are retried or failed
with the reason. One process only: servers sharing a database each run their own
workers, which is safe (claims are conditional) but not coordinated — use the
``rq`` driver for more than one machine.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from zhongtai.jobs.queue.base import QueueDriver

if TYPE_CHECKING:
    from zhongtai.jobs.engine import JobEngine

__all__ = ["EmbeddedQueue"]

_STOP = "\x00stop"


class EmbeddedQueue(QueueDriver):
    name: ClassVar[str] = "embedded"
    runs_in_process: ClassVar[bool] = True

    def __init__(self, engine: JobEngine) -> None:
        super().__init__(engine)
        self._queue: queue.PriorityQueue[tuple[float, int, str]] = queue.PriorityQueue()
        self._counter = itertools.count()
        self._pending: set[str] = set()
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def dispatch(self, job_id: str, queue: str, priority: int, timeout: int) -> None:
        with self._lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put((-priority, next(self._counter), job_id))

    def missing(self, job_ids: Sequence[str]) -> set[str]:
        with self._lock:
            held = self._pending | self._active
        return {job_id for job_id in job_ids if job_id not in held}

    def start(self) -> None:
        workers = self.engine.settings.workers
        for i in range(workers):
            thread = threading.Thread(
                target=self._work, args=(f"w{i}",), name=f"zt-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        for _ in self._threads:
            self._queue.put((float("-inf"), next(self._counter), _STOP))
        for thread in self._threads:
            thread.join(timeout / max(len(self._threads), 1))
        self._threads.clear()

    def _work(self, slot: str) -> None:
        worker = f"{self.name}:{self.engine.node}:{slot}"
        while True:
            _priority, _n, job_id = self._queue.get()
            if job_id == _STOP:
                return
            with self._lock:
                self._pending.discard(job_id)
                self._active.add(job_id)
            try:
                self.engine.run(job_id, worker)
            except Exception:
                import logging

                logging.getLogger("zhongtai.jobs").exception("worker %s: job %s", worker, job_id)
            finally:
                with self._lock:
                    self._active.discard(job_id)

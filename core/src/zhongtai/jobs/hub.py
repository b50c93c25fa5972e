"""Live fan-out of a job's log lines, progress and status to the streams following it.

Workers publish from any thread; each follower is an asyncio queue on the event loop
of the request streaming it. A follower that falls behind (its queue full) is marked
``overflowed`` and catches up from the database, so a slow client never holds up the
job or the other followers. Lines are durable in ``job_logs`` before anything relies
on them; the hub only lowers latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Follower", "LogHub"]

FOLLOWER_QUEUE = 10_000


class Follower:
    """One stream's subscription to one job."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(FOLLOWER_QUEUE)
        self.overflowed = False

    def _put(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True

    def deliver(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the stream is gone
            self.loop.call_soon_threadsafe(self._put, message)


class LogHub:
    """In-process publish/subscribe keyed by job id."""

    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}
        self._lock = threading.Lock()

    def publish(self, job_id: str, message: dict[str, Any]) -> None:
        followers = self._followers.get(job_id)
        if not followers:
            return
        for follower in list(followers):
            follower.deliver(message)

    def publish_many(self, job_id: str, messages: list[dict[str, Any]]) -> None:
        followers = self._followers.get(job_id)
        if not followers:
            return
        for follower in list(followers):
            for message in messages:
                follower.deliver(message)

    def has_followers(self, job_id: str) -> bool:
        return bool(self._followers.get(job_id))

    @contextmanager
    def follow(self, job_id: str) -> Iterator[Follower]:
        """Subscribe the running event loop to ``job_id`` for the ``with`` block."""
        follower = Follower(asyncio.get_running_loop())
        with self._lock:
            self._followers.setdefault(job_id, set()).add(follower)
        try:
            yield follower
        finally:
            with self._lock:
                followers = self._followers.get(job_id)
                if followers is not None:
                    followers.discard(follower)
                    if not followers:
                        del self._followers[job_id]

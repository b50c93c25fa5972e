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
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Follower", "LogHub", "Relay"]

log = logging.getLogger("zhongtai.jobs")

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
    """Publish/subscribe keyed by job id: in this process, and through a relay (Redis
    pub/sub, with the ``rq`` driver) to followers in other processes."""

    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}
        self._lock = threading.Lock()
        self.relay: Relay | None = None

    def publish(self, job_id: str, message: dict[str, Any]) -> None:
        self.publish_many(job_id, [message])

    def publish_many(self, job_id: str, messages: list[dict[str, Any]]) -> None:
        if self.relay is not None:
            self.relay.send(job_id, messages)
        self.deliver_local(job_id, messages)

    def deliver_local(self, job_id: str, messages: list[dict[str, Any]]) -> None:
        followers = self._followers.get(job_id)
        if not followers:
            return
        for follower in list(followers):
            for message in messages:
                follower.deliver(message)

    @contextmanager
    def follow(self, job_id: str) -> Iterator[Follower]:
        """Subscribe the running event loop to ``job_id`` for the ``with`` block."""
        follower = Follower(asyncio.get_running_loop())
        if self.relay is not None:
            self.relay.listen()
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


class Relay:
    """Carries hub messages between processes over Redis pub/sub.

    Messages are batched: every 50 ms, one message on one channel carries what every
    job of this process published meanwhile, so a job that logs thousands of lines a
    second, or a worker that runs hundreds of jobs a second (each publishing its
    status as it starts and ends), costs a few Redis round trips, not thousands. A
    listening process receives every job's messages, delivers those of the jobs it
    has followers for, and skips its own, which it already delivered locally.
    """

    def __init__(self, hub: LogHub, redis: Any, prefix: str, node: str) -> None:
        self.hub = hub
        self.redis = redis
        self.channel = f"{prefix}:log"
        self.node = node
        self._outbox: list[tuple[str, list[dict[str, Any]]]] = []
        self._outbox_lock = threading.Lock()
        self._wake = threading.Event()
        self._pump_thread: threading.Thread | None = None
        self._listen_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def send(self, job_id: str, messages: list[dict[str, Any]]) -> None:
        with self._outbox_lock:
            self._outbox.append((job_id, messages))
            if self._pump_thread is None:
                self._pump_thread = threading.Thread(
                    target=self._pump, name="zt-log-relay-out", daemon=True
                )
                self._pump_thread.start()

    def _pump(self) -> None:
        import json

        while not self._stopped.wait(0.05):
            with self._outbox_lock:
                batch, self._outbox = self._outbox, []
            if not batch:
                continue
            merged: dict[str, list[dict[str, Any]]] = {}
            for job_id, messages in batch:
                merged.setdefault(job_id, []).extend(messages)
            try:
                self.redis.publish(self.channel, json.dumps({"node": self.node, "jobs": merged}))
            except Exception as exc:  # live delivery only: the database has every line
                log.debug("log relay: publish failed: %s", exc)

    def listen(self) -> None:
        """Start relaying other processes' messages to this process's followers."""
        with self._outbox_lock:
            if self._listen_thread is not None:
                return
            self._listen_thread = threading.Thread(
                target=self._listen, name="zt-log-relay-in", daemon=True
            )
            self._listen_thread.start()

    def _listen(self) -> None:
        import json

        while not self._stopped.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = json.loads(message["data"])
                    if data.get("node") == self.node:
                        continue
                    for job_id, messages in data.get("jobs", {}).items():
                        self.hub.deliver_local(job_id, messages)
            except Exception as exc:  # Redis away: followers fall back to the database
                log.debug("log relay: listening failed (%s); retrying", exc)
                self._stopped.wait(1.0)

    def stop(self) -> None:
        self._stopped.set()

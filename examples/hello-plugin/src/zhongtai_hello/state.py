"""Per-platform state kept on ``platform.stash`` under a typed key.

Each platform (one per app instance, so one per test) has its own counters; nothing
lives in a module global that two apps in one process would share.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zhongtai.platform import StashKey

if TYPE_CHECKING:
    from zhongtai.platform import Platform


@dataclass
class HelloStats:
    """What the plugin observed: when it started and stopped, and the events it saw."""

    started_at: datetime | None = None
    stopped_at: datetime | None = None
    events: Counter[str] = field(default_factory=Counter)
    # on_event runs in whichever thread committed the transaction.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, event_name: str) -> None:
        """Count one delivered event."""
        with self._lock:
            self.events[event_name] += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot (``GET /api/v1/hello/stats``)."""
        with self._lock:
            events = dict(sorted(self.events.items()))
        return {
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "events": events,
        }


STATS: StashKey[HelloStats] = StashKey()
"""The plugin's key on ``platform.stash``."""

_create_lock = threading.Lock()


def stats_of(platform: Platform) -> HelloStats:
    """The platform's :class:`HelloStats`, created on first use.

    ``startup`` creates it in the web app, but the CLI never runs ``startup`` and an
    event may be delivered there too, so every reader goes through here.
    """
    with _create_lock:
        if STATS not in platform.stash:
            platform.stash[STATS] = HelloStats()
        return platform.stash[STATS]

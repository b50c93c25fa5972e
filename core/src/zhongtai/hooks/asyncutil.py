"""Helpers for hook implementations that may be sync or async (pluggy is synchronous)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any


async def await_me_maybe(value: Any) -> Any:
    """Return ``value``, awaiting it first if it is awaitable.

    A hook implementation may be a plain function or a coroutine function. Values
    that are callable (a settings class, a controller) are returned as they are.
    """
    if inspect.isawaitable(value):
        value = await value
    return value


def resolve_sync(value: Any) -> Any:
    """Like :func:`await_me_maybe` for synchronous callers (start-up, CLI, after-commit).

    When the calling thread already runs an event loop (an app built inside
    uvicorn's loop, a commit made on the loop's thread), the awaitable runs to
    completion on a loop of its own in a short-lived thread.
    """
    if not inspect.isawaitable(value):
        return value

    async def _wait() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_wait())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _wait()).result()

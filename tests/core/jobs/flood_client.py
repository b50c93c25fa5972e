"""The client side of ``test_flood``, run as a process of its own.

Reads ``{"url", "headers", "body", "count", "clients"}`` as JSON on stdin, sends
``count`` concurrent ``POST /api/v1/jobs`` and prints one JSON object: every answer's
status, the headers the test checks and its body, and when the flood started and
ended on the machine's monotonic clock (which every process shares).

It runs apart from the server under test because an HTTP client doing a thousand
requests at once is busy Python code: in the server's process it holds the GIL that
the server needs, and a slow ``/healthz`` would then measure the client. The requests
are spread over several clients, all at once, because one ``httpx`` connection pool
scans every one of its connections for each request it places, which makes a single
pool of a thousand connections cost seconds of CPU.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx

HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "Retry-After")


async def flood(spec: dict[str, Any]) -> dict[str, Any]:
    count, clients = spec["count"], spec["clients"]
    share = -(-count // clients)
    limits = httpx.Limits(max_connections=share, max_keepalive_connections=share)
    pools = [
        httpx.AsyncClient(base_url=spec["url"], limits=limits, timeout=60) for _ in range(clients)
    ]
    try:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(
                pools[i % clients].post("/api/v1/jobs", json=spec["body"], headers=spec["headers"])
                for i in range(count)
            )
        )
        ended = time.monotonic()
    finally:
        for pool in pools:
            await pool.aclose()
    return {
        "started": started,
        "ended": ended,
        "answers": [
            {
                "status": answer.status_code,
                "headers": {name: answer.headers.get(name) for name in HEADERS},
                "body": answer.json(),
            }
            for answer in answers
        ],
    }


if __name__ == "__main__":
    json.dump(asyncio.run(flood(json.load(sys.stdin))), sys.stdout)

"""The "floor" of bench/jobs.py: the least a job system shaped like the platform's can do.

Not the platform: a sketch of the issue's design with everything but its skeleton
taken out, to show what that skeleton costs on this machine against plain RQ.

* **Server** (``python bench/_floor.py --port N``): a bare Litestar app served as
  ``zhongtai serve`` is (bench/bare_app.py), with one route, ``POST /api/v1/jobs``.
  It inserts the job's row (one autocommit ``INSERT`` on a connection its thread
  keeps, raw psycopg) and enqueues it with RQ (the platform driver's arguments),
  then answers 201. No authentication, validation, admission, idempotency, events
  or logs; a sync handler in the thread pool, as the platform's database routes are.
* **Workers**: plain ``rq worker -w rq.worker.SimpleWorker`` running :func:`run`:
  one ``UPDATE`` that claims the row if it is still queued, nothing, one ``UPDATE``
  that records the outcome (raw psycopg, autocommit, one connection per worker).

So per job: one HTTP request, three statements (each its own transaction), and RQ's
own work. The table is ``floor_jobs`` in the database named by
``ZT_FLOOR_DATABASE_URL``; bench/jobs.py creates it (:data:`SCHEMA`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import threading
from typing import Any

from _common import enqueue_as_platform
from litestar import Litestar, MediaType, Response, get, post

SCHEMA = """
CREATE TABLE floor_jobs (
    id text PRIMARY KEY,
    type text NOT NULL,
    project text NOT NULL,
    params jsonb NOT NULL,
    status text NOT NULL,
    worker text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
)
"""
_INSERT = (
    "INSERT INTO floor_jobs (id, type, project, params, status) VALUES (%s, %s, %s, %s, 'queued')"
)
_CLAIM = (
    "UPDATE floor_jobs SET status = 'running', started_at = now(), worker = %s "
    "WHERE id = %s AND status = 'queued' RETURNING type, params"
)
_OUTCOME = (
    "UPDATE floor_jobs SET status = 'succeeded', finished_at = now() "
    "WHERE id = %s AND status = 'running'"
)

_local = threading.local()


def _connection() -> Any:
    """This thread's own autocommit connection (opened at first use, kept)."""
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(os.environ["ZT_FLOOR_DATABASE_URL"], autocommit=True)
    return conn


def run(job_id: str) -> None:
    """A worker's whole part: claim the row, do nothing, record the outcome."""
    from rq import get_current_job

    current = get_current_job()
    conn = _connection()
    worker = current.worker_name if current is not None else "?"
    if conn.execute(_CLAIM, (worker, job_id)).fetchone() is None:
        return  # taken or gone: nothing to run
    conn.execute(_OUTCOME, (job_id,))


def build_app() -> Any:
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue(
        os.environ["ZT_FLOOR_QUEUE"],
        connection=Redis.from_url(os.environ["ZT_FLOOR_REDIS_URL"]),
        serializer=JSONSerializer,
    )
    timeout, result_ttl = int(os.environ["ZT_FLOOR_RQ_TIMEOUT"]), int(os.environ["ZT_FLOOR_TTL"])

    @get("/ready", media_type=MediaType.TEXT, sync_to_thread=False)
    def ready() -> str:
        return "ok"

    @post("/api/v1/jobs", sync_to_thread=True)
    def submit(data: dict[str, Any]) -> Response[dict[str, str]]:
        job_id = f"{queue.name}-{secrets.token_hex(8)}"  # the run's prefix: cleaned up after
        _connection().execute(
            _INSERT, (job_id, data["type"], data["project"], json.dumps(data.get("params", {})))
        )
        enqueue_as_platform(queue, "_floor.run", job_id, timeout, result_ttl)
        return Response({"id": job_id}, status_code=201)

    return Litestar(route_handlers=[ready, submit], debug=False)


def main() -> None:
    from bare_app import serve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(build_app(), "127.0.0.1", args.port)


if __name__ == "__main__":
    main()

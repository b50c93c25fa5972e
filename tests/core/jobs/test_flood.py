"""A flood of submissions from one caller, against ``zhongtai serve``.

1,000 concurrent ``POST /api/v1/jobs`` from one API key: the rate limit and
admission answer 429 (each saying which), every 201 is a job in the database and
nothing else is, and ``/healthz`` keeps answering quickly throughout.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from zhongtai.identity.models import AuditEvent
from zhongtai.jobs.models import Job
from zhongtai.platform import bootstrap
from zhongtai.testing import ZtIdentity, serve_in_process

FLOOD = 1000
PER_SECOND = 40
PENDING = 30
CLIENTS = 20


def flood(url: str, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """``FLOOD`` concurrent submissions from a process of its own (``flood_client.py``,
    which says why); meanwhile a thread here times ``/healthz``."""
    done = threading.Event()
    probes: list[tuple[float, float]] = []

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                started = time.monotonic()
                answer = client.get("/healthz")
                assert answer.status_code == 200, answer.text
                probes.append((started, time.monotonic()))
                time.sleep(0.02)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    spec = {"url": url, "headers": headers, "body": body, "count": FLOOD, "clients": CLIENTS}
    try:
        child = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("flood_client.py"))],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        done.set()
        prober.join(60)
    assert child.returncode == 0, child.stderr
    result: dict[str, Any] = json.loads(child.stdout)
    # The probes that overlapped the flood, as (start, seconds taken).
    started, ended = result["started"], result["ended"]
    health = [(sent, back - sent) for sent, back in probes if back > started and sent < ended]
    return {**result, "seconds": ended - started, "health": health}


def test_a_flood_of_submissions_gets_429s_and_health_stays_fast(zt_settings: Any) -> None:
    # The server runs as `zhongtai serve` does in production, a process of its own:
    # in the test's process it would share an interpreter with the prober (and the
    # garbage of every test before this one), and its timings would measure them.
    settings = zt_settings.model_copy(update={"plugins": ["hello"]})
    platform = bootstrap(settings, schema="upgrade")
    try:
        identity = ZtIdentity(platform)
        user, project = identity.project_with("developer")
        key = identity.api_key(user)
        headers = {"Authorization": f"Bearer {key}"}
        # Scheduled an hour ahead: every accepted job stays pending, on both drivers.
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        body = {"type": "hello.noop", "project": project.id, "run_at": later}
        with serve_in_process(
            settings,
            ZHONGTAI_PLUGINS="hello",
            ZHONGTAI_JOBS__SUBMISSIONS_PER_SECOND=str(PER_SECOND),
            ZHONGTAI_JOBS__MAX_PENDING_PER_PROJECT=str(PENDING),
        ) as (url, _server):
            result = flood(url, headers, body)
        check_flood(platform, project.id, result)
    finally:
        platform.close()


def check_flood(platform: Any, project: str, result: dict[str, Any]) -> None:
    answers: list[dict[str, Any]] = result["answers"]
    statuses = [a["status"] for a in answers]
    assert set(statuses) <= {201, 429}, sorted(set(statuses))
    refused = [a for a in answers if a["status"] == 429 and "waiting" in a["body"]["detail"]]
    limited = [a for a in answers if a["status"] == 429 and a not in refused]
    assert limited, "the rate limit never answered"
    assert refused, "admission never refused"
    for answer in limited:
        assert answer["headers"]["RateLimit-Limit"] == str(PER_SECOND)
        assert answer["headers"]["RateLimit-Remaining"] == "0"
        assert int(answer["headers"]["Retry-After"]) >= 1
        assert answer["body"]["status"] == 429
    for answer in refused:
        assert answer["headers"]["Retry-After"] == "5"
        assert f"limit {PENDING}" in answer["body"]["detail"]
    # The limit holds per second: no window let more than its share through.
    assert len(answers) - len(limited) <= PER_SECOND * (1 + result["seconds"]), result

    # Every 201 is a job, and no refused submission left one behind.
    accepted = {a["body"]["id"] for a in answers if a["status"] == 201}
    with platform.db.transaction() as session:
        stored = set(session.scalars(select(Job.id).where(Job.project_id == project)))
        assert session.scalar(select(func.count()).select_from(Job)) == len(stored)
    assert stored == accepted
    # Admitted and admission-refused submissions are audited; rate-limited ones, which
    # cost the server no work, are not (the access log has them).
    with platform.db.transaction() as session:
        audited = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action.like("%job%"))
        )
    assert audited == len(answers) - len(limited)
    # Admission counts without a lock at submission: concurrent requests may each see
    # room for one more, never many more.
    assert PENDING <= len(accepted) <= PENDING + 8, len(accepted)

    # Probes went on throughout the flood: from its start to its end, the prober never
    # waited half a second for its next probe (it sleeps 0.02 s between them). The
    # slowest probe must take under a second, the time a Kubernetes probe waits by
    # default.
    probes = result["health"]
    assert probes, "no probe overlapped the flood"
    gaps = [later - (sent + took) for (sent, took), (later, _) in itertools.pairwise(probes)]
    gaps += [probes[0][0] - result["started"], result["ended"] - sum(probes[-1])]
    assert max(gaps) < 0.5, (len(probes), result["seconds"], sorted(gaps)[-3:])
    health = [seconds for _, seconds in probes]
    assert statistics.median(health) < 0.1, sorted(health)
    assert max(health) < 1.0, sorted(health)

"""The web UI's server render time with a big project, against /healthz in the same run.

A data directory is seeded with one user in one project holding ``--jobs`` (10,000)
jobs, spread over the statuses, and its audit log. ``zhongtai serve`` (embedded
defaults: SQLite, one process) serves it; the bench signs in through the UI's form,
then requests each page ``--requests`` (200) times one after the other over one
keep-alive connection, after a warm-up, and reports p50 and p95 of the time to the
whole response:

* ``/ui`` — the dashboard (the jobs-by-status card counts the project's jobs, the
  recent-activity card reads the audit log);
* ``/ui/jobs`` — the jobs list (first page, newest first);
* ``/ui/jobs?status=failed`` — the list filtered by status;
* ``/healthz`` — the baseline: a request the server answers without rendering
  anything; each page's p95 is also printed as a multiple of it.

Target: p95 ≤ 100 ms for the dashboard and the jobs list. Exits 0 whatever the
verdicts. ``--database postgres`` uses a throwaway PostgreSQL database instead.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, percentile, scratch_dir, verdict, zhongtai_server

TARGET_MS = 100.0
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench password 123"
PAGES = ("/ui", "/ui/jobs", "/ui/jobs?status=failed")


def seed(home: Path, url: str, secret: str, jobs: int) -> str:
    """Schema, one user in one project with ``jobs`` jobs; returns the user's email."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from zhongtai.identity.models import (
        AuditEvent,
        Organization,
        Project,
        ProjectMember,
        User,
    )
    from zhongtai.identity.passwords import hash_password
    from zhongtai.identity.roles import Role
    from zhongtai.jobs.models import Job
    from zhongtai.metadata.ids import new_id
    from zhongtai.platform import bootstrap
    from zhongtai.settings import load_settings

    settings = load_settings(home=home, database_url=url, secret_key=secret, plugins=["hello"])
    platform = bootstrap(settings, schema="upgrade")
    statuses = ["succeeded"] * 7 + ["failed", "cancelled", "queued"]
    start = datetime.now(UTC) - timedelta(days=30)
    try:
        with platform.db.transaction() as session:
            user = User(email="ui@example.com", password_hash=hash_password(PASSWORD))
            org = Organization(slug="bench", name="Bench")
            session.add_all([user, org])
            session.flush()
            project = Project(org_id=org.id, slug="big", name="Big project")
            session.add(project)
            session.flush()
            session.add(
                ProjectMember(project_id=project.id, user_id=user.id, role=int(Role.developer))
            )
            rows = []
            for i in range(jobs):
                at = start + timedelta(seconds=i * 60)
                rows.append(
                    {
                        "id": new_id(),
                        "type": "hello.echo",
                        "project_id": project.id,
                        "owner_id": user.id,
                        "params": {"text": f"job {i}", "repeat": 3},
                        "status": statuses[i % len(statuses)],
                        "queue": "default",
                        "priority": 0,
                        "attempts": 1,
                        "max_attempts": 3,
                        "timeout": 600,
                        "progress": 1.0,
                        "progress_message": "",
                        "cancel_requested": False,
                        "log_lines": 3,
                        "created_at": at,
                        "started_at": at,
                        "finished_at": at + timedelta(seconds=2),
                    }
                )
            for chunk in range(0, len(rows), 2000):
                session.execute(insert(Job), rows[chunk : chunk + 2000])
            session.execute(
                insert(AuditEvent),
                [
                    {
                        "id": new_id(),
                        "occurred_at": start + timedelta(minutes=i),
                        "actor_user_id": user.id,
                        "action": "job.submit",
                        "outcome": "success",
                        "project_id": project.id,
                        "detail": {},
                    }
                    for i in range(min(jobs, 5000))
                ],
            )
    finally:
        platform.close()
    return "ui@example.com"


class Browser:
    """One keep-alive connection with the session cookie, as a browser would hold."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode()
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
        return response.status, text

    def sign_in(self, email: str) -> None:
        status, form = self.request("GET", "/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert status == 200 and token, (status, form[:300])
        from urllib.parse import urlencode

        body = urlencode({"email": email, "password": PASSWORD, "csrf_token": token.group(1)})
        status, text = self.request("POST", "/ui/login", body)
        assert status == 303 and "zt_session" in self.cookies, (status, text[:300])

    def time(self, path: str, count: int) -> list[float]:
        for _ in range(10):  # warm-up: imports, caches, the page cache of the database
            self.request("GET", path)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            status, _text = self.request("GET", path)
            times.append(time.perf_counter() - started)
            assert status == 200, (path, status)
        return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    secret = secrets.token_urlsafe(32)
    summary: dict[str, object] = {"machine": machine(), "jobs": args.jobs}
    with scratch_dir("zt-bench-ui-") as work:
        database = None
        if args.database == "postgres":
            import psycopg

            database = f"zt_bench_{secrets.token_hex(5)}"
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{database}"
        else:
            url = f"sqlite:///{work / 'home' / 'zhongtai.db'}"
        try:
            print(f"seeding {args.jobs} jobs ({args.database}) …", flush=True)
            email = seed(work / "home", url, secret, args.jobs)
            server = zhongtai_server(
                work / "home",
                work / "server.log",
                bytecode_cache=True,
                access_log=False,
                env={
                    "ZHONGTAI_DATABASE_URL": url,
                    "ZHONGTAI_SECRET_KEY": secret,
                    "ZHONGTAI_PLUGINS": "hello",
                },
            )
            server.start()
            try:
                server.wait_ready()
                client = Browser(server.port)
                client.sign_in(email)
                figures = {}
                for path in ("/healthz", *PAGES):
                    times = client.time(path, args.requests)
                    figures[path] = {
                        "p50_ms": round(percentile(times, 50) * 1000, 2),
                        "p95_ms": round(percentile(times, 95) * 1000, 2),
                    }
            finally:
                server.stop()
        finally:
            if database:
                import psycopg

                with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    base = figures["/healthz"]["p95_ms"] or 0.01
    print(f"\n== ui ({machine()}; {args.database}; {args.jobs} jobs in the project) ==")
    for path, figure in figures.items():
        ratio = figure["p95_ms"] / base
        print(
            f"{path:28s} p50 {figure['p50_ms']:7.2f} ms   p95 {figure['p95_ms']:7.2f} ms"
            f"   ({ratio:5.1f}x /healthz p95)"
        )
    print()
    for path in ("/ui", "/ui/jobs"):
        p95 = figures[path]["p95_ms"]
        ok = p95 <= TARGET_MS
        target = f"target ≤ {TARGET_MS:.0f} ms"
        print(f"server render p95, {path}: {p95:.1f} ms ({target}) {verdict(ok)}")
    summary["figures"] = figures
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ui.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

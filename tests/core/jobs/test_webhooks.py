"""Webhooks: subscriptions, signed deliveries as jobs, retries, SSRF refusals, access."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from litestar.testing import TestClient
from pydantic import BaseModel
from sqlalchemy import select

import zhongtai
from zhongtai.jobs import JobContext, JobType
from zhongtai.jobs.models import Job
from zhongtai.testing import ZtIdentity, rq_worker_thread

HOOKS = "/api/v1/webhooks"
JOBS = "/api/v1/jobs"


class Empty(BaseModel):
    fail: bool = False


def work(ctx: JobContext, params: Empty) -> None:
    if params.fail:
        raise RuntimeError("no")


class HookJobs:
    @zhongtai.hookimpl
    def register_job_types(self) -> list[JobType]:
        return [JobType("hookdemo.work", work, Empty)]


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"thanks")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def events(self) -> list[str]:
        return [json.loads(r["body"])["event"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hooks_app(
    zt_register_plugin: Callable[..., None], zt_app_factory: Callable[..., Any], zt_settings: Any
) -> Callable[..., Any]:
    zt_register_plugin(HookJobs(), name="hookdemo")

    @contextmanager
    def make(allow: list[str]) -> Iterator[tuple[TestClient[Any], ZtIdentity]]:
        settings = zt_settings.model_copy(
            update={"webhooks": zt_settings.webhooks.model_copy(update={"allow_networks": allow})}
        )
        app = zt_app_factory(settings=settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            platform = app.state["platform"]
            with rq_worker_thread(platform, count=2):
                yield client, ZtIdentity(platform)

    return make


def wait(predicate: Callable[[], Any], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_job_events_are_delivered_signed(hooks_app, receiver):
    with hooks_app(["127.0.0.1/32"]) as (client, identity):
        user, project = identity.project_with("maintainer")
        headers = identity.headers(user)
        created = client.post(
            HOOKS,
            json={"project": project.id, "url": receiver.url, "events": ["job.*"]},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        secret = hook["secret"]
        assert len(secret) >= 32
        assert "secret" not in client.get(f"{HOOKS}/{hook['id']}", headers=headers).json()
        job = client.post(
            JOBS, json={"type": "hookdemo.work", "project": project.id}, headers=headers
        ).json()
        # Each delivery is a job of its own: they may arrive in any order.
        wait(lambda: {"job.submitted", "job.started", "job.succeeded"} <= set(receiver.events()))
        for request in receiver.requests:
            sent = request["headers"]
            timestamp = sent["X-Zhongtai-Timestamp"]
            expected = hmac.new(
                secret.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256
            ).hexdigest()
            assert sent["X-Zhongtai-Signature"] == f"sha256={expected}"
            assert abs(int(timestamp) - time.time()) < 60
            body = json.loads(request["body"])
            assert body["id"] == sent["X-Zhongtai-Delivery"]
            assert body["project"] == project.id
        succeeded = next(
            json.loads(r["body"])
            for r in receiver.requests
            if json.loads(r["body"])["event"] == "job.succeeded"
        )
        assert succeeded["data"]["job_id"] == job["id"]
        log = wait(
            lambda: [
                d
                for d in client.get(f"{HOOKS}/{hook['id']}/deliveries", headers=headers).json()[
                    "items"
                ]
                if d["status"] == "succeeded"
            ]
        )
        assert log[0]["response_status"] == 200 and log[0]["response_body"] == "thanks"


def test_the_event_filter_and_ping(hooks_app, receiver):
    with hooks_app(["127.0.0.1/32"]) as (client, identity):
        user, project = identity.project_with("maintainer")
        headers = identity.headers(user)
        hook = client.post(
            HOOKS,
            json={"project": project.id, "url": receiver.url, "events": ["job.failed"]},
            headers=headers,
        ).json()
        ok = client.post(
            JOBS, json={"type": "hookdemo.work", "project": project.id}, headers=headers
        )
        bad = client.post(
            JOBS,
            json={"type": "hookdemo.work", "project": project.id, "params": {"fail": True}},
            headers=headers,
        )
        assert ok.status_code == bad.status_code == 201
        wait(lambda: "job.failed" in receiver.events())
        time.sleep(0.5)
        assert receiver.events() == ["job.failed"]
        ping = client.post(f"{HOOKS}/{hook['id']}/ping", headers=headers)
        assert ping.status_code == 202
        wait(lambda: "webhook.ping" in receiver.events())


def test_a_failing_receiver_is_retried_and_logged(hooks_app):
    failing = Receiver(status=500)
    try:
        with hooks_app(["127.0.0.1/32"]) as (client, identity):
            user, project = identity.project_with("maintainer")
            headers = identity.headers(user)
            hook = client.post(
                HOOKS,
                json={"project": project.id, "url": failing.url, "events": ["webhook.ping"]},
                headers=headers,
            ).json()
            delivery = client.post(f"{HOOKS}/{hook['id']}/ping", headers=headers).json()
            platform = client.app.state["platform"]

            def scheduled() -> Any:
                with platform.db.transaction() as session:
                    job = session.get(Job, delivery["job"])
                    return job if job.status == "scheduled" else None

            job = wait(scheduled)
            assert job.attempts == 1 and "answered 500" in job.error
            logged = client.get(f"{HOOKS}/{hook['id']}/deliveries", headers=headers).json()[
                "items"
            ][0]
            assert logged["status"] == "pending" and logged["attempts"] == 1
            assert logged["response_status"] == 500 and "answered 500" in logged["error"]
            # The retry waits ~10 s; bring it forward and let it succeed this time.
            failing.status = 204
            from zhongtai.hooks.events import utcnow

            with platform.db.transaction() as session:
                session.get(Job, delivery["job"]).run_at = utcnow()
            wait(
                lambda: (
                    client.get(f"{HOOKS}/{hook['id']}/deliveries", headers=headers).json()["items"][
                        0
                    ]["status"]
                    == "succeeded"
                )
            )
            assert len(failing.requests) == 2
    finally:
        failing.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f000001/",
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "file:///etc/passwd",
        "gopher://example.com/",
    ],
)
def test_internal_urls_are_refused(hooks_app, url):
    with hooks_app([]) as (client, identity):
        user, project = identity.project_with("maintainer")
        response = client.post(
            HOOKS, json={"project": project.id, "url": url}, headers=identity.headers(user)
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "url"
        with client.app.state["platform"].db.transaction() as session:
            from zhongtai.hooks.webhooks.models import Webhook

            assert session.scalars(select(Webhook)).all() == []


def test_a_url_allowed_at_creation_is_checked_again_at_delivery(hooks_app, receiver, zt_settings):
    with hooks_app(["127.0.0.1/32"]) as (client, identity):
        user, project = identity.project_with("maintainer")
        headers = identity.headers(user)
        hook = client.post(
            HOOKS, json={"project": project.id, "url": receiver.url}, headers=headers
        ).json()
        # The operator withdraws the allowance: deliveries are refused from now on.
        platform = client.app.state["platform"]
        platform.settings.webhooks.allow_networks.clear()
        client.post(f"{HOOKS}/{hook['id']}/ping", headers=headers)
        logged = wait(
            lambda: [
                d
                for d in client.get(f"{HOOKS}/{hook['id']}/deliveries", headers=headers).json()[
                    "items"
                ]
                if d["error"]
            ]
        )
        assert logged[0]["error"].startswith("refused:") and "loopback" in logged[0]["error"]
        assert receiver.requests == []


def test_bad_input_and_other_projects(hooks_app, receiver):
    with hooks_app(["127.0.0.1/32"]) as (client, identity):
        owner, project = identity.project_with("maintainer")
        stranger, _theirs = identity.project_with("maintainer")
        developer = identity.user()
        identity.member(developer, project, "developer")
        hook = client.post(
            HOOKS,
            json={"project": project.id, "url": receiver.url},
            headers=identity.headers(owner),
        ).json()
        for method, path, body in [
            ("get", f"{HOOKS}/{hook['id']}", None),
            ("patch", f"{HOOKS}/{hook['id']}", {"active": False}),
            ("delete", f"{HOOKS}/{hook['id']}", None),
            ("get", f"{HOOKS}/{hook['id']}/deliveries", None),
            ("post", f"{HOOKS}/{hook['id']}/ping", None),
        ]:
            kwargs = {"json": body} if body is not None else {}
            response = client.request(
                method.upper(), path, headers=identity.headers(stranger), **kwargs
            )
            assert response.status_code == 404, (method, path)
        assert client.get(HOOKS, headers=identity.headers(stranger)).json()["items"] == []
        as_developer = client.post(
            HOOKS,
            json={"project": project.id, "url": receiver.url},
            headers=identity.headers(developer),
        )
        assert as_developer.status_code == 403
        bad_events = client.post(
            HOOKS,
            json={"project": project.id, "url": receiver.url, "events": ["job succeeded; rm"]},
            headers=identity.headers(owner),
        )
        assert bad_events.status_code == 400 and "events" in bad_events.text
        short_secret = client.post(
            HOOKS,
            json={"project": project.id, "url": receiver.url, "secret": "short"},
            headers=identity.headers(owner),
        )
        assert short_secret.status_code == 400 and "secret" in short_secret.text
        patched = client.patch(
            f"{HOOKS}/{hook['id']}",
            json={"url": "http://169.254.169.254/"},
            headers=identity.headers(owner),
        )
        assert patched.status_code == 422
        assert (
            client.get(f"{HOOKS}/{hook['id']}", headers=identity.headers(owner)).json()["url"]
            == receiver.url
        )
        assert (
            client.delete(f"{HOOKS}/{hook['id']}", headers=identity.headers(owner)).status_code
            == 204
        )

"""Turning committed domain events into signed HTTP deliveries, run as jobs.

Each event of a project (``job.succeeded``, ``dataset.version.created``, …) that an
active webhook of that project subscribes to becomes a row in
``webhook_deliveries`` and a ``webhooks.deliver`` job, retried with exponential
backoff. The request::

    POST <url>
    Content-Type: application/json
    User-Agent: zhongtai-webhooks
    X-Zhongtai-Event: job.succeeded
    X-Zhongtai-Delivery: <delivery id>
    X-Zhongtai-Timestamp: <unix seconds>
    X-Zhongtai-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the secret>

    {"id": "<delivery id>", "event": "job.succeeded", "project": "...", "data": {...}}

Receivers recompute the signature over the raw body and reject timestamps older than
a few minutes (replays). The URL is checked again at every attempt, after DNS
resolution and on every redirect (:mod:`zhongtai.web.outbound`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from zhongtai.hooks.events import Event, utcnow
from zhongtai.hooks.webhooks.models import Webhook, WebhookDelivery

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from zhongtai.identity.principal import Principal
    from zhongtai.jobs import JobContext, JobType
    from zhongtai.jobs.engine import JobEngine
    from zhongtai.jobs.models import Job
    from zhongtai.platform import Platform

__all__ = ["DeliverParams", "deliver", "job_type", "queue_delivery", "sign", "subscribe"]

log = logging.getLogger("zhongtai.webhooks")

DELIVER = "webhooks.deliver"
RETRIES = 5  # after the first attempt: 10 s, 20 s, 40 s, 80 s, 160 s later
RESPONSE_KEEP = 2048
WEBHOOKS_FRESH = 1.0  # seconds another process's webhook change may take to be seen


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def matches(patterns: list[str], event_name: str) -> bool:
    return any(fnmatch.fnmatchcase(event_name, pattern) for pattern in patterns)


class DeliverParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery: str = Field(min_length=1, max_length=32)


def job_type() -> JobType:
    """``webhooks.deliver``: one delivery, retried with backoff (10 s, doubling)."""
    from zhongtai.jobs import JobType

    return JobType(
        DELIVER,
        deliver,
        DeliverParams,
        description="Send one event to a webhook",
        queue="webhooks",
        timeout=300,  # a few redirects at ZHONGTAI_WEBHOOKS__TIMEOUT each
        retries=RETRIES,
        backoff=10.0,
    )


def subscribe(event: Event, platform: Platform) -> None:
    """Queue a delivery of ``event`` to each active webhook of its project that wants it."""
    if event.project is None:
        return
    if getattr(event, "job_type", "").startswith("webhooks."):
        return  # a delivery's own job events would feed themselves
    from zhongtai.jobs.engine import jobs_engine

    engine = jobs_engine(platform)
    if DELIVER not in engine.types:  # the webhooks plugin failed to register it
        return
    if event.project not in _projects_with_webhooks(platform):
        return
    jobs = []
    with platform.db.transaction() as session:
        hooks = session.scalars(
            select(Webhook).where(Webhook.project_id == event.project, Webhook.active)
        ).all()
        for hook in hooks:
            if matches(hook.events, event.name):
                jobs.append(queue_delivery(session, engine, hook, event, None)[1])
    engine.dispatch(jobs)


def queue_delivery(
    session: Session,
    engine: JobEngine,
    hook: Webhook,
    event: Event,
    principal: Principal | None,
) -> tuple[WebhookDelivery, Job]:
    """Record a delivery of ``event`` to ``hook`` and its job, in the caller's
    transaction; :meth:`JobEngine.dispatch` the job after the commit."""
    delivery = WebhookDelivery(
        webhook_id=hook.id,
        event=event.name,
        payload={"event": event.name, "project": hook.project_id, "data": event.to_dict()},
        status="pending",
        attempts=0,
    )
    session.add(delivery)
    session.flush()
    job = engine.submit(
        session,
        job_type=engine.types[DELIVER],
        project_id=hook.project_id,
        principal=principal,
        params=DeliverParams(delivery=delivery.id),
    )
    delivery.job_id = job.id
    return delivery, job


def _projects_with_webhooks(platform: Platform) -> frozenset[str]:
    """Projects with an active webhook, kept until the next write to ``webhooks``.

    Every committed event asks, and almost none has a subscriber: this spares each a
    query. Writes to ``webhooks`` bump the identity generation (migration
    c0e1a0000005); the process that wrote reads it at once, the others within
    :data:`WEBHOOKS_FRESH` seconds (so events are not each a round trip).
    """
    from zhongtai.identity.cache import identity_cache

    cache = identity_cache(platform)
    generation = cache.generation(within=WEBHOOKS_FRESH)
    key = ("webhooks", "projects")
    projects: frozenset[str] | None = cache.get("result", key, generation)
    if projects is None:
        with platform.db.engine.connect() as connection:
            projects = frozenset(
                connection.scalars(select(Webhook.project_id).where(Webhook.active).distinct())
            )
        cache.put("result", key, generation, projects)
    return projects


def deliver(ctx: JobContext, params: DeliverParams) -> dict[str, Any]:
    """The ``webhooks.deliver`` job: one attempt at sending one delivery."""
    import httpx

    from zhongtai.web.outbound import UnsafeURL, post_safely, safe_client

    platform = ctx.platform
    settings = platform.settings.webhooks
    with platform.db.transaction() as session:
        delivery = session.get(WebhookDelivery, params.delivery)
        if delivery is None:
            return {"skipped": "the delivery was deleted"}
        hook = session.get(Webhook, delivery.webhook_id)
        if hook is None or not hook.active:
            delivery.status = "failed"
            delivery.error = "the webhook was deleted or disabled"
            return {"skipped": delivery.error}
        delivery.attempts += 1
        url, secret = hook.url, hook.secret
        body = json.dumps({"id": delivery.id, **delivery.payload}, separators=(",", ":")).encode()
        event_name, delivery_id = delivery.event, delivery.id
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "zhongtai-webhooks",
        "X-Zhongtai-Event": event_name,
        "X-Zhongtai-Delivery": delivery_id,
        "X-Zhongtai-Timestamp": str(timestamp),
        "X-Zhongtai-Signature": sign(secret, timestamp, body),
    }
    ctx.log(f"POST {url} ({event_name}, attempt {ctx.attempt})")
    allow = settings.allow_networks
    outcome: dict[str, Any] = {}
    try:
        with safe_client(allow=allow, timeout=settings.timeout) as client:
            response = post_safely(client, url, content=body, headers=headers, allow=allow)
        outcome = {
            "response_status": response.status_code,
            "response_body": response.text[:RESPONSE_KEEP],
        }
        ok = 200 <= response.status_code < 300
        error = None if ok else f"the receiver answered {response.status_code}"
    except UnsafeURL as exc:
        ok, error = False, f"refused: {exc}"
    except httpx.HTTPError as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"
    with platform.db.transaction() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is not None:
            delivery.response_status = outcome.get("response_status")
            delivery.response_body = outcome.get("response_body")
            delivery.error = error
            if ok:
                delivery.status, delivery.delivered_at = "succeeded", utcnow()
            elif ctx.attempt >= 1 + RETRIES:
                delivery.status = "failed"
    ctx.log(f"{'delivered' if ok else 'failed'}: {error or outcome.get('response_status')}")
    if not ok:
        raise DeliveryFailed(error or "delivery failed")
    return {"status": outcome.get("response_status")}


class DeliveryFailed(Exception):
    """An attempt failed; the job's retries try again later."""

"""``/api/v1/webhooks``: a project's webhook subscriptions and their delivery log."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Annotated, Any

from litestar import delete, get, patch, post
from litestar.exceptions import ValidationException
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from zhongtai.hooks.events import Event
from zhongtai.hooks.webhooks.models import Webhook, WebhookDelivery
from zhongtai.identity.guard import Access, AccessDep, requires
from zhongtai.identity.permissions import WEBHOOKS_MANAGE
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep

TAGS = ["webhooks"]
Ref = Annotated[str, PathParameter(min_length=1, max_length=32)]
PATTERN = re.compile(r"^[a-z0-9_.*-]{1,128}$")


def _events(value: list[str]) -> list[str]:
    for item in value:
        if not PATTERN.match(item):
            raise ValueError(f"{item!r} is not an event name or pattern (like job.* or *)")
    return value


class WebhookIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    project: str = Field(min_length=1, max_length=32)
    url: str = Field(min_length=1, max_length=2000)
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=50)
    secret: str | None = Field(default=None, min_length=16, max_length=200)
    description: str = Field(default="", max_length=500)

    _check_events = field_validator("events")(_events)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", str_strip_whitespace=True)

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    events: list[str] | None = Field(default=None, min_length=1, max_length=50)
    active: bool | None = None
    description: str | None = Field(default=None, max_length=500)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _events(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def hook_dict(hook: Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "project": hook.project_id,
        "url": hook.url,
        "events": hook.events,
        "active": hook.active,
        "description": hook.description,
        "created_by": hook.created_by,
        "created_at": _iso(hook.created_at),
    }


def delivery_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook": delivery.webhook_id,
        "event": delivery.event,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "response_status": delivery.response_status,
        "response_body": delivery.response_body,
        "error": delivery.error,
        "job": delivery.job_id,
        "created_at": _iso(delivery.created_at),
        "delivered_at": _iso(delivery.delivered_at),
    }


def _check_url(platform: Any, url: str) -> None:
    from zhongtai.web.outbound import UnsafeURL, check_url

    try:
        check_url(url, allow=platform.settings.webhooks.allow_networks)
    except UnsafeURL as exc:
        raise ValidationException(
            detail=f"invalid value for 'url': {exc}",
            extra=[{"key": "url", "message": str(exc), "source": "body"}],
            status_code=422,
        ) from None


def _changed(platform: Any) -> None:
    """Read the identity generation that the write just moved: this process's events
    see the change at once (other processes' within ``WEBHOOKS_FRESH``)."""
    from zhongtai.identity.cache import identity_cache

    identity_cache(platform).generation()


def _hook(session: Session, access: Access, hook_id: str) -> Webhook:
    hook = session.get(Webhook, hook_id)
    access.require(session, project_id=hook.project_id if hook else None)
    assert hook is not None
    return hook


@post(
    "/api/v1/webhooks",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(WEBHOOKS_MANAGE),
    status_code=201,
)
def create_webhook(
    platform: PlatformDep, access: AccessDep, data: JSONBody[WebhookIn]
) -> dict[str, Any]:
    """Subscribe a URL to a project's events. The answer shows the signing secret, once."""
    from zhongtai.identity.models import Project

    with platform.db.transaction() as session:
        exists = session.get(Project, data.project) is not None
        access.require(session, project_id=data.project if exists else None)
    _check_url(platform, data.url)
    secret = data.secret or secrets.token_urlsafe(32)
    with platform.db.transaction() as session:
        hook = Webhook(
            project_id=data.project,
            url=data.url,
            events=data.events,
            secret=secret,
            active=True,
            description=data.description,
            created_by=access.principal.user_id,
        )
        session.add(hook)
        session.flush()
        access.audit(
            action="webhook.create",
            target_kind="webhook",
            target_id=hook.id,
            project_id=hook.project_id,
        )
        body = {**hook_dict(hook), "secret": secret}
    _changed(platform)
    return body


@get("/api/v1/webhooks", tags=TAGS, sync_to_thread=True, opt=requires(WEBHOOKS_MANAGE))
def list_webhooks(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, QueryParameter(max_length=32)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Webhooks of the projects where the caller manages webhooks (secrets not shown)."""
    page = page_for(platform.settings, limit, cursor)
    query = select(Webhook).where(Webhook.project_id.in_(access.visible_projects()))
    if project is not None:
        query = query.where(Webhook.project_id == project)
    with platform.db.transaction() as session:
        found = paginate(session, query, Webhook.id, page)
        return {"items": [hook_dict(h) for h in found.items], "next_cursor": found.next_cursor}


@get(
    "/api/v1/webhooks/{hook_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(WEBHOOKS_MANAGE)
)
def get_webhook(platform: PlatformDep, access: AccessDep, hook_id: Ref) -> dict[str, Any]:
    with platform.db.transaction() as session:
        return hook_dict(_hook(session, access, hook_id))


@patch(
    "/api/v1/webhooks/{hook_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(WEBHOOKS_MANAGE)
)
def update_webhook(
    platform: PlatformDep, access: AccessDep, hook_id: Ref, data: JSONBody[WebhookPatch]
) -> dict[str, Any]:
    if data.url is not None:
        with platform.db.transaction() as session:
            _hook(session, access, hook_id)
        _check_url(platform, data.url)
    with platform.db.transaction() as session:
        hook = _hook(session, access, hook_id)
        for field in ("url", "events", "active", "description"):
            value = getattr(data, field)
            if value is not None:
                setattr(hook, field, value)
        access.audit(
            action="webhook.update",
            target_kind="webhook",
            target_id=hook.id,
            project_id=hook.project_id,
        )
        session.flush()
        body = hook_dict(hook)
    _changed(platform)
    return body


@delete(
    "/api/v1/webhooks/{hook_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(WEBHOOKS_MANAGE)
)
def delete_webhook(platform: PlatformDep, access: AccessDep, hook_id: Ref) -> None:
    """Remove a webhook and its delivery log; pending deliveries are dropped."""
    with platform.db.transaction() as session:
        hook = _hook(session, access, hook_id)
        access.audit(
            action="webhook.delete",
            target_kind="webhook",
            target_id=hook.id,
            project_id=hook.project_id,
        )
        session.delete(hook)
    _changed(platform)


@get(
    "/api/v1/webhooks/{hook_id:str}/deliveries",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(WEBHOOKS_MANAGE),
)
def list_deliveries(
    platform: PlatformDep,
    access: AccessDep,
    hook_id: Ref,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """The webhook's deliveries, newest first: status, attempts, the receiver's answer."""
    page = page_for(platform.settings, limit, cursor)
    with platform.db.transaction() as session:
        _hook(session, access, hook_id)
        query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id)
        found = paginate(session, query, WebhookDelivery.id, page, newest_first=True)
        return {"items": [delivery_dict(d) for d in found.items], "next_cursor": found.next_cursor}


class WebhookPing(Event):
    name = "webhook.ping"


@post(
    "/api/v1/webhooks/{hook_id:str}/ping",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(WEBHOOKS_MANAGE),
    status_code=202,
)
def ping_webhook(platform: PlatformDep, access: AccessDep, hook_id: Ref) -> dict[str, Any]:
    """Send a ``webhook.ping`` event to this webhook alone (whatever its filter)."""
    from zhongtai.hooks.webhooks.delivery import queue_delivery
    from zhongtai.jobs.engine import jobs_engine

    engine = jobs_engine(platform)
    with platform.db.transaction() as session:
        hook = _hook(session, access, hook_id)
        event = WebhookPing(project=hook.project_id)
        delivery, job = queue_delivery(session, engine, hook, event, access.principal)
        body = delivery_dict(delivery)
    engine.dispatch([job])
    return body


ROUTES = [
    create_webhook,
    list_webhooks,
    get_webhook,
    update_webhook,
    delete_webhook,
    list_deliveries,
    ping_webhook,
]

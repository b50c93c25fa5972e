"""Secrets never reach the logs: passwords, tokens, API keys, connection-string passwords.

Each test sends zhongtai's log handler to a string (``configure_logging`` with stderr
replaced) and reads what a log file would hold.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import jwt
import pytest
from litestar import get
from litestar.testing import TestClient

import zhongtai
from zhongtai import logs
from zhongtai.identity.guard import public

KEY_SECRET = "Q2hhbmdlTWUtdGhpcy1pcy1ub3QtYS1yZWFsLWtleS0xMjM0NTY"
API_KEY = f"zt_abcdefghij_{KEY_SECRET}"
JWT = jwt.encode({"sub": "user-1", "aud": "zhongtai"}, "k" * 32, algorithm="HS256")
MASK = logs.MASK


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging: remove the handler it adds, put back what was there."""
    root = logging.getLogger()
    ours_before = [h for h in root.handlers if getattr(h, "_zhongtai", False)]
    level, writer = root.level, logs._access_log
    yield
    for handler in [h for h in root.handlers if getattr(h, "_zhongtai", False)]:
        root.removeHandler(handler)
    for handler in ours_before:
        root.addHandler(handler)
    root.setLevel(level)
    logs._access_log = writer


@pytest.fixture
def log_output(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> Any:
    """``log_output(fmt="json", level="INFO")`` → the StringIO zhongtai's handler writes to."""

    def configure(fmt: str = "json", level: str = "INFO") -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        logs.configure_logging(level, fmt)
        return stream

    return configure


@contextmanager
def as_in_a_server() -> Iterator[None]:
    """Only zhongtai's handler on the root logger (pytest's capture steps aside)."""
    root = logging.getLogger()
    saved = root.handlers
    root.handlers = [h for h in saved if getattr(h, "_zhongtai", False)]
    try:
        yield
    finally:
        root.handlers = saved


# (message, what must not appear, what must appear instead)
SECRETS = [
    (f"key {API_KEY} used", KEY_SECRET, f"zt_abcdefghij_{MASK}"),
    (f"got token {JWT}", JWT.split(".")[2], f"got token {MASK}"),
    (f"Authorization: Bearer {API_KEY}", KEY_SECRET, f"Bearer zt_abcdefghij_{MASK}"),
    (f"header Bearer {JWT}", JWT.split(".")[1], f"Bearer {MASK}"),
    ("Authorization: Bearer opaque-credential-123", "opaque-credential-123", f"Bearer {MASK}"),
    ("login email=a@b.c password=hunter2! next", "hunter2!", f"password={MASK} next"),
    (
        json.dumps({"email": "a@b.c", "password": "hunter2!"}),
        "hunter2!",
        f'"password": "{MASK}"',
    ),
    ("{'new_password': 'hunter2!'}", "hunter2!", f"'new_password': '{MASK}'"),
    ("callback /x?token=abc123def&next=/", "abc123def", f"token={MASK}&next=/"),
    ('{"refresh_token": "rt-abc123def"}', "rt-abc123def", f'"refresh_token": "{MASK}"'),
    ("refresh_token=rt-abc123def", "rt-abc123def", f"refresh_token={MASK}"),
    ("client_secret: s3cr3t-value", "s3cr3t-value", f"client_secret: {MASK}"),
    ("ZHONGTAI_SECRET_KEY=s3cr3t-value", "s3cr3t-value", f"ZHONGTAI_SECRET_KEY={MASK}"),
    ("api_key=s3cr3t-value", "s3cr3t-value", f"api_key={MASK}"),
    (
        "connecting to postgresql+psycopg://zt:pg-p4ss@db:5432/zt",
        "pg-p4ss",
        f"postgresql+psycopg://zt:{MASK}@db:5432/zt",
    ),
    ("redis at redis://:r3dis-pw@cache:6379/0", "r3dis-pw", f"redis://:{MASK}@cache"),
]


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize(("message", "secret", "shown"), SECRETS)
def test_each_kind_of_secret_is_masked(log_output, fmt, message, secret, shown):
    stream = log_output(fmt)
    log = logging.getLogger("zhongtai.x")
    log.warning(message)
    log.warning("as an argument: %s", message)
    out = stream.getvalue()
    assert secret not in out
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        text = json.loads(line)["message"] if fmt == "json" else line
        assert shown in text


def test_extra_fields_are_masked(log_output):
    stream = log_output("json")
    logging.getLogger("zhongtai.x").info(
        "request",
        extra={
            "password": "hunter2!",
            "dsn": "postgresql://u:pg-p4ss@db/zt",
            "headers": {"Authorization": f"Bearer {JWT}", "Accept": "*/*"},
            "tokens": [API_KEY],
            "count": 3,
            "max_tokens": 100,
        },
    )
    out = stream.getvalue()
    for secret in ("hunter2!", "pg-p4ss", JWT, KEY_SECRET):
        assert secret not in out
    data = json.loads(out)
    assert data["password"] == MASK
    assert data["dsn"] == f"postgresql://u:{MASK}@db/zt"
    assert data["headers"] == {"Authorization": MASK, "Accept": "*/*"}
    assert data["tokens"] == [f"zt_abcdefghij_{MASK}"]
    assert (data["count"], data["max_tokens"]) == (3, 100)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_exception_text_is_masked(log_output, fmt):
    stream = log_output(fmt)
    try:
        raise ConnectionError("cannot reach postgresql://zt:pg-p4ss@db/zt with password=hunter2!")
    except ConnectionError:
        logging.getLogger("zhongtai.x").exception("database down")
    out = stream.getvalue()
    assert "ConnectionError" in out and "Traceback" in out
    assert "pg-p4ss" not in out and "hunter2!" not in out
    assert f"postgresql://zt:{MASK}@db/zt" in (
        json.loads(out)["exc_info"] if fmt == "json" else out
    )


def test_third_party_loggers_are_masked_too(log_output):
    stream = log_output("text")
    logging.getLogger("uvicorn.error").error("Exception in ASGI application: %s", API_KEY)
    logging.getLogger("litestar").error("bad header Bearer %s", JWT)
    out = stream.getvalue()
    assert KEY_SECRET not in out and JWT not in out
    assert f"zt_abcdefghij_{MASK}" in out


@pytest.mark.parametrize(
    "message",
    [
        "sampling with max_tokens=100 tokenizer=bert token_type=bearer",
        "created database zt_test_0123456789ab",
        "invalid or expired access token",
        "use Authorization: Bearer <access token or API key>",
        "loaded 3 plugins in 12 ms",
    ],
)
def test_ordinary_messages_are_left_alone(log_output, message):
    assert logs.mask_secrets(message) is message
    stream = log_output("json")
    logging.getLogger("zhongtai.x").info(message)
    assert json.loads(stream.getvalue())["message"] == message


# --------------------------------------------------------------------------- the app


class Boom:
    """A plugin whose route fails with a secret in the exception."""

    @zhongtai.hookimpl
    def register_routes(self) -> list[Any]:
        @get("/fail", opt=public(), sync_to_thread=False)
        def fail() -> None:
            raise RuntimeError("could not open postgresql://zt:pg-p4ss@db/zt")

        return [fail]


@pytest.fixture
def app_with_access_log(zt_app_factory: Any, zt_settings: Any) -> Any:
    return zt_app_factory(settings=zt_settings.model_copy(update={"access_log": True}))


@pytest.mark.parametrize("in_server", [True, False])
def test_access_log_has_no_query_string(log_output, app_with_access_log, in_server):
    stream = log_output("json")
    with TestClient(app_with_access_log, raise_server_exceptions=False) as client:
        context: AbstractContextManager[None] = as_in_a_server() if in_server else nullcontext()
        with context:
            response = client.get("/healthz?token=q-s3cret&password=hunter2!")
    assert response.status_code == 200
    out = stream.getvalue()
    assert "q-s3cret" not in out and "hunter2!" not in out
    access = [json.loads(line) for line in out.splitlines() if "zhongtai.access" in line]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [("GET", "/healthz", 200)]


@pytest.mark.parametrize("in_server", [True, False])
def test_access_log_masks_a_key_in_the_path(log_output, app_with_access_log, in_server):
    stream = log_output("text")
    with TestClient(app_with_access_log, raise_server_exceptions=False) as client:
        context: AbstractContextManager[None] = as_in_a_server() if in_server else nullcontext()
        with context:
            client.get(f"/api/v1/nothing/{API_KEY}")
    out = stream.getvalue()
    assert KEY_SECRET not in out
    assert f"/api/v1/nothing/zt_abcdefghij_{MASK} 404" in out


def test_server_error_log_is_masked(log_output, zt_register_plugin, zt_app_factory):
    zt_register_plugin(Boom(), name="boom")
    stream = log_output("json")
    with TestClient(zt_app_factory(), raise_server_exceptions=False) as client:
        response = client.get("/api/v1/boom/fail")
    assert response.status_code == 500
    assert "pg-p4ss" not in response.text
    out = stream.getvalue()
    assert "RuntimeError" in out and "pg-p4ss" not in out


def test_failed_login_never_logs_the_password(log_output, zt_client, zt_identity, caplog):
    password = "Sup3r-s3cret-passw0rd"
    stream = log_output("json", level="DEBUG")
    user = zt_identity.user(password="the right one, not this")
    with caplog.at_level(logging.DEBUG):
        responses = [
            zt_client.post("/api/v1/auth/login", json={"email": user.email, "password": password}),
            zt_client.post(
                "/api/v1/auth/login", json={"email": "nobody@example.com", "password": password}
            ),
            zt_client.post(
                "/api/v1/auth/login",
                json={"email": user.email, "password": password, "is_superuser": True},
            ),
            zt_client.post(
                "/api/v1/auth/login", json={"email": user.email, "password": [password]}
            ),
        ]
    assert [r.status_code for r in responses][:2] == [401, 401]
    assert all(r.status_code in (400, 401, 422) for r in responses)
    for response in responses:
        assert password not in response.text
    assert password not in stream.getvalue()
    assert password not in caplog.text


def test_api_keys_are_never_logged(log_output, zt_client, zt_identity, caplog):
    stream = log_output("json", level="DEBUG")
    user, project = zt_identity.project_with("developer")
    with caplog.at_level(logging.DEBUG):
        created = zt_client.post(
            "/api/v1/api-keys",
            json={"name": "ci", "project": project.id},
            headers=zt_identity.headers(user),
        ).json()
        headers = zt_identity.headers(created["key"])
        assert zt_client.get("/api/v1/api-keys", headers=headers).status_code == 200
        rotated = zt_client.post(
            f"/api/v1/api-keys/{created['id']}/rotate", headers=zt_identity.headers(user)
        ).json()
        # The old key, now refused, is not logged either.
        assert zt_client.get("/api/v1/api-keys", headers=headers).status_code == 401
    for key in (created["key"], rotated["key"]):
        secret = key.split("_", 2)[2]
        assert secret not in stream.getvalue()
        assert secret not in caplog.text

"""The web app: problem details, limits, request ids, health, readiness, metrics, OpenAPI."""

from __future__ import annotations

import json

import pytest

PROBLEM = "application/problem+json"
EDGE = {
    "source": {"kind": "data.version", "id": "ds1@1"},
    "target": {"kind": "train.run", "id": "run1"},
    "relation": "used_by",
    "project": "01nosuchproject",
}


@pytest.fixture
def zt_client(zt_client, zt_admin_headers):
    """The test client, signed in as a superuser (these tests are about the web layer)."""
    zt_client.headers.update(zt_admin_headers)
    return zt_client


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_healthz(zt_client):
    response = zt_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_database_and_storage(zt_client):
    response = zt_client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "storage": "ok"}


def test_readyz_names_what_is_down(zt_client, zt_platform):
    zt_platform.db.engine.dispose()
    zt_platform.db.ping = _raise("database is gone")
    body = assert_problem(zt_client.get("/readyz"), 503)
    assert body["checks"]["database"] == "database is gone"
    assert body["checks"]["storage"] == "ok"
    assert "database" in body["detail"]


def _raise(message):
    def fail():
        raise RuntimeError(message)

    return fail


def test_malformed_json_is_400(zt_client):
    response = zt_client.post(
        "/api/v1/lineage/edges",
        content=b'{"source": ',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 400)


def test_wrong_type_names_the_field(zt_client):
    body = assert_problem(
        zt_client.post("/api/v1/lineage/edges", json={**EDGE, "relation": 5}), 400
    )
    assert "relation" in body["detail"]
    assert any(e["field"] == "relation" for e in body["errors"])


def test_nested_field_error_names_the_path(zt_client):
    bad = {**EDGE, "source": {"kind": "BAD KIND", "id": "x"}}
    body = assert_problem(zt_client.post("/api/v1/lineage/edges", json=bad), 400)
    assert "source.kind" in body["detail"]


def test_unknown_field_is_refused_by_name(zt_client):
    body = assert_problem(
        zt_client.post("/api/v1/lineage/edges", json={**EDGE, "is_admin": True}), 400
    )
    assert "is_admin" in body["detail"]


def test_unknown_route_is_404_problem(zt_client):
    body = assert_problem(zt_client.get("/api/v1/nothing-here"), 404)
    assert body["instance"] == "/api/v1/nothing-here"


def test_wrong_method_is_405_with_allow(zt_client):
    response = zt_client.delete("/healthz")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


def test_body_over_the_limit_is_413(zt_app_factory, zt_settings):
    from litestar.testing import TestClient

    from zhongtai.testing import ZtIdentity

    settings = zt_settings.model_copy(update={"max_body_size": 2048})
    app = zt_app_factory(settings=settings)
    identity = ZtIdentity(app.state["platform"])
    headers = identity.headers(identity.user(superuser=True))
    with TestClient(app) as client:
        client.headers.update(headers)
        edge = EDGE
        payload = json.dumps(edge).encode() + b" " * 4096
        response = client.post(
            "/api/v1/lineage/edges", content=payload, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413)


def test_json_nested_10000_deep_is_400(zt_client):
    deep = b"[" * 10_000 + b"]" * 10_000
    response = zt_client.post(
        "/api/v1/lineage/edges", content=deep, headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "nested too deeply" in body["detail"]


@pytest.mark.parametrize("limit", ["10000000", "0", "-1"])
def test_page_limit_out_of_range_is_400_naming_limit(zt_client, limit):
    body = assert_problem(zt_client.get(f"/api/v1/lineage/edges?limit={limit}"), 400)
    assert "limit" in body["detail"]


def test_bad_cursor_is_400(zt_client):
    body = assert_problem(zt_client.get("/api/v1/lineage/edges?cursor=%%%"), 400)
    assert "cursor" in body["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["application/python-pickle", "application/x-pickle", "application/pickle; charset=binary"],
)
def test_pickle_is_refused_with_415(zt_client, content_type):
    response = zt_client.post(
        "/api/v1/lineage/edges", content=b"\x80\x04.", headers={"content-type": content_type}
    )
    assert_problem(response, 415)


def test_every_response_has_a_request_id(zt_client):
    ok = zt_client.get("/healthz").headers["x-request-id"]
    missing = zt_client.get("/nowhere").headers["x-request-id"]
    assert ok and missing and ok != missing


def test_a_valid_incoming_request_id_is_kept_and_a_bad_one_replaced(zt_client):
    kept = zt_client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    replaced = zt_client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"


def test_500_has_request_id_and_no_stack_trace(zt_client, zt_platform):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals /etc/shadow")

    zt_platform.db.transaction = explode
    response = zt_client.get("/api/v1/lineage?kind=a&id=b")
    body = assert_problem(response, 500)
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert body["request_id"]


def test_a_busy_sqlite_writer_is_503_with_retry_after(zt_client, zt_platform):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    def busy(*args, **kwargs):
        raise OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))

    zt_platform.db.transaction = busy
    response = zt_client.get("/api/v1/lineage?kind=a&id=b")
    body = assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert "busy" in body["detail"]


def test_metrics_count_requests_by_route_template(zt_client):
    zt_client.get("/api/v1/lineage?kind=a&id=b")
    zt_client.get("/nowhere")
    text = zt_client.get("/metrics").text
    assert (
        'zhongtai_http_requests_total{method="GET",route="/api/v1/lineage",status="200"} 1.0'
        in text
    )
    assert 'route="<unmatched>",status="404"' in text
    assert "zhongtai_http_request_duration_seconds_bucket" in text


def test_openapi_and_docs_are_served(zt_client):
    spec = zt_client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/api/v1/lineage" in spec["paths"]
    # "Authorize" in the docs page takes a bearer token (access token or API key).
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    docs = zt_client.get("/api/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]

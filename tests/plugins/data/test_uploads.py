"""Resumable uploads: parts in any order, status, wrong parts, checksums, resuming."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from litestar.testing import TestClient

from zhongtai.testing import ZtIdentity

pytestmark = pytest.mark.zt_plugins("data")
BASE = "/api/v1/data"
PART = 5 * 1024 * 1024  # the smallest part size (S3's minimum)


@pytest.fixture(autouse=True)
def small_parts(zt_clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHONGTAI_DATA__PART_SIZE", str(PART))


@pytest.fixture
def env(zt_client: TestClient[Any], zt_platform: Any) -> Any:
    identity = ZtIdentity(zt_platform)
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = zt_client.post(
        f"{BASE}/datasets", json={"project": project.id, "name": "big"}, headers=headers
    ).json()
    version = zt_client.post(
        f"{BASE}/datasets/{dataset['id']}/versions", json={}, headers=headers
    ).json()
    return zt_client, identity, headers, dataset, version


def start(client, headers, dataset, version, data: bytes, path: str = "big.bin", **over) -> Any:
    body = {
        "dataset": dataset["id"],
        "version": version["id"],
        "path": path,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        **over,
    }
    answer = client.post(f"{BASE}/uploads", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def send(client, headers, upload, number: int, data: bytes) -> Any:
    chunk = data[(number - 1) * upload["part_size"] : number * upload["part_size"]]
    return client.put(
        f"{BASE}/uploads/{upload['id']}/parts/{number}", content=chunk, headers=headers
    )


def test_parts_in_any_order_then_complete(env, zt_platform):
    client, _identity, headers, dataset, version = env
    data = os.urandom(2 * PART + 123)
    upload = start(client, headers, dataset, version, data)
    assert upload["parts"] == 3 and upload["part_size"] == PART and upload["offset"] == 0
    assert send(client, headers, upload, 3, data).status_code == 200
    assert send(client, headers, upload, 1, data).status_code == 200
    status = client.get(f"{BASE}/uploads/{upload['id']}", headers=headers).json()
    assert sorted(p["number"] for p in status["received"]) == [1, 3]
    assert status["offset"] == PART  # part 2 is missing
    early = client.post(f"{BASE}/uploads/{upload['id']}/complete", headers=headers)
    assert early.status_code == 409 and "[2]" in early.json()["detail"]
    assert send(client, headers, upload, 2, data).status_code == 200
    done = client.post(f"{BASE}/uploads/{upload['id']}/complete", headers=headers)
    assert done.status_code == 201, done.text
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit",
        json={},
        headers=headers,
    )
    got = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/1/download/big.bin", headers=headers
    )
    assert got.content == data
    assert list(zt_platform.storage.list("data/uploads/")) == []


def test_a_part_of_the_wrong_length_is_409_and_changes_nothing(env):
    client, _identity, headers, dataset, version = env
    data = os.urandom(PART + 10)
    upload = start(client, headers, dataset, version, data)
    short = client.put(
        f"{BASE}/uploads/{upload['id']}/parts/1", content=data[: PART - 1], headers=headers
    )
    assert short.status_code == 409
    beyond = client.put(f"{BASE}/uploads/{upload['id']}/parts/3", content=b"x", headers=headers)
    assert beyond.status_code == 409
    status = client.get(f"{BASE}/uploads/{upload['id']}", headers=headers).json()
    assert status["received"] == [] and status["offset"] == 0


def test_a_checksum_or_size_mismatch_adds_nothing(env):
    client, _identity, headers, dataset, version = env
    data = os.urandom(1000)
    upload = start(client, headers, dataset, version, data, sha256="0" * 64)
    assert send(client, headers, upload, 1, data).status_code == 200
    refused = client.post(f"{BASE}/uploads/{upload['id']}/complete", headers=headers)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "sha256"
    got = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}", headers=headers
    ).json()
    assert got["file_count"] == 0
    status = client.get(f"{BASE}/uploads/{upload['id']}", headers=headers).json()
    assert status["status"] == "failed" and "hash" in status["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("path", "../x"), ("sha256", "abc"), ("size", -1), ("version", "nope")],
)
def test_bad_upload_requests(env, field, value):
    client, _identity, headers, dataset, version = env
    body = {
        "dataset": dataset["id"],
        "version": version["id"],
        "path": "a.bin",
        "size": 10,
        "sha256": "0" * 64,
        field: value,
    }
    answer = client.post(f"{BASE}/uploads", json=body, headers=headers)
    assert answer.status_code in (400, 404), answer.text
    if answer.status_code == 400:
        assert field in answer.text


def test_another_projects_upload_is_not_found_and_abort_frees_parts(env, zt_platform):
    client, identity, headers, dataset, version = env
    data = os.urandom(100)
    upload = start(client, headers, dataset, version, data)
    stranger, _ = identity.project_with("owner")
    theirs = identity.headers(stranger)
    for method, path in [
        ("GET", f"{BASE}/uploads/{upload['id']}"),
        ("PUT", f"{BASE}/uploads/{upload['id']}/parts/1"),
        ("POST", f"{BASE}/uploads/{upload['id']}/complete"),
        ("DELETE", f"{BASE}/uploads/{upload['id']}"),
    ]:
        answer = client.request(
            method, path, content=b"x" if method == "PUT" else None, headers=theirs
        )
        assert answer.status_code == 404, (method, path, answer.status_code)
    assert send(client, headers, upload, 1, data).status_code == 200
    assert client.delete(f"{BASE}/uploads/{upload['id']}", headers=headers).status_code == 204
    status = client.get(f"{BASE}/uploads/{upload['id']}", headers=headers).json()
    assert status["status"] == "aborted"
    assert send(client, headers, upload, 1, data).status_code == 409


def test_expired_uploads_are_swept(env, zt_platform):
    from datetime import timedelta

    from zhongtai_data.models import Upload
    from zhongtai_data.uploads import sweep

    client, _identity, headers, dataset, version = env
    upload = start(client, headers, dataset, version, b"abc")
    assert send(client, headers, upload, 1, b"abc").status_code == 200
    assert sweep(zt_platform) == 0
    with zt_platform.db.transaction() as session:
        row = session.get(Upload, upload["id"])
        row.expires_at = row.created_at - timedelta(seconds=1)
    assert sweep(zt_platform) == 1
    status = client.get(f"{BASE}/uploads/{upload['id']}", headers=headers).json()
    assert status["status"] == "expired" and status["received"] == []

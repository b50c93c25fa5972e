"""The data plugin on the s3 storage driver, against moto's S3 server on 127.0.0.1.

moto's server mode speaks the S3 protocol over HTTP; it stands in for AWS S3 or
MinIO, which cannot run on our CI machines.
"""

from __future__ import annotations

from typing import Any

import boto3
import httpx
import pytest
from litestar.testing import TestClient
from moto.server import ThreadedMotoServer

from zhongtai.testing import ZtIdentity

BASE = "/api/v1/data"


@pytest.fixture
def s3_app(zt_settings: Any, zt_app_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="zt-data")
    for key, value in {
        "DRIVER": "s3",
        "BUCKET": "zt-data",
        "PREFIX": "platform",
        "ENDPOINT_URL": endpoint,
        "REGION": "us-east-1",
        "ACCESS_KEY_ID": "testing",
        "SECRET_ACCESS_KEY": "testing",
        "ADDRESSING_STYLE": "path",
    }.items():
        monkeypatch.setenv(f"ZHONGTAI_STORAGE__{key}", value)
    from zhongtai.settings import load_settings

    settings = load_settings(home=zt_settings.home, database_url=zt_settings.database_url)
    yield zt_app_factory(settings=settings, plugins=["data"])
    server.stop()


def test_files_are_stored_once_in_s3_and_downloads_redirect_to_presigned_urls(s3_app):
    platform = s3_app.state["platform"]
    assert platform.storage.name == "s3"
    with TestClient(s3_app) as client:
        identity = ZtIdentity(platform)
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        dataset = client.post(
            f"{BASE}/datasets", json={"project": project.id, "name": "s3"}, headers=headers
        ).json()
        for number, path in ((1, "a.txt"), (2, "b/a-copy.txt")):
            version = client.post(
                f"{BASE}/datasets/{dataset['id']}/versions", json={}, headers=headers
            ).json()
            added = client.post(
                f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/files",
                data={"path": path},
                files={"file": ("x", b"bytes in s3", "text/plain")},
                headers=headers,
            )
            assert added.status_code == 201, added.text
            done = client.post(
                f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit",
                json={},
                headers=headers,
            )
            assert done.json()["number"] == number
        assert len(list(platform.storage.list("data/blobs/"))) == 1
        answer = client.get(
            f"{BASE}/datasets/{dataset['id']}/versions/2/download/b/a-copy.txt",
            headers=headers,
            follow_redirects=False,
        )
        assert answer.status_code == 307
        fetched = httpx.get(answer.headers["location"])
        assert fetched.status_code == 200 and fetched.content == b"bytes in s3"
        assert "a-copy.txt" in fetched.headers.get("content-disposition", "")


def test_a_resumable_upload_sends_its_parts_straight_to_s3(s3_app, monkeypatch):
    import hashlib
    import os

    platform = s3_app.state["platform"]
    with TestClient(s3_app) as client:
        identity = ZtIdentity(platform)
        user, project = identity.project_with("developer")
        headers = identity.headers(user)
        dataset = client.post(
            f"{BASE}/datasets", json={"project": project.id, "name": "big"}, headers=headers
        ).json()
        version = client.post(
            f"{BASE}/datasets/{dataset['id']}/versions", json={}, headers=headers
        ).json()
        part_size = 8 * 1024 * 1024
        data = os.urandom(part_size + 1000)
        upload = client.post(
            f"{BASE}/uploads",
            json={
                "dataset": dataset["id"],
                "version": version["id"],
                "path": "big.bin",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
            headers=headers,
        ).json()
        assert upload["parts"] == 2 and len(upload["urls"]) == 2
        for number, url in enumerate(upload["urls"], start=1):
            chunk = data[(number - 1) * upload["part_size"] : number * upload["part_size"]]
            sent = httpx.put(url, content=chunk)  # to S3 itself, not through the platform
            assert sent.status_code == 200, sent.text
        status = client.get(f"{BASE}/uploads/{upload['id']}", headers=headers).json()
        assert status["offset"] == len(data)
        done = client.post(f"{BASE}/uploads/{upload['id']}/complete", headers=headers)
        assert done.status_code == 201, done.text
        assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert list(platform.storage.list("data/uploads/")) == []

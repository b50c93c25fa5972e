"""The platform on the s3 storage driver, against moto's S3 server on 127.0.0.1.

moto's server mode speaks the S3 protocol over HTTP; it stands in for AWS S3 or MinIO,
which cannot run on our CI machines.
"""

from __future__ import annotations

import time

import boto3
import pytest
from litestar.testing import TestClient
from moto.server import ThreadedMotoServer


@pytest.fixture
def moto():
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
    ).create_bucket(Bucket="zt-platform")
    yield server, endpoint
    server.stop()


def test_platform_runs_on_s3_and_readyz_names_storage_when_it_goes(
    moto, zt_settings, zt_app_factory, monkeypatch
):
    server, endpoint = moto
    for key, value in {
        "DRIVER": "s3",
        "BUCKET": "zt-platform",
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
    app = zt_app_factory(settings=settings)
    platform = app.state["platform"]
    assert platform.storage.name == "s3"
    with TestClient(app) as client:
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "storage": "ok"}
        platform.storage.put("hello.txt", b"hi")
        assert platform.storage.read_bytes("hello.txt") == b"hi"

        server.stop()
        started = time.monotonic()
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["storage"] != "ok"
        assert "storage" in body["detail"]
        assert time.monotonic() - started < 10  # a dead endpoint must not hang readiness

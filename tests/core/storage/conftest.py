"""Fixtures for the object store tests.

The s3 driver is tested against moto's S3 server running as a real HTTP server on
127.0.0.1 (``ThreadedMotoServer``), not against AWS or MinIO and not through
moto's in-process ``mock_aws`` patching: every request goes over a socket, as it
would to a real S3 endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zhongtai.storage import ObjectStore
from zhongtai.storage.local import LocalStore
from zhongtai.storage.s3 import S3Store

#: Credentials and region for moto; moto accepts any values.
S3_OPTIONS: dict[str, Any] = {
    "region": "us-east-1",
    "access_key_id": "testing",
    "secret_access_key": "testing",
    "addressing_style": "path",
}


@pytest.fixture
def s3_options() -> dict[str, Any]:
    """Keyword arguments for :class:`S3Store` that suit the moto server."""
    return dict(S3_OPTIONS)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (a free port), shared by the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    """A plain boto3 client on the moto server, to look behind the store's back."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"zt-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def store_client(moto_endpoint: str) -> Any:
    """The client an S3Store builds for itself, built once: loading boto3's service
    model takes a good part of a second, too long to repeat for every test."""
    return S3Store("any", endpoint_url=moto_endpoint, **S3_OPTIONS)._client


@pytest.fixture
def s3_store(s3_bucket: str, store_client: Any) -> S3Store:
    """An S3Store on a fresh bucket, under the prefix ``tenant/``."""
    return S3Store(s3_bucket, prefix="tenant/", client=store_client)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """A LocalStore in a fresh temporary folder."""
    return LocalStore(tmp_path / "objects")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each driver in turn, for the behaviour every driver must share."""
    fixture = "local_store" if request.param == "local" else "s3_store"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]

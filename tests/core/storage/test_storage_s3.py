"""Behaviour specific to the ``s3`` driver, against moto's S3 server on 127.0.0.1.

Presigned URLs are fetched and PUT over real HTTP with urllib. Note that moto does
not check signatures or expiry times of presigned URLs, so those are not tested.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

import zhongtai.storage
from zhongtai.storage import MIN_PART_SIZE, InvalidKey, StorageError
from zhongtai.storage import s3 as s3_module
from zhongtai.storage.local import LocalStore
from zhongtai.storage.s3 import S3Store, content_disposition

MB = 1024 * 1024


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """GET ``url``, or PUT ``data`` to it, over HTTP."""
    # urllib labels a request body as a form unless told otherwise, and moto
    # then tries to parse it as one; browsers send the file's own type.
    headers = {"Content-Type": "application/octet-stream", **(headers or {})}
    request = urllib.request.Request(
        url, data=data, method="PUT" if data is not None else "GET", headers=headers
    )
    return urllib.request.urlopen(request, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ construction


def settings(**values: Any) -> Any:
    base = {
        "driver": "s3",
        "root": None,
        "bucket": None,
        "prefix": "",
        "endpoint_url": None,
        "region": None,
        "access_key_id": None,
        "secret_access_key": None,
        "addressing_style": "auto",
    }
    base.update(values)
    return SimpleNamespace(**base)


def test_from_settings_requires_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"needs a bucket.*ZHONGTAI_STORAGE__BUCKET"):
        S3Store.from_settings(settings(), tmp_path)


def test_from_settings_builds_a_working_store(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    store = S3Store.from_settings(
        settings(
            bucket=s3_bucket,
            prefix="/team-a/",
            endpoint_url=moto_endpoint,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key=SecretStr("testing"),
            addressing_style="path",
        ),
        tmp_path,
    )
    assert store.prefix == "team-a/"
    store.ping()
    store.put("k", b"x")
    assert store.read_bytes("k") == b"x"
    assert repr(store) == f"<S3Store s3://{s3_bucket}/team-a/>"


def test_half_credentials_are_refused() -> None:
    with pytest.raises(StorageError, match="both"):
        S3Store("bucket", access_key_id="only-the-id")


def test_bad_prefix_and_part_size_are_refused(s3_options: dict[str, Any]) -> None:
    with pytest.raises(InvalidKey):
        S3Store("bucket", prefix="../escape", **s3_options)
    with pytest.raises(ValueError, match="part_size"):
        S3Store("bucket", part_size=MB, **s3_options)


def test_entry_points_name_both_drivers() -> None:
    found = {ep.name: ep for ep in entry_points(group="zhongtai.storage")}
    assert found["local"].load() is LocalStore
    assert found["s3"].load() is S3Store
    assert LocalStore.name == "local"
    assert S3Store.name == "s3"


def test_importing_the_drivers_does_not_import_boto3() -> None:
    code = (
        "import sys, zhongtai.storage, zhongtai.storage.local, zhongtai.storage.s3\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore'))\n"
        "assert not loaded, loaded\n"
    )
    source_root = Path(zhongtai.storage.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ reachability


def test_ping_fails_quickly_on_a_closed_port(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    # Default retries: ping makes one attempt regardless. The first ping also builds
    # its boto3 client (seconds on a busy machine, whatever the network does), so the
    # second one is timed: retries with backoff would take longer than this bound.
    store = S3Store(s3_bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", **s3_options)
    with pytest.raises(StorageError, match=r"is not reachable.*Could not connect"):
        store.ping()
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"is not reachable.*Could not connect"):
        store.ping()
    assert time.monotonic() - started < 3


def test_ping_fails_quickly_when_the_server_never_answers(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    # A socket that accepts connections (the kernel completes the handshake) but
    # never replies: only the read timeout can end the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = S3Store(
            s3_bucket, endpoint_url=f"http://127.0.0.1:{port}", ping_timeout=1, **s3_options
        )
        started = time.monotonic()
        with pytest.raises(StorageError, match="is not reachable"):
            store.ping()
        # ~1 s of read timeout; the margin is for a loaded machine. Without the
        # ping timeout botocore would wait 60 s, and retry.
        assert time.monotonic() - started < 8


def test_ordinary_requests_on_a_closed_port_raise_storage_error(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    store = S3Store(
        s3_bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, **s3_options
    )
    with pytest.raises(StorageError, match="Could not connect"):
        store.stat("k")
    with pytest.raises(StorageError):
        store.put("k", b"x")
    with pytest.raises(StorageError):
        list(store.list())


def test_malformed_endpoint_is_a_storage_error(s3_options: dict[str, Any]) -> None:
    with pytest.raises(StorageError, match="cannot set up"):
        S3Store("bucket", endpoint_url="not a url", **s3_options)


def test_ping_fails_on_a_missing_bucket(moto_endpoint: str, s3_options: dict[str, Any]) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=moto_endpoint, **s3_options)
    with pytest.raises(StorageError, match="does not exist"):
        store.ping()
    with pytest.raises(StorageError, match="does not exist"):
        store.put("k", b"x")


# ------------------------------------------------------------------ prefix


def test_all_keys_live_under_the_prefix(s3_store: S3Store, s3_client: Any) -> None:
    s3_client.put_object(Bucket=s3_store.bucket, Key="outside", Body=b"o")
    s3_client.put_object(Bucket=s3_store.bucket, Key="tenantX/y", Body=b"o")
    s3_store.put("a/b", b"1")
    s3_store.copy("a/b", "c")
    raw = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_store.bucket)["Contents"]]
    assert raw == ["outside", "tenant/a/b", "tenant/c", "tenantX/y"]
    assert [info.key for info in s3_store.list()] == ["a/b", "c"]
    assert not s3_store.exists("outside")
    assert s3_store.delete_prefix("a") == 1
    assert s3_store.delete_prefix("c") == 1
    raw = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_store.bucket)["Contents"]]
    assert raw == ["outside", "tenantX/y"]


def test_keys_written_by_other_tools_that_are_invalid_are_not_listed(
    s3_store: S3Store, s3_client: Any
) -> None:
    for key in ["tenant/folder/", "tenant/a//b", "tenant/../x", "tenant/ok"]:
        s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"x")
    assert [info.key for info in s3_store.list()] == ["ok"]
    # delete_prefix removes everything under the prefix, listable or not.
    assert s3_store.delete_prefix("a") == 1


def test_prefix_counts_towards_the_key_length_limit(s3_store: S3Store) -> None:
    with pytest.raises(InvalidKey, match="store prefix"):
        s3_store.put("x" * 1020, b"x")


# ------------------------------------------------------------------ requests sent


def test_ranged_reads_send_a_range_header(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_store.put("k", bytes(100))
    sent: list[dict[str, Any]] = []
    real = s3_store._client.get_object

    def spy(**params: Any) -> Any:
        sent.append(params)
        return real(**params)

    monkeypatch.setattr(s3_store._client, "get_object", spy)
    assert len(b"".join(s3_store.open("k", start=10, end=20))) == 10
    assert len(b"".join(s3_store.open("k", start=90))) == 10
    assert len(b"".join(s3_store.open("k", end=5))) == 5
    assert len(b"".join(s3_store.open("k"))) == 100
    assert [p.get("Range") for p in sent] == ["bytes=10-19", "bytes=90-", "bytes=0-4", None]


def test_delete_prefix_batches_delete_objects(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_DELETE_BATCH", 3)
    for i in range(7):
        s3_store.put(f"p/{i}", b"x")
    s3_store.put("q", b"x")
    calls: list[int] = []
    real = s3_store._client.delete_objects

    def spy(**params: Any) -> Any:
        calls.append(len(params["Delete"]["Objects"]))
        return real(**params)

    monkeypatch.setattr(s3_store._client, "delete_objects", spy)
    assert s3_store.delete_prefix("p/") == 7
    assert calls == [3, 3, 1]
    assert [info.key for info in s3_store.list()] == ["q"]


def test_large_objects_are_copied_part_by_part(s3_store: S3Store) -> None:
    s3_store.part_size = MIN_PART_SIZE
    s3_store.copy_object_limit = 0  # take the path used above 5 GiB
    data = os.urandom(MB) * 11
    s3_store.put("src", data, content_type="video/mp4")
    info = s3_store.copy("src", "dst")
    assert info.size == len(data)
    assert info.content_type == "video/mp4"
    assert s3_store.read_bytes("dst") == data


# ------------------------------------------------------------------ streaming put


def test_large_put_is_a_multipart_upload_with_bounded_read_ahead(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = MIN_PART_SIZE
    s3_store.part_size = part
    chunk = b"q" * 65536
    total = 50 * MB
    consumed = 0

    def source() -> Iterator[bytes]:
        nonlocal consumed
        for _ in range(total // len(chunk)):
            consumed += len(chunk)
            yield chunk

    seen: list[tuple[int, int]] = []
    real = s3_store._client.upload_part

    def spy(**params: Any) -> Any:
        seen.append((params["PartNumber"], consumed))
        return real(**params)

    monkeypatch.setattr(s3_store._client, "upload_part", spy)
    info = s3_store.put("big", source(), content_type="application/x-big")
    assert [number for number, _ in seen] == list(range(1, 11))
    for number, consumed_then in seen:
        # Never more than the part being sent plus one chunk read ahead.
        assert consumed_then <= number * part + len(chunk)
    assert info.size == total
    assert info.etag is not None and info.etag.endswith("-10")
    assert info.content_type == "application/x-big"
    digest = hashlib.md5()
    for piece in s3_store.open("big"):
        digest.update(piece)
    expected = hashlib.md5()
    for _ in range(total // len(chunk)):
        expected.update(chunk)
    assert digest.hexdigest() == expected.hexdigest()


def test_failed_large_put_aborts_the_upload(s3_store: S3Store, s3_client: Any) -> None:
    s3_store.put("big", b"previous")

    def source() -> Iterator[bytes]:
        yield b"x" * (2 * MIN_PART_SIZE + 10)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        s3_store.put("big", source())
    assert s3_store.read_bytes("big") == b"previous"
    uploads = s3_client.list_multipart_uploads(Bucket=s3_store.bucket)
    assert uploads.get("Uploads", []) == []


@pytest.fixture(scope="module")
def moto_subprocess() -> Iterator[str]:
    """moto's S3 server in a separate process, so that tracemalloc in this process
    measures the client alone (the server keeps every object in memory)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_put_of_50mb_generator_holds_less_than_two_parts(
    moto_subprocess: str, s3_options: dict[str, Any]
) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=moto_subprocess,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="mem")
    store = S3Store("mem", endpoint_url=moto_subprocess, part_size=MIN_PART_SIZE, **s3_options)
    store.put("warm-up", b"x")  # load botocore's models before measuring
    chunk = b"m" * 65536

    def source() -> Iterator[bytes]:
        for _ in range(50 * MB // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        info = store.put("big", source())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == 50 * MB
    # One 5 MiB part being sent plus the chunks of the next: under 10 MiB.
    assert peak < 2 * MIN_PART_SIZE, f"put held {peak / MB:.1f} MB"


# ------------------------------------------------------------------ presigned URLs


def test_presigned_get(s3_store: S3Store) -> None:
    s3_store.put("docs/report.csv", b"a,b\n1,2\n", content_type="text/csv")
    url = s3_store.presign_get("docs/report.csv", expires_in=60)
    assert url.startswith(s3_store._client.meta.endpoint_url)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    with http(url) as response:
        assert response.read() == b"a,b\n1,2\n"
        assert response.headers["Content-Type"] == "text/csv"
        assert response.headers.get("Content-Disposition") is None


def test_presigned_get_with_filename_downloads_as_attachment(s3_store: S3Store) -> None:
    s3_store.put("blob", b"data")
    url = s3_store.presign_get("blob", filename='rapport "final" 日本.csv')
    with http(url) as response:
        assert response.read() == b"data"
        disposition = response.headers["Content-Disposition"]
    assert disposition == content_disposition('rapport "final" 日本.csv')
    assert disposition.startswith("attachment; filename=\"rapport 'final' __.csv\"")
    assert "filename*=UTF-8''rapport%20%22final%22%20%E6%97%A5%E6%9C%AC.csv" in disposition


def test_content_disposition_strips_paths_and_controls() -> None:
    assert content_disposition("../../etc/passwd") == (
        "attachment; filename=\".._.._etc_passwd\"; filename*=UTF-8''.._.._etc_passwd"
    )
    assert content_disposition("a\r\nb") == ("attachment; filename=\"a__b\"; filename*=UTF-8''a__b")
    assert content_disposition("") == (
        "attachment; filename=\"download\"; filename*=UTF-8''download"
    )


def test_presigned_put(s3_store: S3Store) -> None:
    url = s3_store.presign_put("uploads/photo.jpg", expires_in=300)
    with http(url, data=b"\xff\xd8jpeg", headers={"Content-Type": "image/jpeg"}) as response:
        assert response.status == 200
    info = s3_store.stat("uploads/photo.jpg")
    assert info.size == 6
    assert info.content_type == "image/jpeg"
    assert s3_store.read_bytes("uploads/photo.jpg") == b"\xff\xd8jpeg"


def test_presigned_multipart_upload(s3_store: S3Store) -> None:
    upload = s3_store.create_multipart("big.bin", content_type="application/x-big")
    chunks = [b"1" * MIN_PART_SIZE, b"2" * 123]
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        url = s3_store.presign_part("big.bin", upload, number, expires_in=600)
        with http(url, data=chunk) as response:
            parts.append((number, response.headers["ETag"]))
    assert [(n, size) for n, size, _ in s3_store.list_parts("big.bin", upload)] == [
        (1, MIN_PART_SIZE),
        (2, 123),
    ]
    info = s3_store.complete_multipart("big.bin", upload, parts)
    assert info.size == MIN_PART_SIZE + 123
    assert info.content_type == "application/x-big"
    assert info.etag is not None and info.etag.endswith("-2")
    assert s3_store.read_bytes("big.bin") == b"".join(chunks)


def test_presign_arguments_are_checked(s3_store: S3Store) -> None:
    with pytest.raises(InvalidKey):
        s3_store.presign_get("../x")
    with pytest.raises(ValueError, match="expires_in"):
        s3_store.presign_get("k", expires_in=0)
    with pytest.raises(ValueError, match="expires_in"):
        s3_store.presign_put("k", expires_in=8 * 24 * 3600)
    from zhongtai.storage import InvalidUpload

    with pytest.raises(InvalidUpload):
        s3_store.presign_part("k", "upload", 0)

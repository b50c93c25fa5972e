"""A resumable upload survives ``kill -9`` of the server halfway through.

The server runs as a real ``zhongtai serve`` process on the test's database and data
directory; the client sends half the parts, the server is killed in the middle of
the next one, a new server starts, and the client sends what the server says it
lacks. No version is ever visible before the commit, and the bytes arrive whole.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from zhongtai.platform import bootstrap
from zhongtai.testing import ZtIdentity, serve_in_process

BASE = "/api/v1/data"
PART = 5 * 1024 * 1024
SIZE = 200 * 1024 * 1024 + 12345  # 41 parts


def server(settings: Any) -> Any:
    """``zhongtai serve`` with the data plugin and small parts, in a process of its own."""
    return serve_in_process(settings, ZHONGTAI_PLUGINS="data", ZHONGTAI_DATA__PART_SIZE=str(PART))


def part(data: bytes, number: int) -> bytes:
    return data[(number - 1) * PART : number * PART]


@pytest.mark.timeout(300)
def test_an_upload_resumes_after_the_server_is_killed(zt_settings, tmp_path):
    settings = zt_settings.model_copy(update={"plugins": ["data"]})
    platform = bootstrap(settings, schema="upgrade")
    try:
        identity = ZtIdentity(platform)
        user, project = identity.project_with("developer")
        key = identity.api_key(user)
    finally:
        platform.close()
    headers = {"Authorization": f"Bearer {key}"}
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()

    with server(settings) as (url, proc):
        client = httpx.Client(base_url=url, headers=headers, timeout=60)
        dataset = client.post(
            f"{BASE}/datasets", json={"project": project.id, "name": "big"}
        ).json()
        version = client.post(f"{BASE}/datasets/{dataset['id']}/versions", json={}).json()
        upload = client.post(
            f"{BASE}/uploads",
            json={
                "dataset": dataset["id"],
                "version": version["id"],
                "path": "weights.bin",
                "size": SIZE,
                "sha256": digest,
            },
        ).json()
        parts = upload["parts"]
        assert parts == 41 and upload["part_size"] == PART
        for number in range(1, parts // 2 + 1):
            answer = client.put(
                f"{BASE}/uploads/{upload['id']}/parts/{number}", content=part(data, number)
            )
            assert answer.status_code == 200, answer.text

        # The next part goes out slowly; the server dies in the middle of it.
        def slow() -> Iterator[bytes]:
            chunk = part(data, parts // 2 + 1)
            for start in range(0, len(chunk), 256 * 1024):
                yield chunk[start : start + 256 * 1024]
                time.sleep(0.02)

        failed: list[BaseException] = []

        def send_slowly() -> None:
            try:
                httpx.put(
                    f"{url}{BASE}/uploads/{upload['id']}/parts/{parts // 2 + 1}",
                    content=slow(),
                    headers={**headers, "Content-Length": str(PART)},
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                failed.append(exc)

        sender = threading.Thread(target=send_slowly)
        sender.start()
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sender.join(30)
        assert failed, "the part should not have gone through"
        client.close()

    with server(settings) as (url, _proc):
        client = httpx.Client(base_url=url, headers=headers, timeout=60)
        # Nothing is visible: the draft has no file and there is no version yet.
        assert client.get(f"{BASE}/datasets/{dataset['id']}/versions").json()["items"] == []
        status = client.get(f"{BASE}/uploads/{upload['id']}").json()
        assert status["status"] == "open"
        assert status["offset"] == (parts // 2) * PART
        held = {p["number"] for p in status["received"]}
        assert held == set(range(1, parts // 2 + 1))
        for number in range(status["offset"] // PART + 1, parts + 1):
            answer = client.put(
                f"{BASE}/uploads/{upload['id']}/parts/{number}", content=part(data, number)
            )
            assert answer.status_code == 200, answer.text
        done = client.post(f"{BASE}/uploads/{upload['id']}/complete")
        assert done.status_code == 201, done.text
        assert done.json()["sha256"] == digest
        committed = client.post(
            f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit", json={}
        )
        assert committed.json()["number"] == 1
        received = hashlib.sha256()
        with client.stream(
            "GET", f"{BASE}/datasets/{dataset['id']}/versions/1/download/weights.bin"
        ) as answer:
            for chunk in answer.iter_bytes():
                received.update(chunk)
        assert received.hexdigest() == digest
        client.close()

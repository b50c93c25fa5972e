"""Previews of a version's files and the quality job that follows each commit."""

from __future__ import annotations

import io
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from zhongtai.testing import ZtIdentity, rq_worker_thread

pytestmark = pytest.mark.zt_plugins("data")
BASE = "/api/v1/data"


@pytest.fixture
def env(zt_client: TestClient[Any], zt_platform: Any) -> Any:
    # The rq driver (PostgreSQL + Redis run) needs a worker; the embedded one runs its own.
    with rq_worker_thread(zt_platform, count=1):
        yield zt_client, ZtIdentity(zt_platform)


def parquet_bytes() -> bytes:
    table = pa.table(
        {
            "id": [1, 2, 3, 4, 4],
            "score": [0.5, None, None, None, 1.5],
            "label": ["cat", "dog", "cat", "cat", "cat"],
            "constant": ["x"] * 5,
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def commit(client: TestClient[Any], headers: dict[str, str], project: str, files: dict) -> Any:
    dataset = client.post(
        f"{BASE}/datasets", json={"project": project, "name": "tables"}, headers=headers
    ).json()
    version = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions", json={}, headers=headers
    ).json()
    for path, data in files.items():
        added = client.post(
            f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/files",
            data={"path": path},
            files={"file": ("x", data, "application/octet-stream")},
            headers=headers,
        )
        assert added.status_code == 201, added.text
    done = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit",
        json={},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    return dataset, done.json()


def wait_for_job(client: TestClient[Any], headers: dict[str, str], job_id: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_commit_queues_the_quality_report_of_its_tables(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    ragged = b"a,b,c\n1,2,3\n4,5,6,7,8\n7,8,9\n"
    dataset, version = commit(
        client,
        headers,
        project.id,
        {"t/scores.parquet": parquet_bytes(), "t/ragged.csv": ragged, "notes.txt": b"hi"},
    )
    assert version["quality_job"]
    job = wait_for_job(client, headers, version["quality_job"])
    assert job["status"] == "succeeded", job
    assert job["result"] == {"files": 2, "reports": 2, "failed": 0}
    base = f"{BASE}/datasets/{dataset['id']}/versions/1"
    report = client.get(f"{base}/quality/t/scores.parquet", headers=headers).json()
    assert report["status"] == "ok" and report["rows"] == 5 and report["duplicate_rows"] == 0
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["score"]["null_fraction"] == pytest.approx(0.6)
    assert columns["id"]["min"] == 1 and columns["id"]["max"] == 4
    kinds = {(w["column"], w["kind"]) for w in report["warnings"]}
    assert ("constant", "constant") in kinds and ("score", "high_null_rate") in kinds
    files = {f["path"]: f for f in client.get(f"{base}/files", headers=headers).json()["items"]}
    assert files["t/scores.parquet"]["rows"] == 5
    assert [c["name"] for c in files["t/scores.parquet"]["columns"]] == [
        "id",
        "score",
        "label",
        "constant",
    ]
    assert files["notes.txt"]["tabular"] is None
    broken = client.get(f"{base}/quality/t/ragged.csv", headers=headers).json()
    assert any("line 3" in p for p in broken["problems"]), broken["problems"]
    assert client.get(f"{base}/quality/notes.txt", headers=headers).status_code == 404


def test_previews_read_tables_text_and_say_what_is_wrong(env):
    client, identity = env
    user, project = identity.project_with("viewer")
    developer, _ = identity.project_with("developer")
    identity.member(developer, project, "developer")
    dev = identity.headers(developer)
    rows = b"".join(f"{i},name {i}\n".encode() for i in range(300))
    dataset, _ = commit(
        client,
        dev,
        project.id,
        {
            "big.csv": b"id,name\n" + rows,
            "bad.csv": b"id,name\n1,\xff\xfe broken\n2,ok\n",
            "readme.md": b"# title\nline two\n",
            "model.pkl": b"\x80\x04K\x01.",
            "scores.parquet": parquet_bytes(),
        },
    )
    viewer = identity.headers(user)
    base = f"{BASE}/datasets/{dataset['id']}/versions/1/preview"
    page = client.get(f"{base}/big.csv?offset=100&limit=10", headers=viewer).json()
    assert page["kind"] == "table" and page["offset"] == 100 and len(page["rows"]) == 10
    assert page["rows"][0] == [100, "name 100"]
    assert [c["name"] for c in page["columns"]] == ["id", "name"]
    bad = client.get(f"{base}/bad.csv", headers=viewer)
    assert bad.status_code == 200 and bad.json()["problems"], bad.text
    parquet = client.get(f"{base}/scores.parquet?limit=2", headers=viewer).json()
    assert parquet["rows"] == [[1, 0.5, "cat", "x"], [2, None, "dog", "x"]]
    text = client.get(f"{base}/readme.md", headers=viewer).json()
    assert text["kind"] == "text" and text["lines"] == ["# title", "line two"]
    pickle = client.get(f"{base}/model.pkl", headers=viewer).json()
    assert pickle["kind"] == "binary"  # stored as bytes, never unpickled
    assert client.get(f"{base}/big.csv?limit=5000", headers=viewer).status_code == 400
    stranger, _ = identity.project_with("owner")
    assert client.get(f"{base}/big.csv", headers=identity.headers(stranger)).status_code == 404

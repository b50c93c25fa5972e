"""Data sources (SQL databases, S3 prefixes) and the data.import job.

The SQL imports run against the PostgreSQL server of ``ZHONGTAI_TEST_DATABASE_URL``,
or ``postgresql://postgres@127.0.0.1:5432/postgres`` when it answers (skipped
otherwise), in a throwaway database; the S3 ones against moto's S3 server on
127.0.0.1.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient
from moto.server import ThreadedMotoServer
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

import zhongtai
from zhongtai.metadata.lineage import LineageEdge
from zhongtai.testing import (
    ZtIdentity,
    database_server_for_tests,
    rq_worker_thread,
    throwaway_postgres,
)
from zhongtai_data.models import Source
from zhongtai_data.sources import check_select, open_secret

pytestmark = pytest.mark.zt_plugins("data")
BASE = "/api/v1/data"
PASSWORD = "Pw-never-shown-4711"
SECRET_KEY = "s3-secret-never-shown-0815"
ROWS = 25_003  # three fetches of 10,000 rows


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    @zhongtai.hookimpl
    def on_event(self, event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def recorder(zt_register_plugin: Any) -> Recorder:
    recorder = Recorder()
    zt_register_plugin(recorder, name="recorder")
    return recorder


@pytest.fixture
def env(recorder: Recorder, zt_client: TestClient[Any], zt_platform: Any) -> Iterator[Any]:
    with rq_worker_thread(zt_platform, count=1):
        yield zt_client, ZtIdentity(zt_platform)


def _pg_server() -> str | None:
    url = database_server_for_tests() or "postgresql://postgres@127.0.0.1:5432/postgres"
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        psycopg.connect(conninfo, connect_timeout=2).close()
    except Exception:
        return None
    return url


@pytest.fixture
def source_db() -> Iterator[str]:
    """A throwaway PostgreSQL database with table ``t``; its SQLAlchemy URL, with a
    password (the test server trusts local connections, so any password works)."""
    server = _pg_server()
    if server is None:
        pytest.skip("needs a PostgreSQL server (ZHONGTAI_TEST_DATABASE_URL or 127.0.0.1:5432)")
    with throwaway_postgres(server) as url:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE t (id integer PRIMARY KEY, name text, score numeric(6, 2),"
                " created timestamptz, payload jsonb, flag boolean, late integer)"
            )
            conn.execute(
                "INSERT INTO t SELECT g, 'name ' || g, (g %% 1000) / 10.0,"
                " timestamptz '2026-01-01 00:00+00' + g * interval '1 minute',"
                " jsonb_build_object('g', g), g %% 2 = 0, CASE WHEN g > 10000 THEN g END"
                " FROM generate_series(1, %s) g",
                (ROWS,),
            )
            # A function that writes: SELECT wipe() passes the lexical check.
            conn.execute(
                "CREATE FUNCTION wipe() RETURNS bigint LANGUAGE sql AS"
                " 'WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d'"
            )
        yield make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def _count(url: str) -> int:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM t").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def moto() -> Iterator[tuple[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket="lake")
    yield endpoint, client
    server.stop()


def problem_field(answer: Any) -> str:
    body = answer.json()
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
    return str(body.get("errors", [{}])[0].get("field") or body["detail"])


def new_source(client: Any, headers: dict[str, str], project: str, **body: Any) -> Any:
    answer = client.post(f"{BASE}/sources", json={"project": project, **body}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def new_dataset(client: Any, headers: dict[str, str], project: str, name: str = "imports") -> Any:
    answer = client.post(
        f"{BASE}/datasets", json={"project": project, "name": name}, headers=headers
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def wait_for_job(client: Any, headers: dict[str, str], job_id: str) -> Any:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def job_log(client: Any, headers: dict[str, str], job_id: str) -> str:
    answer = client.get(f"/api/v1/jobs/{job_id}/logs", headers=headers)
    assert answer.status_code == 200, answer.text
    return "\n".join(item["line"] for item in answer.json()["items"])


def drafts(client: Any, headers: dict[str, str], dataset: str) -> list[Any]:
    answer = client.get(f"{BASE}/datasets/{dataset}/versions?status=draft", headers=headers)
    return list(answer.json()["items"])


# --------------------------------------------------------------------------- sources


def test_sources_never_show_their_credentials(env, zt_platform):
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    url = f"postgresql://reader:{PASSWORD}@db.example.com:5433/sales?sslmode=require"
    made = client.post(
        f"{BASE}/sources",
        json={"project": project.id, "name": "sales", "kind": "sql", "url": url},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    sql = made.json()
    assert sql["has_credentials"] is True
    assert sql["config"] == {
        "url": "postgresql+psycopg://reader@db.example.com:5433/sales?sslmode=require"
    }
    s3 = new_source(
        client,
        headers,
        project.id,
        name="lake",
        kind="s3",
        bucket="lake",
        prefix="/raw/",
        access_key_id="AKIAEXAMPLE",
        secret_access_key=SECRET_KEY,
    )
    assert s3["config"] == {
        "bucket": "lake",
        "prefix": "raw",
        "endpoint_url": None,
        "region": "us-east-1",
    }
    assert s3["has_credentials"] is True
    public = new_source(client, headers, project.id, name="open", kind="s3", bucket="open-data")
    assert public["has_credentials"] is False

    viewer = identity.user()
    identity.member(viewer, project, "viewer")
    seen = [
        made.text,
        client.get(f"{BASE}/sources?project={project.id}", headers=headers).text,
        client.get(f"{BASE}/sources", headers=identity.headers(viewer)).text,
        client.get(f"{BASE}/sources/{sql['id']}", headers=identity.headers(viewer)).text,
        client.get(f"{BASE}/sources/{s3['id']}", headers=headers).text,
    ]
    listed = client.get(f"{BASE}/sources", headers=identity.headers(viewer)).json()["items"]
    assert {s["name"] for s in listed} == {"sales", "lake", "open"}
    for body in seen:
        assert PASSWORD not in body and SECRET_KEY not in body and "secret" not in body
    # At rest: encrypted, not the plaintext; readable with the platform's key.
    with zt_platform.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT name, config, secret FROM data_sources")).all()
    for _name, config, secret in rows:
        assert PASSWORD not in str(config) and SECRET_KEY not in str(config)
        assert secret is None or (PASSWORD not in secret and SECRET_KEY not in secret)
    with zt_platform.db.transaction() as session:
        stored = session.scalar(select(Source).where(Source.name == "sales"))
        assert open_secret(zt_platform, stored.secret)["url"].startswith(
            f"postgresql+psycopg://reader:{PASSWORD}@"
        )
    # Viewers read; only data.source.manage (maintainers) registers.
    refused = client.post(
        f"{BASE}/sources",
        json={"project": project.id, "name": "x", "kind": "s3", "bucket": "abc"},
        headers=identity.headers(viewer),
    )
    assert refused.status_code == 403


def test_credentials_can_be_replaced_and_a_new_secret_key_makes_them_unreadable(env, zt_platform):
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    source = new_source(
        client, headers, project.id, name="db", kind="sql", url="postgresql://u@db.example.com/x"
    )
    assert source["has_credentials"] is False
    changed = client.patch(
        f"{BASE}/sources/{source['id']}",
        json={"password": PASSWORD, "name": "warehouse"},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["has_credentials"] is True and changed.json()["name"] == "warehouse"
    assert PASSWORD not in changed.text
    with zt_platform.db.transaction() as session:
        stored = session.get(Source, source["id"])
        url = open_secret(zt_platform, stored.secret)["url"]
    assert url == f"postgresql+psycopg://u:{PASSWORD}@db.example.com/x"
    wrong = client.patch(
        f"{BASE}/sources/{source['id']}", json={"access_key_id": "A"}, headers=headers
    )
    assert wrong.status_code == 400 and problem_field(wrong) == "access_key_id"

    original = zt_platform.secret_key
    zt_platform.secret_key = "another secret key, after a rotation......"
    try:
        tested = client.post(f"{BASE}/sources/{source['id']}/test", headers=headers)
        assert tested.status_code == 409
        assert "enter them again" in tested.json()["detail"]
    finally:
        zt_platform.secret_key = original


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "ftp", "url": "ftp://x"}, "kind"),
        ({"kind": "sql"}, "url"),
        ({"kind": "sql", "url": "sqlite:////etc/passwd"}, "url"),
        ({"kind": "sql", "url": f"mssql+pyodbc://u:{PASSWORD}@h/db"}, "url"),
        ({"kind": "sql", "url": f"postgresql://u:{PASSWORD}@/db?host=/var/run/x"}, "url"),
        ({"kind": "sql", "url": f"postgresql://u:{PASSWORD}@h/db?passfile=/etc/x"}, "url"),
        ({"kind": "sql", "url": "postgresql://u@169.254.169.254/db"}, "url"),
        ({"kind": "sql", "url": "postgresql://u@h"}, "url"),
        ({"kind": "sql", "url": "not a url"}, "url"),
        ({"kind": "sql", "url": "postgresql://u@h/db", "bucket": "b"}, "bucket"),
        ({"kind": "s3"}, "bucket"),
        ({"kind": "s3", "bucket": "No_Such..Bucket"}, "bucket"),
        ({"kind": "s3", "bucket": "abc", "url": "postgresql://u@h/db"}, "url"),
        ({"kind": "s3", "bucket": "abc", "prefix": "a/../b"}, "prefix"),
        ({"kind": "s3", "bucket": "abc", "region": "EU WEST"}, "region"),
        ({"kind": "s3", "bucket": "abc", "endpoint_url": "ftp://h"}, "endpoint_url"),
        ({"kind": "s3", "bucket": "abc", "endpoint_url": "http://169.254.169.254"}, "endpoint_url"),
        (
            {"kind": "s3", "bucket": "abc", "endpoint_url": "http://metadata.google.internal"},
            "endpoint_url",
        ),
        ({"kind": "s3", "bucket": "abc", "endpoint_url": f"http://k:{PASSWORD}@h"}, "endpoint_url"),
        ({"kind": "s3", "bucket": "abc", "access_key_id": "AKIA"}, "secret_access_key"),
        ({"kind": "s3", "bucket": "abc", "name": ""}, "name"),
        ({"kind": "s3", "bucket": "abc", "surprise": 1}, "surprise"),
    ],
)
def test_bad_sources_are_refused_naming_the_field(env, body, field):
    client, identity = env
    user, project = identity.project_with("maintainer")
    answer = client.post(
        f"{BASE}/sources",
        json={"project": project.id, "name": "s", **body},
        headers=identity.headers(user),
    )
    assert answer.status_code in (400, 422), answer.text
    assert field in problem_field(answer)
    assert PASSWORD not in answer.text
    listed = client.get(f"{BASE}/sources", headers=identity.headers(user)).json()
    assert listed["items"] == []


def test_names_are_unique_in_a_project(env):
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    new_source(client, headers, project.id, name="lake", kind="s3", bucket="abc")
    other = new_source(client, headers, project.id, name="pond", kind="s3", bucket="abc")
    again = client.post(
        f"{BASE}/sources",
        json={"project": project.id, "name": "lake", "kind": "s3", "bucket": "def"},
        headers=headers,
    )
    assert again.status_code == 409 and problem_field(again) == "name"
    renamed = client.patch(f"{BASE}/sources/{other['id']}", json={"name": "lake"}, headers=headers)
    assert renamed.status_code == 409 and problem_field(renamed) == "name"
    _, elsewhere = identity.project_with("maintainer", user=user)
    new_source(client, headers, elsewhere.id, name="lake", kind="s3", bucket="abc")


@pytest.mark.postgres_only
def test_the_platforms_own_database_is_refused(env, zt_platform):
    client, identity = env
    user, project = identity.project_with("maintainer")
    own = zt_platform.db.engine.url.set(drivername="postgresql")
    answer = client.post(
        f"{BASE}/sources",
        json={
            "project": project.id,
            "name": "sneaky",
            "kind": "sql",
            "url": own.render_as_string(hide_password=False),
        },
        headers=identity.headers(user),
    )
    assert answer.status_code == 400 and problem_field(answer) == "url"
    assert "own database" in answer.json()["detail"]


def test_another_projects_source_is_404_on_every_route(env):
    client, identity = env
    owner, project = identity.project_with("maintainer")
    source = new_source(
        client, identity.headers(owner), project.id, name="lake", kind="s3", bucket="abc"
    )
    stranger, theirs = identity.project_with("owner")
    headers = identity.headers(stranger)
    dataset = new_dataset(client, headers, theirs.id)
    sid = source["id"]
    for method, path, body in [
        ("GET", f"/sources/{sid}", None),
        ("PATCH", f"/sources/{sid}", {"name": "mine"}),
        ("DELETE", f"/sources/{sid}", None),
        ("POST", f"/sources/{sid}/test", None),
        ("POST", f"/sources/{sid}/import", {"dataset": dataset["id"], "prefix": "x"}),
        ("GET", "/sources/nosuchsource", None),
    ]:
        answer = client.request(method, f"{BASE}{path}", json=body, headers=headers)
        assert answer.status_code == 404, (method, path, answer.text)
    listed = client.get(f"{BASE}/sources?project={project.id}", headers=headers).json()
    assert listed["items"] == []
    made = client.post(
        f"{BASE}/sources",
        json={"project": project.id, "name": "x", "kind": "s3", "bucket": "abc"},
        headers=headers,
    )
    assert made.status_code == 404
    # The owner's own dataset is fine, one of a project they cannot see is not found,
    # and one of another project of theirs is refused by name.
    owner_headers = identity.headers(owner)
    elsewhere = client.post(
        f"{BASE}/sources/{sid}/import",
        json={"dataset": dataset["id"], "prefix": "x"},
        headers=owner_headers,
    )
    assert elsewhere.status_code == 404
    identity.member(owner, theirs, "developer")
    mixed = client.post(
        f"{BASE}/sources/{sid}/import",
        json={"dataset": dataset["id"], "prefix": "x"},
        headers=owner_headers,
    )
    assert mixed.status_code == 400 and problem_field(mixed) == "dataset"
    deleted = client.delete(f"{BASE}/sources/{sid}", headers=owner_headers)
    assert deleted.status_code == 204
    assert client.get(f"{BASE}/sources/{sid}", headers=owner_headers).status_code == 404


def test_imports_need_dataset_write_and_a_fitting_body(env):
    client, identity = env
    maintainer, project = identity.project_with("maintainer")
    source = new_source(
        client, identity.headers(maintainer), project.id, name="lake", kind="s3", bucket="abc"
    )
    dataset = new_dataset(client, identity.headers(maintainer), project.id)
    viewer = identity.user()
    identity.member(viewer, project, "viewer")
    url = f"{BASE}/sources/{source['id']}/import"
    denied = client.post(url, json={"dataset": dataset["id"]}, headers=identity.headers(viewer))
    assert denied.status_code == 403
    for body, field in [
        ({"dataset": dataset["id"], "query": "SELECT 1"}, "query"),
        ({"dataset": dataset["id"], "prefix": "../up"}, "prefix"),
        ({"dataset": dataset["id"], "path": "/etc/x"}, "path"),
        ({"dataset": "nope", "prefix": "a"}, "nope"),
        ({"prefix": "a"}, "dataset"),
    ]:
        answer = client.post(url, json=body, headers=identity.headers(maintainer))
        assert answer.status_code in (400, 404, 422), answer.text
        if answer.status_code != 404:
            assert field in problem_field(answer)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "select * from t;",
        "  WITH a AS (SELECT 1) SELECT * FROM a ;; ",
        "SELECT ';' AS semicolon, \"a;b\" FROM t -- trailing; comment",
        "SELECT $x$;$x$, /* ; */ 2",
        "(SELECT 1) UNION (SELECT 2)",
        "VALUES (1), (2)",
    ],
)
def test_one_select_passes_the_check(query):
    assert check_select(query).rstrip().endswith((";",)) is False


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM t",
        "SELECT 1; DROP TABLE t",
        "SELECT 1;DROP TABLE t;",
        "SELECT 'a\\'; DELETE FROM t; --'",
        "update t set name = 'x'",
        "COPY t TO '/tmp/x'",
        "SELECT 'unclosed",
        "/* SELECT */ INSERT INTO t VALUES (1)",
        "",
    ],
)
def test_anything_else_is_refused(query):
    with pytest.raises(ValueError):
        check_select(query)


# --------------------------------------------------------------------------- sql imports


def test_a_sql_query_becomes_a_parquet_version(env, source_db, recorder, zt_platform):
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    source = new_source(client, headers, project.id, name="pg", kind="sql", url=source_db)
    assert PASSWORD not in str(source)
    tested = client.post(f"{BASE}/sources/{source['id']}/test", headers=headers)
    assert tested.status_code == 200 and tested.json() == {
        "ok": True,
        "message": "connected; SELECT 1 answered",
    }
    dataset = new_dataset(client, headers, project.id)
    queued = client.post(
        f"{BASE}/sources/{source['id']}/import",
        json={
            "dataset": dataset["id"],
            "query": "SELECT id, name, score, created, payload, flag, late FROM t"
            " WHERE name LIKE 'name %' ORDER BY id;",
            "message": "nightly snapshot",
        },
        headers=headers,
    )
    assert queued.status_code == 202, queued.text
    job = wait_for_job(client, headers, queued.json()["job"])
    assert job["status"] == "succeeded", (job["error"], job_log(client, headers, job["id"]))
    assert job["result"]["rows"] == ROWS and job["result"]["version"] == 1
    assert job["progress"] == 1.0
    versions = client.get(f"{BASE}/datasets/{dataset['id']}/versions", headers=headers).json()
    [version] = versions["items"]
    assert version["number"] == 1 and version["message"] == "nightly snapshot"
    assert version["source"] == {"kind": "import", "source": source["id"], "job": job["id"]}
    files = client.get(f"{BASE}/datasets/{dataset['id']}/versions/1/files", headers=headers)
    [entry] = files.json()["items"]
    assert entry["path"] == "import.parquet" and entry["tabular"] == "parquet"
    download = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/1/download/import.parquet", headers=headers
    )
    assert download.status_code == 200
    table = pq.read_table(io.BytesIO(download.content))
    assert table.num_rows == ROWS
    assert table.column_names == ["id", "name", "score", "created", "payload", "flag", "late"]
    assert table.column("id").to_pylist()[:3] == [1, 2, 3]
    assert table.column("late").to_pylist()[ROWS - 1] == str(ROWS)  # NULL at first: text
    assert table.column("payload").to_pylist()[0] == '{"g": 1}'
    assert drafts(client, headers, dataset["id"]) == []
    with zt_platform.db.transaction() as session:
        edges = session.scalars(
            select(LineageEdge).where(LineageEdge.target_id == version["id"])
        ).all()
        assert [(e.source_kind, e.source_id, e.relation) for e in edges] == [
            ("data.source", source["id"], "imported")
        ]
    created = [e for e in recorder.events if e.name == "dataset.version.created"]
    assert [(e.dataset_id, e.number) for e in created] == [(dataset["id"], 1)]
    logs = job_log(client, headers, job["id"])
    assert f"{ROWS} rows" in logs and PASSWORD not in logs
    assert PASSWORD not in client.get(f"/api/v1/jobs/{job['id']}", headers=headers).text
    # A second import is version 2.
    again = client.post(
        f"{BASE}/sources/{source['id']}/import",
        json={"dataset": dataset["id"], "query": "SELECT 1 AS one", "path": "one/x.parquet"},
        headers=headers,
    ).json()
    job = wait_for_job(client, headers, again["job"])
    assert job["status"] == "succeeded", (job["error"], job_log(client, headers, job["id"]))
    assert job["result"]["version"] == 2 and job["result"]["rows"] == 1


def test_an_import_cannot_write_to_the_source(env, source_db):
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    source = new_source(client, headers, project.id, name="pg", kind="sql", url=source_db)
    dataset = new_dataset(client, headers, project.id)
    url = f"{BASE}/sources/{source['id']}/import"
    for query in ["DELETE FROM t", "SELECT 1; DROP TABLE t", "SELECT 'a\\'; DROP TABLE t; --'"]:
        refused = client.post(url, json={"dataset": dataset["id"], "query": query}, headers=headers)
        assert refused.status_code == 400 and problem_field(refused) == "query", refused.text
    # The generic jobs API validates the same parameters.
    submitted = client.post(
        "/api/v1/jobs",
        json={
            "project": project.id,
            "type": "data.import",
            "params": {
                "source_id": source["id"],
                "dataset_id": dataset["id"],
                "query": "TRUNCATE t",
            },
        },
        headers=headers,
    )
    assert submitted.status_code == 422 and "params.query" in submitted.json()["detail"]
    # What the check lets through still runs in a cursor, in a read-only transaction.
    for query, reason in [
        ("WITH gone AS (DELETE FROM t RETURNING id) SELECT * FROM gone", "data-modifying"),
        ("SELECT * INTO copied FROM t", "INTO is not allowed"),
        ("SELECT wipe()", "read-only transaction"),
        ("SELECT * FROM t FOR UPDATE", "read-only transaction"),
    ]:
        queued = client.post(url, json={"dataset": dataset["id"], "query": query}, headers=headers)
        assert queued.status_code == 202, queued.text
        job = wait_for_job(client, headers, queued.json()["job"])
        assert job["status"] == "failed", job
        assert reason in job["error"], job["error"]
        assert PASSWORD not in job["error"] and PASSWORD not in job_log(client, headers, job["id"])
    assert _count(source_db) == ROWS
    versions = client.get(f"{BASE}/datasets/{dataset['id']}/versions", headers=headers).json()
    assert versions["items"] == [] and drafts(client, headers, dataset["id"]) == []


def test_a_failed_connection_says_why_in_one_line_without_the_password(env):
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    source = new_source(
        client,
        headers,
        project.id,
        name="down",
        kind="sql",
        url=f"postgresql://reader:{PASSWORD}@127.0.0.1:1/nothing",
    )
    tested = client.post(f"{BASE}/sources/{source['id']}/test", headers=headers)
    assert tested.status_code == 200
    body = tested.json()
    assert body["ok"] is False and "\n" not in body["error"] and body["error"]
    assert PASSWORD not in tested.text
    dataset = new_dataset(client, headers, project.id)
    queued = client.post(
        f"{BASE}/sources/{source['id']}/import",
        json={"dataset": dataset["id"], "query": "SELECT 1"},
        headers=headers,
    ).json()
    job = wait_for_job(client, headers, queued["job"])
    assert job["status"] == "failed"
    assert PASSWORD not in job["error"] and PASSWORD not in job_log(client, headers, job["id"])
    assert drafts(client, headers, dataset["id"]) == []


# --------------------------------------------------------------------------- s3 imports


def test_an_s3_prefix_becomes_a_version(env, moto, zt_platform):
    endpoint, s3 = moto
    for key, body in {
        "raw/2024/a.csv": b"x,y\n1,2\n",
        "raw/2024/sub/b.txt": b"hello",
        "raw/2024/sub/": b"",
        "raw/2025/c.txt": b"not this one",
        "other/d.txt": b"nor this",
    }.items():
        s3.put_object(Bucket="lake", Key=key, Body=body)
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    source = new_source(
        client,
        headers,
        project.id,
        name="lake",
        kind="s3",
        bucket="lake",
        prefix="raw",
        endpoint_url=endpoint,
        access_key_id="testing",
        secret_access_key=SECRET_KEY,
    )
    tested = client.post(f"{BASE}/sources/{source['id']}/test", headers=headers).json()
    assert tested["ok"] is True, tested
    dataset = new_dataset(client, headers, project.id)
    queued = client.post(
        f"{BASE}/sources/{source['id']}/import",
        json={"dataset": dataset["id"], "prefix": "2024", "path": "landing"},
        headers=headers,
    )
    assert queued.status_code == 202, queued.text
    job = wait_for_job(client, headers, queued.json()["job"])
    assert job["status"] == "succeeded", (job["error"], job_log(client, headers, job["id"]))
    files = client.get(f"{BASE}/datasets/{dataset['id']}/versions/1/files", headers=headers)
    assert {f["path"]: f["size"] for f in files.json()["items"]} == {
        "landing/a.csv": 8,
        "landing/sub/b.txt": 5,
    }
    got = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/1/download/landing/sub/b.txt", headers=headers
    )
    assert got.content == b"hello"
    logs = job_log(client, headers, job["id"])
    assert "raw/2024/sub/b.txt" in logs and SECRET_KEY not in logs
    with zt_platform.db.transaction() as session:
        edge = session.scalar(
            select(LineageEdge).where(
                LineageEdge.source_kind == "data.source", LineageEdge.source_id == source["id"]
            )
        )
        assert edge is not None and edge.relation == "imported"

    # An object whose key is not a safe path fails the import: nothing is added.
    s3.put_object(Bucket="lake", Key="raw/2026/ok.txt", Body=b"fine")
    s3.put_object(Bucket="lake", Key="raw/2026/bad//name.txt", Body=b"evil")
    queued = client.post(
        f"{BASE}/sources/{source['id']}/import",
        json={"dataset": dataset["id"], "prefix": "2026"},
        headers=headers,
    ).json()
    job = wait_for_job(client, headers, queued["job"])
    assert job["status"] == "failed" and "bad//name.txt" in job["error"], job
    versions = client.get(f"{BASE}/datasets/{dataset['id']}/versions", headers=headers).json()
    assert [v["number"] for v in versions["items"]] == [1]
    assert drafts(client, headers, dataset["id"]) == []
    # An empty prefix is an error too, and wrong keys are one line without the secret.
    queued = client.post(
        f"{BASE}/sources/{source['id']}/import",
        json={"dataset": dataset["id"], "prefix": "1999"},
        headers=headers,
    ).json()
    job = wait_for_job(client, headers, queued["job"])
    assert job["status"] == "failed" and "no objects" in job["error"]


def test_an_s3_test_reports_a_missing_bucket(env, moto):
    endpoint, _s3 = moto
    client, identity = env
    user, project = identity.project_with("maintainer")
    headers = identity.headers(user)
    source = new_source(
        client,
        headers,
        project.id,
        name="gone",
        kind="s3",
        bucket="no-such-bucket",
        endpoint_url=endpoint,
        access_key_id="testing",
        secret_access_key=SECRET_KEY,
    )
    tested = client.post(f"{BASE}/sources/{source['id']}/test", headers=headers).json()
    assert tested["ok"] is False and "NoSuchBucket" in tested["error"]
    assert SECRET_KEY not in str(tested)

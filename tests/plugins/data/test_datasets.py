"""The data plugin's API: datasets, versions, small uploads, downloads, access."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from zhongtai.testing import ZtIdentity

pytestmark = pytest.mark.zt_plugins("data")
BASE = "/api/v1/data"


@pytest.fixture
def env(zt_client: TestClient[Any], zt_platform: Any) -> Iterator[tuple[TestClient[Any], Any]]:
    yield zt_client, ZtIdentity(zt_platform)


def new_dataset(client: TestClient[Any], headers: dict[str, str], project: str, **body: Any) -> Any:
    answer = client.post(
        f"{BASE}/datasets", json={"project": project, "name": "images", **body}, headers=headers
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def draft(client: TestClient[Any], headers: dict[str, str], dataset: str, **body: Any) -> Any:
    answer = client.post(f"{BASE}/datasets/{dataset}/versions", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def upload(
    client: TestClient[Any], headers: dict[str, str], dataset: str, ref: str, path: str, data: bytes
) -> Any:
    return client.post(
        f"{BASE}/datasets/{dataset}/versions/{ref}/files",
        data={"path": path},
        files={"file": ("blob", data, "application/octet-stream")},
        headers=headers,
    )


def committed(client, headers, dataset: str, files: dict[str, bytes], **body: Any) -> Any:
    version = draft(client, headers, dataset, **body)
    for path, data in files.items():
        assert upload(client, headers, dataset, version["id"], path, data).status_code == 201
    answer = client.post(
        f"{BASE}/datasets/{dataset}/versions/{version['id']}/commit", json={}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_version_is_numbered_at_commit_and_then_immutable(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id, tags=["vision"])
    version = draft(client, headers, dataset["id"], message="first cut")
    assert version["status"] == "draft" and version["number"] is None
    listed = client.get(f"{BASE}/datasets/{dataset['id']}/versions", headers=headers).json()
    assert listed["items"] == []  # a draft is not visible as a version
    made = upload(client, headers, dataset["id"], version["id"], "train/a.csv", b"x,y\n1,2\n")
    assert made.status_code == 201, made.text
    assert made.json()["sha256"] == hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    assert made.json()["media_type"] == "text/csv"
    done = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit",
        json={"message": "v1"},
        headers=headers,
    ).json()
    assert done["number"] == 1 and done["status"] == "committed" and done["file_count"] == 1
    late = upload(client, headers, dataset["id"], "1", "train/b.csv", b"1")
    assert late.status_code == 409
    again = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/1/commit", json={}, headers=headers
    )
    assert again.status_code == 409
    second = committed(client, headers, dataset["id"], {"b.bin": b"2"}, parent=1)
    assert second["number"] == 2 and second["file_count"] == 2
    files = client.get(f"{BASE}/datasets/{dataset['id']}/versions/2/files", headers=headers).json()[
        "items"
    ]
    assert [f["path"] for f in files] == ["train/a.csv", "b.bin"]
    got = client.get(f"{BASE}/datasets/{dataset['id']}", headers=headers).json()
    assert got["latest_version"] == 2 and got["tags"] == ["vision"]


def test_identical_files_are_stored_once(env, zt_platform):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    one = new_dataset(client, headers, project.id, name="one")
    two = new_dataset(client, headers, project.id, name="two")
    payload = b"same bytes " * 1000
    committed(client, headers, one["id"], {"a.bin": payload})
    committed(client, headers, two["id"], {"copy/of/a.bin": payload})
    blobs = list(zt_platform.storage.list("data/blobs/"))
    assert len(blobs) == 1 and blobs[0].size == len(payload)
    # Deleting one user of the bytes keeps them; deleting the last removes them.
    maintainer_user, _ = identity.project_with("maintainer")
    identity.member(maintainer_user, project, "maintainer")
    boss = identity.headers(maintainer_user)
    assert client.delete(f"{BASE}/datasets/{one['id']}", headers=boss).status_code == 204
    assert len(list(zt_platform.storage.list("data/blobs/"))) == 1
    assert client.delete(f"{BASE}/datasets/{two['id']}", headers=boss).status_code == 204
    assert list(zt_platform.storage.list("data/blobs/")) == []


@pytest.mark.parametrize(
    "path",
    ["../evil", "/etc/passwd", "a/../../b", "%2e%2e/x", "a\\b", "a\x00b", "", "a//b", "dir/"],
)
def test_bad_paths_are_refused_and_nothing_is_written(env, zt_platform, path):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    version = draft(client, headers, dataset["id"])
    answer = upload(client, headers, dataset["id"], version["id"], path, b"payload")
    assert answer.status_code == 400, (path, answer.text)
    assert answer.json()["errors"][0]["field"] == "path"
    assert list(zt_platform.storage.list("data/")) == []


def test_download_streams_ranges_and_never_renders_active_content(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    page = b"<html><script>alert(1)</script></html>"
    committed(
        client,
        headers,
        dataset["id"],
        {
            "notes.txt": b"0123456789",
            "page.html": page,
            "logo.svg": b"<svg onload=x/>",
            "model.pkl": b"\x80\x04K\x01.",
        },
    )
    url = f"{BASE}/datasets/{dataset['id']}/versions/1/download"
    whole = client.get(f"{url}/notes.txt", headers=headers)
    assert whole.status_code == 200 and whole.content == b"0123456789"
    assert whole.headers["x-content-type-options"] == "nosniff"
    assert whole.headers["content-disposition"].startswith("inline")
    part = client.get(f"{url}/notes.txt", headers={**headers, "Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345"
    assert part.headers["content-range"] == "bytes 2-5/10"
    tail = client.get(f"{url}/notes.txt", headers={**headers, "Range": "bytes=-3"})
    assert tail.content == b"789"
    beyond = client.get(f"{url}/notes.txt", headers={**headers, "Range": "bytes=50-"})
    assert beyond.status_code == 416
    for name in ("page.html", "logo.svg", "model.pkl"):
        answer = client.get(f"{url}/{name}", headers=headers)
        assert answer.status_code == 200
        assert answer.headers["content-disposition"].startswith("attachment"), name
        assert answer.headers["content-type"].startswith("application/octet-stream"), name
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"{url}/model.pkl", headers=headers).content == b"\x80\x04K\x01."
    assert client.get(f"{url}/missing.txt", headers=headers).status_code == 404
    assert client.get(f"{url}/../notes.txt", headers=headers).status_code in (400, 404)


def test_another_projects_data_is_not_found(env):
    client, identity = env
    owner, project = identity.project_with("developer")
    stranger, _ = identity.project_with("owner")
    mine = identity.headers(owner)
    theirs = identity.headers(stranger)
    dataset = new_dataset(client, mine, project.id)
    version = draft(client, mine, dataset["id"])
    upload(client, mine, dataset["id"], version["id"], "a.txt", b"secret")
    client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit", json={}, headers=mine
    )
    base = f"{BASE}/datasets/{dataset['id']}"
    for method, path in [
        ("GET", base),
        ("PATCH", base),
        ("DELETE", base),
        ("GET", f"{base}/versions"),
        ("POST", f"{base}/versions"),
        ("GET", f"{base}/versions/1"),
        ("GET", f"{base}/versions/1/files"),
        ("GET", f"{base}/versions/1/download/a.txt"),
        ("POST", f"{base}/versions/{version['id']}/commit"),
        ("DELETE", f"{base}/versions/1"),
    ]:
        answer = client.request(
            method, path, json={} if method in ("POST", "PATCH") else None, headers=theirs
        )
        assert answer.status_code == 404, (method, path, answer.status_code)
        assert "secret" not in answer.text
    refused = upload(client, theirs, dataset["id"], version["id"], "b.txt", b"x")
    assert refused.status_code == 404
    listed = client.get(f"{BASE}/datasets", headers=theirs).json()["items"]
    assert listed == []
    other = client.post(
        f"{BASE}/datasets", json={"project": project.id, "name": "mine now"}, headers=theirs
    )
    assert other.status_code == 404


def test_a_used_version_is_deleted_only_with_force_by_a_maintainer(env, zt_platform):
    client, identity = env
    developer, project = identity.project_with("developer")
    dev = identity.headers(developer)
    dataset = new_dataset(client, dev, project.id)
    committed(client, dev, dataset["id"], {"a.txt": b"a"})
    committed(client, dev, dataset["id"], {"b.txt": b"b"}, parent=1)  # derived from 1
    base = f"{BASE}/datasets/{dataset['id']}/versions"
    assert client.delete(f"{base}/1", headers=dev).status_code == 403  # not a maintainer
    maintainer, _ = identity.project_with("maintainer")
    identity.member(maintainer, project, "maintainer")
    boss = identity.headers(maintainer)
    refused = client.delete(f"{base}/1", headers=boss)
    assert refused.status_code == 409 and "force" in refused.json()["detail"]
    assert client.delete(f"{base}/2", headers=boss).status_code == 204  # nothing uses it
    assert client.delete(f"{base}/1?force=true", headers=boss).status_code == 204
    assert client.get(f"{base}/1", headers=boss).status_code == 404


def test_bad_bodies_name_the_field(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    new_dataset(client, headers, project.id, name="taken")
    cases = [
        ({"project": project.id, "name": "taken"}, 409, "name"),
        ({"project": project.id, "name": "a/b"}, 400, "name"),
        ({"project": project.id, "name": ""}, 400, "name"),
        ({"project": project.id, "name": "ok", "owner": "me"}, 400, "owner"),
        ({"project": project.id, "name": "ok", "tags": "x"}, 400, "tags"),
    ]
    for body, status, field in cases:
        answer = client.post(f"{BASE}/datasets", json=body, headers=headers)
        assert answer.status_code == status, (body, answer.text)
        assert field in answer.text
    dataset = new_dataset(client, headers, project.id, name="empty")
    version = draft(client, headers, dataset["id"])
    empty = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/commit",
        json={},
        headers=headers,
    )
    assert empty.status_code == 400 and "files" in empty.text
    no_file = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/files",
        data={"path": "a.txt"},
        headers=headers,
    )
    assert no_file.status_code == 400 and "file" in no_file.text
    parent = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions", json={"parent": 9}, headers=headers
    )
    assert parent.status_code == 400 and "parent" in parent.text


def test_version_created_event_after_commit(env, zt_platform):
    from zhongtai_data.api import VersionCreated

    client, identity = env
    seen: list[Any] = []
    sink = zt_platform.db.event_sink

    def record(event: Any) -> None:
        seen.append(event)
        if sink is not None:
            sink(event)

    zt_platform.db.event_sink = record
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    committed(client, headers, dataset["id"], {"a.txt": b"a"})
    created = [e for e in seen if isinstance(e, VersionCreated)]
    assert len(created) == 1 and created[0].number == 1 and created[0].project == project.id


def archive(kind: str, entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    import io
    import tarfile
    import zipfile

    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as tf:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for name, target in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tf.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_an_archive_expands_into_a_draft(env, kind):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    version = draft(client, headers, dataset["id"])
    body = archive(kind, {"a.csv": b"x\n1\n", "sub/b.txt": b"hello"})
    made = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/archive",
        data={"prefix": "raw"},
        files={"file": (f"data.{kind}", body, "application/octet-stream")},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    assert made.json()["files"] == 2
    files = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/files", headers=headers
    ).json()["items"]
    assert sorted(f["path"] for f in files) == ["raw/a.csv", "raw/sub/b.txt"]


@pytest.mark.parametrize(
    ("entries", "links"),
    [
        ({"ok.txt": b"1", "../../evil": b"x"}, None),
        ({"ok.txt": b"1", "/etc/cron.d/x": b"x"}, None),
        ({"ok.txt": b"1", "link/passwd": b"x"}, {"link": "/etc"}),
    ],
)
def test_a_hostile_archive_is_rejected_whole(env, zt_platform, entries, links):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    version = draft(client, headers, dataset["id"])
    answer = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/archive",
        files={"file": ("bad.tar", archive("tar", entries, links), "application/x-tar")},
        headers=headers,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] == "file"
    assert list(zt_platform.storage.list("data/")) == []
    got = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}", headers=headers
    ).json()
    assert got["file_count"] == 0


def test_a_zip_bomb_is_rejected_before_anything_is_stored(env, zt_platform):
    import io
    import zipfile

    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    version = draft(client, headers, dataset["id"])
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("zeros.bin", "w", force_zip64=True) as entry,
    ):
        block = b"\0" * (1024 * 1024)
        for _ in range(300):  # 300 MB of zeros, about 300 KB compressed
            entry.write(block)
    answer = client.post(
        f"{BASE}/datasets/{dataset['id']}/versions/{version['id']}/archive",
        files={"file": ("bomb.zip", buffer.getvalue(), "application/zip")},
        headers=headers,
    )
    assert answer.status_code == 400 and "zip bomb" in answer.text
    assert list(zt_platform.storage.list("data/")) == []


def test_diff_between_versions(env):
    client, identity = env
    user, project = identity.project_with("developer")
    headers = identity.headers(user)
    dataset = new_dataset(client, headers, project.id)
    committed(
        client, headers, dataset["id"], {"keep.txt": b"same", "edit.txt": b"v1", "gone.txt": b"bye"}
    )
    second = draft(client, headers, dataset["id"], parent=1)
    base = f"{BASE}/datasets/{dataset['id']}/versions/{second['id']}"
    assert upload(client, headers, dataset["id"], second["id"], "edit.txt", b"v2!").is_success
    assert upload(client, headers, dataset["id"], second["id"], "new.txt", b"hi").is_success
    assert client.delete(f"{base}/files/gone.txt", headers=headers).status_code == 204
    client.post(f"{base}/commit", json={}, headers=headers)
    diff = client.get(
        f"{BASE}/datasets/{dataset['id']}/versions/2/diff?against=1", headers=headers
    ).json()
    assert [f["path"] for f in diff["added"]] == ["new.txt"]
    assert [f["path"] for f in diff["removed"]] == ["gone.txt"]
    assert diff["changed"] == [{"path": "edit.txt", "size": [2, 3]}]
    bad = client.get(f"{BASE}/datasets/{dataset['id']}/versions/2/diff?against=9", headers=headers)
    assert bad.status_code == 400 and "against" in bad.text


def test_every_string_of_the_data_pages_has_a_chinese_translation():
    from importlib import resources
    from pathlib import Path

    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    root = Path(str(resources.files("zhongtai_data")))
    found = extract_from_dir(
        str(root),
        [("templates/**.html", "jinja2")],
        {"templates/**.html": {"extensions": "jinja2.ext.i18n"}},
        keywords={"_": None, "gettext": None},
    )
    strings = {message for _f, _l, message, _c, _x in found}
    with (root / "locale" / "zh" / "LC_MESSAGES" / "data.po").open("rb") as fh:
        catalog = {m.id: m.string for m in read_po(fh) if m.id}
    core = Path(str(resources.files("zhongtai.ui"))) / "locale" / "zh" / "LC_MESSAGES"
    with (core / "zhongtai.po").open("rb") as fh:
        catalog.update({m.id: m.string for m in read_po(fh) if m.id and m.string})
    missing = sorted(s for s in strings if not catalog.get(s))
    assert not missing, missing

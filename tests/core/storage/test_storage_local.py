"""Behaviour specific to the ``local`` driver: atomic writes, confinement to the
root, streaming memory, sidecar metadata and the multipart temp area."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from zhongtai.storage import (
    MIN_PART_SIZE,
    InvalidKey,
    NotSupported,
    ObjectNotFound,
    StorageError,
    UploadNotFound,
)
from zhongtai.storage.local import STATE_DIR, LocalStore

MB = 1024 * 1024


def files_under(root: Path) -> list[str]:
    """Every file under ``root`` (the driver's state folder included), relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def object_files(root: Path) -> list[str]:
    return [f for f in files_under(root) if not f.startswith(STATE_DIR + "/")]


def temp_files(root: Path) -> list[str]:
    return [f for f in files_under(root) if f.startswith(f"{STATE_DIR}/tmp/")]


# ------------------------------------------------------------------ settings


def test_from_settings_defaults_to_home_objects(tmp_path: Path) -> None:
    settings: Any = SimpleNamespace(driver="local", root=None)
    store = LocalStore.from_settings(settings, tmp_path)
    assert store.root == (tmp_path / "objects").resolve()
    assert store.root.is_dir()


def test_from_settings_uses_root(tmp_path: Path) -> None:
    settings: Any = SimpleNamespace(driver="local", root=tmp_path / "elsewhere")
    store = LocalStore.from_settings(settings, tmp_path / "home")
    store.put("k", b"x")
    assert (tmp_path / "elsewhere" / "k").read_bytes() == b"x"


def test_root_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot use"):
        LocalStore(tmp_path / "file" / "objects")


def test_objects_are_plain_files(local_store: LocalStore) -> None:
    local_store.put("a/b/c.txt", b"hello")
    assert (local_store.root / "a" / "b" / "c.txt").read_bytes() == b"hello"


# ------------------------------------------------------------------ atomic writes


def failing_source(fail_after: int) -> Iterator[bytes]:
    for _ in range(fail_after):
        yield b"x" * 65536
    raise RuntimeError("connection lost")


def test_interrupted_write_leaves_no_partial_object_and_no_temp_file(
    local_store: LocalStore,
) -> None:
    with pytest.raises(RuntimeError, match="connection lost"):
        local_store.put("data/file.bin", failing_source(10))
    assert object_files(local_store.root) == []
    assert temp_files(local_store.root) == []
    assert not local_store.exists("data/file.bin")


def test_keyboard_interrupt_midway_also_cleans_up(local_store: LocalStore) -> None:
    def interrupted() -> Iterator[bytes]:
        yield b"x" * 1000
        raise KeyboardInterrupt

    local_store.put("k", b"before")
    with pytest.raises(KeyboardInterrupt):
        local_store.put("k", interrupted())
    assert local_store.read_bytes("k") == b"before"
    assert temp_files(local_store.root) == []


def test_writes_are_renamed_into_place(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    local_store.put("a/b", b"data")
    target = str(local_store.root / "a" / "b")
    src = next(source for source, dest in replaced if dest == target)
    assert Path(src).parent == local_store.root / STATE_DIR / "tmp"  # same filesystem


def test_stale_temp_files_are_swept_at_start(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    stale = store.root / STATE_DIR / "tmp" / ".tmp-stale"
    fresh = store.root / STATE_DIR / "tmp" / ".tmp-fresh"
    stale.write_bytes(b"left by a killed process")
    fresh.write_bytes(b"a write in progress elsewhere")
    os.utime(stale, (0, 0))
    LocalStore(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


# ------------------------------------------------------------------ confinement


def test_sibling_prefix_root_cannot_be_escaped(tmp_path: Path) -> None:
    # /data/p1 is a string prefix of /data/p12: only a resolved-path comparison
    # tells them apart.
    (tmp_path / "p12").mkdir()
    (tmp_path / "p12" / "secret").write_bytes(b"other tenant")
    store = LocalStore(tmp_path / "p1")
    (store.root / "link").symlink_to(tmp_path / "p12")
    with pytest.raises(InvalidKey, match="outside the store root"):
        store.read_bytes("link/secret")
    with pytest.raises(InvalidKey, match="outside the store root"):
        store.put("link/planted", b"x")
    with pytest.raises(InvalidKey):
        list(store.list("link/"))
    assert sorted(os.listdir(tmp_path / "p12")) == ["secret"]


def test_symlink_inside_root_to_a_file_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    store = LocalStore(tmp_path / "root")
    (store.root / "docs").mkdir()
    (store.root / "docs" / "leak").symlink_to(outside)
    for call in (
        lambda: store.read_bytes("docs/leak"),
        lambda: store.open("docs/leak", start=0, end=3),
        lambda: store.stat("docs/leak"),
        lambda: store.put("docs/leak", b"overwritten"),
        lambda: store.delete("docs/leak"),
        lambda: store.copy("docs/leak", "stolen"),
        lambda: store.create_multipart("docs/leak"),
    ):
        with pytest.raises(InvalidKey, match="outside the store root"):
            call()
    assert outside.read_bytes() == b"secret"
    assert not (store.root / "stolen").exists()
    assert [info.key for info in store.list()] == []  # symlinks are not listed


def test_symlinked_folder_inside_root_cannot_reach_state(local_store: LocalStore) -> None:
    (local_store.root / "meta").symlink_to(local_store.root / STATE_DIR)
    with pytest.raises(InvalidKey, match="own state"):
        local_store.put("meta/tmp/x", b"x")


def test_symlinked_root_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    store = LocalStore(tmp_path / "alias")
    store.put("k", b"x")
    assert store.read_bytes("k") == b"x"
    assert (tmp_path / "real" / "k").exists()


def test_state_folder_is_reserved_and_hidden(local_store: LocalStore) -> None:
    local_store.put("k", b"x", content_type="text/plain")
    with pytest.raises(InvalidKey, match="reserved"):
        local_store.put(f"{STATE_DIR}/meta/x", b"x")
    with pytest.raises(InvalidKey, match="reserved"):
        local_store.read_bytes(f"{STATE_DIR}/tmp/anything")
    assert [info.key for info in local_store.list()] == ["k"]
    assert [info.key for info in local_store.list(".z")] == []
    # A key that merely starts like the state folder is an ordinary key.
    local_store.put(STATE_DIR + "-not", b"y")
    assert [info.key for info in local_store.list()] == [STATE_DIR + "-not", "k"]


def test_files_put_there_by_hand_with_invalid_names_are_not_listed(
    local_store: LocalStore,
) -> None:
    (local_store.root / "bad\\name").write_bytes(b"x")
    (local_store.root / "good").write_bytes(b"y")
    assert [info.key for info in local_store.list()] == ["good"]


# ------------------------------------------------------------------ streaming


def test_put_of_50mb_generator_streams(local_store: LocalStore) -> None:
    chunk = b"z" * 65536
    total = 50 * MB

    def source() -> Iterator[bytes]:
        for _ in range(total // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        info = local_store.put("big", source())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == total
    assert peak < 10 * MB, f"put held {peak / MB:.1f} MB"
    digest = hashlib.md5()
    for _ in range(total // len(chunk)):
        digest.update(chunk)
    assert info.etag == digest.hexdigest()


def test_put_of_50mb_file_and_read_back_stream(local_store: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    with source.open("wb") as fh:
        for i in range(50):
            fh.write(bytes([i]) * MB)
    tracemalloc.start()
    try:
        with source.open("rb") as fh:
            local_store.put("big", fh)
        size = 0
        for piece in local_store.open("big"):
            size += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 50 * MB
    assert peak < 10 * MB, f"put/open held {peak / MB:.1f} MB"


# ------------------------------------------------------------------ metadata


def test_metadata_is_dropped_when_the_file_changes_behind_the_store(
    local_store: LocalStore,
) -> None:
    local_store.put("k", b"original", content_type="text/plain")
    path = local_store.root / "k"
    path.write_bytes(b"edited by hand")
    info = local_store.stat("k")
    assert info.size == len(b"edited by hand")
    assert info.etag is None
    assert info.content_type is None


def test_delete_removes_metadata_and_empty_folders(local_store: LocalStore) -> None:
    local_store.put("a/b/c/d", b"x", content_type="text/plain")
    local_store.put("a/keep", b"y")
    local_store.delete("a/b/c/d")
    assert object_files(local_store.root) == ["a/keep"]
    assert not (local_store.root / "a" / "b").exists()
    meta = [f for f in files_under(local_store.root) if f.startswith(f"{STATE_DIR}/meta/")]
    assert len(meta) == 1  # only a/keep's


def test_key_that_is_both_object_and_folder_is_refused(local_store: LocalStore) -> None:
    local_store.put("a", b"file")
    with pytest.raises(StorageError, match="existing object"):
        local_store.put("a/b", b"x")
    local_store.put("dir/x", b"x")
    with pytest.raises(StorageError, match="folder"):
        local_store.put("dir", b"x")
    assert local_store.read_bytes("a") == b"file"
    assert temp_files(local_store.root) == []


# ------------------------------------------------------------------ presign, ping


def test_presigned_urls_are_not_supported(local_store: LocalStore) -> None:
    local_store.put("k", b"x")
    with pytest.raises(NotSupported):
        local_store.presign_get("k")
    with pytest.raises(NotSupported):
        local_store.presign_get("k", filename="k.txt")
    with pytest.raises(NotSupported):
        local_store.presign_put("k")
    upload = local_store.create_multipart("k")
    with pytest.raises(NotSupported):
        local_store.presign_part("k", upload, 1)


def test_ping_fails_when_root_is_gone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.ping()
    for path in sorted((tmp_path / "objects").rglob("*"), reverse=True):
        path.rmdir()
    (tmp_path / "objects").rmdir()
    with pytest.raises(StorageError, match="not a folder"):
        store.ping()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_ping_fails_when_root_is_read_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.root.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            store.ping()
    finally:
        store.root.chmod(0o700)


def test_ping_fails_when_root_is_read_only_patched(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(StorageError, match="not writable"):
        local_store.ping()


# ------------------------------------------------------------------ multipart


def test_multipart_parts_live_in_the_state_area_until_complete(local_store: LocalStore) -> None:
    upload = local_store.create_multipart("out/file")
    etag1 = local_store.upload_part("out/file", upload, 1, io.BytesIO(b"a" * MIN_PART_SIZE))
    etag2 = local_store.upload_part("out/file", upload, 2, iter([b"b", b"c"]))
    assert object_files(local_store.root) == []
    parts = files_under(local_store.root / STATE_DIR / "uploads" / upload)
    assert parts == ["part-00001-" + etag1, "part-00002-" + etag2, "upload.json"]
    local_store.complete_multipart("out/file", upload, [(1, etag1), (2, etag2)])
    assert object_files(local_store.root) == ["out/file"]
    assert not (local_store.root / STATE_DIR / "uploads" / upload).exists()
    assert temp_files(local_store.root) == []


def test_failed_part_upload_leaves_no_temp_file(local_store: LocalStore) -> None:
    upload = local_store.create_multipart("k")
    with pytest.raises(RuntimeError):
        local_store.upload_part("k", upload, 1, failing_source(3))
    assert local_store.list_parts("k", upload) == []
    assert files_under(local_store.root / STATE_DIR / "uploads" / upload) == ["upload.json"]


@pytest.mark.parametrize("upload_id", ["../../..", "../uploads", "", "ABC", "0" * 31, "a/b"])
def test_upload_ids_cannot_point_elsewhere(local_store: LocalStore, upload_id: str) -> None:
    with pytest.raises(UploadNotFound):
        local_store.list_parts("k", upload_id)
    with pytest.raises(UploadNotFound):
        local_store.upload_part("k", upload_id, 1, b"x")
    local_store.abort_multipart("k", upload_id)  # no-op, deletes nothing
    assert (local_store.root / STATE_DIR / "uploads").is_dir()


def test_upload_is_bound_to_its_key(local_store: LocalStore) -> None:
    upload = local_store.create_multipart("k")
    etag = local_store.upload_part("k", upload, 1, b"x")
    with pytest.raises(UploadNotFound):
        local_store.complete_multipart("other", upload, [(1, etag)])
    with pytest.raises(UploadNotFound):
        local_store.upload_part("other", upload, 2, b"x")
    local_store.abort_multipart("other", upload)  # not this key's upload: untouched
    assert local_store.list_parts("k", upload) == [(1, 1, etag)]
    assert not local_store.exists("other")


def test_etag_with_path_characters_is_refused(local_store: LocalStore) -> None:
    upload = local_store.create_multipart("k")
    local_store.upload_part("k", upload, 1, b"x")
    from zhongtai.storage import InvalidUpload

    with pytest.raises(InvalidUpload):
        local_store.complete_multipart("k", upload, [(1, "../../upload.json")])
    assert not local_store.exists("k")


def test_open_on_missing_parent_is_not_found(local_store: LocalStore) -> None:
    local_store.put("file", b"x")
    with pytest.raises(ObjectNotFound):
        local_store.stat("file/child")
    with pytest.raises(ObjectNotFound):
        local_store.open("file/child")
    local_store.delete("file/child")


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP])
def test_multipart_complete_copies_through_python_where_the_kernel_will_not(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """Completing concatenates the parts with copy_file_range; a filesystem or kernel
    without it gets the same object by plain reads and writes, and is asked once, not
    again for every block of every part."""
    first, second = os.urandom(MIN_PART_SIZE), os.urandom(3 * MB + 7)
    upload = local_store.create_multipart("joined")
    parts = [
        (1, local_store.upload_part("joined", upload, 1, first)),
        (2, local_store.upload_part("joined", upload, 2, second)),
    ]
    asked = []

    def refuse(*args: Any) -> int:
        asked.append(args)
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    info = local_store.complete_multipart("joined", upload, parts)
    assert info.size == len(first) + len(second)
    assert local_store.read_bytes("joined") == first + second
    assert len(asked) == 1


def test_multipart_complete_failing_midway_leaves_no_object_and_the_upload_open(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = os.urandom(MIN_PART_SIZE), b"tail"
    upload = local_store.create_multipart("joined")
    parts = [
        (1, local_store.upload_part("joined", upload, 1, first)),
        (2, local_store.upload_part("joined", upload, 2, second)),
    ]
    real, calls = os.copy_file_range, []

    def full_disk(source: int, target: int, count: int) -> int:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target, count)

    monkeypatch.setattr(os, "copy_file_range", full_disk)
    with pytest.raises(StorageError, match="No space left"):
        local_store.complete_multipart("joined", upload, parts)
    assert not local_store.exists("joined")
    assert [n for n, _size, _etag in local_store.list_parts("joined", upload)] == [1, 2]
    assert temp_files(local_store.root) == []
    monkeypatch.setattr(os, "copy_file_range", real)
    local_store.complete_multipart("joined", upload, parts)
    assert local_store.read_bytes("joined") == first + second

"""Behaviour every storage driver must share; each test runs on ``local`` and ``s3``."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from zhongtai.storage import (
    DEFAULT_CONTENT_TYPE,
    MIN_PART_SIZE,
    InvalidUpload,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    UploadNotFound,
)

DATA = bytes(range(256)) * 4  # 1024 distinct-ish bytes


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def no_such_upload(store: ObjectStore) -> type[StorageError]:
    """The error expected when sending or completing parts of an unknown upload.

    Real S3 answers 404 NoSuchUpload, which the s3 driver turns into
    UploadNotFound; moto (what the s3 driver is tested against) instead fails with
    a 500, so only a StorageError can be expected there.
    """
    return UploadNotFound if store.name == "local" else StorageError


# ------------------------------------------------------------------ put, stat, read


def test_put_returns_info_matching_stat(store: ObjectStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = store.put("a/b.bin", DATA, content_type="application/x-test")
    assert info.key == "a/b.bin"
    assert info.size == len(DATA)
    assert info.etag == md5(DATA)  # single-part etag is the MD5 on both drivers
    assert info.content_type == "application/x-test"
    assert info.last_modified.tzinfo is not None
    assert info.last_modified.utcoffset() == timedelta(0)
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(seconds=5)
    assert store.stat("a/b.bin") == info
    assert store.read_bytes("a/b.bin") == DATA


def test_default_content_type(store: ObjectStore) -> None:
    assert store.put("k", b"x").content_type == DEFAULT_CONTENT_TYPE
    assert store.stat("k").content_type == DEFAULT_CONTENT_TYPE


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda: DATA, id="bytes"),
        pytest.param(lambda: bytearray(DATA), id="bytearray"),
        pytest.param(lambda: io.BytesIO(DATA), id="fileobj"),
        pytest.param(lambda: iter([DATA[:100], b"", DATA[100:]]), id="iterator"),
        pytest.param(lambda: [DATA[:1], DATA[1:]], id="list"),
    ],
)
def test_put_accepts_bytes_files_and_iterables(store: ObjectStore, source: object) -> None:
    store.put("k", source())  # type: ignore[operator]
    assert store.read_bytes("k") == DATA


def test_put_refuses_text(store: ObjectStore) -> None:
    with pytest.raises(TypeError):
        store.put("k", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.put("k", io.StringIO("text"))  # type: ignore[arg-type]
    assert not store.exists("k")


def test_put_refuses_header_breaking_content_type(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.put("k", b"x", content_type="text/plain\r\nX-Evil: 1")
    assert not store.exists("k")


def test_empty_object(store: ObjectStore) -> None:
    info = store.put("empty", b"")
    assert info.size == 0
    assert info.etag == md5(b"")
    assert store.read_bytes("empty") == b""
    assert b"".join(store.open("empty", start=0, end=10)) == b""


def test_overwrite_replaces_content_and_type(store: ObjectStore) -> None:
    store.put("k", b"old", content_type="text/plain")
    info = store.put("k", b"newer", content_type="application/json")
    assert store.read_bytes("k") == b"newer"
    assert store.stat("k") == info
    assert info.content_type == "application/json"


def test_unicode_and_odd_keys_round_trip(store: ObjectStore) -> None:
    keys = ["données/日本語 file.txt", "a+b c.txt", "x%20y", "..dots/..x"]
    for key in keys:
        store.put(key, key.encode())
    for key in keys:
        assert store.read_bytes(key) == key.encode()
    assert [info.key for info in store.list()] == sorted(keys)


def test_failed_put_leaves_previous_object(store: ObjectStore) -> None:
    store.put("k", b"previous")

    def broken() -> Iterator[bytes]:
        yield b"partial data"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        store.put("k", broken())
    with pytest.raises(RuntimeError):
        store.put("new", broken())
    assert store.read_bytes("k") == b"previous"
    assert not store.exists("new")
    assert [info.key for info in store.list()] == ["k"]


# ------------------------------------------------------------------ missing objects


def test_missing_object(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        store.stat("nope")
    assert caught.value.key == "nope"
    assert str(caught.value) == "object not found: 'nope'"
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, StorageError)
    assert not store.exists("nope")
    with pytest.raises(ObjectNotFound):
        store.read_bytes("nope")


def test_open_missing_raises_at_call_not_at_iteration(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.open("nope")
    with pytest.raises(ObjectNotFound):
        store.open("nope", start=5, end=2)  # even an empty slice


def test_a_prefix_is_not_an_object(store: ObjectStore) -> None:
    store.put("dir/file", b"x")
    assert not store.exists("dir")
    with pytest.raises(ObjectNotFound):
        store.open("dir")


# ------------------------------------------------------------------ ranged reads


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, None),
        (0, None),
        (None, 10),
        (0, 1),
        (0, 10),
        (10, 20),
        (10, None),
        (1000, 2000),  # end past the object is clipped
        (1023, None),
        (1024, None),  # start at the end: empty
        (2000, None),  # start past the end: empty
        (2000, 3000),
        (5, 5),  # empty slice
        (7, 3),  # end before start: empty, as in Python
        (0, len(DATA)),
    ],
)
def test_ranged_reads_follow_slice_semantics(
    store: ObjectStore, start: int | None, end: int | None
) -> None:
    store.put("k", DATA)
    assert b"".join(store.open("k", start=start, end=end)) == DATA[start:end]


def test_chunk_size_bounds_chunks(store: ObjectStore) -> None:
    store.put("k", DATA)
    chunks = list(store.open("k", start=3, end=1000, chunk_size=100))
    assert b"".join(chunks) == DATA[3:1000]
    assert all(len(chunk) <= 100 for chunk in chunks)


def test_bad_range_arguments(store: ObjectStore) -> None:
    store.put("k", DATA)
    with pytest.raises(ValueError):
        store.open("k", start=-1)
    with pytest.raises(ValueError):
        store.open("k", end=-5)
    with pytest.raises(ValueError):
        store.open("k", chunk_size=0)


def test_stream_can_be_closed_early(store: ObjectStore) -> None:
    store.put("k", DATA)
    with store.open("k", chunk_size=10) as stream:
        assert next(stream) == DATA[:10]
    assert list(stream) == []
    stream.close()  # closing twice is harmless


# ------------------------------------------------------------------ listing


LIST_KEYS = ["a-b", "a/b/d", "a/c", "ab", "b", "a/b/e/f", "abc/x"]


def keys(infos: Iterator[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


def test_list_is_sorted_by_full_key(store: ObjectStore) -> None:
    for key in LIST_KEYS:
        store.put(key, key.encode())
    # "-" < "/" < "b": a per-folder walk would get this wrong.
    assert keys(store.list()) == sorted(LIST_KEYS)
    assert keys(store.list()) == ["a-b", "a/b/d", "a/b/e/f", "a/c", "ab", "abc/x", "b"]


def test_list_prefix_is_a_string_prefix(store: ObjectStore) -> None:
    for key in LIST_KEYS:
        store.put(key, key.encode())
    assert keys(store.list("a/")) == ["a/b/d", "a/b/e/f", "a/c"]
    assert keys(store.list("a/b")) == ["a/b/d", "a/b/e/f"]
    assert keys(store.list("ab")) == ["ab", "abc/x"]
    assert keys(store.list("a")) == ["a-b", "a/b/d", "a/b/e/f", "a/c", "ab", "abc/x"]
    assert keys(store.list("zzz")) == []
    assert keys(store.list("missing/folder/")) == []


def test_list_non_recursive_gives_direct_children_only(store: ObjectStore) -> None:
    for key in LIST_KEYS:
        store.put(key, key.encode())
    assert keys(store.list(recursive=False)) == ["a-b", "ab", "b"]
    assert keys(store.list("a/", recursive=False)) == ["a/c"]
    assert keys(store.list("a/b/", recursive=False)) == ["a/b/d"]
    assert keys(store.list("a", recursive=False)) == ["a-b", "ab"]


def test_list_gives_sizes_and_etags(store: ObjectStore) -> None:
    store.put("x/one", b"1")
    store.put("x/two", b"22")
    infos = list(store.list("x/"))
    assert [(i.key, i.size, i.etag, i.content_type) for i in infos] == [
        ("x/one", 1, md5(b"1"), None),
        ("x/two", 2, md5(b"22"), None),
    ]
    assert all(i.last_modified.utcoffset() == timedelta(0) for i in infos)


def test_list_is_lazy_and_empty_store_lists_nothing(store: ObjectStore) -> None:
    assert list(store.list()) == []
    iterator = store.list("p/")
    store.put("p/late", b"x")  # listing starts when iterated
    assert keys(iterator) == ["p/late"]


# ------------------------------------------------------------------ delete


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("k", b"x")
    store.delete("k")
    assert not store.exists("k")
    store.delete("k")
    store.delete("never/existed")
    assert list(store.list()) == []


def test_delete_prefix(store: ObjectStore) -> None:
    for key in LIST_KEYS:
        store.put(key, key.encode())
    assert store.delete_prefix("a/") == 3
    assert keys(store.list()) == ["a-b", "ab", "abc/x", "b"]
    assert store.delete_prefix("a/") == 0
    assert store.delete_prefix("ab") == 2
    assert keys(store.list()) == ["a-b", "b"]


# ------------------------------------------------------------------ copy


def test_copy_keeps_content_and_type(store: ObjectStore) -> None:
    store.put("src", DATA, content_type="text/csv")
    info = store.copy("src", "dst/copy")
    assert info.key == "dst/copy"
    assert info.size == len(DATA)
    assert info.content_type == "text/csv"
    assert info.etag == store.stat("dst/copy").etag
    assert store.stat("dst/copy").content_type == "text/csv"
    assert store.read_bytes("dst/copy") == DATA
    assert store.read_bytes("src") == DATA


def test_copy_overwrites_and_copy_to_itself_is_a_no_op(store: ObjectStore) -> None:
    store.put("src", b"new")
    store.put("dst", b"old")
    store.copy("src", "dst")
    assert store.read_bytes("dst") == b"new"
    assert store.copy("src", "src") == store.stat("src")
    assert store.read_bytes("src") == b"new"


def test_copy_missing_source(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.copy("nope", "dst")
    assert not store.exists("dst")


# ------------------------------------------------------------------ ping


def test_ping_succeeds(store: ObjectStore) -> None:
    store.ping()


# ------------------------------------------------------------------ multipart


PART1 = b"\x01" * MIN_PART_SIZE
PART2 = b"\x02" * 1000


def test_multipart_complete(store: ObjectStore) -> None:
    upload = store.create_multipart("big/file", content_type="application/x-big")
    assert isinstance(upload, str)
    assert store.list_parts("big/file", upload) == []
    assert not store.exists("big/file")
    etag2 = store.upload_part("big/file", upload, 2, PART2)  # any order
    etag1 = store.upload_part("big/file", upload, 1, io.BytesIO(PART1))
    assert etag1 == md5(PART1)
    assert etag2 == md5(PART2)
    assert store.list_parts("big/file", upload) == [
        (1, len(PART1), etag1),
        (2, len(PART2), etag2),
    ]
    assert not store.exists("big/file")  # nothing visible before complete
    info = store.complete_multipart("big/file", upload, [(1, etag1), (2, f'"{etag2}"')])
    assert info.size == len(PART1) + len(PART2)
    # S3's multipart etag on both drivers: the MD5 of the parts' MD5s, and the count.
    both = hashlib.md5(bytes.fromhex(etag1) + bytes.fromhex(etag2)).hexdigest()
    assert info.etag == f"{both}-2"
    assert info.content_type == "application/x-big"
    assert store.stat("big/file") == info
    assert store.read_bytes("big/file") == PART1 + PART2
    assert b"".join(store.open("big/file", start=len(PART1) - 2, end=len(PART1) + 2)) == (
        b"\x01\x01\x02\x02"
    )
    assert keys(store.list()) == ["big/file"]
    with pytest.raises(UploadNotFound):
        store.list_parts("big/file", upload)  # the upload is gone once complete


def test_multipart_replacing_a_part(store: ObjectStore) -> None:
    upload = store.create_multipart("k")
    store.upload_part("k", upload, 1, b"first try")
    etag = store.upload_part("k", upload, 1, b"second")
    assert store.list_parts("k", upload) == [(1, 6, etag)]
    store.complete_multipart("k", upload, [(1, etag)])
    assert store.read_bytes("k") == b"second"


def test_multipart_abort_leaves_nothing(store: ObjectStore) -> None:
    upload = store.create_multipart("k")
    store.upload_part("k", upload, 1, PART2)
    store.abort_multipart("k", upload)
    assert not store.exists("k")
    assert list(store.list()) == []
    with pytest.raises(UploadNotFound):
        store.list_parts("k", upload)
    with pytest.raises(no_such_upload(store)):
        store.upload_part("k", upload, 2, b"late")
    store.abort_multipart("k", upload)  # idempotent


def test_multipart_complete_with_wrong_etag(store: ObjectStore) -> None:
    upload = store.create_multipart("k")
    etag = store.upload_part("k", upload, 1, PART2)
    with pytest.raises(InvalidUpload):
        store.complete_multipart("k", upload, [(1, md5(b"something else"))])
    assert not store.exists("k")
    # The upload is still open: it can be completed properly (or aborted).
    store.complete_multipart("k", upload, [(1, etag)])
    assert store.read_bytes("k") == PART2


def test_multipart_complete_with_missing_part(store: ObjectStore) -> None:
    upload = store.create_multipart("k")
    etag = store.upload_part("k", upload, 1, PART1)
    with pytest.raises(InvalidUpload):
        store.complete_multipart("k", upload, [(1, etag), (2, md5(PART2))])
    assert not store.exists("k")
    store.abort_multipart("k", upload)
    assert list(store.list()) == []


def test_multipart_small_part_that_is_not_last(store: ObjectStore) -> None:
    upload = store.create_multipart("k")
    etag1 = store.upload_part("k", upload, 1, PART2)
    etag2 = store.upload_part("k", upload, 2, PART2)
    with pytest.raises(InvalidUpload):
        store.complete_multipart("k", upload, [(1, etag1), (2, etag2)])
    assert not store.exists("k")
    store.abort_multipart("k", upload)


@pytest.mark.parametrize(
    "parts",
    [[], [(2, "x"), (1, "y")], [(1, "x"), (1, "x")], [(0, "x")], [(10_001, "x")]],
)
def test_multipart_bad_part_lists(store: ObjectStore, parts: list[tuple[int, str]]) -> None:
    upload = store.create_multipart("k")
    with pytest.raises(InvalidUpload):
        store.complete_multipart("k", upload, parts)
    assert not store.exists("k")
    store.abort_multipart("k", upload)


@pytest.mark.parametrize("number", [0, -1, 10_001])
def test_multipart_bad_part_number(store: ObjectStore, number: int) -> None:
    upload = store.create_multipart("k")
    with pytest.raises(InvalidUpload):
        store.upload_part("k", upload, number, b"x")
    store.abort_multipart("k", upload)


def test_multipart_unknown_upload(store: ObjectStore) -> None:
    bogus = "0" * 32
    with pytest.raises(UploadNotFound) as caught:
        store.list_parts("k", bogus)
    assert isinstance(caught.value, ObjectNotFound)
    assert caught.value.upload_id == bogus
    with pytest.raises(no_such_upload(store)):
        store.upload_part("k", bogus, 1, b"x")
    with pytest.raises(no_such_upload(store)):
        store.complete_multipart("k", bogus, [(1, md5(b"x"))])
    store.abort_multipart("k", bogus)  # not an error
    assert not store.exists("k")


def test_local_path_is_a_readable_file_or_none(store: ObjectStore) -> None:
    """Readers that need a file (DuckDB) get the local driver's own file; other
    drivers say None, and every driver refuses a missing object."""
    store.put("tables/a.csv", b"x,y\n1,2\n")
    path = store.local_path("tables/a.csv")
    if store.name == "local":
        assert path is not None and path.read_bytes() == b"x,y\n1,2\n"
    else:
        assert path is None
    with pytest.raises(ObjectNotFound):
        store.local_path("tables/missing.csv")


def test_move_renames_an_object(store: ObjectStore) -> None:
    store.put("from/a.bin", b"payload", content_type="text/plain")
    info = store.move("from/a.bin", "to/b.bin")
    assert info.key == "to/b.bin" and info.size == 7
    assert store.read_bytes("to/b.bin") == b"payload"
    assert store.stat("to/b.bin").content_type == "text/plain"
    assert not store.exists("from/a.bin")
    with pytest.raises(ObjectNotFound):
        store.move("from/a.bin", "to/c.bin")

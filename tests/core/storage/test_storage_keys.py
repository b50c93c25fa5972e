"""Key and prefix validation, and that every driver refuses bad keys before writing."""

from __future__ import annotations

import pytest

from zhongtai.storage import InvalidKey, ObjectStore, StorageError, validate_key, validate_prefix

GOOD_KEYS = [
    "a",
    "a/b/c.txt",
    "datasets/42/v1/train.csv",
    "..foo",  # a segment that merely starts with dots
    "a/...",
    "a/b..c",
    ".hidden/file",
    "with space/and+plus",
    "données/日本語.txt",
    "percent%20space",
    "x" * 1024,
    "é" * 512,  # 1024 bytes of UTF-8
]

BAD_KEYS = [
    ("", "empty"),
    ("../x", ".."),
    ("a/../b", ".."),
    ("a/..", ".."),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("a\x00b", "NUL"),
    ("a\\..\\b", "backslash"),
    ("a\\b", "backslash"),
    ("%2e%2e/x", "percent-encoded"),
    ("%2E%2E/x", "percent-encoded"),
    ("a%2fb", "percent-encoded"),
    ("a%2Fb", "percent-encoded"),
    ("a%5cb", "percent-encoded"),
    ("a%5C..", "percent-encoded"),
    ("%252e%252e/x", "percent-encoded"),  # double-encoded
    ("%c0%ae%c0%ae/x", "percent-encoded"),  # overlong UTF-8 dot
    ("a\nb", "control"),
    ("a\rb", "control"),
    ("a\tb", "control"),
    ("a\x7fb", "control"),
    ("a\x85b", "control"),  # C1 control
    ("x" * 1025, "longer than 1024"),
    ("é" * 513, "longer than 1024"),
    ("\ud800", "Unicode"),  # lone surrogate
    ("\uff0e\uff0e/x", "'..'"),  # fullwidth dots normalise to ".."
    ("a\uff0fb/\uff0e\uff0e", "'..'"),  # fullwidth slash and dots
    ("a\uff3cb", "backslash"),  # fullwidth backslash
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_bad_keys_are_refused_with_a_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        validate_key(key)
    assert caught.value.key == key
    assert reason in str(caught.value)


def test_invalid_key_is_a_storage_error_and_a_value_error() -> None:
    with pytest.raises(StorageError):
        validate_key("../x")
    with pytest.raises(ValueError):
        validate_key("../x")


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(InvalidKey, match="must be a str"):
        validate_key(b"abc")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "a/b/", "a/.", "a/..", "a/.x", "..x"])
def test_good_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["/", "/a", "../", "a/../", "a//", "./", "a\\", "%2e%2e/", "a\x00", "a/\n"]
)
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        validate_prefix(prefix)


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_drivers_refuse_bad_keys_and_write_nothing(
    store: ObjectStore, key: str, reason: str
) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"data")
    with pytest.raises(InvalidKey):
        store.create_multipart(key)
    with pytest.raises(InvalidKey):
        store.open(key)
    with pytest.raises(InvalidKey):
        store.stat(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    with pytest.raises(InvalidKey):
        store.copy("nothing-here", key)
    assert list(store.list()) == []


def test_delete_prefix_refuses_the_whole_store(store: ObjectStore) -> None:
    store.put("keep", b"1")
    with pytest.raises(InvalidKey, match="every object"):
        store.delete_prefix("")
    with pytest.raises(InvalidKey):
        store.delete_prefix("../")
    assert store.exists("keep")

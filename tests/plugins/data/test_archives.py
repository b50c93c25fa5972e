"""Tests for zhongtai_data.archives: safe listing and streaming of untrusted archives."""

from __future__ import annotations

import contextlib
import gzip
import io
import random
import stat
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from zhongtai_data.archives import (
    ArchiveRejected,
    Limits,
    Member,
    _Budget,
    _MemberStream,
    detect,
    extract,
    members,
    safe_path,
)

# An entry spec: (type, name, payload). Types: file, dir, symlink, hardlink, fifo, chr.
Spec = tuple[str, str, bytes | str]

EXT = {"zip": "zip", "tar": "tar", "tar.gz": "tar.gz"}
ALL = ["zip", "tar", "tar.gz"]
TARS = ["tar", "tar.gz"]


class Zeros(io.RawIOBase):
    """A reader of ``size`` zero bytes that never holds them all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def make_zip(path: Path, entries: Sequence[Spec]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for kind, name, payload in entries:
            if kind == "dir":
                zf.mkdir(name)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            mode = {"file": stat.S_IFREG, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO}[kind]
            info.external_attr = (mode | 0o644) << 16
            data = payload.encode() if isinstance(payload, str) else payload
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # duplicate names are a test case
                zf.writestr(info, data)
    return path


def make_tar(path: Path, entries: Sequence[Spec], gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = payload.encode() if isinstance(payload, str) else payload
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            tf.addfile(info, io.BytesIO(data) if data else None)
    return path


def build(tmp_path: Path, kind: str, entries: Sequence[Spec]) -> Path:
    path = tmp_path / f"upload.{EXT[kind]}"
    if kind == "zip":
        return make_zip(path, entries)
    return make_tar(path, entries, gz=kind == "tar.gz")


class Recorder:
    """A write() callback that keeps what it was given, reading in small pieces."""

    def __init__(self, piece: int = 1000) -> None:
        self.piece = piece
        self.calls: list[Member] = []
        self.data: dict[str, bytearray] = {}

    def __call__(self, member: Member, stream: BinaryIO) -> None:
        self.calls.append(member)
        received = self.data[member.path] = bytearray()
        while chunk := stream.read(self.piece):
            received += chunk


def assert_rejected(path: Path, kind: str, limits: Limits = Limits()) -> ArchiveRejected:
    with pytest.raises(ArchiveRejected) as listing:
        members(path, kind, limits)
    write = Recorder()
    with pytest.raises(ArchiveRejected) as extracting:
        extract(path, kind, write, limits)
    assert write.calls == []
    assert str(listing.value) == str(extracting.value)
    assert "\n" not in str(extracting.value)
    return extracting.value


def patch_first(data: bytes, signature: bytes, offset: int, fmt: str, value: int) -> bytes:
    at = data.index(signature) + offset
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


# ------------------------------------------------------------------- good archives

PAYLOAD = bytes(range(256)) * 1200  # 300 KiB: several stream chunks


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_good_archive_lists_and_streams_exact_bytes(tmp_path: Path, kind: str) -> None:
    prefix = "" if kind == "zip" else "./"
    entries: list[Spec] = [
        ("dir", f"{prefix}data/", b""),
        ("file", f"{prefix}data/a.csv", b"x,y\n1,2\n"),
        ("file", f"{prefix}b.bin", PAYLOAD),
        ("file", f"{prefix}empty.txt", b""),
        ("file", "数据/表.csv", "列\n1\n"),
    ]
    if kind != "zip":
        entries.insert(0, ("dir", ".", b""))
    path = build(tmp_path, kind, entries)
    expected = [
        Member("data/a.csv", 8),
        Member("b.bin", len(PAYLOAD)),
        Member("empty.txt", 0),
        Member("数据/表.csv", len("列\n1\n".encode())),
    ]
    assert members(path, kind) == expected

    write = Recorder()
    assert extract(path, kind, write) == expected
    assert write.calls == expected
    assert write.data == {
        "data/a.csv": b"x,y\n1,2\n",
        "b.bin": PAYLOAD,
        "empty.txt": b"",
        "数据/表.csv": "列\n1\n".encode(),
    }


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_write_that_reads_nothing_still_succeeds(tmp_path: Path, kind: str) -> None:
    path = build(tmp_path, kind, [("file", "a", PAYLOAD), ("file", "b", b"bb")])
    seen: list[str] = []
    result = extract(path, kind, lambda member, stream: seen.append(member.path))
    assert seen == ["a", "b"]
    assert [m.path for m in result] == ["a", "b"]


@pytest.mark.parametrize("kind", TARS)
def test_large_reads_pass_through_the_chunked_tar_reader(tmp_path: Path, kind: str) -> None:
    # The tar reader refuses single reads over 1 MiB (hostile headers); a caller
    # asking for 5 MiB at once must still get its data, fetched in pieces.
    payload = random.Random(1).randbytes(3_500_000)  # incompressible, so not a "bomb"
    path = build(tmp_path, kind, [("file", "big.bin", payload)])
    got: list[bytes] = []

    def greedy(member: Member, stream: BinaryIO) -> None:
        while chunk := stream.read(5 << 20):
            got.append(chunk)

    extract(path, kind, greedy)
    assert b"".join(got) == payload


def test_unknown_kind_is_a_plain_value_error(tmp_path: Path) -> None:
    path = build(tmp_path, "zip", [("file", "a", b"a")])
    with pytest.raises(ValueError, match="unknown archive kind") as info:
        members(path, "rar")
    assert not isinstance(info.value, ArchiveRejected)


# --------------------------------------------------------------- rejected entries

REJECTED: list[tuple[str, list[str], list[Spec], str]] = [
    ("traversal", ALL, [("file", "ok.txt", b"1"), ("file", "../../evil", b"x")], "'..'"),
    ("traversal-inside", ALL, [("file", "a/../../b", b"x")], "'..'"),
    ("absolute", ALL, [("file", "/etc/cron.d/x", b"* * * * * root sh")], "absolute"),
    (
        "symlink-then-file",
        ALL,
        [("symlink", "link", "/etc"), ("file", "link/passwd", b"root::0:0::/:/bin/sh")],
        "symbolic link",
    ),
    ("hardlink", TARS, [("hardlink", "passwd", "/etc/passwd")], "hard link"),
    ("backslash", ALL, [("file", "..\\..\\evil.txt", b"x")], "backslash"),
    ("percent-dotdot", ALL, [("file", "%2e%2e/x", b"x")], "percent-escape"),
    ("percent-slash", ALL, [("file", "%2E%2E%2fx", b"x")], "percent-escape"),
    ("fifo", ALL, [("fifo", "pipe", b"")], "FIFO"),
    ("device", TARS, [("chr", "null", b"")], "device"),
    ("duplicate", ALL, [("file", "a.csv", b"1"), ("file", "a.csv", b"2")], "more than once"),
    ("file-and-dir", TARS, [("file", "a", b"1"), ("dir", "a", b"")], "both a file"),
    ("file-is-parent", ALL, [("file", "a", b"1"), ("file", "a/b", b"2")], "parent 'a'"),
]


@pytest.mark.parametrize(
    ("kind", "entries", "reason"),
    [
        pytest.param(kind, entries, reason, id=f"{case}-{kind}")
        for case, kinds, entries, reason in REJECTED
        for kind in kinds
    ],
)
def test_unsafe_entry_rejects_whole_archive(
    tmp_path: Path, kind: str, entries: list[Spec], reason: str
) -> None:
    error = assert_rejected(build(tmp_path, kind, entries), kind)
    assert reason in str(error)


def test_nul_in_zip_name_is_rejected(tmp_path: Path) -> None:
    # zipfile cannot write a NUL and silently truncates one when reading, so patch
    # the bytes and make sure the original name is the one checked.
    path = make_zip(tmp_path / "nul.zip", [("file", "evil.shQ.txt", b"x")])
    path.write_bytes(path.read_bytes().replace(b"evil.shQ.txt", b"evil.sh\x00.txt"))
    error = assert_rejected(path, "zip")
    assert "NUL" in str(error) and "\\x00" in str(error)


@pytest.mark.parametrize("kind", TARS)
def test_nul_in_tar_name_is_rejected(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"nul.{kind}"
    with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
        info = tarfile.TarInfo("plain.txt")
        info.pax_headers = {"path": "evil.sh\x00.txt"}
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    assert "NUL" in str(assert_rejected(path, kind))


def test_newline_in_name_keeps_message_on_one_line(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "nl.tar", [("file", "a\nb", b"x")])
    error = assert_rejected(path, "tar")
    assert error.entry == "a\nb"
    assert "control character" in error.reason


def test_encrypted_zip_entry_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "enc.zip", [("file", "a.txt", b"secret")])
    flags_at = 8  # general purpose flags in the central directory header
    path.write_bytes(patch_first(path.read_bytes(), b"PK\x01\x02", flags_at, "<H", 0x1))
    assert "encrypted" in str(assert_rejected(path, "zip"))


def test_sparse_tar_entry_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "sparse.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("holes.bin")
        info.type = tarfile.GNUTYPE_SPARSE
        tf.addfile(info)
    assert "sparse" in str(assert_rejected(path, "tar"))


def test_garbage_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"not an archive at all" * 100)
    for kind in ALL:
        assert_rejected(path, kind)


# ---------------------------------------------------------------- size and bombs


def test_zip_bomb_rejected_by_ratio_before_any_write(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(200):
            f.write(chunk)
    assert path.stat().st_size < 1 << 20
    assert "expands more than 200x" in str(assert_rejected(path, "zip"))


def test_tar_gz_bomb_rejected_by_whole_archive_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20
        tf.addfile(info, io.BufferedReader(Zeros(info.size)))
    assert "expands more than 200x" in str(assert_rejected(path, "tar.gz"))


def test_small_repetitive_files_are_not_bombs(tmp_path: Path) -> None:
    # 500 KiB of zeros compresses ~1000x but stays under ratio_min_size.
    path = build(tmp_path, "zip", [("file", "zeros.bin", bytes(500 * 1024))])
    assert members(path, "zip") == [Member("zeros.bin", 500 * 1024)]


def test_tar_gz_total_declared_size_over_limit(tmp_path: Path) -> None:
    path = build(tmp_path, "tar.gz", [("file", "a", b"a" * 600), ("file", "b", b"b" * 600)])
    error = assert_rejected(path, "tar.gz", Limits(max_total_size=1000))
    assert error.entry == "b" and "more than 1000 bytes" in error.reason


@pytest.mark.parametrize("kind", ALL)
def test_entry_size_limit(tmp_path: Path, kind: str) -> None:
    path = build(tmp_path, kind, [("file", "big", b"x" * 101)])
    assert "101 bytes" in str(assert_rejected(path, kind, Limits(max_entry_size=100)))


@pytest.mark.parametrize("kind", ALL)
def test_entry_count_limit_counts_directories(tmp_path: Path, kind: str) -> None:
    entries: list[Spec] = [("dir", "d/", b""), ("file", "d/a", b"1"), ("file", "d/b", b"2")]
    path = build(tmp_path, kind, entries)
    assert "more than 2" in str(assert_rejected(path, kind, Limits(max_entries=2)))
    assert len(members(path, kind, Limits(max_entries=3))) == 2


def test_zip_entry_ratio_is_checked_per_entry(tmp_path: Path) -> None:
    # Incompressible padding keeps the whole archive near 1.5x, so only the
    # per-entry ratio of "z" (about 300x) can catch it.
    noise = random.Random(2).randbytes(20_000)
    path = build(tmp_path, "zip", [("file", "noise", noise), ("file", "z", bytes(10_000))])
    limits = Limits(max_ratio=10, ratio_min_size=0)
    error = assert_rejected(path, "zip", limits)
    assert error.entry == "z" and "the entry expands more than 10x" in error.reason


def test_huge_tar_extended_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pax.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("a.txt")
        info.pax_headers = {"comment": "z" * (2 << 20)}
        tf.addfile(info)
    assert "tar header" in str(assert_rejected(path, "tar.gz"))


def test_tar_gz_header_bomb_hits_stream_budget(tmp_path: Path) -> None:
    # No file data at all, yet each entry's pax header decompresses to ~900 KiB.
    path = tmp_path / "headers.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for number in range(40):
            info = tarfile.TarInfo(f"f{number}")
            info.pax_headers = {"comment": "z" * (900 << 10)}
            tf.addfile(info)
    assert "decompresses beyond the ratio limit" in str(assert_rejected(path, "tar.gz"))


def test_truncated_tar_gz_is_rejected_before_writing(tmp_path: Path) -> None:
    path = build(tmp_path, "tar.gz", [("file", "a", PAYLOAD), ("file", "b", PAYLOAD)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(path, "tar.gz")


# ----------------------------------------------------------------- lying headers


def lying_zip(tmp_path: Path, real: bytes, declared: int) -> Path:
    path = make_zip(tmp_path / "liar.zip", [("file", "liar.txt", real)])
    usize_at = 24  # uncompressed size in the central directory header
    path.write_bytes(patch_first(path.read_bytes(), b"PK\x01\x02", usize_at, "<I", declared))
    return path


def test_zip_producing_more_than_declared_is_cut_off_and_rejected(tmp_path: Path) -> None:
    path = lying_zip(tmp_path, b"0123456789" * 100, declared=10)
    assert members(path, "zip") == [Member("liar.txt", 10)]
    write = Recorder(piece=3)
    with pytest.raises(ArchiveRejected) as info:
        extract(path, "zip", write)
    assert write.calls == [Member("liar.txt", 10)]
    assert len(write.data.get("liar.txt", b"")) <= 10
    assert info.value.entry == "liar.txt"


def test_zip_producing_less_than_declared_is_rejected(tmp_path: Path) -> None:
    path = lying_zip(tmp_path, b"0123456789" * 100, declared=5000)
    write = Recorder(piece=100)
    with pytest.raises(ArchiveRejected, match="ended after 1000 of the declared 5000"):
        extract(path, "zip", write)
    assert len(write.data["liar.txt"]) == 1000


def test_rejection_survives_a_write_that_swallows_it(tmp_path: Path) -> None:
    path = lying_zip(tmp_path, b"0123456789" * 100, declared=10)

    def careless(member: Member, stream: BinaryIO) -> None:
        with contextlib.suppress(ArchiveRejected):
            stream.read()

    with pytest.raises(ArchiveRejected):
        extract(path, "zip", careless)


def test_write_errors_propagate_unchanged(tmp_path: Path) -> None:
    path = build(tmp_path, "tar", [("file", "a", b"abc")])

    def broken(member: Member, stream: BinaryIO) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        extract(path, "tar", broken)


def counted(source: bytes, size: int, limits: Limits = Limits()) -> io.BufferedReader:
    raw = _MemberStream(io.BytesIO(source), Member("m", size), _Budget(limits, 10**9))
    return io.BufferedReader(raw)


def test_counting_stream_never_passes_more_than_declared() -> None:
    stream = counted(b"x" * 20, 10)
    assert stream.read(10) == b"x" * 10
    with pytest.raises(ArchiveRejected, match="longer than the declared 10 bytes"):
        stream.read()


def test_counting_stream_exact_size_is_fine() -> None:
    assert counted(b"y" * 10, 10).read() == b"y" * 10


def test_counting_stream_short_source_is_rejected() -> None:
    with pytest.raises(ArchiveRejected, match="ended after 4 of the declared 10"):
        counted(b"z" * 4, 10).read()


def test_counting_stream_enforces_running_total() -> None:
    with pytest.raises(ArchiveRejected, match="produced more than 5 bytes"):
        counted(b"w" * 10, 10, Limits(max_total_size=5)).read()


# ----------------------------------------------------------------------- detect


def test_detect_by_content(tmp_path: Path) -> None:
    entries: list[Spec] = [("file", "a.csv", b"a,b\n" * 1000)]
    for kind in ALL:
        head = build(tmp_path, kind, entries).read_bytes()[:4096]
        assert detect("upload.bin", head) == kind
    assert detect("empty.zip", b"PK\x05\x06" + bytes(18)) == "zip"


def test_detect_plain_gzip_and_text_are_not_archives() -> None:
    assert detect("data.csv.gz", gzip.compress(b"a,b\n" * 1000)) is None
    assert detect("data.csv", b"a,b\n" * 1000) is None
    assert detect("data.tar", bytes(1024)) is None


def test_detect_short_gzip_head_falls_back_to_name() -> None:
    head = gzip.compress(b"x" * 10)[:12]
    assert detect("upload.tgz", head) == "tar.gz"
    assert detect("upload.TAR.GZ", head) == "tar.gz"
    assert detect("upload.gz", head) is None


# -------------------------------------------------------------------- safe_path

VALID = [
    "a.csv",
    "data/2024/a.csv",
    "数据/表.csv",
    ".hidden",
    "a..b",
    "100%25.csv",
    "100%2e.csv",
    "x" * 255,
    "/".join(["abc"] * 256)[:1023],
]


@pytest.mark.parametrize("path", VALID)
def test_safe_path_accepts_and_returns_unchanged(path: str) -> None:
    assert safe_path(path) == path


INVALID = [
    ("", "empty"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("a\x85b", "control character"),
    ("a\\b", "backslash"),
    ("..\\evil", "backslash"),
    ("/etc/passwd", "absolute"),
    ("C:/Windows/x", "Windows drive"),
    ("c:x", "Windows drive"),
    (".", "'.' or '..' segment"),
    ("..", "'.' or '..' segment"),
    ("...", "'.' or '..' segment"),
    ("../x", "'.' or '..' segment"),
    ("a/../b", "'.' or '..' segment"),
    ("a/./b", "'.' or '..' segment"),
    ("./a", "'.' or '..' segment"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("%2e%2e/x", "decodes to a '.' or '..' segment"),
    ("%2E%2E%2f", "decodes to '/'"),
    ("a%2fb", "decodes to '/'"),
    ("a%5Cb", "decodes to '/' or '\\'"),
    ("%2e", "decodes to a '.' or '..' segment"),
    ("%252e%252e/x", "decodes to a '.' or '..' segment"),
    ("a%00b", "decodes to a control character"),
    ("x" * 256, "longer than 255 bytes"),
    ("é" * 128, "longer than 255 bytes"),
    ("/".join(["abc"] * 300), "longer than 1024 bytes"),
    ("bad\udcffname", "not valid UTF-8"),
]


@pytest.mark.parametrize(("path", "reason"), INVALID)
def test_safe_path_rejects(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match="unsafe path") as info:
        safe_path(path)
    assert reason in str(info.value)


def test_limits_must_be_sane() -> None:
    with pytest.raises(ValueError):
        Limits(max_entries=-1)
    with pytest.raises(ValueError):
        Limits(max_ratio=0)

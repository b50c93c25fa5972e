"""Safe reading of uploaded archives (zip, tar, tar.gz) into dataset versions.

An uploaded archive is untrusted input. It can try to write outside the version
(``../../evil``, ``/etc/cron.d/x``, a symlink followed by a file "inside" it), hide
a huge amount of data behind a small file (a zip or gzip bomb), or carry headers
that lie about how much data an entry holds. This module never touches the file
system itself: it checks the whole archive first with :func:`members`, and only
then hands each regular file to a caller-supplied ``write`` callback as a stream
that is counted byte by byte, so a lie that only shows up while decompressing is
still caught. Memory stays bounded: entries are streamed in chunks, and tar
headers are read one at a time instead of being kept in a list.

Only the standard library is used (``zipfile``, ``tarfile``, ``gzip``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import unicodedata
import urllib.parse
import zipfile
import zlib
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "KINDS",
    "ArchiveKind",
    "ArchiveRejected",
    "Limits",
    "Member",
    "detect",
    "extract",
    "members",
    "safe_path",
]

ArchiveKind = Literal["zip", "tar", "tar.gz"]
KINDS: tuple[ArchiveKind, ...] = ("zip", "tar", "tar.gz")

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255

# Largest single read handed to a decompressor or asked of the tar reader. Entries
# are streamed in pieces of at most this size, and a tar extended header (pax or
# GNU long name) bigger than this is refused rather than loaded into memory.
_CHUNK = 1 << 20

_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_ZIP_ENCRYPTED = 0x0001
_ZIP_STRONG_ENCRYPTION = 0x0040

# What the standard library raises when archive *content* is corrupt or hostile.
# ArchiveRejected is a ValueError, so every handler below re-raises it first.
_CORRUPT: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    struct.error,
    RecursionError,
)
_CORRUPT_LISTING: tuple[type[BaseException], ...] = (*_CORRUPT, ValueError, NotImplementedError)
_CORRUPT_OPEN: tuple[type[BaseException], ...] = (*_CORRUPT, RuntimeError, NotImplementedError)

_DRIVE = re.compile(r"[A-Za-z]:")


class ArchiveRejected(ValueError):
    """An archive, or one entry in it, is unsafe or too big to expand.

    The message is a single line naming the entry (``repr`` keeps newlines and
    other control characters in hostile names from breaking it) and the reason,
    so it can be shown to the uploader and logged as is.
    """

    def __init__(self, entry: str | None, reason: str) -> None:
        self.entry = entry
        self.reason = reason
        where = "archive" if entry is None else f"entry {entry!r}"
        super().__init__(f"{where} rejected: {reason}")


@dataclass(frozen=True)
class Limits:
    """Bounds an archive must stay within before anything is written.

    The defaults are generous for real datasets and small enough that a hostile
    archive cannot fill the disk or keep a worker busy for hours.
    """

    max_entries: int = 100_000
    max_total_size: int = 50 * 2**30
    """Bytes: the sum of the uncompressed sizes of all files."""
    max_entry_size: int = 10 * 2**30
    max_ratio: float = 200.0
    """Uncompressed / compressed, for the whole archive and for each zip entry."""
    ratio_min_size: int = 2**20
    """Ratios are only enforced above this many uncompressed bytes: a small file of
    repeated bytes compresses far beyond any sane ratio yet cannot hurt anyone, and
    a bomb is only dangerous when it is big."""

    def __post_init__(self) -> None:
        if min(self.max_entries, self.max_total_size, self.max_entry_size) < 0:
            raise ValueError("archive limits must not be negative")
        if self.max_ratio <= 0 or self.ratio_min_size < 0:
            raise ValueError("max_ratio must be positive and ratio_min_size not negative")


@dataclass(frozen=True)
class Member:
    """One regular file of an archive, as it will appear in the dataset version."""

    path: str
    """Relative, "/"-separated, already checked by :func:`safe_path`."""
    size: int
    """The uncompressed size the archive declares; streaming enforces it exactly."""


# --------------------------------------------------------------------------- paths


def _escape_problem(segment: str) -> str | None:
    """Say why a segment's percent-escapes are dangerous, or None when they are not.

    Some storage layers and web servers decode ``%2e%2e`` to ``..`` (sometimes more
    than once), so a name that only becomes a traversal after decoding is refused
    too. Decoding repeats until nothing changes; each round strictly shortens the
    text, so it ends quickly.
    """
    current = segment.encode("utf-8")
    while b"%" in current:
        decoded = urllib.parse.unquote_to_bytes(current)
        if decoded == current:
            break
        if b"/" in decoded or b"\\" in decoded:
            return "a percent-escape decodes to '/' or '\\'"
        if any(byte < 0x20 or byte == 0x7F for byte in decoded):
            return "a percent-escape decodes to a control character"
        if not decoded.strip(b"."):
            return "a percent-escape decodes to a '.' or '..' segment"
        current = decoded
    return None


def _path_problem(path: str) -> str | None:
    """Return why ``path`` is not a safe file path inside a version, or None."""
    if not path:
        return "the path is empty"
    if "\x00" in path:
        return "the path contains a NUL character"
    if any(unicodedata.category(char) == "Cc" for char in path):
        return "the path contains a control character"
    if "\\" in path:
        return "the path contains a backslash"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "the path is not valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"the path is longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "the path is absolute"
    if _DRIVE.match(path):
        return "the path starts with a Windows drive"
    for segment in path.split("/"):
        if not segment:
            return "the path has an empty segment (a doubled or trailing '/')"
        if not segment.strip("."):
            return "the path has a '.' or '..' segment"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes"
        problem = _escape_problem(segment)
        if problem is not None:
            return problem
    return None


def safe_path(path: str) -> str:
    """Validate and normalize a file path inside a dataset version.

    Raise ValueError with a clear reason when the path is unsafe.

    A valid path is already in normal form (relative, "/"-separated, no ``.`` or
    ``..`` or empty segments, no trailing "/"), so it is returned unchanged. Every
    other spelling is refused rather than repaired: silently rewriting a hostile
    name would hide the attack and could make two entries collide. Percent-escapes
    that decode to "/", "\\", a control character or a dots-only segment are refused
    because some layer between here and the disk may decode them.
    """
    problem = _path_problem(path)
    if problem is not None:
        raise ValueError(f"unsafe path {path!r}: {problem}")
    return path


# ------------------------------------------------------------------------ detection


def _is_tar_header(block: bytes) -> bool:
    """Tell whether a 512-byte block is a tar header by checking its checksum.

    The checksum covers the whole header, so a text or binary file matching it by
    chance is practically impossible; old (v7) archives without the "ustar" magic
    are recognised too.
    """
    if len(block) < tarfile.BLOCKSIZE:
        return False
    header = block[: tarfile.BLOCKSIZE]
    field = header[148:156].replace(b"\x00", b" ").strip()
    if not field or any(byte not in b"01234567" for byte in field):
        return False
    stored = int(field, 8)
    rest = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(rest)
    signed = sum(byte - 256 if byte > 127 else byte for byte in rest)
    return stored in (unsigned, signed) and any(header[:100])


def _gunzip_prefix(head: bytes) -> bytes:
    """Decompress at most one tar block from the start of a gzip stream.

    ``max_length`` keeps a hostile head from expanding into a bomb here.
    """
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return decompressor.decompress(head, tarfile.BLOCKSIZE)
    except zlib.error:
        return b""


def detect(filename: str, head: bytes) -> ArchiveKind | None:
    """Say which kind of archive a file is, from its name and first bytes.

    The content decides, because the name is chosen by the uploader. Pass at
    least the first 512 bytes (a few KiB is better) so tar can be recognised. A
    gzip file is only a "tar.gz" when the decompressed start is a tar header or,
    if ``head`` is too short to tell, when the name ends in ``.tar.gz``/``.tgz``;
    a plain ``data.csv.gz`` is not an archive to expand.
    """
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        block = _gunzip_prefix(head)
        if len(block) >= tarfile.BLOCKSIZE:
            return "tar.gz" if _is_tar_header(block) else None
        return "tar.gz" if filename.lower().endswith((".tar.gz", ".tgz")) else None
    if _is_tar_header(head):
        return "tar"
    return None


# ----------------------------------------------------------------------- checking


def _normalize_entry(name: str, is_dir: bool) -> str:
    """Drop the harmless spellings archivers produce, leaving the rest to safe_path.

    ``tar -C dir .`` writes names like ``./data/a.csv`` and zip directories end in
    "/"; both are normal and must not be rejected. Nothing else is rewritten.
    """
    path = name
    while path.startswith("./"):
        path = path[2:]
    if is_dir and path.endswith("/"):
        path = path[:-1]
    return path


class _Checker:
    """Apply the per-entry and whole-archive rules while an archive is scanned."""

    def __init__(self, limits: Limits, archive_size: int) -> None:
        self.limits = limits
        self.archive_size = archive_size
        self.entries = 0
        self.total = 0
        self.files: set[str] = set()
        self.dirs: set[str] = set()

    def count(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveRejected(
                name, f"the archive has more than {self.limits.max_entries} entries"
            )

    def path(self, name: str, is_dir: bool) -> str:
        path = _normalize_entry(name, is_dir)
        if is_dir and path in ("", "."):
            return ""
        problem = _path_problem(path)
        if problem is not None:
            raise ArchiveRejected(name, problem)
        return path

    def directory(self, name: str, path: str) -> None:
        if path in self.files:
            raise ArchiveRejected(name, f"{path!r} is both a file and a directory")
        self.dirs.add(path)

    def file(self, name: str, path: str, size: int, compressed: int | None) -> Member:
        limits = self.limits
        if size < 0:
            raise ArchiveRejected(name, "the entry declares a negative size")
        if size > limits.max_entry_size:
            raise ArchiveRejected(
                name, f"the entry is {size} bytes, more than the {limits.max_entry_size} allowed"
            )
        if (
            compressed is not None
            and size > limits.ratio_min_size
            and size > limits.max_ratio * compressed
        ):
            raise ArchiveRejected(
                name, f"the entry expands more than {limits.max_ratio:g}x (a zip bomb?)"
            )
        if path in self.files:
            raise ArchiveRejected(name, f"{path!r} appears more than once")
        if path in self.dirs:
            raise ArchiveRejected(name, f"{path!r} is both a file and a directory")
        self.files.add(path)
        self.total += size
        if self.total > limits.max_total_size:
            raise ArchiveRejected(
                name, f"the files add up to more than {limits.max_total_size} bytes"
            )
        if self.total > limits.ratio_min_size and self.total > limits.max_ratio * max(
            self.archive_size, 1
        ):
            raise ArchiveRejected(
                name, f"the archive expands more than {limits.max_ratio:g}x (a bomb?)"
            )
        return Member(path=path, size=size)

    def finish(self) -> None:
        """Refuse a file that is also the parent of another entry (``a`` and ``a/b``).

        Such an archive cannot be laid out as files. Sorting keeps this check
        O(n log n) in time and O(n) in memory: every path under ``p/`` sorts into
        one contiguous run starting where ``p + "/"`` would be inserted.
        """
        ordered = sorted(self.files | self.dirs)
        for path in self.files:
            prefix = path + "/"
            index = bisect_left(ordered, prefix)
            if index < len(ordered) and ordered[index].startswith(prefix):
                raise ArchiveRejected(
                    ordered[index], f"its parent {path!r} is a file in the same archive"
                )


# ------------------------------------------------------------------------ scanning

_Opener = Callable[[], IO[bytes]]


def _scan(source: Path, kind: str, limits: Limits) -> Generator[tuple[Member, _Opener], None, None]:
    """Walk the archive, check every entry and yield its regular files in order.

    Each item comes with a function that opens the entry's data; it must be
    called (and the data read) before the iteration resumes, because tar data is
    read sequentially. The checks run again on every scan, so extract() can
    compare its pass with the one members() already approved.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown archive kind {kind!r}; expected one of {KINDS}")
    with source.open("rb") as raw:
        checker = _Checker(limits, os.fstat(raw.fileno()).st_size)
        if kind == "zip":
            yield from _scan_zip(raw, checker)
        else:
            yield from _scan_tar(raw, kind == "tar.gz", checker)
        checker.finish()


def _scan_zip(raw: BinaryIO, checker: _Checker) -> Iterator[tuple[Member, _Opener]]:
    try:
        archive = zipfile.ZipFile(raw)
        infos = archive.infolist()
    except ArchiveRejected:
        raise
    except _CORRUPT_LISTING as exc:
        raise ArchiveRejected(None, f"not a readable zip file ({exc})") from exc
    with archive:
        if len(infos) > checker.limits.max_entries:
            raise ArchiveRejected(
                None,
                f"the archive has {len(infos)} entries, more than {checker.limits.max_entries}",
            )
        for info in infos:
            # orig_filename keeps anything after a NUL, which ZipInfo.filename drops.
            name = info.orig_filename
            checker.count(name)
            if info.flag_bits & (_ZIP_ENCRYPTED | _ZIP_STRONG_ENCRYPTION):
                raise ArchiveRejected(name, "the entry is encrypted")
            mode = info.external_attr >> 16
            named_dir = name.endswith("/")
            if stat.S_ISLNK(mode):
                raise ArchiveRejected(name, "the entry is a symbolic link")
            if stat.S_ISDIR(mode) or (stat.S_IFMT(mode) == 0 and named_dir):
                path = checker.path(name, is_dir=True)
                if path:
                    checker.directory(name, path)
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise ArchiveRejected(name, "the entry is a device, FIFO or socket")
            if named_dir:
                raise ArchiveRejected(name, "a regular file has a directory name")
            path = checker.path(name, is_dir=False)
            if info.compress_type not in _ZIP_METHODS:
                raise ArchiveRejected(name, f"unsupported compression method {info.compress_type}")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise ArchiveRejected(name, "a stored entry's sizes disagree")
            member = checker.file(name, path, info.file_size, info.compress_size)
            yield member, _zip_opener(archive, info)


def _zip_opener(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Opener:
    def opener() -> IO[bytes]:
        return archive.open(info)

    return opener


class _TarSource:
    """The byte stream tarfile reads, with two guards tarfile lacks.

    tarfile reads a pax or GNU long-name header whole, whatever size it claims,
    so single reads above ``_CHUNK`` are refused. For tar.gz, the position in
    the decompressed stream is capped at ``budget`` (the ratio limit applied to
    the compressed size), checked *before* seeking, because seeking forward in a
    gzip stream means decompressing everything skipped.
    """

    def __init__(self, inner: BinaryIO | gzip.GzipFile, budget: float | None) -> None:
        self._inner = inner
        self._budget = budget

    def _check(self, position: int) -> None:
        if self._budget is not None and position > self._budget:
            raise ArchiveRejected(None, "the archive decompresses beyond the ratio limit (a bomb?)")

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > _CHUNK:
            raise ArchiveRejected(None, f"a tar header needs more than {_CHUNK} bytes at once")
        data = self._inner.read(size)
        self._check(self._inner.tell())
        return data

    def seek(self, pos: int, whence: int = 0, /) -> int:
        target = pos if whence == io.SEEK_SET else None
        if whence == io.SEEK_CUR:
            target = self._inner.tell() + pos
        if target is not None:
            self._check(target)
        position = self._inner.seek(pos, whence)
        self._check(position)
        return position

    def tell(self) -> int:
        return self._inner.tell()

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("archives are read-only here")

    def close(self) -> None:
        """Leave closing to the owner of the underlying stream."""


def _tar_opener(archive: tarfile.TarFile, info: tarfile.TarInfo) -> _Opener:
    def opener() -> IO[bytes]:
        stream = archive.extractfile(info)
        if stream is None:  # pragma: no cover - only regular files get here
            raise ArchiveRejected(info.name, "the entry has no data")
        return stream

    return opener


def _scan_tar(raw: BinaryIO, gz: bool, checker: _Checker) -> Iterator[tuple[Member, _Opener]]:
    limits = checker.limits
    with contextlib.ExitStack() as stack:
        stream: BinaryIO | gzip.GzipFile = raw
        budget: float | None = None
        if gz:
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            budget = limits.max_ratio * max(checker.archive_size, 1) + limits.ratio_min_size
        source = _TarSource(stream, budget)
        try:
            archive = stack.enter_context(
                tarfile.open(fileobj=source, mode="r:", encoding="utf-8", errors="surrogateescape")
            )
        except ArchiveRejected:
            raise
        except _CORRUPT_LISTING as exc:
            raise ArchiveRejected(None, f"not a readable tar archive ({exc})") from exc
        while True:
            try:
                info = archive.next()
            except ArchiveRejected:
                raise
            except _CORRUPT_LISTING as exc:
                raise ArchiveRejected(None, f"the tar archive is corrupt ({exc})") from exc
            if info is None:
                break
            # TarFile remembers every header it reads; forgetting them keeps memory
            # flat however many entries the archive has.
            vars(archive)["members"].clear()
            name = info.name
            checker.count(name)
            if info.issym():
                raise ArchiveRejected(name, f"the entry is a symbolic link to {info.linkname!r}")
            if info.islnk():
                raise ArchiveRejected(name, f"the entry is a hard link to {info.linkname!r}")
            if info.ischr() or info.isblk():
                raise ArchiveRejected(name, "the entry is a device")
            if info.isfifo():
                raise ArchiveRejected(name, "the entry is a FIFO")
            if info.isdir():
                path = checker.path(name, is_dir=True)
                if path:
                    checker.directory(name, path)
                continue
            if not info.isreg():
                raise ArchiveRejected(name, f"unsupported tar entry type {info.type!r}")
            if info.issparse():
                # Sparse files declare far more data than they store: a bomb in disguise.
                raise ArchiveRejected(name, "the entry is a sparse file")
            path = checker.path(name, is_dir=False)
            member = checker.file(name, path, info.size, None)
            yield member, _tar_opener(archive, info)


# ---------------------------------------------------------------------- streaming


class _Budget:
    """Running totals of the bytes actually produced during extract()."""

    def __init__(self, limits: Limits, archive_size: int) -> None:
        self.limits = limits
        self.archive_size = archive_size
        self.total = 0

    def add(self, member: Member, count: int) -> None:
        self.total += count
        limits = self.limits
        if self.total > limits.max_total_size:
            raise ArchiveRejected(
                member.path, f"the files produced more than {limits.max_total_size} bytes"
            )
        if self.total > limits.ratio_min_size and self.total > limits.max_ratio * max(
            self.archive_size, 1
        ):
            raise ArchiveRejected(
                member.path, f"the archive produced more than {limits.max_ratio:g}x its size"
            )


class _MemberStream(io.RawIOBase):
    """Serve one entry's data, never more than its declared size.

    Headers can lie: the data may decompress to more or fewer bytes than
    declared. This stream counts what it passes on, stops at ``member.size`` and
    then probes one byte further; extra data, missing data or a decoding error
    (bad CRC, truncated stream) raises ArchiveRejected. The error is remembered,
    so it resurfaces even if ``write`` swallows it.
    """

    def __init__(self, source: IO[bytes], member: Member, budget: _Budget) -> None:
        super().__init__()
        self._source = source
        self._member = member
        self._budget = budget
        self.produced = 0
        self.error: ArchiveRejected | None = None
        self._checked_end = False

    def readable(self) -> bool:
        return True

    def _fail(self, reason: str) -> ArchiveRejected:
        self.error = ArchiveRejected(self._member.path, reason)
        return self.error

    def _pull(self, size: int) -> bytes:
        try:
            return self._source.read(size)
        except ArchiveRejected as exc:
            self.error = exc
            raise
        except _CORRUPT as exc:
            raise self._fail(f"the data could not be read ({exc})") from exc

    def _check_end(self) -> None:
        if self._checked_end:
            return
        self._checked_end = True
        if self._pull(1):
            raise self._fail(f"the data is longer than the declared {self._member.size} bytes")

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self.error is not None:
            raise self.error
        view = memoryview(buffer).cast("B")
        remaining = self._member.size - self.produced
        if remaining == 0:
            self._check_end()
            return 0
        if not len(view):
            return 0
        data = self._pull(min(len(view), remaining, _CHUNK))
        if not data:
            raise self._fail(
                f"the data ended after {self.produced} of the declared {self._member.size} bytes"
            )
        count = len(data)
        self.produced += count
        try:
            self._budget.add(self._member, count)
        except ArchiveRejected as exc:
            self.error = exc
            raise
        view[:count] = data
        return count

    def finish(self) -> None:
        """Read and check whatever ``write`` left unread, so every entry is verified."""
        if self.error is not None:
            raise self.error
        scratch = bytearray(min(_CHUNK, max(self._member.size, 1)))
        while self.readinto(scratch):
            pass


# --------------------------------------------------------------------------- API


def members(source: Path, kind: str, limits: Limits = Limits()) -> list[Member]:
    """Inspect the whole archive BEFORE anything is written.

    Raise ArchiveRejected if any entry is unsafe or a limit is exceeded.

    Only headers are read (tar.gz data is decompressed to skip it, within the
    ratio limit). Directories are accepted but not listed; symlinks, hard links,
    devices, FIFOs, sparse and encrypted entries, unsafe or duplicate paths and
    anything beyond ``limits`` reject the whole archive, because a partial
    dataset version built from a hostile archive is worse than none. ``kind`` is
    one of :data:`KINDS` (see :func:`detect`); anything else is a ValueError.
    """
    return [member for member, _ in _scan(source, kind, limits)]


def extract(
    source: Path,
    kind: str,
    write: Callable[[Member, BinaryIO], None],
    limits: Limits = Limits(),
) -> list[Member]:
    """Expand an archive through ``write`` after members() has approved all of it.

    members() runs first, so a bad archive writes nothing. Then, for each regular
    file, ``write(member, stream)`` is called, where ``stream`` yields at most
    ``member.size`` bytes. While streaming, the bytes actually produced are
    counted: ArchiveRejected is raised if an entry produces more or fewer than
    declared, fails to decode, or the running total exceeds the limits (a lying
    header).

    ``write`` stores the data; this module never creates files. Whatever ``write``
    leaves unread is drained and checked after it returns. A lying header can
    only be caught while streaming, so on ArchiveRejected raised here the caller
    must discard what ``write`` already stored. Returns the members written, in
    archive order (the same list members() returns).
    """
    expected = members(source, kind, limits)
    budget = _Budget(limits, source.stat().st_size)
    written: list[Member] = []
    with contextlib.closing(_scan(source, kind, limits)) as scan:
        for member, open_entry in scan:
            if len(written) >= len(expected) or expected[len(written)] != member:
                raise ArchiveRejected(member.path, "the archive changed after it was inspected")
            try:
                entry = open_entry()
            except ArchiveRejected:
                raise
            except _CORRUPT_OPEN as exc:
                raise ArchiveRejected(member.path, f"the entry cannot be opened ({exc})") from exc
            raw = _MemberStream(entry, member, budget)
            with entry, io.BufferedReader(raw, buffer_size=64 * 1024) as stream:
                try:
                    write(member, stream)
                except Exception as exc:
                    if raw.error is not None and raw.error is not exc:
                        raise raw.error from exc
                    raise
                raw.finish()
            written.append(member)
    if len(written) != len(expected):
        raise ArchiveRejected(None, "the archive changed after it was inspected")
    return written

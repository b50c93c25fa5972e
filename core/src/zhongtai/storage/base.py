"""The object store interface shared by every storage driver.

A driver is a subclass of :class:`ObjectStore` registered under the entry-point
group ``zhongtai.storage`` and chosen by ``ZHONGTAI_STORAGE__DRIVER``. Every
driver accepts the same keys (see :func:`validate_key`), raises the same errors
and gives the same answers, so plugins never need to know which one is in use.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, ClassVar, Protocol, TypeAlias

if TYPE_CHECKING:
    from zhongtai.settings import StorageSettings

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPE",
    "MAX_KEY_BYTES",
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "ByteStream",
    "InvalidKey",
    "InvalidUpload",
    "NotSupported",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PutData",
    "StorageError",
    "UploadNotFound",
    "validate_key",
    "validate_prefix",
]

#: Longest key accepted, in bytes of UTF-8 (the S3 limit).
MAX_KEY_BYTES = 1024
#: Size of the chunks :meth:`ObjectStore.open` yields unless told otherwise.
DEFAULT_CHUNK_SIZE = 1 << 20
#: Smallest part of a multipart upload other than the last one (the S3 limit,
#: enforced by every driver so that code tried on ``local`` also works on ``s3``).
MIN_PART_SIZE = 5 * 1024 * 1024
#: Highest part number of a multipart upload (the S3 limit).
MAX_PARTS = 10_000
#: Content type recorded when a writer gives none (what S3 would answer otherwise
#: differs between S3 implementations).
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Longest lifetime of a presigned URL in seconds (the SigV4 limit, 7 days).
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


#: What :meth:`ObjectStore.put` and :meth:`ObjectStore.upload_part` accept: bytes,
#: a binary file object (read in chunks) or any iterable of byte chunks.
PutData: TypeAlias = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]


# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base class of every error raised by an object store."""


class InvalidKey(StorageError, ValueError):
    """A key (or prefix) was refused; nothing was read or written.

    Attributes:
        key: the refused key, as given.
        reason: why it was refused, in a few words.
    """

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        shown = repr(key)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"invalid object key {shown}: {reason}")


class ObjectNotFound(StorageError, KeyError):
    """The object does not exist.

    Attributes:
        key: the key that was looked up.
    """

    def __init__(self, key: str, message: str | None = None) -> None:
        self.key = key
        self.message = message or f"object not found: {key!r}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return self.message


class UploadNotFound(ObjectNotFound):
    """The multipart upload does not exist (never created, completed or aborted).

    Attributes:
        key: the object key the upload was for.
        upload_id: the upload id that was looked up.
    """

    def __init__(self, key: str, upload_id: str) -> None:
        self.upload_id = upload_id
        super().__init__(key, f"multipart upload not found: {upload_id!r} for {key!r}")


class InvalidUpload(StorageError, ValueError):
    """A multipart request was refused: bad part number, a part that is missing or
    whose etag does not match, parts out of order, or a part other than the last
    one smaller than :data:`MIN_PART_SIZE`. The upload itself is left as it was."""


class NotSupported(StorageError):
    """The driver cannot do this (for example presigned URLs on ``local``)."""


# --------------------------------------------------------------------------- keys

# Percent-encoded ".", "/" and "\" (also double-encoded as %252e...), and the
# overlong UTF-8 lead bytes %c0/%c1 that old decoders turned into "." and "/":
# a layer that decodes keys later must not be able to turn them into traversal.
_ENCODED_TRAVERSAL = re.compile(r"%(?:25)*(?:2e|2f|5c|c0|c1)", re.IGNORECASE)


def _check_text(key: str, original: object) -> None:
    """Checks that apply to keys and to the partial last segment of a prefix."""
    if "\x00" in key:
        raise InvalidKey(original, "contains a NUL character")
    if "\\" in key:
        raise InvalidKey(original, "contains a backslash")
    for char in key:
        if unicodedata.category(char) == "Cc":
            raise InvalidKey(original, f"contains the control character {char!r}")
    if _ENCODED_TRAVERSAL.search(key):
        raise InvalidKey(original, "contains a percent-encoded dot, slash or backslash")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(original, "is not valid Unicode text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(original, f"is longer than {MAX_KEY_BYTES} bytes of UTF-8")


def _check_segments(path: str, original: object) -> None:
    if path.startswith("/"):
        raise InvalidKey(original, "is an absolute path")
    for segment in path.split("/"):
        if segment == "":
            raise InvalidKey(original, "has an empty segment ('//' or a leading/trailing '/')")
        if segment in (".", ".."):
            raise InvalidKey(original, f"has a {segment!r} segment")


def validate_key(key: str) -> str:
    """Check that ``key`` is a safe object key and return it unchanged.

    A key is a ``/``-separated relative path of at most :data:`MAX_KEY_BYTES`
    bytes of UTF-8. Refused: empty keys, absolute paths, empty, ``.`` and ``..``
    segments, NUL and other control characters, backslashes, and percent-encoded
    dots, slashes and backslashes (``%2e``, ``%2f``, ``%5c`` in any case, also
    double-encoded). Keys are also refused when their Unicode NFKC form (where the
    fullwidth full stop U+FF0E becomes ``.``) would be refused. Keys are case-sensitive and are not
    normalised.

    Raises:
        InvalidKey: with the reason in its message.
    """
    if not isinstance(key, str):
        raise InvalidKey(key, f"must be a str, not {type(key).__name__}")
    if key == "":
        raise InvalidKey(key, "is empty")
    _check_text(key, key)
    _check_segments(key, key)
    folded = unicodedata.normalize("NFKC", key)
    if folded != key:
        if "\\" in folded:
            raise InvalidKey(key, "contains a character that normalises to a backslash")
        _check_segments(folded, key)
    return key


def validate_prefix(prefix: str) -> str:
    """Check a listing prefix and return it unchanged.

    A prefix is matched as a plain string against keys, as S3 does: ``"a/b"``
    matches ``a/b``, ``a/b/c`` and ``a/bc``. The empty prefix matches every key.
    Everything before the last ``/`` must be a valid key; the part after it is only
    a filter, so it may be empty or start with dots.

    Raises:
        InvalidKey: when the prefix could never match a valid key or is unsafe.
    """
    if not isinstance(prefix, str):
        raise InvalidKey(prefix, f"must be a str, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    _check_text(prefix, prefix)
    directory, _, tail = prefix.rpartition("/")
    if directory or prefix.startswith("/"):
        _check_segments(directory, prefix)
    if "\\" in unicodedata.normalize("NFKC", tail):
        raise InvalidKey(prefix, "contains a character that normalises to a backslash")
    return prefix


def split_prefix(prefix: str) -> tuple[str, str]:
    """Split a validated prefix into its directory part and the partial last segment.

    ``"a/b/c"`` gives ``("a/b", "c")``, ``"a/b/"`` gives ``("a/b", "")`` and
    ``"abc"`` gives ``("", "abc")``.
    """
    directory, _, tail = prefix.rpartition("/")
    return directory, tail


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    Attributes:
        key: the object key (without the store's own prefix).
        size: size in bytes.
        etag: an opaque version tag: equal content written the same way gives the
            same tag on one store. ``s3`` returns S3's ETag without quotes (``md5-N``
            for multipart uploads); ``local`` gives the same forms: the hex MD5 of
            the content, or for an object completed from N parts of a multipart
            upload, the MD5 of the parts' MD5s and ``-N``.
            None when unknown.
        last_modified: time of the last write, UTC, timezone-aware.
        content_type: the media type given when the object was written
            (:data:`DEFAULT_CONTENT_TYPE` when none was); always None in
            :meth:`ObjectStore.list` results (use :meth:`ObjectStore.stat`).
    """

    key: str
    size: int
    etag: str | None
    last_modified: datetime
    content_type: str | None


class ByteStream(Iterator[bytes]):
    """The iterator :meth:`ObjectStore.open` returns: yields chunks of the object.

    It releases the underlying file or connection when exhausted, on :meth:`close`,
    or at the end of a ``with`` block; close it when you stop reading early.
    """

    def __init__(self, stream: _Readable, *, length: int | None, chunk_size: int) -> None:
        """Wrap ``stream``, yielding at most ``length`` bytes (all when None)."""
        self._stream: _Readable | None = stream
        self._remaining = length
        self._chunk_size = chunk_size

    def __iter__(self) -> ByteStream:
        return self

    def __next__(self) -> bytes:
        if self._stream is None:
            raise StopIteration
        size = self._chunk_size
        if self._remaining is not None:
            size = min(size, self._remaining)
        chunk = self._stream.read(size) if size > 0 else b""
        if not chunk:
            self.close()
            raise StopIteration
        if self._remaining is not None:
            self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        """Release the underlying file or connection; further iteration yields nothing."""
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ByteStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped unread still frees its file or connection; errors
        # cannot be reported from a finaliser, so they are dropped.
        with contextlib.suppress(Exception):
            self.close()


class _EmptyStream:
    def read(self, size: int = -1, /) -> bytes:
        return b""


def empty_stream(chunk_size: int = DEFAULT_CHUNK_SIZE) -> ByteStream:
    """A :class:`ByteStream` that yields nothing (for ranges past the end)."""
    return ByteStream(_EmptyStream(), length=0, chunk_size=chunk_size)


def iter_chunks(data: PutData, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Turn anything :meth:`ObjectStore.put` accepts into an iterator of byte chunks.

    File objects are read ``chunk_size`` bytes at a time and iterables are passed
    through, so nothing is read into memory ahead of the consumer.

    Raises:
        TypeError: for ``str`` (encode it first) and other unsupported types.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return iter((bytes(data),)) if len(data) else iter(())
    if isinstance(data, str):
        raise TypeError("object data must be bytes, a binary file or an iterable of bytes")
    read = getattr(data, "read", None)
    if callable(read):
        # A file object is also an iterable of *lines*: read fixed chunks instead.
        def chunks() -> Iterator[bytes]:
            while True:
                chunk = read(chunk_size)
                if not chunk:
                    return
                if not isinstance(chunk, bytes | bytearray):
                    raise TypeError("file objects given to put() must be opened in binary mode")
                yield bytes(chunk)

        return chunks()

    def checked(items: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in items:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"object data chunks must be bytes, not {type(chunk).__name__}")
            if len(chunk):
                yield bytes(chunk)

    return checked(data)


class ChunkReader:
    """Reads fixed-size blocks from an iterator of chunks, holding one chunk at most."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self._offset = 0

    def read(self, size: int) -> bytes:
        """Return exactly ``size`` bytes, or fewer at the end of the data."""
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            if self._offset >= len(self._pending):
                self._pending = next(self._chunks, b"")
                self._offset = 0
                if not self._pending:
                    break
            if self._offset == 0 and len(self._pending) <= wanted:
                piece = self._pending  # whole chunk: no copy
            else:
                piece = self._pending[self._offset : self._offset + wanted]
            self._offset += len(piece)
            parts.append(piece)
            wanted -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def at_end(self) -> bool:
        """Whether the data is exhausted (fetches at most one chunk to find out)."""
        if self._offset >= len(self._pending):
            self._pending = next(self._chunks, b"")
            self._offset = 0
        return not self._pending


def check_range(start: int | None, end: int | None) -> None:
    """Validate the ``start``/``end`` arguments of :meth:`ObjectStore.open`."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative int or None, not {value!r}")


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")


def check_part_number(part_number: int) -> None:
    """Raise :class:`InvalidUpload` unless ``1 <= part_number <= MAX_PARTS``."""
    if not isinstance(part_number, int) or not 1 <= part_number <= MAX_PARTS:
        raise InvalidUpload(f"part number must be between 1 and {MAX_PARTS}, not {part_number!r}")


def check_parts(parts: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Validate the part list given to complete_multipart; return it with bare etags."""
    if not parts:
        raise InvalidUpload("a multipart upload needs at least one part")
    previous = 0
    cleaned: list[tuple[int, str]] = []
    for number, etag in parts:
        check_part_number(number)
        if number <= previous:
            raise InvalidUpload("parts must be listed in strictly ascending part-number order")
        previous = number
        cleaned.append((number, etag.strip('"')))
    return cleaned


def check_content_type(content_type: str | None) -> None:
    """Refuse content types that could not be sent back safely as a header."""
    if content_type is None:
        return
    if not isinstance(content_type, str) or not content_type or len(content_type) > 255:
        raise ValueError("content_type must be a non-empty str of at most 255 characters")
    if any(unicodedata.category(c) == "Cc" for c in content_type) or not content_type.isascii():
        raise ValueError(f"content_type must be printable ASCII, not {content_type!r}")


def check_expiry(expires_in: int) -> None:
    if not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_PRESIGN_EXPIRY:
        raise ValueError(
            f"expires_in must be between 1 and {MAX_PRESIGN_EXPIRY} seconds, not {expires_in!r}"
        )


# --------------------------------------------------------------------------- interface


class ObjectStore(abc.ABC):
    """Abstract base class of the object store drivers (namespace ``zhongtai.storage``).

    Keys are validated by :func:`validate_key` before anything is touched. All
    methods are synchronous and safe to call from several threads; call them from
    async code through a thread (``anyio.to_thread.run_sync``).
    """

    #: The driver's entry-point name (``local``, ``s3``).
    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: StorageSettings, home: Path) -> ObjectStore:
        """Build the store from the ``storage`` settings.

        Args:
            settings: the core's storage settings.
            home: the platform's data directory (for defaults such as the local root).

        Raises:
            StorageError: when the settings are incomplete or the store cannot be set up.
        """

    # ---------------------------------------------------------------- objects

    @abc.abstractmethod
    def put(self, key: str, data: PutData, *, content_type: str | None = None) -> ObjectInfo:
        """Write an object, replacing any object with the same key.

        The data is streamed: file objects and iterables are consumed chunk by chunk
        and never held whole in memory. The write is atomic: readers see the old
        object or the new one, and if reading ``data`` raises, the exception
        propagates and no partial object is left behind.

        Args:
            key: the object key.
            data: bytes, a binary file object or an iterable of byte chunks.
            content_type: the media type to store with the object; default
                :data:`DEFAULT_CONTENT_TYPE`.

        Returns:
            The new object's info.

        Raises:
            InvalidKey: the key is refused.
            StorageError: the store failed.
        """

    @abc.abstractmethod
    def open(
        self,
        key: str,
        *,
        start: int | None = None,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> ByteStream:
        """Read an object, or a byte range of it, as an iterator of chunks.

        The range follows Python slice semantics: ``start`` is inclusive, ``end`` is
        exclusive, None means the beginning or the end of the object, and a range
        outside the object is clipped (possibly to nothing). So
        ``b"".join(store.open(k, start=s, end=e)) == store.read_bytes(k)[s:e]``.

        The object is looked up when ``open`` is called, so a missing object raises
        here rather than on the first iteration.

        Args:
            key: the object key.
            start: first byte to return (>= 0).
            end: one past the last byte to return (>= 0).
            chunk_size: largest chunk to yield.

        Raises:
            ObjectNotFound: there is no such object.
            InvalidKey: the key is refused.
            ValueError: ``start``/``end`` negative, or ``chunk_size`` not positive.
        """

    def read_bytes(self, key: str) -> bytes:
        """Return a whole object; only for objects known to be small.

        Raises:
            ObjectNotFound: there is no such object.
        """
        with self.open(key) as chunks:
            return b"".join(chunks)

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Return an object's info.

        Raises:
            ObjectNotFound: there is no such object.
        """

    def exists(self, key: str) -> bool:
        """Whether an object exists. An invalid key raises :class:`InvalidKey`."""
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def list(self, prefix: str = "", *, recursive: bool = True) -> Iterator[ObjectInfo]:
        """Iterate over the objects whose key starts with ``prefix``, sorted by key.

        The prefix is a plain string match (see :func:`validate_prefix`). With
        ``recursive=False`` only the objects directly under the prefix are given,
        those with no ``/`` after it; "folders" themselves are not listed.
        ``content_type`` is None in the results.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object. Deleting a missing object is not an error."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; return how many.

        Raises:
            InvalidKey: the prefix is empty (deleting a whole store is refused) or invalid.
        """

    @abc.abstractmethod
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy an object (content and content type) to another key, replacing it.

        Returns:
            The info of the new object.

        Raises:
            ObjectNotFound: ``src`` does not exist.
        """

    def move(self, src: str, dst: str) -> ObjectInfo:
        """Move an object to another key, replacing it; ``src`` is gone afterwards.
        Drivers that can rename (the local one) do so without copying the bytes.

        Raises:
            ObjectNotFound: ``src`` does not exist.
        """
        info = self.copy(src, dst)
        if src != dst:
            self.delete(src)
        return info

    @abc.abstractmethod
    def ping(self) -> None:
        """Check that the store can be reached and used (for ``/readyz``).

        Raises:
            StorageError: with the reason, when it cannot.
        """

    def local_path(self, key: str) -> Path | None:
        """A file on this machine that holds the object's bytes, for readers that need
        a path (DuckDB, PyArrow); None when the driver keeps objects elsewhere (then
        copy the object to a temporary file). Read it; never write it.

        Raises:
            ObjectNotFound: there is no such object.
            InvalidKey: the key is refused.
        """
        self.stat(key)
        return None

    # ---------------------------------------------------------------- presigned URLs

    def presign_get(self, key: str, *, expires_in: int = 3600, filename: str | None = None) -> str:
        """Return a URL that downloads the object without credentials until it expires.

        Args:
            key: the object key (it need not exist yet).
            expires_in: lifetime of the URL in seconds, at most 7 days.
            filename: when given, the download is served as an attachment with this
                file name (``Content-Disposition``).

        Raises:
            NotSupported: the driver has no presigned URLs (``local``); serve the
                object through the API instead.
        """
        raise NotSupported(f"the {self.name!r} storage driver has no presigned URLs")

    def presign_put(self, key: str, *, expires_in: int = 3600) -> str:
        """Return a URL to which a client can ``PUT`` the object's bytes directly.

        Raises:
            NotSupported: the driver has no presigned URLs (``local``).
        """
        raise NotSupported(f"the {self.name!r} storage driver has no presigned URLs")

    def presign_part(
        self, key: str, upload_id: str, part_number: int, *, expires_in: int = 3600
    ) -> str:
        """Return a URL to which a client can ``PUT`` one part of a multipart upload.

        The ``ETag`` response header of that PUT is the part's etag for
        :meth:`complete_multipart` (browsers need it exposed through the bucket's CORS
        rules).

        Raises:
            NotSupported: the driver has no presigned URLs (``local``).
        """
        raise NotSupported(f"the {self.name!r} storage driver has no presigned URLs")

    # ---------------------------------------------------------------- multipart uploads

    @abc.abstractmethod
    def create_multipart(self, key: str, *, content_type: str | None = None) -> str:
        """Start a multipart upload of ``key`` and return its upload id.

        Parts are uploaded with :meth:`upload_part` (or a :meth:`presign_part` URL),
        then assembled with :meth:`complete_multipart`, or dropped with
        :meth:`abort_multipart`. Every part but the last must be at least
        :data:`MIN_PART_SIZE` bytes. Nothing is visible under ``key`` until complete.
        """

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, part_number: int, data: PutData) -> str:
        """Upload (or replace) one part and return its etag.

        Raises:
            UploadNotFound: the upload does not exist.
            InvalidUpload: ``part_number`` is not between 1 and :data:`MAX_PARTS`.
        """

    @abc.abstractmethod
    def list_parts(self, key: str, upload_id: str) -> builtins.list[tuple[int, int, str]]:
        """Return the uploaded parts as ``(part_number, size, etag)``, by part number.

        Use it to resume an interrupted upload.

        Raises:
            UploadNotFound: the upload does not exist.
        """

    @abc.abstractmethod
    def complete_multipart(
        self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]
    ) -> ObjectInfo:
        """Assemble the listed parts, in order, into the object ``key``.

        Args:
            key: the object key given to :meth:`create_multipart`.
            upload_id: the upload id.
            parts: ``(part_number, etag)`` pairs in ascending part-number order; parts
                uploaded but not listed are dropped.

        Raises:
            UploadNotFound: the upload does not exist.
            InvalidUpload: a part is missing, its etag does not match, the order is
                wrong, or a part other than the last is too small. No object is
                written and the upload stays open, so it can be fixed or aborted.
        """

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts. Aborting an unknown upload is not an error."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

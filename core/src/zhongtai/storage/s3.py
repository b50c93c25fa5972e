"""The ``s3`` storage driver: objects in an S3 bucket (AWS S3 or an S3-compatible server).

boto3 is imported when a store is created, never when this module is imported,
so the platform starts without boto3 unless ``s3`` is the configured driver.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from zhongtai.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    MAX_KEY_BYTES,
    MIN_PART_SIZE,
    ByteStream,
    ChunkReader,
    InvalidKey,
    InvalidUpload,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PutData,
    StorageError,
    UploadNotFound,
    check_chunk_size,
    check_content_type,
    check_expiry,
    check_part_number,
    check_parts,
    check_range,
    empty_stream,
    iter_chunks,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

    from zhongtai.settings import StorageSettings

__all__ = ["S3Store"]

#: Default size of the parts :meth:`S3Store.put` sends; also the most it buffers.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
#: Largest object CopyObject accepts; bigger ones are copied part by part.
COPY_OBJECT_LIMIT = 5 * 1024**3
#: Most keys one DeleteObjects request may name.
_DELETE_BATCH = 1000
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_BAD_UPLOAD = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}


def _normalize_prefix(prefix: str) -> str:
    """``"/tenant-a/"`` -> ``"tenant-a/"``; the empty prefix stays empty."""
    stripped = (prefix or "").strip("/")
    if not stripped:
        return ""
    validate_key(stripped)
    return stripped + "/"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def content_disposition(filename: str) -> str:
    """An RFC 6266 ``attachment`` header value for ``filename``.

    Path separators and control characters are replaced, so the browser gets a
    plain file name; non-ASCII names are sent as ``filename*`` with an ASCII
    fallback.
    """
    name = (
        "".join(
            "_" if char in "/\\" or unicodedata.category(char) == "Cc" else char
            for char in filename
        ).strip()
        or "download"
    )
    fallback = name.encode("ascii", "replace").decode("ascii").replace('"', "'").replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class S3Store(ObjectStore):
    """Objects in an S3 bucket, optionally under a key prefix.

    All keys live under ``prefix`` (``tenant-a/`` stores ``k`` as
    ``tenant-a/k``); listings strip it again. :meth:`put` streams large data as a
    multipart upload of ``part_size`` parts, uploaded one after the other, so at
    most about two parts are held in memory.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "auto",
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        ping_timeout: float = 3.0,
        client: S3Client | None = None,
    ) -> None:
        """Create a store on ``bucket``; no request is made until first use.

        Args:
            bucket: the bucket name (it must exist).
            prefix: key prefix under which all objects live.
            endpoint_url: the S3 endpoint, for S3-compatible servers (MinIO, Ceph);
                None for AWS.
            region: the bucket's region; None to use boto3's usual lookup.
            access_key_id: access key; with ``secret_access_key``. When both are
                None boto3's credential chain is used (environment, profile, role).
            secret_access_key: secret key.
            addressing_style: ``path`` (``endpoint/bucket/key``, what most
                self-hosted servers need), ``virtual`` (``bucket.endpoint/key``) or
                ``auto`` (boto3 decides).
            part_size: size of the parts used by :meth:`put` for large data, at least
                :data:`~zhongtai.storage.base.MIN_PART_SIZE`.
            connect_timeout: seconds to wait for a connection.
            read_timeout: seconds to wait for data on a connection.
            max_attempts: attempts per request, retries included (1 = no retry).
            ping_timeout: connect and read timeout of :meth:`ping`, which makes one
                attempt only, so that ``/readyz`` answers quickly when S3 is away.
            client: a ready boto3 S3 client to use instead of building one (the
                connection options above are then ignored, and :meth:`ping` uses it
                too).

        Raises:
            StorageError: no bucket, half the credentials, a malformed endpoint, or
                boto3 is not installed.
        """
        if not bucket:
            raise StorageError(
                "the s3 storage driver needs a bucket: set ZHONGTAI_STORAGE__BUCKET "
                "(or `bucket` under [storage] in zhongtai.toml)"
            )
        if (access_key_id is None) != (secret_access_key is None):
            raise StorageError(
                "give both access_key_id and secret_access_key, or neither "
                "(to use boto3's credential chain)"
            )
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.bucket = bucket
        self.prefix = _normalize_prefix(prefix)
        self.part_size = part_size
        #: Objects larger than this are copied with a multipart copy.
        self.copy_object_limit = COPY_OBJECT_LIMIT
        try:
            import botocore.exceptions
        except ImportError as exc:
            raise StorageError(
                "the s3 storage driver needs boto3: pip install 'zhongtai[s3]'"
            ) from exc
        self._client_error = botocore.exceptions.ClientError
        self._boto_error = botocore.exceptions.BotoCoreError
        self._connection: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region": region,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "addressing_style": addressing_style,
        }
        self.ping_timeout = ping_timeout
        self._probe: S3Client | None = client
        self._probe_lock = threading.Lock()
        if client is not None:
            self._client: S3Client = client
            return
        try:
            self._client = self._make_client(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_attempts=max_attempts,
            )
        except (ValueError, self._boto_error) as exc:
            raise StorageError(f"cannot set up the s3 client: {exc}") from exc

    def _make_client(
        self, *, connect_timeout: float, read_timeout: float, max_attempts: int
    ) -> S3Client:
        import boto3.session
        from botocore.config import Config

        connection = self._connection
        options: dict[str, Any] = {
            # SigV4 everywhere: presigned URLs need it, and every S3 server has it.
            "signature_version": "s3v4",
            "s3": {"addressing_style": connection["addressing_style"]},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
            # Send checksums only where S3 requires them: several S3-compatible
            # servers reject the CRC trailers newer botocore adds by default.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        try:
            config = Config(**options)
        except TypeError:  # botocore older than 1.36 has no checksum options
            del options["request_checksum_calculation"], options["response_checksum_validation"]
            config = Config(**options)
        # One session per store: boto3 sessions are not thread-safe, clients are.
        session = boto3.session.Session(
            aws_access_key_id=connection["access_key_id"],
            aws_secret_access_key=connection["secret_access_key"],
            region_name=connection["region"],
        )
        return session.client("s3", endpoint_url=connection["endpoint_url"], config=config)

    @classmethod
    def from_settings(cls, settings: StorageSettings, home: Path) -> S3Store:
        """Build the store from the ``storage`` settings (``bucket`` is required)."""
        secret = settings.secret_access_key
        return cls(
            settings.bucket or "",
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            access_key_id=settings.access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            addressing_style=settings.addressing_style,
        )

    def __repr__(self) -> str:
        return f"<S3Store s3://{self.bucket}/{self.prefix}>"

    # ---------------------------------------------------------------- helpers

    def _full(self, key: str) -> str:
        validate_key(key)
        full = self.prefix + key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidKey(key, f"is longer than {MAX_KEY_BYTES} bytes with the store prefix")
        return full

    @contextlib.contextmanager
    def _errors(self, action: str, key: str, upload_id: str | None = None) -> Iterator[None]:
        """Translate botocore errors into storage errors."""
        try:
            yield
        except self._client_error as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message") or str(exc)
            if code == "NoSuchUpload" and upload_id is not None:
                raise UploadNotFound(key, upload_id) from None
            if code in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            if code in _BAD_UPLOAD:
                raise InvalidUpload(f"cannot {action} {key!r}: {code}: {message}") from None
            if code == "NoSuchBucket":
                raise StorageError(f"bucket {self.bucket!r} does not exist") from None
            raise StorageError(f"cannot {action} {key!r}: {code}: {message}") from exc
        except self._boto_error as exc:
            raise StorageError(f"cannot {action} {key!r}: {exc}") from exc

    def _info(self, key: str, head: Any) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            etag=_etag(head.get("ETag")),
            last_modified=_utc(head["LastModified"]),
            content_type=head.get("ContentType"),
        )

    # ---------------------------------------------------------------- objects

    def put(self, key: str, data: PutData, *, content_type: str | None = None) -> ObjectInfo:
        """Write an object (see :meth:`ObjectStore.put`).

        Data up to ``part_size`` is sent with one PutObject; larger data as a
        multipart upload, aborted if anything fails, so no partial object appears.
        """
        full = self._full(key)
        check_content_type(content_type)
        content_type = content_type or DEFAULT_CONTENT_TYPE
        reader = ChunkReader(iter_chunks(data))
        block = reader.read(self.part_size)
        if reader.at_end():
            with self._errors("write", key):
                self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=block, ContentType=content_type
                )
            return self.stat(key)
        upload_id = self.create_multipart(key, content_type=content_type)
        try:
            parts: list[tuple[int, str]] = []
            number = 1
            while block:
                parts.append((number, self._upload_bytes(key, upload_id, number, block)))
                number += 1
                block = b""  # drop the sent part before reading the next one
                # Grow parts every 1000 so the 10,000-part limit is never reached
                # (8 MiB parts would stop at 80 GB).
                block = reader.read(self.part_size * 2 ** ((number - 1) // 1000))
            return self.complete_multipart(key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(Exception):
                self.abort_multipart(key, upload_id)
            raise

    def open(
        self,
        key: str,
        *,
        start: int | None = None,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> ByteStream:
        """Read an object or a slice of it with a ranged GET (see :meth:`ObjectStore.open`)."""
        full = self._full(key)
        check_range(start, end)
        check_chunk_size(chunk_size)
        first = start or 0
        if end is not None and end <= first:
            self.stat(key)  # an empty slice of a missing object is still missing
            return empty_stream(chunk_size)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if first or end is not None:
            params["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
        try:
            with self._errors("read", key):
                response = self._client.get_object(**params)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, self._client_error) and (
                cause.response.get("Error", {}).get("Code") == "InvalidRange"
            ):
                # The range starts at or past the end: an empty slice, as in Python.
                return empty_stream(chunk_size)
            raise
        return ByteStream(
            response["Body"], length=int(response["ContentLength"]), chunk_size=chunk_size
        )

    def stat(self, key: str) -> ObjectInfo:
        """Return an object's info with a HEAD request (see :meth:`ObjectStore.stat`)."""
        full = self._full(key)
        with self._errors("stat", key):
            head = self._client.head_object(Bucket=self.bucket, Key=full)
        return self._info(key, head)

    def _list_raw(self, prefix: str, recursive: bool) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if not recursive:
            params["Delimiter"] = "/"
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors("list", prefix):
            for page in paginator.paginate(**params):
                for item in page.get("Contents", []):
                    yield dict(item)

    def list(self, prefix: str = "", *, recursive: bool = True) -> Iterator[ObjectInfo]:
        """List objects by key prefix, sorted by key (see :meth:`ObjectStore.list`)."""
        validate_prefix(prefix)
        return self._list(prefix, recursive)

    def _list(self, prefix: str, recursive: bool) -> Iterator[ObjectInfo]:
        cut = len(self.prefix)
        for item in self._list_raw(prefix, recursive):
            key = item["Key"][cut:]
            try:
                validate_key(key)
            except InvalidKey:
                # Written by another tool ("folder/" markers, "a//b"): no API call
                # could read it, so it is not listed either.
                continue
            yield ObjectInfo(
                key=key,
                size=int(item["Size"]),
                etag=_etag(item.get("ETag")),
                last_modified=_utc(item["LastModified"]),
                content_type=None,
            )

    def delete(self, key: str) -> None:
        """Delete an object if it exists (see :meth:`ObjectStore.delete`)."""
        full = self._full(key)
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        """Delete all objects under a prefix in batches of 1000 (DeleteObjects)."""
        if prefix == "":
            raise InvalidKey(prefix, "refusing to delete every object in the store")
        validate_prefix(prefix)
        deleted = 0
        batch: list[str] = []

        def flush() -> None:
            nonlocal deleted
            with self._errors("delete", prefix):
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} object(s) under {prefix!r}, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )
            deleted += len(batch)
            batch.clear()

        # Deleting keys already listed does not disturb the continuation token,
        # which is the last key returned.
        for item in self._list_raw(prefix, True):
            batch.append(item["Key"])
            if len(batch) == _DELETE_BATCH:
                flush()
        if batch:
            flush()
        return deleted

    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy an object server-side (see :meth:`ObjectStore.copy`)."""
        dst_full = self._full(dst)
        info = self.stat(src)
        if src == dst:
            return info  # S3 refuses to copy an object onto itself unchanged
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": self._full(src)}
        if info.size <= self.copy_object_limit:
            with self._errors("copy", src):
                result = self._client.copy_object(
                    Bucket=self.bucket, Key=dst_full, CopySource=source, MetadataDirective="COPY"
                )["CopyObjectResult"]
            return ObjectInfo(
                key=dst,
                size=info.size,
                etag=_etag(result.get("ETag")),
                last_modified=_utc(result["LastModified"])
                if "LastModified" in result
                else info.last_modified,
                content_type=info.content_type,
            )
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_chunksize=max(self.part_size, info.size // 9000 + 1))
        with self._errors("copy", src):
            self._client.copy(
                source,
                self.bucket,
                dst_full,
                ExtraArgs={"ContentType": info.content_type or DEFAULT_CONTENT_TYPE},
                Config=config,
            )
        return self.stat(dst)

    def ping(self) -> None:
        """List at most one key under the prefix (see :meth:`ObjectStore.ping`).

        Listing under the prefix works with credentials restricted to that prefix,
        where HeadBucket would need rights on the whole bucket. One attempt with
        ``ping_timeout``, not the retries and timeouts of ordinary requests.
        """
        with self._probe_lock:
            if self._probe is None:
                timeout = self.ping_timeout
                self._probe = self._make_client(
                    connect_timeout=timeout, read_timeout=timeout, max_attempts=1
                )
            probe = self._probe
        try:
            with self._errors("list", self.prefix):
                probe.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except StorageError as exc:
            raise StorageError(f"s3 bucket {self.bucket!r} is not reachable: {exc}") from exc

    # ---------------------------------------------------------------- presigned URLs

    def presign_get(self, key: str, *, expires_in: int = 3600, filename: str | None = None) -> str:
        """Return a presigned GET URL (see :meth:`ObjectStore.presign_get`)."""
        full = self._full(key)
        check_expiry(expires_in)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        with self._errors("presign", key):
            return self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in, HttpMethod="GET"
            )

    def presign_put(self, key: str, *, expires_in: int = 3600) -> str:
        """Return a presigned PUT URL (see :meth:`ObjectStore.presign_put`).

        The object gets the ``Content-Type`` header the client sends with the PUT.
        """
        full = self._full(key)
        check_expiry(expires_in)
        with self._errors("presign", key):
            return self._client.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": full},
                ExpiresIn=expires_in,
                HttpMethod="PUT",
            )

    def presign_part(
        self, key: str, upload_id: str, part_number: int, *, expires_in: int = 3600
    ) -> str:
        """Return a presigned URL for one part (see :meth:`ObjectStore.presign_part`)."""
        full = self._full(key)
        check_part_number(part_number)
        check_expiry(expires_in)
        with self._errors("presign", key, upload_id):
            return self._client.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.bucket,
                    "Key": full,
                    "UploadId": upload_id,
                    "PartNumber": part_number,
                },
                ExpiresIn=expires_in,
                HttpMethod="PUT",
            )

    # ---------------------------------------------------------------- multipart uploads

    def create_multipart(self, key: str, *, content_type: str | None = None) -> str:
        """Start a multipart upload (see :meth:`ObjectStore.create_multipart`)."""
        full = self._full(key)
        check_content_type(content_type)
        with self._errors("start an upload of", key):
            response = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ContentType=content_type or DEFAULT_CONTENT_TYPE
            )
        return response["UploadId"]

    def _upload_bytes(self, key: str, upload_id: str, part_number: int, body: Any) -> str:
        with self._errors("upload a part of", key, upload_id):
            response = self._client.upload_part(
                Bucket=self.bucket,
                Key=self._full(key),
                UploadId=upload_id,
                PartNumber=part_number,
                Body=body,
            )
        return _etag(response["ETag"]) or ""

    def upload_part(self, key: str, upload_id: str, part_number: int, data: PutData) -> str:
        """Upload one part (see :meth:`ObjectStore.upload_part`).

        S3 needs a part's length before it is sent: a seekable file object is
        streamed from disk, anything else is gathered in memory first.
        """
        self._full(key)
        check_part_number(part_number)
        seekable = getattr(data, "seekable", None)
        body: Any = data if callable(seekable) and seekable() else b"".join(iter_chunks(data))
        return self._upload_bytes(key, upload_id, part_number, body)

    def list_parts(self, key: str, upload_id: str) -> builtins.list[tuple[int, int, str]]:
        """List uploaded parts (see :meth:`ObjectStore.list_parts`)."""
        full = self._full(key)
        paginator = self._client.get_paginator("list_parts")
        parts: list[tuple[int, int, str]] = []
        with self._errors("list the parts of", key, upload_id):
            for page in paginator.paginate(Bucket=self.bucket, Key=full, UploadId=upload_id):
                for part in page.get("Parts", []):
                    parts.append((part["PartNumber"], part["Size"], _etag(part["ETag"]) or ""))
        return sorted(parts)

    def complete_multipart(
        self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]
    ) -> ObjectInfo:
        """Assemble the parts (see :meth:`ObjectStore.complete_multipart`)."""
        full = self._full(key)
        wanted = check_parts(parts)
        with self._errors("complete the upload of", key, upload_id):
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in wanted]
                },
            )
        return self.stat(key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (see :meth:`ObjectStore.abort_multipart`)."""
        full = self._full(key)
        try:
            with self._errors("abort the upload of", key, upload_id):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id
                )
        except (UploadNotFound, ObjectNotFound):
            pass  # already completed or aborted: aborting is idempotent

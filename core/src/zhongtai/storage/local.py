"""The ``local`` storage driver: objects are files under one directory.

Layout under the root::

    <root>/<key>                          the object's bytes, key segments as folders
    <root>/.zhongtai/meta/ab/<sha256>.json  etag and content type of one object
    <root>/.zhongtai/tmp/                 writes in progress (same filesystem)
    <root>/.zhongtai/uploads/<id>/        multipart uploads in progress

Keys whose first segment is ``.zhongtai`` are therefore refused by this driver.
Etags are the hex MD5 of the content, computed while the data streams in.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat as stat_mod
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from zhongtai.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    MIN_PART_SIZE,
    ByteStream,
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
    check_part_number,
    check_parts,
    check_range,
    iter_chunks,
    split_prefix,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from zhongtai.settings import StorageSettings

__all__ = ["LocalStore"]

#: Name of the hidden folder at the root that holds the driver's own state.
STATE_DIR = ".zhongtai"
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_PART_FILE = re.compile(r"part-(\d{5})-([0-9a-f]{32})")
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
# Temp files older than this are left over from a killed process and are removed
# at start-up; a live write would have to stall for a day to be hit.
_STALE_TEMP_SECONDS = 24 * 3600


def _md5() -> Any:
    # MD5 is the etag (as for single-part S3 objects), not a security measure.
    return hashlib.md5(usedforsecurity=False)


class _Copier:
    """Copies byte ranges between files: in the kernel (``copy_file_range``) until it
    says it cannot for these files, then through a buffer, without asking it again."""

    def __init__(self) -> None:
        self.kernel = hasattr(os, "copy_file_range")

    def copy(self, source: int, target: int, count: int) -> int:
        """Copy up to ``count`` bytes from ``source``'s offset to ``target``'s; return
        how many (0 at the end of ``source``)."""
        if self.kernel:
            try:
                return os.copy_file_range(source, target, min(count, 1 << 30))
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.kernel = False
        chunk = os.read(source, min(count, DEFAULT_CHUNK_SIZE))
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
        return len(chunk)


def _utc(mtime_ns: int) -> datetime:
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)


class LocalStore(ObjectStore):
    """Objects as files under a local directory (the embedded default).

    Writes go to a temp file on the same filesystem and are renamed into place, so
    readers never see a partial object. Every path is resolved (symlinks followed)
    and must stay inside the root: a symlink that leads out of the root is refused
    for reads and writes alike. Presigned URLs are not supported; multipart uploads
    are, with parts kept under ``.zhongtai/uploads`` until completed.

    Limitations compared with S3: a key cannot be both an object and a "folder" of
    other objects (``a`` and ``a/b``), and uploads that are never completed or
    aborted stay on disk.
    """

    name = "local"

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        """Open (creating if needed) a store rooted at ``root``.

        Args:
            root: the directory that holds the objects.
            fsync: flush each object to disk before it becomes visible, so a power
                cut cannot leave an empty file behind a completed write.

        Raises:
            StorageError: the directory cannot be created.
        """
        try:
            base = Path(root).expanduser()
            base.mkdir(parents=True, exist_ok=True)
            self.root = base.resolve(strict=True)
            self._state = self.root / STATE_DIR
            self._tmp = self._state / "tmp"
            self._meta = self._state / "meta"
            self._uploads = self._state / "uploads"
            for folder in (self._tmp, self._meta, self._uploads):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot use {root!s} as the object store root: {exc}") from exc
        self._fsync = fsync
        self._sweep_temp()

    @classmethod
    def from_settings(cls, settings: StorageSettings, home: Path) -> LocalStore:
        """Build the store from ``settings.root``, by default ``<home>/objects``."""
        root = settings.root if settings.root is not None else home / "objects"
        return cls(root)

    def __repr__(self) -> str:
        return f"<LocalStore {str(self.root)!r}>"

    # ---------------------------------------------------------------- paths

    def _path(self, key: str) -> Path:
        """The resolved file path of ``key``; refuses keys that leave the root."""
        validate_key(key)
        if key.split("/", 1)[0] == STATE_DIR:
            raise InvalidKey(key, f"{STATE_DIR!r} is reserved by the local storage driver")
        resolved = (self.root / key).resolve()
        # Compare resolved paths, not strings: "/data/p12" starts with "/data/p1",
        # and a symlink inside the root may point anywhere.
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise InvalidKey(key, "resolves outside the store root")
        if resolved.is_relative_to(self._state):
            raise InvalidKey(key, "resolves into the storage driver's own state")
        return resolved

    def _meta_path(self, key: str) -> Path:
        # Keyed by a hash so the metadata never collides with object paths
        # ("a/b" next to "a/b.json/c") and needs no escaping.
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self._meta / digest[:2] / f"{digest}.json"

    def _sweep_temp(self) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        with contextlib.suppress(OSError), os.scandir(self._tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    # ---------------------------------------------------------------- writing

    def _temp_file(self, folder: Path) -> tuple[IO[bytes], Path]:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        return os.fdopen(fd, "wb"), Path(name)

    def _write_temp(self, folder: Path, chunks: Iterator[bytes]) -> tuple[Path, str, int]:
        """Stream ``chunks`` into a new temp file; return (path, md5 hex, size).

        The temp file is removed if anything goes wrong, including an exception
        raised by the caller's data source or a KeyboardInterrupt.
        """
        handle, temp = self._temp_file(folder)
        try:
            with handle:
                digest = _md5()
                size = 0
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                if self._fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp, digest.hexdigest(), size

    def _concatenate(self, files: builtins.list[Path]) -> Path:
        """A new temp file holding ``files`` one after the other, flushed to disk.

        The kernel copies the bytes (``copy_file_range``: no trip through Python, and
        no copy at all on filesystems that share extents); the temp file is removed
        if anything goes wrong."""
        handle, temp = self._temp_file(self._tmp)
        try:
            with handle:
                out = handle.fileno()
                copier = _Copier()
                for part in files:
                    with part.open("rb") as source:
                        left = os.fstat(source.fileno()).st_size
                        while left > 0:
                            copied = copier.copy(source.fileno(), out, left)
                            if copied == 0:
                                break  # end of file: the part shrank behind the store's back
                            left -= copied
                if self._fsync:
                    os.fsync(out)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _install(self, temp: Path, path: Path, key: str) -> None:
        """Atomically move a finished temp file to ``path``; removes it on failure."""
        try:
            # A concurrent delete may prune the parent folder between mkdir and
            # replace; try again a few times rather than fail the write.
            for attempt in range(5):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if not path.parent.resolve().is_relative_to(self.root):
                        raise InvalidKey(key, "resolves outside the store root")
                    os.replace(temp, path)
                    return
                except FileNotFoundError:
                    if attempt == 4:
                        raise
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(
                f"cannot write {key!r}: part of its path is an existing object"
            ) from exc
        except IsADirectoryError as exc:
            raise StorageError(
                f"cannot write {key!r}: it is a folder of other objects on this driver"
            ) from exc
        except OSError as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        finally:
            temp.unlink(missing_ok=True)

    def _write_meta(self, key: str, path: Path, etag: str, content_type: str | None) -> ObjectInfo:
        st = os.stat(path)
        record = {
            "key": key,
            "etag": etag,
            "content_type": content_type,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
        meta = self._meta_path(key)
        try:
            meta.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = self._temp_file(self._tmp)
            try:
                with handle:
                    handle.write(json.dumps(record).encode("utf-8"))
                os.replace(temp, meta)
            finally:
                temp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot record metadata of {key!r}: {exc}") from exc
        return ObjectInfo(key, st.st_size, etag, _utc(st.st_mtime_ns), content_type)

    def _read_meta(self, key: str, st: os.stat_result) -> tuple[str | None, str | None]:
        """(etag, content_type) recorded for ``key``, or Nones when missing or stale."""
        try:
            record = json.loads(self._meta_path(key).read_bytes())
        except (OSError, ValueError):
            return None, None
        # Metadata describes one version of the file: if the file was changed
        # behind the store's back (or a crash came between the two renames), the
        # recorded etag would lie, so it is dropped.
        if (
            not isinstance(record, dict)
            or record.get("key") != key
            or record.get("size") != st.st_size
            or record.get("mtime_ns") != st.st_mtime_ns
        ):
            return None, None
        etag, content_type = record.get("etag"), record.get("content_type")
        return (
            etag if isinstance(etag, str) else None,
            content_type if isinstance(content_type, str) else None,
        )

    def put(self, key: str, data: PutData, *, content_type: str | None = None) -> ObjectInfo:
        """Write an object (see :meth:`ObjectStore.put`)."""
        path = self._path(key)
        check_content_type(content_type)
        try:
            temp, etag, _ = self._write_temp(self._tmp, iter_chunks(data))
        except OSError as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        self._install(temp, path, key)
        return self._write_meta(key, path, etag, content_type or DEFAULT_CONTENT_TYPE)

    # ---------------------------------------------------------------- reading

    def _open_file(self, key: str) -> tuple[IO[bytes], os.stat_result]:
        path = self._path(key)
        try:
            # O_NOFOLLOW: if a symlink was swapped in after _path() checked the
            # path, refuse it instead of following it out of the root.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidKey(key, "is a symbolic link") from None
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):  # a folder: a prefix, not an object
                raise ObjectNotFound(key)
            return os.fdopen(fd, "rb", buffering=0), st
        except BaseException:
            os.close(fd)
            raise

    def open(
        self,
        key: str,
        *,
        start: int | None = None,
        end: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> ByteStream:
        """Read an object or a slice of it (see :meth:`ObjectStore.open`)."""
        check_range(start, end)
        check_chunk_size(chunk_size)
        handle, st = self._open_file(key)
        first = min(start or 0, st.st_size)
        last = st.st_size if end is None else min(end, st.st_size)
        try:
            if first:
                handle.seek(first)
        except OSError:
            handle.close()
            raise
        return ByteStream(handle, length=max(0, last - first), chunk_size=chunk_size)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def stat(self, key: str) -> ObjectInfo:
        """Return an object's info (see :meth:`ObjectStore.stat`)."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        etag, content_type = self._read_meta(key, st)
        return ObjectInfo(key, st.st_size, etag, _utc(st.st_mtime_ns), content_type)

    def list(self, prefix: str = "", *, recursive: bool = True) -> Iterator[ObjectInfo]:
        """List objects by key prefix, sorted by key (see :meth:`ObjectStore.list`)."""
        validate_prefix(prefix)
        directory, tail = split_prefix(prefix)
        if directory:
            folder = self._path(directory)
            key_prefix = directory + "/"
        else:
            folder, key_prefix = self.root, ""
        return self._walk(folder, key_prefix, tail, recursive)

    def _walk(
        self, folder: Path, key_prefix: str, name_prefix: str, recursive: bool
    ) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot list {key_prefix!r}: {exc}") from exc
        ordered: list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            name = entry.name
            if not name.startswith(name_prefix) or (not key_prefix and name == STATE_DIR):
                continue
            try:
                # Symlinks are not followed: they could lead out of the root or
                # list one object twice.
                if entry.is_symlink():
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            # Sorting folders as "name/" makes a depth-first walk come out in the
            # same order as sorting the full keys ("a-b" < "a/c" since "-" < "/").
            ordered.append((name + "/" if is_dir else name, entry, is_dir))
        ordered.sort(key=lambda item: item[0])
        for _, entry, is_dir in ordered:
            key = key_prefix + entry.name
            try:
                validate_key(key)
            except InvalidKey:
                continue  # a file put there by hand that no API call could reach
            if is_dir:
                if recursive:
                    yield from self._walk(Path(entry.path), key + "/", "", recursive)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while listing
            etag, _ = self._read_meta(key, st)
            yield ObjectInfo(key, st.st_size, etag, _utc(st.st_mtime_ns), None)

    # ---------------------------------------------------------------- deleting, copying

    def delete(self, key: str) -> None:
        """Delete an object if it exists (see :meth:`ObjectStore.delete`)."""
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        except PermissionError:
            if not path.is_dir():  # macOS answers EPERM for unlink() of a folder
                raise StorageError(f"cannot delete {key!r}: permission denied") from None
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc
        self._meta_path(key).unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        # Remove folders left empty, so deleted prefixes leave no trace; stops at
        # the first folder that still has something in it.
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def delete_prefix(self, prefix: str) -> int:
        """Delete all objects under a prefix (see :meth:`ObjectStore.delete_prefix`)."""
        if prefix == "":
            raise InvalidKey(prefix, "refusing to delete every object in the store")
        # Collect first: deleting prunes folders that the walk is still reading.
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy an object to another key (see :meth:`ObjectStore.copy`)."""
        self._path(dst)
        info = self.stat(src)
        if src == dst:
            return info
        with self.open(src) as chunks:
            return self.put(dst, chunks, content_type=info.content_type)

    def move(self, src: str, dst: str) -> ObjectInfo:
        """Rename an object (see :meth:`ObjectStore.move`): no byte is copied."""
        source = self._path(src)
        target = self._path(dst)
        if src == dst:
            return self.stat(src)
        try:
            st = os.stat(source)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(src) from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFound(src)
        etag, content_type = self._read_meta(src, st)
        if etag is None:  # no trusted record: compute it, as put() would have
            digest = _md5()
            with source.open("rb") as fh:
                while chunk := fh.read(DEFAULT_CHUNK_SIZE):
                    digest.update(chunk)
            etag = digest.hexdigest()
        self._install(source, target, dst)
        self._meta_path(src).unlink(missing_ok=True)
        self._prune(source.parent)
        return self._write_meta(dst, target, etag, content_type)

    def ping(self) -> None:
        """Check that the root is a writable folder (see :meth:`ObjectStore.ping`)."""
        if not self.root.is_dir():
            raise StorageError(f"object store root {str(self.root)!r} is not a folder")
        if not os.access(self.root, os.W_OK | os.X_OK) or not os.access(
            self._tmp, os.W_OK | os.X_OK
        ):
            raise StorageError(f"object store root {str(self.root)!r} is not writable")

    # ---------------------------------------------------------------- multipart uploads

    def _upload(self, key: str, upload_id: str) -> tuple[Path, dict[str, Any]]:
        """The folder and record of an upload of ``key``; UploadNotFound otherwise."""
        validate_key(key)
        if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
            raise UploadNotFound(key, upload_id)
        folder = self._uploads / upload_id
        try:
            record = json.loads((folder / "upload.json").read_bytes())
        except (OSError, ValueError):
            raise UploadNotFound(key, upload_id) from None
        if not isinstance(record, dict) or record.get("key") != key:
            raise UploadNotFound(key, upload_id)
        return folder, record

    def create_multipart(self, key: str, *, content_type: str | None = None) -> str:
        """Start a multipart upload (see :meth:`ObjectStore.create_multipart`)."""
        self._path(key)
        check_content_type(content_type)
        upload_id = secrets.token_hex(16)
        folder = self._uploads / upload_id
        record = {
            "key": key,
            "content_type": content_type or DEFAULT_CONTENT_TYPE,
            "created": time.time(),
        }
        try:
            folder.mkdir()
            temp = folder / ".tmp-upload.json"
            temp.write_bytes(json.dumps(record).encode("utf-8"))
            os.replace(temp, folder / "upload.json")
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise StorageError(f"cannot start an upload of {key!r}: {exc}") from exc
        return upload_id

    def _part_files(self, folder: Path) -> dict[int, Path]:
        found: dict[int, tuple[int, Path]] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = _PART_FILE.fullmatch(entry.name)
                    if not match:
                        continue
                    number = int(match.group(1))
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                    # Two racing uploads of one part may both exist for a moment:
                    # the newest one wins, as on S3.
                    if number not in found or found[number][0] < mtime:
                        found[number] = (mtime, Path(entry.path))
        except FileNotFoundError:
            return {}
        return {number: path for number, (_, path) in found.items()}

    def upload_part(self, key: str, upload_id: str, part_number: int, data: PutData) -> str:
        """Upload one part (see :meth:`ObjectStore.upload_part`)."""
        check_part_number(part_number)
        folder, _ = self._upload(key, upload_id)
        try:
            temp, etag, _ = self._write_temp(folder, iter_chunks(data))
            final = folder / f"part-{part_number:05d}-{etag}"
            os.replace(temp, final)
        except FileNotFoundError:
            raise UploadNotFound(key, upload_id) from None  # aborted meanwhile
        except OSError as exc:
            raise StorageError(f"cannot store part {part_number} of {key!r}: {exc}") from exc
        for other in folder.glob(f"part-{part_number:05d}-*"):
            if other != final:
                other.unlink(missing_ok=True)
        return etag

    def list_parts(self, key: str, upload_id: str) -> builtins.list[tuple[int, int, str]]:
        """List uploaded parts (see :meth:`ObjectStore.list_parts`)."""
        folder, _ = self._upload(key, upload_id)
        parts: list[tuple[int, int, str]] = []
        for number, path in sorted(self._part_files(folder).items()):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            parts.append((number, size, path.name.rsplit("-", 1)[1]))
        return parts

    def complete_multipart(
        self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]
    ) -> ObjectInfo:
        """Assemble the parts into the object (see :meth:`ObjectStore.complete_multipart`)."""
        path = self._path(key)
        wanted = check_parts(parts)
        folder, record = self._upload(key, upload_id)
        files: list[Path] = []
        for index, (number, etag) in enumerate(wanted):
            part = folder / f"part-{number:05d}-{etag}"
            if not _MD5_HEX.fullmatch(etag) or not part.is_file():
                raise InvalidUpload(
                    f"part {number} with etag {etag!r} was not uploaded to {upload_id!r}"
                )
            if index < len(wanted) - 1 and part.stat().st_size < MIN_PART_SIZE:
                raise InvalidUpload(
                    f"part {number} is smaller than {MIN_PART_SIZE} bytes and is not the last"
                )
            files.append(part)

        try:
            temp = self._concatenate(files)
        except FileNotFoundError:
            raise UploadNotFound(key, upload_id) from None  # aborted meanwhile
        except OSError as exc:
            raise StorageError(f"cannot assemble {key!r}: {exc}") from exc
        # S3's multipart etag: the MD5 of the parts' binary MD5s, then "-" and the count.
        # The parts' etags were taken as they arrived, so the bytes are not read again.
        composite = _md5()
        for _number, etag in wanted:
            composite.update(bytes.fromhex(etag))
        etag = f"{composite.hexdigest()}-{len(wanted)}"
        self._install(temp, path, key)
        content_type = record.get("content_type")
        info = self._write_meta(
            key, path, etag, content_type if isinstance(content_type, str) else None
        )
        shutil.rmtree(folder, ignore_errors=True)
        return info

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (see :meth:`ObjectStore.abort_multipart`)."""
        try:
            folder, _ = self._upload(key, upload_id)
        except UploadNotFound:
            return
        shutil.rmtree(folder, ignore_errors=True)

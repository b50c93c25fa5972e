"""Data sources, and the ``data.import`` job that snapshots one into a new version.

A **source** is a place a project imports from: a SQL database (a SQLAlchemy URL,
PostgreSQL or MySQL) or an S3 bucket and prefix. What may be shown is kept in
``config`` (the URL without its password; bucket, prefix, endpoint, region); the
credentials (the full URL; the S3 access key pair) are encrypted at rest with Fernet
under a key derived from the platform's secret key, and never leave the server: the
API answers ``has_credentials`` instead, and logs and error messages are scrubbed.
Rotating the platform's secret key makes the stored credentials unreadable: such a
source answers 409 until its credentials are entered again (``PATCH``).

Routes (``/api/v1/data``):

- ``POST /sources``, ``PATCH|DELETE /sources/{id}``, ``POST /sources/{id}/test``:
  ``data.source.manage`` (maintainers);
- ``GET /sources?project=``, ``GET /sources/{id}``: ``data.dataset.read``;
- ``POST /sources/{id}/import`` ``{dataset, query | prefix, path?, message?}``:
  ``data.dataset.write`` on the project of both; answers 202 with the job.

A source of a project the caller cannot see answers 404 on every route.

Outbound connections: a source's host (SQL) or endpoint (S3) may be on a private
network or loopback, where databases usually are, but never a link-local,
multicast, unspecified or reserved address, nor a cloud metadata service; the host
is resolved and checked when the source is saved and again before each connection
(PostgreSQL then connects to the very address checked). A SQL source may not name
the platform's own database, nor a Unix socket, nor libpq options that read local
files. An S3 source without keys sends unsigned requests: the worker's own cloud
credentials are never used for a source.

The import of a SQL query runs one read-only statement (``SELECT``/``WITH``/
``VALUES``/``TABLE``) in a read-only transaction and streams its rows, in batches,
into a Parquet file (bounded memory); an S3 import copies every object under the
prefix (each key checked like any path of a version). Either way the files are
stored content-addressed, and the draft is committed as the dataset's next version
(source ``{"kind": "import", "source", "job"}``, a lineage edge ``data.source →
data.version`` named ``imported``, the ``dataset.version.created`` event). A failed
import leaves no version and no draft.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import logging
import re
import socket
import tempfile
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from litestar import delete, get, patch, post
from litestar.exceptions import ClientException
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import Session

from zhongtai.hooks.events import emit, utcnow
from zhongtai.identity.guard import Access, AccessDep, requires
from zhongtai.jobs import JobType
from zhongtai.jobs.context import JobCancelled
from zhongtai.logs import mask_secrets
from zhongtai.metadata.lineage import EntityRef, record_edge
from zhongtai.web.errors import field_error
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep
from zhongtai_data.archives import safe_path
from zhongtai_data.blobs import TooLarge, forget_unused, store_blob
from zhongtai_data.models import NAME_MAX, PATH_MAX, Dataset, File, Source, Version
from zhongtai_data.permissions import DATASET_READ, DATASET_WRITE, SOURCE_MANAGE
from zhongtai_data.versions import assign_number, put_file

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

    from zhongtai.jobs import JobContext
    from zhongtai.jobs.models import Job
    from zhongtai.platform import Platform

__all__ = [
    "IMPORT",
    "ROUTES",
    "CredentialsUnreadable",
    "ImportParams",
    "UnsafeHost",
    "check_select",
    "open_secret",
    "seal_secret",
]

log = logging.getLogger("zhongtai.data")

TAGS = ["data"]
Ref = Annotated[str, PathParameter(min_length=1, max_length=32)]
SOURCE_KIND = "data.source"
VERSION_KIND = "data.version"
KEY_CONTEXT = b"zhongtai data source credentials v1"
MASK = "********"

# SQLAlchemy drivers a SQL source may use, by the scheme given: PostgreSQL through
# psycopg 3 (the platform's own driver), MySQL through PyMySQL (installed separately).
SQL_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
}
# URL query options a SQL source may set; others (host=/path, passfile, sslkey,
# service, options…) could reach local files or sockets, or other hosts.
SQL_OPTIONS = frozenset(
    {"sslmode", "connect_timeout", "application_name", "target_session_attrs", "charset"}
)
CONNECT_TIMEOUT = 10  # seconds
BATCH_ROWS = 10_000  # rows per fetch from the database, and per Parquet row group
MAX_OBJECTS = 100_000  # objects one S3 import may copy
HOST = re.compile(r"^[A-Za-z0-9._-]{1,253}$|^\[?[0-9A-Fa-f:.]{2,45}\]?$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
REGION = re.compile(r"^[a-z0-9-]{1,32}$")

_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)


class CredentialsUnreadable(Exception):
    """The stored credentials cannot be decrypted (the platform's secret key changed)."""


class UnsafeHost(ValueError):
    """A source's host must not be contacted; the message says why (no secrets)."""


class ImportFailed(Exception):
    """An import could not be done; the message is one line, with no secrets."""


# --------------------------------------------------------------------------- secrets


def _fernet(platform: Platform) -> Fernet:
    """Fernet keyed by HKDF-SHA256 of the platform's secret key (its own context)."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"zhongtai-data-sources", info=KEY_CONTEXT
    ).derive(platform.secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def seal_secret(platform: Platform, value: dict[str, str]) -> str:
    """Encrypt credentials for the ``secret`` column."""
    return _fernet(platform).encrypt(json.dumps(value).encode()).decode("ascii")


def open_secret(platform: Platform, token: str | None) -> dict[str, str]:
    """Decrypt the ``secret`` column (``{}`` when there is none).

    Raises:
        CredentialsUnreadable: the token was sealed under another secret key, or altered.
    """
    from cryptography.fernet import InvalidToken

    if not token:
        return {}
    try:
        value: dict[str, str] = json.loads(_fernet(platform).decrypt(token.encode("ascii")))
    except (InvalidToken, ValueError):
        raise CredentialsUnreadable(
            "the source's credentials cannot be decrypted (the platform's secret key "
            "changed?): enter them again"
        ) from None
    return value


def _scrub(message: str, secrets: Sequence[str | None]) -> str:
    """One line of ``message`` with the given secrets and anything like one masked."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            message = message.replace(secret, MASK)
    line = " ".join(mask_secrets(message).split())
    return line[:500] or "unknown error"


# --------------------------------------------------------------------------- checks


def _vet_addresses(host: str, port: int, *, must_resolve: bool) -> list[str]:
    """The addresses ``host`` resolves to, if every one of them may be contacted.

    Loopback and private addresses are allowed (databases live there); link-local
    (169.254/16: cloud metadata), multicast, unspecified and reserved ones are not.
    """
    name = host.strip("[]")
    if name.lower().rstrip(".") in _METADATA_NAMES:
        raise UnsafeHost(f"{name} is a cloud metadata host name")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        if must_resolve:
            raise UnsafeHost(f"{name} does not resolve") from None
        return []
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        inner = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        for candidate in (address, inner):
            if candidate is None:
                continue
            if candidate in _METADATA_ADDRESSES:
                raise UnsafeHost(f"{name}: {candidate} is a cloud metadata address")
            if candidate.is_link_local or candidate.is_multicast or candidate.is_unspecified:
                raise UnsafeHost(f"{name}: {candidate} is not an address a source may use")
            if candidate.is_reserved and not (candidate.is_loopback or candidate.is_private):
                raise UnsafeHost(f"{name}: {candidate} is a reserved address")
        if str(address) not in addresses:
            addresses.append(str(address))
    if must_resolve and not addresses:
        raise UnsafeHost(f"{name} does not resolve")
    return addresses


def _default_port(url: URL) -> int:
    return url.port or (3306 if url.get_backend_name() == "mysql" else 5432)


def parse_sql_url(value: str) -> URL:
    """Check a SQL source's URL and return it with its driver chosen.

    Raises:
        ValueError: why it is refused; the message never repeats the URL.
    """
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError("not a SQLAlchemy database URL (scheme://user:password@host/db)") from None
    driver = SQL_DRIVERS.get(url.drivername)
    if driver is None:
        allowed = ", ".join(sorted(SQL_DRIVERS))
        raise ValueError(f"scheme {url.drivername!r} is not allowed; use one of {allowed}")
    url = url.set(drivername=driver)
    if not url.host:
        raise ValueError("name the database's host (Unix sockets are not allowed)")
    if not HOST.match(url.host):
        raise ValueError("the host is not a host name or an IP address")
    if not url.database:
        raise ValueError("name the database (…/dbname)")
    unknown = sorted(set(url.query) - SQL_OPTIONS)
    if unknown:
        allowed = ", ".join(sorted(SQL_OPTIONS))
        raise ValueError(f"option {unknown[0]!r} is not allowed; allowed: {allowed}")
    return url


def _same_database(platform: Platform, url: URL, addresses: Sequence[str]) -> bool:
    """Whether ``url`` names the platform's own metadata database."""
    own = platform.db.engine.url
    if own.get_backend_name() != url.get_backend_name() or own.database != url.database:
        return False
    if _default_port(own) != _default_port(url) or not own.host:
        return False
    if own.host == url.host:
        return True
    try:
        theirs = _vet_addresses(own.host, _default_port(own), must_resolve=False)
    except UnsafeHost:
        return False
    return bool(set(theirs) & set(addresses))


def _check_sql_target(platform: Platform, url: URL, *, must_resolve: bool) -> list[str]:
    """Vet the URL's host; refuse the platform's own database. Returns the addresses."""
    assert url.host is not None
    addresses = _vet_addresses(url.host, _default_port(url), must_resolve=must_resolve)
    if _same_database(platform, url, addresses):
        raise UnsafeHost("that is the platform's own database")
    return addresses


def _check_endpoint(value: str, *, must_resolve: bool) -> str:
    """An S3 endpoint URL: http(s), a host, no user info, query or fragment."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("the scheme must be http or https")
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValueError("no user name or password in the URL: give the keys instead")
    if not parts.hostname or parts.query or parts.fragment:
        raise ValueError("give scheme://host[:port][/path] only")
    default = 443 if parts.scheme == "https" else 80
    _vet_addresses(parts.hostname, port or default, must_resolve=must_resolve)
    return value.rstrip("/")


def _check_prefix(value: str, field: str) -> str:
    """A folder-like prefix: relative, safe, without a trailing ``/`` ("" for none)."""
    value = value.strip().strip("/")
    if not value:
        return ""
    try:
        return safe_path(value)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None


_STATEMENT_START = frozenset({"select", "with", "values", "table"})


def check_select(query: str) -> str:
    """Refuse anything but one read-only statement (``SELECT``, ``WITH``, ``VALUES``,
    ``TABLE``); return it without a trailing ``;``.

    A lexical check (strings, quoted names, comments and dollar quotes are skipped);
    the read-only transaction the import runs in is what actually stops writes.

    Raises:
        ValueError: the reason.
    """
    text = query
    code: list[str] = []  # the query with literals and comments blanked out
    end_of_statement = 0  # just after its last token: trailing ';' and comments go
    after_semicolon = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        start = i
        if c == "-" and text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline
            code.append(" ")
            continue
        if c == "/" and text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close < 0:
                raise ValueError("a comment is not closed")
            i = close + 2
            code.append(" ")
            continue
        if c.isspace() or c == ";":
            after_semicolon = after_semicolon or c == ";"
            i += 1
            code.append(" ")
            continue
        if after_semicolon:
            raise ValueError("give one statement (no ';' between statements)")
        if c in "'\"`":
            escapes = c == "'" and i > 0 and text[i - 1] in "eE"
            j = i + 1
            while True:
                if j >= n:
                    raise ValueError("a quoted string or name is not closed")
                if escapes and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            code.append(" x ")
        elif c == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", text[i:])):
            close = text.find(tag.group(), i + len(tag.group()))
            if close < 0:
                raise ValueError("a dollar-quoted string is not closed")
            i = close + len(tag.group())
            code.append(" x ")
        else:
            i += 1
            code.append(c)
        if i > start:
            end_of_statement = i
    words = "".join(code).split(None, 1)
    first = words[0].lstrip("(").lower() if words else ""
    if first not in _STATEMENT_START:
        raise ValueError("only a SELECT (or WITH … SELECT, VALUES, TABLE) may be imported")
    return text[:end_of_statement].strip()


# --------------------------------------------------------------------------- bodies


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    project: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=r"^[^/\\\x00-\x1f]+$")
    kind: Literal["sql", "s3"]
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    bucket: str | None = Field(default=None, min_length=1, max_length=63)
    prefix: str | None = Field(default=None, max_length=PATH_MAX)
    endpoint_url: str | None = Field(default=None, min_length=1, max_length=2000)
    region: str | None = Field(default=None, min_length=1, max_length=32)
    access_key_id: str | None = Field(default=None, min_length=1, max_length=256)
    secret_access_key: str | None = Field(default=None, min_length=1, max_length=256)


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=r"^[^/\\\x00-\x1f]+$"
    )
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    password: str | None = Field(default=None, min_length=1, max_length=1000)
    access_key_id: str | None = Field(default=None, min_length=1, max_length=256)
    secret_access_key: str | None = Field(default=None, min_length=1, max_length=256)


def _valid_query(value: str | None) -> str | None:
    return None if value is None else check_select(value)


def _valid_prefix(value: str | None) -> str | None:
    """A folder under the source's prefix: leading and trailing ``/`` do not matter."""
    if value is None or not value.strip("/"):
        return None
    return safe_path(value.strip("/"))


def _valid_path(value: str | None) -> str | None:
    """Where the import goes in the version: a safe relative path."""
    return None if value is None else safe_path(value.rstrip("/") or value)


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=32)
    query: str | None = Field(default=None, min_length=1, max_length=100_000)
    prefix: str | None = Field(default=None, max_length=PATH_MAX)
    path: str | None = Field(default=None, min_length=1, max_length=PATH_MAX)
    message: str = Field(default="", max_length=10_000)

    _query = field_validator("query")(_valid_query)
    _prefix = field_validator("prefix")(_valid_prefix)
    _path = field_validator("path")(_valid_path)


class ImportParams(BaseModel):
    """``data.import``: what to import from which source into which dataset."""

    model_config = ConfigDict(extra="forbid")

    source_id: str = Field(min_length=1, max_length=32)
    dataset_id: str = Field(min_length=1, max_length=32)
    query: str | None = Field(default=None, min_length=1, max_length=100_000)
    prefix: str | None = Field(default=None, max_length=PATH_MAX)
    path: str | None = Field(default=None, min_length=1, max_length=PATH_MAX)
    message: str = Field(default="", max_length=10_000)

    _query = field_validator("query")(_valid_query)
    _prefix = field_validator("prefix")(_valid_prefix)
    _path = field_validator("path")(_valid_path)


# --------------------------------------------------------------------------- helpers


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def source_dict(source: Source) -> dict[str, Any]:
    """A source as the API shows it: never its secret."""
    return {
        "id": source.id,
        "project": source.project_id,
        "name": source.name,
        "kind": source.kind,
        "config": dict(source.config or {}),
        "has_credentials": bool(source.has_credentials),
        "created_by": source.created_by,
        "created_at": _iso(source.created_at),
        "updated_at": _iso(source.updated_at),
    }


def _source(session: Session, access: Access, source_id: str, permission: Any) -> Source:
    """The source, if the caller holds ``permission`` on its project; 404 otherwise."""
    source = session.get(Source, source_id)
    access.require(session, project_id=source.project_id if source else None, permission=permission)
    assert source is not None
    return source


def _sql_config(platform: Platform, value: str, field: str = "url") -> tuple[URL, dict[str, Any]]:
    try:
        url = parse_sql_url(value)
        _check_sql_target(platform, url, must_resolve=False)
    except ValueError as exc:  # UnsafeHost included
        raise field_error(field, str(exc)) from None
    shown = url._replace(password=None).render_as_string(hide_password=False)
    return url, {"url": shown}


def _seal_sql(platform: Platform, url: URL) -> tuple[str, bool]:
    full = url.render_as_string(hide_password=False)
    return seal_secret(platform, {"url": full}), url.password is not None


def _s3_keys(access_key_id: str | None, secret_access_key: str | None) -> dict[str, str]:
    if (access_key_id is None) != (secret_access_key is None):
        field = "secret_access_key" if secret_access_key is None else "access_key_id"
        raise field_error(field, "give both access_key_id and secret_access_key, or neither")
    if access_key_id is None or secret_access_key is None:
        return {}
    return {"access_key_id": access_key_id, "secret_access_key": secret_access_key}


def _refuse_fields(data: BaseModel, names: Sequence[str], kind: str) -> None:
    for name in names:
        if getattr(data, name) is not None:
            raise field_error(name, f"not a field of a {kind} source")


# --------------------------------------------------------------------------- routes


@post("/sources", tags=TAGS, sync_to_thread=True, opt=requires(SOURCE_MANAGE), status_code=201)
def create_source(
    platform: PlatformDep, access: AccessDep, data: JSONBody[SourceIn]
) -> dict[str, Any]:
    """Register a source: ``kind: sql`` with ``url``, or ``kind: s3`` with ``bucket``,
    ``prefix?``, ``endpoint_url?``, ``region?`` and the key pair (optional: without
    it, requests are unsigned). The credentials are encrypted and never shown."""
    access.audit(action="data.source.create", target_kind="source")
    with platform.db.transaction() as session:
        access.require(session, project_id=data.project)
    secret: str | None = None
    if data.kind == "sql":
        _refuse_fields(
            data,
            ["bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key"],
            "sql",
        )
        if data.url is None:
            raise field_error("url", "a sql source needs its SQLAlchemy URL")
        url, config = _sql_config(platform, data.url)
        secret, has_credentials = _seal_sql(platform, url)
    else:
        _refuse_fields(data, ["url"], "s3")
        if data.bucket is None:
            raise field_error("bucket", "an s3 source needs its bucket")
        if not BUCKET.match(data.bucket) or ".." in data.bucket:
            raise field_error("bucket", "not an S3 bucket name (3-63 a-z, 0-9, '.', '-')")
        region = data.region or "us-east-1"
        if not REGION.match(region):
            raise field_error("region", "not a region name (like eu-west-1)")
        endpoint = None
        if data.endpoint_url is not None:
            try:
                endpoint = _check_endpoint(data.endpoint_url, must_resolve=False)
            except ValueError as exc:
                raise field_error("endpoint_url", str(exc)) from None
        config = {
            "bucket": data.bucket,
            "prefix": _check_prefix(data.prefix or "", "prefix"),
            "endpoint_url": endpoint,
            "region": region,
        }
        keys = _s3_keys(data.access_key_id, data.secret_access_key)
        secret = seal_secret(platform, keys) if keys else None
        has_credentials = bool(keys)
    try:
        with platform.db.transaction() as session:
            access.require(session, project_id=data.project)
            taken = session.scalar(
                select(Source.id).where(Source.project_id == data.project, Source.name == data.name)
            )
            if taken:
                raise field_error("name", f"{data.name!r} is already a source here", 409)
            source = Source(
                project_id=data.project,
                name=data.name,
                kind=data.kind,
                config=config,
                secret=secret,
                has_credentials=has_credentials,
                created_by=access.principal.user_id,
            )
            session.add(source)
            session.flush()
            access.audit(target_id=source.id, project_id=source.project_id)
            return source_dict(source)
    except IntegrityError:  # a concurrent request took the name
        raise field_error("name", f"{data.name!r} is already a source here", 409) from None


@get("/sources", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_READ))
def list_sources(
    platform: PlatformDep,
    access: AccessDep,
    project: Annotated[str | None, QueryParameter(max_length=32)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Sources of the projects the caller can read, newest first (never their secrets)."""
    page = page_for(platform.settings, limit, cursor)
    query = select(Source).where(Source.project_id.in_(access.visible_projects()))
    if project is not None:
        query = query.where(Source.project_id == project)
    with platform.db.transaction() as session:
        return paginate(session, query, Source.id, page, newest_first=True).to_dict(source_dict)


@get("/sources/{source_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(DATASET_READ))
def get_source(platform: PlatformDep, access: AccessDep, source_id: Ref) -> dict[str, Any]:
    with platform.db.transaction() as session:
        return source_dict(_source(session, access, source_id, DATASET_READ))


@patch("/sources/{source_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(SOURCE_MANAGE))
def update_source(
    platform: PlatformDep, access: AccessDep, source_id: Ref, data: JSONBody[SourcePatch]
) -> dict[str, Any]:
    """Rename a source or replace its credentials: for ``sql`` a new ``url`` or just its
    ``password``; for ``s3`` a new ``access_key_id`` and ``secret_access_key``."""
    access.audit(action="data.source.update", target_kind="source", target_id=source_id)
    with platform.db.transaction() as session:
        source = _source(session, access, source_id, SOURCE_MANAGE)
        if data.name is not None and data.name != source.name:
            taken = session.scalar(
                select(Source.id).where(
                    Source.project_id == source.project_id, Source.name == data.name
                )
            )
            if taken:
                raise field_error("name", f"{data.name!r} is already a source here", 409)
            source.name = data.name
        if source.kind == "sql":
            _refuse_fields(data, ["access_key_id", "secret_access_key"], "sql")
            if data.url is not None or data.password is not None:
                if data.url is not None:
                    url, config = _sql_config(platform, data.url)
                else:
                    try:
                        old = open_secret(platform, source.secret).get("url")
                    except CredentialsUnreadable as exc:
                        raise field_error("url", str(exc), 409) from None
                    url = parse_sql_url(old or source.config["url"])
                    config = dict(source.config)
                if data.password is not None:
                    url = url.set(password=data.password)
                source.config = config
                source.secret, source.has_credentials = _seal_sql(platform, url)
        else:
            _refuse_fields(data, ["url", "password"], "s3")
            keys = _s3_keys(data.access_key_id, data.secret_access_key)
            if keys:
                source.secret, source.has_credentials = seal_secret(platform, keys), True
        source.updated_at = utcnow()
        session.flush()
        access.audit(project_id=source.project_id)
        return source_dict(source)


@delete("/sources/{source_id:str}", tags=TAGS, sync_to_thread=True, opt=requires(SOURCE_MANAGE))
def delete_source(platform: PlatformDep, access: AccessDep, source_id: Ref) -> None:
    """Forget a source and its credentials (versions imported from it stay)."""
    access.audit(action="data.source.delete", target_kind="source", target_id=source_id)
    with platform.db.transaction() as session:
        source = _source(session, access, source_id, SOURCE_MANAGE)
        access.audit(project_id=source.project_id)
        session.delete(source)


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """A source's settings and decrypted credentials, out of any session."""

    id: str
    project_id: str
    name: str
    kind: str
    config: dict[str, Any]
    secret: dict[str, str]

    def secrets(self) -> list[str | None]:
        url = self.secret.get("url")
        password = make_url(url).password if url else None
        return [str(password) if password else None, self.secret.get("secret_access_key")]


def _load(platform: Platform, source: Source) -> _Loaded:
    return _Loaded(
        id=source.id,
        project_id=source.project_id,
        name=source.name,
        kind=source.kind,
        config=dict(source.config or {}),
        secret=open_secret(platform, source.secret),
    )


@post(
    "/sources/{source_id:str}/test",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(SOURCE_MANAGE),
    status_code=200,
)
def test_source(platform: PlatformDep, access: AccessDep, source_id: Ref) -> dict[str, Any]:
    """Connect: ``SELECT 1`` on a database, list one object of an S3 prefix. Answers
    ``{ok: true, message}`` or ``{ok: false, error}`` (one line, no secrets)."""
    with platform.db.transaction() as session:
        source = _source(session, access, source_id, SOURCE_MANAGE)
        try:
            loaded = _load(platform, source)
        except CredentialsUnreadable as exc:
            raise ClientException(status_code=409, detail=str(exc)) from None
    try:
        if loaded.kind == "sql":
            with _sql_connection(platform, loaded) as connection:
                connection.exec_driver_sql("SELECT 1").scalar()
            message = "connected; SELECT 1 answered"
        else:
            client = _s3_client(loaded)
            prefix = _s3_prefix(loaded.config, "")
            found = client.list_objects_v2(Bucket=loaded.config["bucket"], Prefix=prefix, MaxKeys=1)
            message = f"connected; listing s3://{loaded.config['bucket']}/{prefix} works"
            if not found.get("KeyCount"):
                message += " (no objects yet)"
    except Exception as exc:
        return {"ok": False, "error": _scrub(_describe(exc), loaded.secrets())}
    return {"ok": True, "message": message}


@post(
    "/sources/{source_id:str}/import",
    tags=TAGS,
    sync_to_thread=True,
    opt=requires(DATASET_WRITE),
    status_code=202,
)
def import_source(
    platform: PlatformDep, access: AccessDep, source_id: Ref, data: JSONBody[ImportIn]
) -> dict[str, Any]:
    """Queue a ``data.import`` job: ``query`` (sql: one SELECT, into ``path``, by
    default ``import.parquet``) or the objects under ``prefix`` (s3: under the
    source's prefix; into folder ``path`` if given), as the dataset's next version."""
    from zhongtai.jobs.engine import JobRefused, jobs_engine
    from zhongtai_data.api import _dataset

    access.audit(action="data.source.import", target_kind="source", target_id=source_id)
    engine = jobs_engine(platform)
    job_type = engine.types.get(IMPORT.name)
    if job_type is None:  # pragma: no cover - registered with the routes
        raise ClientException(status_code=503, detail="the data.import job type is not loaded")
    try:
        with platform.db.transaction() as session:
            source = _source(session, access, source_id, DATASET_WRITE)
            dataset = _dataset(session, access, data.dataset, DATASET_WRITE)
            if dataset.project_id != source.project_id:
                raise field_error("dataset", "the dataset is not in the source's project")
            if source.kind == "sql":
                if data.prefix is not None:
                    raise field_error("prefix", "a sql source imports a query, not a prefix")
                if data.query is None:
                    raise field_error("query", "give the SELECT to import")
                if data.path is not None and not data.path.endswith(".parquet"):
                    raise field_error("path", "the import is a Parquet file: end it in .parquet")
            elif data.query is not None:
                raise field_error("query", "an s3 source imports objects, not a query")
            job = engine.submit(
                session,
                job_type=job_type,
                project_id=source.project_id,
                principal=access.principal,
                params=ImportParams(
                    source_id=source.id,
                    dataset_id=dataset.id,
                    query=data.query,
                    prefix=data.prefix,
                    path=data.path,
                    message=data.message,
                ),
            )
            access.audit(project_id=source.project_id, detail={"dataset": dataset.id})
            body = {"job": job.id, "source": source.id, "dataset": dataset.id}
    except JobRefused as exc:
        raise ClientException(status_code=429, detail=str(exc)) from None
    engine.dispatch([job])
    return body


ROUTES = [
    create_source,
    list_sources,
    get_source,
    update_source,
    delete_source,
    test_source,
    import_source,
]


# --------------------------------------------------------------------------- connecting


def _describe(exc: BaseException) -> str:
    """An exception as one line, without SQL statements or parameters."""
    from sqlalchemy.exc import DBAPIError, StatementError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    if isinstance(exc, StatementError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    if isinstance(exc, UnsafeHost | ImportFailed | TooLarge):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _SQLConnection:
    """A connection to a SQL source in a read-only transaction (rolled back at the end)."""

    def __init__(self, platform: Platform, source: _Loaded) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        url = parse_sql_url(source.secret.get("url") or source.config["url"])
        addresses = _check_sql_target(platform, url, must_resolve=True)
        connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
        if url.get_backend_name() == "postgresql":
            # Connect to the address just checked (a name that now resolves elsewhere
            # is not followed); the name is still used for TLS.
            connect_args["hostaddr"] = addresses[0]
        else:
            connect_args["host"] = addresses[0]
        self.backend = url.get_backend_name()
        self.engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)

    def __enter__(self) -> Any:
        self.connection = self.engine.connect()
        try:
            if self.backend == "postgresql":
                self.connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            else:
                self.connection.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
        except BaseException:
            self.close()
            raise
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.connection.rollback()
            self.connection.close()
        except Exception:  # the connection is gone anyway
            log.debug("closing a source connection failed", exc_info=True)
        finally:
            self.engine.dispose()


def _sql_connection(platform: Platform, source: _Loaded) -> _SQLConnection:
    return _SQLConnection(platform, source)


def _s3_prefix(config: dict[str, Any], sub: str) -> str:
    """The key prefix to list: the source's prefix, then ``sub``, each as a folder."""
    parts = [p for p in (config.get("prefix") or "", sub) if p]
    return "".join(f"{p}/" for p in parts)


def _s3_client(source: _Loaded) -> Any:
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:  # pragma: no cover - boto3 comes with zhongtai[s3]
        raise ImportFailed("s3 sources need boto3 (install zhongtai[s3])") from None
    endpoint = source.config.get("endpoint_url")
    if endpoint:
        _check_endpoint(endpoint, must_resolve=True)
    keys = source.secret
    options: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": 60,
        "retries": {"max_attempts": 3, "mode": "standard"},
    }
    if endpoint:
        options["s3"] = {"addressing_style": "path"}
    if not keys:
        options["signature_version"] = UNSIGNED  # never the worker's own credentials
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=source.config.get("region") or "us-east-1",
        aws_access_key_id=keys.get("access_key_id"),
        aws_secret_access_key=keys.get("secret_access_key"),
        config=Config(**options),
    )


# --------------------------------------------------------------------------- the job


def _plain(value: Any) -> Any:
    """A database value as something pyarrow infers one type for."""
    if value is None or isinstance(
        value, bool | int | float | str | bytes | Decimal | datetime | date | time | timedelta
    ):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        name = str(name) or "column"
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 1)
        out.append(name)
    return out


def _first_array(values: list[Any]) -> Any:
    """The column's array in the first batch; its type becomes the file's."""
    import pyarrow as pa

    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if pa.types.is_null(array.type):  # all NULL so far: text
        return pa.array(values, type=pa.string())
    if pa.types.is_decimal(array.type) and array.type.precision < 38:
        return array.cast(pa.decimal128(38, array.type.scale))
    return array


def _next_array(name: str, values: list[Any], kind: Any) -> Any:
    import pyarrow as pa

    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        if pa.types.is_string(kind):
            return pa.array([None if v is None else str(v) for v in values], type=kind)
        raise ImportFailed(
            f"column {name!r}: a value does not fit the type of the first rows ({kind}): {exc}"
        ) from None


def _query_to_parquet(
    ctx: JobContext, source: _Loaded, query: str, target: Path
) -> tuple[int, list[str]]:
    """Stream the query's rows into a Parquet file; return (rows, column names)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    writer: Any = None
    with _sql_connection(ctx.platform, source) as connection:
        ctx.log("connected; the transaction is read-only")
        # no_parameters: the query goes to the driver as it is ('%' is no placeholder).
        streaming = connection.execution_options(yield_per=BATCH_ROWS, no_parameters=True)
        result = streaming.exec_driver_sql(query)
        if not result.returns_rows:
            raise ImportFailed("the statement returns no rows")
        names = _unique(list(result.keys()))
        schema: Any = None
        try:
            for batch in result.partitions(BATCH_ROWS):
                ctx.check_cancelled()
                columns = [[_plain(v) for v in col] for col in zip(*batch, strict=True)]
                if schema is None:
                    arrays = [_first_array(values) for values in columns]
                    schema = pa.schema(
                        [pa.field(n, a.type) for n, a in zip(names, arrays, strict=True)]
                    )
                    writer = pq.ParquetWriter(target, schema)
                else:
                    arrays = [
                        _next_array(n, values, schema.field(n).type)
                        for n, values in zip(names, columns, strict=True)
                    ]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                rows += len(batch)
                ctx.progress(None, f"{rows} rows read")
            if writer is None:  # no rows: the columns, as text
                schema = pa.schema([pa.field(n, pa.string()) for n in names])
                writer = pq.ParquetWriter(target, schema)
                writer.write_table(schema.empty_table())
        finally:
            if writer is not None:
                writer.close()
            result.close()
    return rows, names


def _objects(ctx: JobContext, client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        ctx.check_cancelled()
        for item in page.get("Contents", []):
            key, size = item["Key"], int(item["Size"])
            if key.endswith("/") and size == 0:
                continue  # a "folder" marker
            keys.append((key, size))
            if len(keys) > MAX_OBJECTS:
                raise ImportFailed(f"more than {MAX_OBJECTS} objects under the prefix")
    return keys


def _copy_objects(
    ctx: JobContext, source: _Loaded, params: ImportParams, limit: int
) -> list[tuple[str, str, int]]:
    """Copy each object under the prefix into the store; (path, sha256, size) each."""
    client = _s3_client(source)
    bucket = source.config["bucket"]
    prefix = _s3_prefix(source.config, params.prefix or "")
    objects = _objects(ctx, client, bucket, prefix)
    if not objects:
        raise ImportFailed(f"no objects under s3://{bucket}/{prefix}")
    total = sum(size for _key, size in objects) or 1
    ctx.log(f"{len(objects)} objects ({total} bytes) under s3://{bucket}/{prefix}")
    planned = []
    for key, size in objects:
        relative = key[len(prefix) :]
        try:
            path = safe_path(f"{params.path}/{relative}" if params.path else relative)
        except ValueError as exc:
            raise ImportFailed(f"object {key!r}: {exc}") from None
        if len(path.encode()) > PATH_MAX:
            raise ImportFailed(f"object {key!r}: the path is longer than {PATH_MAX} bytes")
        if size > limit:
            raise ImportFailed(f"object {key!r}: larger than {limit} bytes")
        planned.append((key, path))
    stored: list[tuple[str, str, int]] = []
    done = 0
    try:
        for key, path in planned:
            ctx.check_cancelled()
            with tempfile.TemporaryFile() as spool:
                client.download_fileobj(bucket, key, spool)
                sha256, size = store_blob(ctx.platform, spool, limit=limit)
            stored.append((path, sha256, size))
            done += size
            ctx.log(f"{key} → {path} ({size} bytes)")
            ctx.progress(done / total, f"{len(stored)} of {len(planned)} objects")
    except BaseException:
        _forget(ctx.platform, {sha for _p, sha, _s in stored})
        raise
    return stored


def _forget(platform: Platform, shas: set[str]) -> None:
    from zhongtai_data.api import _delete_objects

    with platform.db.transaction() as session:
        keys = forget_unused(session, shas)
    _delete_objects(platform, keys)


def _start_draft(ctx: JobContext, params: ImportParams) -> tuple[_Loaded, str, str]:
    """Check the source and dataset (both in the job's project), drop what an earlier
    attempt of this job left, and start the draft; returns (source, draft id, dataset
    name)."""
    platform = ctx.platform
    with platform.db.transaction() as session:
        source = session.get(Source, params.source_id)
        dataset = session.get(Dataset, params.dataset_id)
        if source is None or source.project_id != ctx.project_id:
            raise ImportFailed("no such source in this project")
        if dataset is None or dataset.project_id != ctx.project_id:
            raise ImportFailed("no such dataset in this project")
        if source.kind == "sql" and not params.query:
            raise ImportFailed("a sql source imports a query: give query")
        if source.kind == "s3" and params.query:
            raise ImportFailed("an s3 source imports objects, not a query")
        try:
            loaded = _load(platform, source)
        except CredentialsUnreadable as exc:
            raise ImportFailed(str(exc)) from None
        stale = [
            v
            for v in session.scalars(
                select(Version).where(Version.dataset_id == dataset.id, Version.status == "draft")
            )
            if (v.source or {}).get("job") == ctx.job_id
        ]
        shas: set[str] = set()
        for old in stale:
            shas |= set(session.scalars(select(File.sha256).where(File.version_id == old.id)))
            session.delete(old)
        session.flush()
        keys = forget_unused(session, shas)
        version = Version(
            dataset_id=dataset.id,
            status="draft",
            message=params.message,
            source={"kind": "import", "source": source.id, "job": ctx.job_id},
            created_by=ctx.owner_id,
        )
        session.add(version)
        session.flush()
        draft_id, dataset_name = version.id, dataset.name
    if keys:
        from zhongtai_data.api import _delete_objects

        _delete_objects(platform, keys)
    return loaded, draft_id, dataset_name


def _commit(
    ctx: JobContext, params: ImportParams, draft_id: str, files: list[tuple[str, str, int]]
) -> tuple[int, Job | None]:
    """Add the files to the draft and commit it as the next version, like
    ``POST …/commit`` does; return (number, the quality job if one was queued)."""
    from zhongtai_data.api import VersionCreated

    platform = ctx.platform
    with platform.db.transaction() as session:
        dataset = session.get(Dataset, params.dataset_id)
        if dataset is None:
            raise ImportFailed("the dataset was deleted during the import")
        # One commit of a dataset at a time: the row lock orders the numbers.
        session.refresh(dataset, with_for_update=not platform.db.is_embedded)
        version = session.get(Version, draft_id)
        if version is None or version.status != "draft":
            raise ImportFailed("the import's draft was deleted or committed meanwhile")
        for path, sha256, size in files:
            put_file(session, version, path, sha256, size)
        session.flush()
        number = assign_number(session, version)
        record_edge(
            session,
            EntityRef(SOURCE_KIND, params.source_id),
            EntityRef(VERSION_KIND, version.id),
            "imported",
            project_id=dataset.project_id,
        )
        session.flush()
        job = _queue_quality(ctx, session, version.id)
        emit(
            session,
            VersionCreated(
                project=dataset.project_id,
                dataset_id=dataset.id,
                version_id=version.id,
                number=number,
            ),
        )
    if job is not None:
        ctx.engine.dispatch([job])
    return number, job


def _queue_quality(ctx: JobContext, session: Session, version_id: str) -> Job | None:
    from zhongtai.jobs.engine import JobRefused
    from zhongtai_data.quality import QualityParams

    has_tables = session.scalar(
        select(File.id).where(File.version_id == version_id, File.tabular.is_not(None)).limit(1)
    )
    job_type = ctx.engine.types.get("data.quality")
    if not has_tables or job_type is None:
        return None
    try:
        with session.begin_nested():
            return ctx.engine.submit(
                session,
                job_type=job_type,
                project_id=ctx.project_id,
                principal=None,
                params=QualityParams(version_id=version_id),
                parent_id=ctx.job_id,
            )
    except JobRefused as exc:
        ctx.log(f"no quality report queued: {exc}")
        return None


def _drop_draft(platform: Platform, draft_id: str) -> None:
    """Delete the import's draft (and blobs only it used)."""
    from zhongtai_data.api import _delete_objects

    with platform.db.transaction() as session:
        version = session.get(Version, draft_id)
        if version is None or version.status != "draft":
            return
        shas = set(session.scalars(select(File.sha256).where(File.version_id == version.id)))
        session.delete(version)
        session.flush()
        keys = forget_unused(session, shas)
    _delete_objects(platform, keys)


def run(ctx: JobContext, params: ImportParams) -> dict[str, Any]:
    from zhongtai_data.api import _settings

    platform = ctx.platform
    limit = _settings(platform).max_file_size
    secrets: list[str | None] = []
    draft_id: str | None = None
    files: list[tuple[str, str, int]] = []  # (path, sha256, size) stored so far
    try:
        source, draft_id, dataset_name = _start_draft(ctx, params)
        secrets = source.secrets()
        shown = source.config.get("url") or "s3://{bucket}/{prefix}".format(**source.config)
        ctx.log(f"importing from source {source.name!r} ({source.kind}: {shown})")
        ctx.log(f"into dataset {dataset_name!r}, draft {draft_id}")
        ctx.progress(0.0, "connecting")
        if source.kind == "sql":
            assert params.query is not None
            path = params.path or "import.parquet"
            ctx.log(f"query: {' '.join(params.query.split())[:500]}")
            with tempfile.TemporaryDirectory(prefix="zt-import-") as folder:
                target = Path(folder) / "import.parquet"
                rows, names = _query_to_parquet(ctx, source, params.query, target)
                ctx.log(f"{rows} rows, {len(names)} columns: {', '.join(names)[:1000]}")
                ctx.progress(None, "storing")
                with target.open("rb") as stream:
                    sha256, size = store_blob(platform, stream, limit=limit)
            files = [(path, sha256, size)]
            summary: dict[str, Any] = {"rows": rows, "columns": names}
        else:
            files = _copy_objects(ctx, source, params, limit)
            summary = {"objects": len(files)}
        ctx.check_cancelled()
        number, quality = _commit(ctx, params, draft_id, files)
    except BaseException as exc:
        try:  # no version, no draft, no blob only this import stored
            if draft_id is not None:
                _drop_draft(platform, draft_id)
            _forget(platform, {sha for _p, sha, _s in files})
        except Exception:
            log.warning("import %s: could not clean up draft %s", ctx.job_id, draft_id)
        if isinstance(exc, JobCancelled | KeyboardInterrupt | SystemExit):
            raise
        message = _scrub(_describe(exc), secrets)
        ctx.log(f"import failed: {message}")
        raise ImportFailed(message) from None
    ctx.log(f"committed version {number} ({len(files)} files)")
    ctx.progress(1.0, f"version {number}")
    return {
        "version": number,
        "version_id": draft_id,
        "files": len(files),
        "quality_job": quality.id if quality is not None else None,
        **summary,
    }


IMPORT = JobType(
    "data.import",
    run,
    ImportParams,
    description="Snapshot a SQL query or an S3 prefix into a new dataset version",
    timeout=6 * 3600,
    retries=0,
    permission="data.dataset.write",
)

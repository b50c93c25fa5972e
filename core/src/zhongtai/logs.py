"""Structured logging: JSON lines when stderr is not a terminal, with the request id.

Every record logged while a request is handled carries its ``request_id`` (the
value of the ``X-Request-ID`` response header), so one request's lines can be found.

The access log (one line per HTTP exchange, logger ``zhongtai.access``, level INFO)
does not go through :mod:`logging` record by record: building a ``LogRecord``,
walking the stack for ``findCaller``, filtering and formatting cost more than the
request itself. :func:`configure_logging` installs an :class:`AccessLog` that shapes
the same line directly and writes it to the stream of zhongtai's log handler, in the
same format (JSON or text) as every other line. It steps aside, and
:func:`log_access` falls back to an ordinary ``logging`` call, whenever someone has
changed the logging set-up it relies on (another handler on the root logger, a
handler or filter on ``zhongtai.access``…), so such a set-up still sees every line.

Secrets are masked on the way out. :class:`MaskSecretsFilter`, on zhongtai's handler,
rewrites every record it passes (message, extra fields, exception and stack text)
with :func:`mask_secrets`: API keys keep their public ``zt_<prefix>_``, JWTs,
``Bearer``/``Basic`` credentials, values of ``password=``, ``"token": "…"``,
``client_secret: …`` and the like, and passwords in ``scheme://user:pass@host`` URLs
become ``********``. A message without any tell-tale substring costs a few substring
tests; only the others go through the one precompiled regex. The access line holds
the method, the path without its query string (``?token=…`` never reaches it) and the
status; a path that looks like it carries a key or a JWT is masked too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "zhongtai_request_id", default=None
)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}

ACCESS_LOGGER = "zhongtai.access"
_access = logging.getLogger(ACCESS_LOGGER)
_zhongtai = logging.getLogger("zhongtai")
_root = logging.getLogger()
_json_encode = msgspec.json.Encoder().encode


class _AccessLine(msgspec.Struct, omit_defaults=True):
    """One JSON access line; msgspec writes the fields in this order (keys pre-encoded)."""

    time: str
    level: str
    logger: str
    message: str
    method: str
    path: str
    status: int
    duration_ms: float
    route: str
    request_id: str | None = None  # left out when None, as JsonFormatter does


MASK = "********"

# The keys whose value is a secret: the name ends with one of these words
# ("refresh_token", "ZHONGTAI_SECRET_KEY", "db_password"), not merely contains one
# ("max_tokens", "tokenizer" and "token_type" are left alone).
_MASKED_NAMES = (
    r"(?:passw(?:or)?d|passphrase|pwd|secret(?:[_-]?(?:access[_-]?)?key)?|token"
    r"|api[_-]?key|access[_-]?key|private[_-]?key|authorization|credentials?)"
    r"(?![A-Za-z0-9_])"
)
_SECRET_NAME = re.compile(_MASKED_NAMES, re.IGNORECASE)
# What follows "Bearer ": a JWT, an API key, base64 (not "<token>" in a usage hint).
_CREDENTIAL = r"[A-Za-z0-9._~+/=:_-]{8,}"
_SECRETS = re.compile(
    # "Bearer <credential>" / "Basic <credential>"
    r"(?P<scheme>\b(?i:bearer|basic)[ \t]+)(?P<cred>" + _CREDENTIAL + ")"
    # name=value, name: value, "name": "value", 'name': 'value' (and JSON escaped once)
    r"|(?P<name>(?i:" + _MASKED_NAMES + r")\\?[\"']?[ \t]*[:=][ \t]*)"
    r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
    r"|\\\"(?:[^\"\\\n]|\\[^\"])*\\\""
    r"|(?i:bearer|basic)[ \t]+" + _CREDENTIAL + r"|(?!(?i:bearer|basic)[ \t])"
    r"[\"']?[^\s&,;\"'}\])]+)"
    # a JWT: base64url header and payload, both JSON objects ("eyJ" is '{"')
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
    # an API key: zt_<prefix>_<secret>
    r"|(?<![A-Za-z0-9])(?P<key>zt_[a-z0-9]{8,12}_)[A-Za-z0-9_-]{20,}"
    # scheme://user:password@host (a bounded scheme keeps the scan linear)
    r"|(?P<url>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/@]*:)[^\s/]*@"
)
_KEY_START = re.compile(r"zt_[a-z0-9]{8,12}_")
# Lower-case substrings, one of which every match above contains: a message without
# any of them skips the regex.
_TELLTALES = (
    "zt_",
    "eyj",
    "://",
    "bearer",
    "basic",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "authorization",
    "credential",
)


def _masked_credential(credential: str) -> str:
    key = _KEY_START.match(credential)
    # An API key keeps zt_<prefix>_: the prefix is public and names the key.
    return key.group() + MASK if key else MASK


def _replace(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return match.group("scheme") + _masked_credential(match.group("cred"))
    name = match.group("name")
    if name:
        value = match.group("value")
        if value.startswith('\\"'):
            return name + '\\"' + MASK + '\\"'
        if value[0] in "\"'":
            return name + value[0] + MASK + value[0]
        parts = value.split(None, 1)
        if len(parts) == 2:  # "Authorization: Bearer <credential>"
            return name + parts[0] + " " + _masked_credential(parts[1])
        return name + MASK
    if match.group("jwt"):
        return MASK
    if match.group("key"):
        return match.group("key") + MASK
    return match.group("url") + MASK + "@"


def mask_secrets(text: str) -> str:
    """``text`` with passwords, tokens, API keys and URL passwords replaced by ``********``.

    Returns ``text`` itself (the same object) when there is nothing to mask.
    """
    low = text.lower()
    for telltale in _TELLTALES:
        if telltale in low:
            masked = _SECRETS.sub(_replace, text)
            return text if masked == text else masked
    return text


def _mask_value(name: str, value: Any, depth: int = 0) -> Any:
    """An extra field's value, masked: all of it under a secret's name, else its secrets."""
    if value is None:
        return value
    if name and _SECRET_NAME.search(name):
        return MASK
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return MASK  # deeper than any extra field needs; don't walk cycles
    # Unchanged values come back as the very same object, so "is" tells what changed.
    if isinstance(value, Mapping):
        pairs = [(k, v, _mask_value(str(k), v, depth + 1)) for k, v in value.items()]
        if all(new is old for _, old, new in pairs):
            return value
        return {k: new for k, _, new in pairs}
    if isinstance(value, list | tuple | set | frozenset):
        items = [(old, _mask_value("", old, depth + 1)) for old in value]
        if all(new is old for old, new in items):
            return value
        return [new for _, new in items]
    text = str(value)
    masked = mask_secrets(text)
    return value if masked is text else masked


def mask_fields(value: Any) -> Any:
    """``value`` (a mapping, list or scalar) with secrets masked: whole values under
    secret-like names (``password``, ``token``, ``api_key``…), embedded ones elsewhere."""
    return _mask_value("", value)


_exception_formatter = logging.Formatter()
_NOT_EXTRA = frozenset({"request_id", "rid"})


class MaskSecretsFilter(logging.Filter):
    """Mask secrets in a record's message, extra fields, exception and stack text.

    The record is rewritten in place (only where something was masked), so every
    handler after this one sees the masked values too. Never refuses a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments: let the formatter report it as logging does
            return True
        masked = mask_secrets(message)
        if masked is not message:
            record.msg, record.args = masked, None
        for name, value in list(vars(record).items()):
            if name in _STANDARD or name in _NOT_EXTRA:
                continue
            cleaned = _mask_value(name, value)
            if cleaned is not value:
                setattr(record, name, cleaned)
        if record.exc_info and not record.exc_text:
            record.exc_text = _exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # cached, and masked by MaskSecretsFilter
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = record.stack_info
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(rid)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


def printable(text: str) -> str:
    """``text`` itself, or with every non-printable character backslash-escaped.

    Newlines, carriage returns, other control characters and Unicode line or
    paragraph separators become ``\\n``, ``\\x1b``, ``\\u2028``… so that a value from a
    client (a request path) cannot start a forged line in a text log.
    """
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


class AccessLog:
    """Writes access-log lines straight to the stream of zhongtai's log handler.

    Each line is written with a single ``write`` call, as ``logging.StreamHandler``
    does, so lines from several threads never interleave; it is flushed at once.
    """

    def __init__(self, handler: logging.StreamHandler[Any], *, use_json: bool) -> None:
        self.handler = handler
        self.use_json = use_json
        self._only = [handler]
        self._filters = list(handler.filters)
        # (second, its text) and (millisecond, its text): several requests share each.
        # Tuples, replaced whole, so that threads never see half an update.
        self._utc_second: tuple[int, str] = (-1, "")
        self._utc_ms: tuple[int, str] = (-1, "")
        self._local_second: tuple[int, str] = (-1, "")

    def applies(self) -> bool:
        """True while logging is set up as :func:`configure_logging` left it.

        Then the line this class writes is the one ``logging`` would have written, and
        nothing else would have received it.
        """
        return (
            _root.handlers == self._only
            and not _access.handlers
            and not _access.filters
            and not _zhongtai.handlers
            and _access.propagate
            and _zhongtai.propagate
            and self.handler.level <= logging.INFO
            and self.handler.filters == self._filters
        )

    def _utc(self, now: float) -> str:
        """``now`` as ``JsonFormatter`` writes it: ISO 8601, milliseconds, UTC."""
        ms = int(now * 1000)
        cached_ms, text = self._utc_ms
        if cached_ms == ms:
            return text
        second, milli = divmod(ms, 1000)
        cached, prefix = self._utc_second
        if cached != second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._utc_second = (second, prefix)
        text = f"{prefix}.{milli:03d}+00:00"
        self._utc_ms = (ms, text)
        return text

    def _local(self, now: float) -> str:
        """``now`` as ``TextFormatter`` writes it (``logging``'s default asctime)."""
        second = int(now)
        cached, prefix = self._local_second
        if cached != second:
            prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._local_second = (second, prefix)
        return f"{prefix},{int((now - second) * 1000):03d}"

    def line(
        self,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        route: str,
        request_id: str | None,
    ) -> str:
        """The complete line, newline included, for one exchange."""
        now = time.time()
        if not self.use_json:
            rid = f" [{request_id}]" if request_id else ""
            return (
                f"{self._local(now)} INFO    {ACCESS_LOGGER}: "
                f"{printable(method)} {printable(path)} {status}{rid}\n"
            )
        record = _AccessLine(
            self._utc(now),
            "info",
            ACCESS_LOGGER,
            f"{method} {path} {status}",
            method,
            path,
            status,
            duration_ms,
            route,
            request_id,
        )
        if (method + path + route).isascii():  # msgspec escapes quotes and controls
            return _json_encode(record).decode() + "\n"
        # Escape everything beyond ASCII: U+2028, U+0085 and the like end a line for
        # some readers, and a lone surrogate cannot be encoded at all.
        data = msgspec.structs.asdict(record)
        if request_id is None:
            del data["request_id"]
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")) + "\n"

    def write(self, line: str) -> None:
        """Write ``line`` (complete, newline included) in one call, then flush."""
        stream = self.handler.stream
        try:
            stream.write(line)
            stream.flush()
        except Exception:  # a broken log stream must not fail the request
            self.write_failed(line)

    def write_failed(self, line: str) -> None:
        """Report a failed write as ``StreamHandler.emit`` does (``handleError``)."""
        record = logging.makeLogRecord(
            {"name": ACCESS_LOGGER, "levelno": logging.INFO, "msg": line.rstrip("\n")}
        )
        self.handler.handleError(record)


_access_log: AccessLog | None = None


def log_access(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    route: str,
    request_id: str | None,
) -> None:
    """Log one HTTP exchange: INFO on ``zhongtai.access``, ``"GET /path 200"``.

    ``path`` is the request path without its query string.
    """
    if not _access.isEnabledFor(logging.INFO):
        return
    if "zt_" in path or "eyJ" in path:  # a key or a token pasted into the path
        path = mask_secrets(path)
    writer = _access_log
    if writer is not None and writer.applies():
        line = writer.line(method, path, status, duration_ms, route, request_id)
        stream = writer.handler.stream
        try:  # AccessLog.write, inlined: this runs once per request
            stream.write(line)
            stream.flush()
        except Exception:
            writer.write_failed(line)
        return
    _access.info(
        "%s %s %s",
        printable(method),
        printable(path),
        status,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "route": route,
        },
    )


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Send zhongtai's (and uvicorn's) logs to stderr in the chosen format."""
    global _access_log
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(MaskSecretsFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_zhongtai", False):
            root.removeHandler(existing)
    handler._zhongtai = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # Our middleware writes one access line per request with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic narrates every plugin it sets up; keep only what needs attention.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _access_log = AccessLog(handler, use_json=use_json)

"""Cursor pagination shared by every list endpoint.

``?limit=N&cursor=C``: ``limit`` defaults to ``ZHONGTAI_DEFAULT_PAGE_SIZE`` (50) and
may not exceed ``ZHONGTAI_MAX_PAGE_SIZE`` (500; more is a 400 naming ``limit``).
The cursor is opaque: the last id of the previous page, encoded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from litestar.exceptions import ValidationException
from sqlalchemy import Select

T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: str | None


@dataclass
class Page(Generic[T]):
    """One page of items and the cursor of the next page (None at the end)."""

    items: list[T]
    next_cursor: str | None

    def to_dict(self, render: Callable[[T], Any] = lambda x: x) -> dict[str, Any]:
        return {"items": [render(i) for i in self.items], "next_cursor": self.next_cursor}


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
        if not value.isprintable() or not value:
            raise ValueError("empty or unprintable cursor")
        return value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid("cursor", "not a cursor returned by this API") from None


def _invalid(field: str, message: str) -> ValidationException:
    return ValidationException(
        detail=f"invalid {field}", extra=[{"key": field, "message": message, "source": "query"}]
    )


def page_request(
    limit: int | None, cursor: str | None, *, default: int = 50, maximum: int = 500
) -> PageRequest:
    """Validate ``limit`` and ``cursor`` query values."""
    if limit is None:
        limit = default
    if limit < 1 or limit > maximum:
        raise _invalid("limit", f"must be between 1 and {maximum}")
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


def paginate(session: Any, query: Select[Any], id_column: Any, page: PageRequest) -> Page[Any]:
    """Run ``query`` ordered by ``id_column`` (time-ordered ids), one page past the cursor."""
    if page.after is not None:
        query = query.where(id_column > page.after)
    rows: Sequence[Any] = session.scalars(query.order_by(id_column).limit(page.limit + 1)).all()
    items = list(rows[: page.limit])
    more = len(rows) > page.limit
    next_cursor = encode_cursor(getattr(items[-1], id_column.key)) if more and items else None
    return Page(items=items, next_cursor=next_cursor)

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


def page_for(settings: Any, limit: int | None, cursor: str | None) -> PageRequest:
    """:func:`page_request` with the platform's page sizes (``platform.settings``)."""
    return page_request(
        limit, cursor, default=settings.default_page_size, maximum=settings.max_page_size
    )


def paginate(
    session: Any,
    query: Select[*tuple[Any, ...]],
    id_column: Any,
    page: PageRequest,
    *,
    rows: bool = False,
    newest_first: bool = False,
) -> Page[Any]:
    """Run ``query`` ordered by ``id_column`` (time-ordered ids), one page past the cursor.

    Args:
        session: An open session.
        query: The filtered statement; this adds the cursor, the order and the limit.
        id_column: The (time-ordered) id the pages follow.
        page: From :func:`page_request`.
        rows: Return whole rows (a query of several columns; the first column must be
            the object carrying ``id_column``) rather than the first column's values.
        newest_first: Descending ids instead of ascending.
    """
    if page.after is not None:
        query = query.where(id_column < page.after if newest_first else id_column > page.after)
    query = query.order_by(id_column.desc() if newest_first else id_column).limit(page.limit + 1)
    found: Sequence[Any] = (session.execute(query) if rows else session.scalars(query)).all()
    items = list(found[: page.limit])
    more = len(found) > page.limit
    if not (more and items):
        return Page(items=items, next_cursor=None)
    last = items[-1][0] if rows else items[-1]
    return Page(items=items, next_cursor=encode_cursor(getattr(last, id_column.key)))

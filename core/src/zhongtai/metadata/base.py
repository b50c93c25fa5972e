"""The one declarative base every table of the core and of every plugin derives from.

Table names are owned: the core's are plain (``lineage_edges``), a plugin's start
with ``<plugin>_``. A second definition of a name already taken raises
:class:`TableCollision` naming both modules, before SQLAlchemy sees it; the plugin
loader turns that into a start-up refusal naming both plugins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so migrations can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class TableCollision(Exception):
    """Two modules define the same table name."""

    def __init__(self, table: str, module: str, owner: str) -> None:
        super().__init__(f"table {table!r} defined in {module} is already defined in {owner}")
        self.table = table
        self.module = module
        self.owner = owner


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; zhongtai stores UTC-aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base for all tables. ``metadata`` is the one schema of the platform."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}

    # table name -> module that defined it
    _zt_owners: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        name = cls.__dict__.get("__tablename__")
        if isinstance(name, str):
            owner = Base._zt_owners.get(name)
            if owner is not None and owner != cls.__module__:
                raise TableCollision(name, cls.__module__, owner)
            Base._zt_owners[name] = cls.__module__
        super().__init_subclass__(**kwargs)


def table_owners() -> dict[str, str]:
    """``{table name: defining module}`` for every table defined so far."""
    return dict(Base._zt_owners)

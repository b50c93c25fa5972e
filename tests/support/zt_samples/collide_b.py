"""Defines colla_items too: must be refused naming both plugins."""

from sqlalchemy.orm import Mapped, mapped_column

from zhongtai.metadata.base import Base


class Item(Base):
    __tablename__ = "colla_items"
    id: Mapped[int] = mapped_column(primary_key=True)

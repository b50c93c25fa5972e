"""Defines colla_items."""

from sqlalchemy.orm import Mapped, mapped_column

from zhongtai.metadata.base import Base


class Item(Base):
    __tablename__ = "colla_items"
    id: Mapped[int] = mapped_column(primary_key=True)

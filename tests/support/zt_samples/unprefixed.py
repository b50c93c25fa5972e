"""A table without the plugin's prefix."""

from sqlalchemy.orm import Mapped, mapped_column

from zhongtai.metadata.base import Base


class Widget(Base):
    __tablename__ = "widgets"
    id: Mapped[int] = mapped_column(primary_key=True)

"""Defines a table the core owns."""

from sqlalchemy.orm import Mapped, mapped_column

from zhongtai.metadata.base import Base


class Edge(Base):
    __tablename__ = "lineage_edges"
    id: Mapped[int] = mapped_column(primary_key=True)

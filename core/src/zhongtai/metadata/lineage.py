"""Lineage: directed edges between any two entities, across plugins.

An entity is ``{kind, id}`` (``data.version``/``ds_1@3``, ``train.run``/``abc``…).
Plugins record edges from Python with :func:`record_edge` inside their own
transaction; ``GET /api/v1/lineage`` walks them upstream or downstream so data →
training → model → release can be followed. This module is a built-in plugin.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import get, post
from litestar.params import JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Index, Select, String, UniqueConstraint, and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

import zhongtai
from zhongtai.hooks.events import Event, emit, utcnow
from zhongtai.identity.guard import AccessDep, requires
from zhongtai.identity.permissions import LINEAGE_READ, LINEAGE_WRITE
from zhongtai.metadata.base import Base
from zhongtai.metadata.ids import new_id
from zhongtai.web.pagination import page_for, paginate
from zhongtai.web.params import PlatformDep

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_DEPTH = 10
MAX_NODES = 2000


class LineageEdge(Base):
    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint(
            "source_kind",
            "source_id",
            "target_kind",
            "target_id",
            "relation",
            name="uq_lineage_edges_source_kind",
        ),
        Index("ix_lineage_edges_source", "source_kind", "source_id"),
        Index("ix_lineage_edges_target", "target_kind", "target_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source_kind: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(128))
    target_kind: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(String(128))
    relation: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclasses.dataclass(frozen=True)
class EntityRef:
    """One end of an edge."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        if not KIND_PATTERN.match(self.kind):
            raise ValueError(f"invalid entity kind {self.kind!r}")
        if not self.id or len(self.id) > 128:
            raise ValueError("entity id must be 1-128 characters")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LineageEdgeCreated(Event):
    name = "lineage.edge.created"
    source: dict[str, str]
    target: dict[str, str]
    relation: str


def record_edge(
    session: Session,
    source: EntityRef,
    target: EntityRef,
    relation: str,
    *,
    project_id: str | None = None,
) -> LineageEdge:
    """Record ``source -[relation]-> target`` (idempotent) in the caller's transaction.

    Idempotent under concurrency too: the row is inserted with ``ON CONFLICT DO
    NOTHING``, so when another transaction records the same edge at the same time the
    caller's transaction and its other changes go on; only the one that inserted it
    emits the event.
    """
    if not KIND_PATTERN.match(relation):
        raise ValueError(f"invalid relation {relation!r}")
    same = select(LineageEdge).where(
        LineageEdge.source_kind == source.kind,
        LineageEdge.source_id == source.id,
        LineageEdge.target_kind == target.kind,
        LineageEdge.target_id == target.id,
        LineageEdge.relation == relation,
    )
    existing = session.scalar(same)
    if existing is not None:
        return existing
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    inserted = session.execute(
        insert(LineageEdge)
        .values(
            source_kind=source.kind,
            source_id=source.id,
            target_kind=target.kind,
            target_id=target.id,
            relation=relation,
            project_id=project_id,
        )
        .on_conflict_do_nothing()
        .returning(LineageEdge.id)
    ).scalar()
    edge = session.scalars(same.execution_options(populate_existing=True)).one()
    if inserted is None:
        return edge  # recorded meanwhile by another transaction, which told of it
    emit(
        session,
        LineageEdgeCreated(
            project=project_id,
            source=dataclasses.asdict(source),
            target=dataclasses.asdict(target),
            relation=relation,
        ),
    )
    return edge


Direction = Literal["upstream", "downstream", "both"]


def walk(
    session: Session,
    root: EntityRef,
    direction: Direction = "both",
    depth: int = 3,
    *,
    projects: Select[Any] | None = None,
) -> dict[str, Any]:
    """Edges reachable from ``root`` within ``depth`` hops, one query per hop.

    ``projects`` (a ``SELECT`` of project ids) limits the walk to edges recorded in
    those projects; edges of other projects, and those of none, are not followed.
    """
    seen: set[tuple[str, str]] = {(root.kind, root.id)}
    frontier = {(root.kind, root.id)}
    edges: dict[str, LineageEdge] = {}
    truncated = False
    for _ in range(depth):
        if not frontier:
            break
        conditions = []
        pairs = list(frontier)
        if direction in ("upstream", "both"):
            conditions += [
                and_(LineageEdge.target_kind == k, LineageEdge.target_id == i) for k, i in pairs
            ]
        if direction in ("downstream", "both"):
            conditions += [
                and_(LineageEdge.source_kind == k, LineageEdge.source_id == i) for k, i in pairs
            ]
        query = select(LineageEdge).where(or_(*conditions))
        if projects is not None:
            query = query.where(LineageEdge.project_id.in_(projects))
        found = session.scalars(query.order_by(LineageEdge.id)).all()
        frontier = set()
        for edge in found:
            edges[edge.id] = edge
            for node in ((edge.source_kind, edge.source_id), (edge.target_kind, edge.target_id)):
                if node not in seen:
                    seen.add(node)
                    frontier.add(node)
        if len(seen) > MAX_NODES:
            truncated = True
            break
    return {
        "root": {"kind": root.kind, "id": root.id},
        "nodes": [{"kind": k, "id": i} for k, i in sorted(seen)],
        "edges": [_edge_dict(e) for e in edges.values()],
        "truncated": truncated,
    }


def _edge_dict(edge: LineageEdge) -> dict[str, Any]:
    return {
        "id": edge.id,
        "source": {"kind": edge.source_kind, "id": edge.source_id},
        "target": {"kind": edge.target_kind, "id": edge.target_id},
        "relation": edge.relation,
        "project": edge.project_id,
        "created_at": edge.created_at.isoformat(),
    }


@get("/api/v1/lineage", tags=["lineage"], sync_to_thread=True, opt=requires(LINEAGE_READ))
def get_lineage(
    platform: PlatformDep,
    access: AccessDep,
    kind: Annotated[str, QueryParameter(pattern=KIND_PATTERN.pattern, max_length=64)],
    entity_id: Annotated[str, QueryParameter(name="id", min_length=1, max_length=128)],
    direction: Annotated[Direction, QueryParameter()] = "both",
    depth: Annotated[int, QueryParameter(ge=1, le=MAX_DEPTH)] = 3,
) -> dict[str, Any]:
    """Entities and edges around one entity, walking ``depth`` hops in ``direction``.

    Only edges of projects where the caller holds ``lineage.read`` are followed.
    """
    with platform.db.transaction() as session:
        return walk(
            session,
            EntityRef(kind, entity_id),
            direction,
            depth,
            projects=access.visible_projects(),
        )


class EntityIn(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    kind: str = Field(pattern=KIND_PATTERN.pattern, max_length=64)
    id: str = Field(min_length=1, max_length=128)


class EdgeIn(BaseModel):
    """An edge to record: ``source -[relation]-> target``."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    source: EntityIn
    target: EntityIn
    relation: str = Field(pattern=KIND_PATTERN.pattern, max_length=64)
    project: str = Field(min_length=1, max_length=64)


@post("/api/v1/lineage/edges", tags=["lineage"], sync_to_thread=True, opt=requires(LINEAGE_WRITE))
def create_edge(platform: PlatformDep, access: AccessDep, data: JSONBody[EdgeIn]) -> dict[str, Any]:
    """Record an edge in a project (idempotent: the same edge twice returns the first)."""
    with platform.db.transaction() as session:
        access.require(session, project_id=data.project)
        access.audit(action="lineage.edge.create", target_kind="lineage.edge")
        edge = record_edge(
            session,
            EntityRef(data.source.kind, data.source.id),
            EntityRef(data.target.kind, data.target.id),
            data.relation,
            project_id=data.project,
        )
        return _edge_dict(edge)


@get("/api/v1/lineage/edges", tags=["lineage"], sync_to_thread=True, opt=requires(LINEAGE_READ))
def list_edges(
    platform: PlatformDep,
    access: AccessDep,
    kind: Annotated[str | None, QueryParameter(pattern=KIND_PATTERN.pattern, max_length=64)] = None,
    entity_id: Annotated[str | None, QueryParameter(name="id", max_length=128)] = None,
    relation: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Annotated[int | None, QueryParameter()] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> dict[str, Any]:
    """Edges touching an entity (either end), oldest first, paginated."""
    page = page_for(platform.settings, limit, cursor)
    query = select(LineageEdge).where(LineageEdge.project_id.in_(access.visible_projects()))
    if kind is not None:
        ends = [LineageEdge.source_kind == kind, LineageEdge.target_kind == kind]
        if entity_id is not None:
            ends = [
                and_(LineageEdge.source_kind == kind, LineageEdge.source_id == entity_id),
                and_(LineageEdge.target_kind == kind, LineageEdge.target_id == entity_id),
            ]
        query = query.where(or_(*ends))
    if relation is not None:
        query = query.where(LineageEdge.relation == relation)
    with platform.db.transaction() as session:
        return paginate(session, query, LineageEdge.id, page).to_dict(_edge_dict)


@zhongtai.hookimpl
def register_routes() -> list[Any]:
    return [get_lineage, create_edge, list_edges]

"""core: lineage edges between any two entities

Revision ID: c0e1a0000001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "c0e1a0000001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("core",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lineage_edges",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("source_kind", sa.String(64), nullable=False),
        sa.Column("source_id", sa.String(128), nullable=False),
        sa.Column("target_kind", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(128), nullable=False),
        sa.Column("relation", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lineage_edges"),
        sa.UniqueConstraint(
            "source_kind", "source_id", "target_kind", "target_id", "relation",
            name="uq_lineage_edges_source_kind",
        ),
    )
    op.create_index("ix_lineage_edges_source", "lineage_edges", ["source_kind", "source_id"])
    op.create_index("ix_lineage_edges_target", "lineage_edges", ["target_kind", "target_id"])


def downgrade() -> None:
    op.drop_index("ix_lineage_edges_target", table_name="lineage_edges")
    op.drop_index("ix_lineage_edges_source", table_name="lineage_edges")
    op.drop_table("lineage_edges")

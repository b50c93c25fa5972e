"""train: GPU quotas of projects

Revision ID: 5c0a7d2e9f14
Revises: 81b63331b8ae
Create Date: 2026-11-29 12:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "5c0a7d2e9f14"
down_revision: str | Sequence[str] | None = "81b63331b8ae"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "train_gpu_quotas",
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=32), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_train_gpu_quotas_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_train_gpu_quotas")),
    )


def downgrade() -> None:
    op.drop_table("train_gpu_quotas")

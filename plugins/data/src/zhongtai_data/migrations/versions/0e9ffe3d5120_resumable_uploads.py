"""data: resumable uploads

Generated with ``zhongtai db revision --branch data --autogenerate``.

Revision ID: 0e9ffe3d5120
Revises: 9fffd97ce726
Create Date: 2026-11-29 06:02:42.865934
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "0e9ffe3d5120"
down_revision: str | Sequence[str] | None = "9fffd97ce726"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "data_uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("multipart", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_data_uploads_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["data_datasets.id"],
            name=op.f("fk_data_uploads_dataset_id_data_datasets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["data_versions.id"],
            name=op.f("fk_data_uploads_version_id_data_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_uploads")),
    )
    with op.batch_alter_table("data_uploads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_data_uploads_dataset_id"), ["dataset_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_data_uploads_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("data_uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_uploads_status"))
        batch_op.drop_index(batch_op.f("ix_data_uploads_dataset_id"))

    op.drop_table("data_uploads")

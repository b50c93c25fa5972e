"""data: quality reports of tabular files

Generated with ``zhongtai db revision --branch data --autogenerate``.

Revision ID: 9fffd97ce726
Revises: 05d5dbdd9bb1
Create Date: 2026-11-29 05:59:53.514512
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "9fffd97ce726"
down_revision: str | Sequence[str] | None = "05d5dbdd9bb1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "data_reports",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["data_files.id"],
            name=op.f("fk_data_reports_file_id_data_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_data_reports")),
    )


def downgrade() -> None:
    op.drop_table("data_reports")

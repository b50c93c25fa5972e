"""data: datasets, versions, files and blobs

Generated with ``zhongtai db revision --branch data --autogenerate``.

Revision ID: 05d5dbdd9bb1
Revises:
Create Date: 2026-11-29 05:51:06.513259
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from zhongtai.metadata.base import UTCDateTime

revision: str = "05d5dbdd9bb1"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("data",)
# The core revision that creates ``users`` and ``projects``, which datasets refer to.
depends_on: str | Sequence[str] | None = "c0e1a0000002"


def upgrade() -> None:
    op.create_table(
        "data_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_data_blobs")),
    )
    op.create_table(
        "data_datasets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_data_datasets_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_data_datasets_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_datasets")),
        sa.UniqueConstraint("project_id", "name", name="uq_data_datasets_project_name"),
    )
    with op.batch_alter_table("data_datasets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_data_datasets_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "data_versions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("committed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_data_versions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["data_datasets.id"],
            name=op.f("fk_data_versions_dataset_id_data_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_versions")),
        sa.UniqueConstraint("dataset_id", "number", name="uq_data_versions_dataset_number"),
    )
    with op.batch_alter_table("data_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_data_versions_dataset_id"), ["dataset_id"], unique=False
        )

    op.create_table(
        "data_files",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(length=200), nullable=False),
        sa.Column("tabular", sa.String(length=16), nullable=True),
        sa.Column("columns", sa.JSON(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"], ["data_blobs.sha256"], name=op.f("fk_data_files_sha256_data_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["data_versions.id"],
            name=op.f("fk_data_files_version_id_data_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_files")),
        sa.UniqueConstraint("version_id", "path", name="uq_data_files_version_path"),
    )
    with op.batch_alter_table("data_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_files_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_data_files_version_id"), ["version_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("data_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_files_version_id"))
        batch_op.drop_index(batch_op.f("ix_data_files_sha256"))

    op.drop_table("data_files")
    with op.batch_alter_table("data_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_versions_dataset_id"))

    op.drop_table("data_versions")
    with op.batch_alter_table("data_datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_datasets_project_id"))

    op.drop_table("data_datasets")
    op.drop_table("data_blobs")
